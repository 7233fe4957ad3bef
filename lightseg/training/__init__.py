"""Training: the loop (:func:`train`), what a run is built from, its checkpoints and how a run
continues after an interruption. Nothing here is needed to run a trained model (:mod:`lightseg.deploy`)."""

from lightseg.training.loop import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]
