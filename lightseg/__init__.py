"""lightseg: efficient semantic segmentation in pure PyTorch.

Public face: :func:`create_model`, :func:`list_models`, :func:`load_checkpoint`.
"""

from lightseg.checkpoint import load_checkpoint, load_weights, save_weights
from lightseg.engine.segmenter import Segmenter
from lightseg.errors import CheckpointError, LightsegError
from lightseg.meta import ModelMeta
from lightseg.models.registry import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "LightsegError",
    "ModelMeta",
    "Segmenter",
    "__version__",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "save_weights",
]
