"""Model families. Importing this package registers every family's factories."""

# Each family module registers its factories (and checkpoint layouts) on import.
from lightseg.models import (  # noqa: F401
    cgrseg,
    efficientformer_v2,
    efficientnet_lite,
    frm,
    hybrids,
    van,
)
from lightseg.models.build import create_model, load_checkpoint
from lightseg.models.registry import get_entry, list_models, register_model
from lightseg.models.segmentor import Segmentor

__all__ = ["Segmentor", "create_model", "get_entry", "list_models", "load_checkpoint", "register_model"]
