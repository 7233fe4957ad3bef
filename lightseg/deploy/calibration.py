"""Real images for INT8 calibration, streamed from disk; and the one message for a missing set."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from lightseg.deploy.media import image_files, read_image
from lightseg.errors import InputError
from lightseg.meta import ModelMeta


def check_calibration(precision: str, calibration, what: str = "INT8") -> None:
    """INT8 needs calibration images; fail with :func:`calibration_needed` when there are none."""
    if precision == "int8" and not calibration:
        raise calibration_needed(what)


def calibration_needed(what: str = "INT8") -> InputError:
    """The error for INT8 without calibration images (``what`` names the path that needs them)."""
    return InputError(
        f"{what} needs --calibration DIR (in Python: calibration=DIR): a folder (or files, globs) of "
        "real images of the domain the model will see to calibrate on, e.g. its training images"
    )


# --------------------------------------------------------------------------------------------------
# Calibration images, streamed
# --------------------------------------------------------------------------------------------------
class CalibrationImages:
    """Real images for INT8 calibration, read from disk one at a time on every pass.

    ``inputs``: image files, folders or globs; up to ``count`` of the images found are used, spread
    evenly over them. Each is resized to ``size`` (bilinear) and normalised with ``mean``/``std``
    (0-255 RGB) into a 1 x 3 x H x W float32 array. Nothing is kept between images, so memory
    does not grow with ``count``; calibrators may iterate several times (each pass re-reads).
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike] | str | os.PathLike | None,
        size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        count: int = 32,
    ):
        if not inputs:
            raise calibration_needed()
        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        files = image_files(inputs, what="calibration images")
        self.files = files[:: max(1, len(files) // count)][:count]
        self.size = (int(size[0]), int(size[1]))
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        h, w = self.size
        for f in self.files:
            img = Image.fromarray(read_image(f)).resize((w, h), resample=Image.Resampling.BILINEAR)
            x = (np.asarray(img, np.float32) - self.mean) / self.std
            yield np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def fingerprint(self) -> list:
        """What identifies these images for the export cache: paths, sizes and modification times."""
        return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files] + [
            list(self.size),
            self.mean.tolist(),
            self.std.tolist(),
        ]


def calibration_for(inputs: Iterable[str] | None, size, meta: ModelMeta, count: int) -> CalibrationImages:
    """Streamed calibration images for a model's input ``size`` and normalisation."""
    return CalibrationImages(list(inputs) if inputs else None, size, meta.mean, meta.std, count)
