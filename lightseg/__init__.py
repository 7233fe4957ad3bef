"""lightseg: efficient semantic segmentation in pure PyTorch.

Public face: :func:`create_model`, :func:`list_models`, :func:`load_checkpoint`, :class:`Segmenter`.
"""

from lightseg.checkpoint import load_weights, save_weights
from lightseg.engine.segmenter import Segmenter
from lightseg.errors import CheckpointError, LightsegError, WeightsNotFoundError
from lightseg.meta import ModelMeta
from lightseg.models.build import create_model, load_checkpoint
from lightseg.models.registry import list_models
from lightseg.weights import list_weights

__version__ = "0.1.0"

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
