"""``lightseg serve``: an HTTP segmentation service with a demo page (needs ``lightseg[serve]``).

:func:`create_app` builds the ASGI application around a :class:`Backend` (made by
:func:`load_backend`); :func:`server_config` configures uvicorn to run it with its :class:`Limits`;
:mod:`lightseg.cli.serve` does both.
"""

from lightseg.serve.app import create_app
from lightseg.serve.backend import Backend, ModelInfo, load_backend
from lightseg.serve.guard import Access
from lightseg.serve.limits import Limits
from lightseg.serve.server import server_config

__all__ = ["Access", "Backend", "Limits", "ModelInfo", "create_app", "load_backend", "server_config"]
