"""Deprecated: ``lightseg.engine`` was split into :mod:`lightseg.inference`, :mod:`lightseg.evaluation`,
:mod:`lightseg.training` and :mod:`lightseg.deploy` (docs/architecture.md). The old module names stay
importable for one release: ``lightseg.engine.<old>.<name>`` finds ``<name>`` in the modules listed
below for ``<old>`` and warns once per name with a :class:`DeprecationWarning` naming its new home.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

_T, _D = "lightseg.training.", "lightseg.deploy."
# old submodule -> the modules its names live in now
MOVED: dict[str, tuple[str, ...]] = {
    "": ("lightseg.inference",),
    "inference": ("lightseg.inference.passes",),
    "postprocess": ("lightseg.inference.upsample",),
    "evaluate": ("lightseg.evaluation",),
    "train": (_T + "loop", _T + "components", _T + "runlog", _T + "checkpoints", _T + "state"),
    "runtime": (_T + "distributed", _T + "sampling", _T + "state", _T + "checkpoints"),
    "resume": (_T + "resume", _T + "checkpoints"),
    "preflight": (_T + "preflight",),
    "optim": (_T + "optim",),
    "tensorboard": (_T + "tensorboard",),
    "backends": (
        _D + "formats",
        _D + "options",
        _D + "cpu",
        _D + "runners",
        _D + "runners.files",
        _D + "runners.onnxruntime",
        _D + "runners.openvino",
        _D + "metadata",
        _D + "export_cache",
        _D + "calibration",
        _D + "extras",
        "lightseg.models.build",
    ),
    "export": (
        _D + "export",
        _D + "export_onnx",
        _D + "export_openvino",
        _D + "graph",
        _D + "metadata",
        _D + "calibration",
        _D + "verify",
        _D + "formats",
        _D + "extras",
    ),
    "bench": (_D + "bench",),
    "segmenter": (_D + "segmenter",),
    "predict": (_D + "predict",),
    "media": (_D + "media",),
    "signal_stack": (_D + "signal_stack",),
}


def _find(old: str, name: str) -> Any:
    for module_name in MOVED[old]:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            where = f"lightseg.engine.{old}" if old else "lightseg.engine"
            warnings.warn(
                f"{where}.{name} moved to {module_name}.{name}; lightseg.engine goes in the next release",
                DeprecationWarning,
                stacklevel=3,
            )
            return getattr(module, name)
    raise AttributeError(f"lightseg.engine.{old} has no attribute {name!r}")


class _OldModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _find(self.__name__.rpartition(".")[2], name)


class _OldModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``lightseg.engine.<old>`` as a forwarding module."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        prefix, _, old = fullname.rpartition(".")
        if prefix == __name__ and old in MOVED and old:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec) -> types.ModuleType:
        return _OldModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = f"Deprecated: moved to {', '.join(MOVED[module.__name__.rpartition('.')[2]])}."


if not any(isinstance(f, _OldModules) for f in sys.meta_path):
    sys.meta_path.append(_OldModules())


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return _find("", name)
