"""The optional packages behind lightseg's extras, imported when a path needs them, with an error
naming the extra that installs them."""

from __future__ import annotations

import importlib.util

from lightseg.errors import InputError


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def import_openvino():
    """The ``openvino`` module, or an error naming the extra that installs it."""
    try:
        import openvino
    except ImportError as e:
        raise InputError("the OpenVINO runtime is not installed: pip install 'lightseg[openvino]'") from e
    return openvino


def import_onnxruntime():
    """The ``onnxruntime`` module, or an error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise InputError("onnxruntime is needed: pip install 'lightseg[export]'") from e
    return onnxruntime
