"""Training, evaluation and inference around the models (which know nothing of any of it)."""

from lightseg.engine.inference import (
    forward_slide,
    forward_whole,
    pad_to_multiple,
    predict_probs,
    slide_windows,
)

__all__ = ["forward_slide", "forward_whole", "pad_to_multiple", "predict_probs", "slide_windows"]
