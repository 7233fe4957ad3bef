"""Deployment: running trained models fast and where they are needed.

- :class:`Segmenter` (:mod:`.segmenter`): label maps for images from a model, a checkpoint or an
  exported file; ``lightseg predict`` (:mod:`.predict`) runs it over files, folders and videos.
- :func:`build_runner` (:mod:`.runners`): the one way to run a model, one module per runtime,
  configured by one :class:`RunnerOptions`; :mod:`.formats` is the table of what runs what.
- :func:`export_model` (:mod:`.export`): ONNX, OpenVINO IR and ``torch.export`` files that carry the
  model's metadata (:mod:`.metadata`), checked against eager by :mod:`.verify`; the export cache
  (:mod:`.export_cache`) and INT8 calibration images (:mod:`.calibration`).
- :mod:`.bench`: latency, throughput and memory of each path.

Nothing here imports :mod:`lightseg.training`.
"""

from lightseg.deploy.export import export_model
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners import build_runner
from lightseg.deploy.segmenter import Segmenter

__all__ = ["RunnerOptions", "Segmenter", "build_runner", "export_model"]
