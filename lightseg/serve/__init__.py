"""``lightseg serve``: an HTTP segmentation service with a demo page (needs ``lightseg[serve]``).

:func:`create_app` builds the ASGI application around a :class:`Backend` (made by
:func:`load_backend`); :mod:`lightseg.cli.serve` runs it with uvicorn.
"""

from lightseg.serve.app import create_app
from lightseg.serve.backend import Backend, ModelInfo, load_backend
from lightseg.serve.uploads import Limits

__all__ = ["Backend", "Limits", "ModelInfo", "create_app", "load_backend"]
