"""Model families. Importing this package registers every family's factories."""

from lightseg.models.registry import create_model, get_entry, list_models, register_model
from lightseg.models.segmentor import Segmentor

# Each family module registers its factories on import.
from lightseg.models import efficientformer_v2  # noqa: E402, F401, I001
from lightseg.models import cgrseg  # noqa: E402, F401
from lightseg.models import van, frm  # noqa: E402, F401
from lightseg.models import efficientnet_lite, hybrids  # noqa: E402, F401

__all__ = ["Segmentor", "create_model", "get_entry", "list_models", "register_model"]
