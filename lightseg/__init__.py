"""lightseg: efficient semantic segmentation in pure PyTorch.

Public face: :func:`create_model`, :func:`list_models`, :func:`load_checkpoint`, :class:`Segmenter`.
"""

from lightseg._version import __version__
from lightseg.checkpoint import load_weights, save_weights
from lightseg.deploy.segmenter import Segmenter
from lightseg.errors import CheckpointError, LightsegError, WeightsNotFoundError
from lightseg.meta import ModelMeta
from lightseg.models.build import create_model, load_checkpoint
from lightseg.models.registry import list_models
from lightseg.weights import list_weights

__all__ = [
    "CheckpointError",
    "LightsegError",
    "ModelMeta",
    "Segmenter",
    "WeightsNotFoundError",
    "__version__",
    "create_model",
    "list_models",
    "list_weights",
    "load_checkpoint",
    "load_weights",
    "save_weights",
]
