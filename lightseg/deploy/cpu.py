"""The CPU a model runs on: its features (recorded with every benchmark result) and the path run
when none is asked for."""

from __future__ import annotations

import functools

from lightseg.deploy.extras import installed

# CPU features that decide which reduced precision pays (recorded with every benchmark result).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` this CPU has (from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return ()
    return tuple(f for f in CPU_FEATURES if f in flags)


def default_cpu_path() -> tuple[str, str]:
    """(runtime, precision) run on a CPU when none is asked for: the fastest path that needs only
    the weights and whose accuracy cost on CamVid test was measured at <= 0.1 mIoU (docs/deploy.md,
    "Which path by default"). OpenVINO bf16 where the CPU has AMX-BF16 (about 2x ONNX Runtime fp32;
    without AMX, bf16 was slower than fp32); else ONNX Runtime fp32 on the optimised export (exact);
    without onnxruntime, eager torch with BN folded."""
    if "amx_bf16" in cpu_flags() and installed("openvino"):
        return "openvino", "bf16"
    if installed("onnxruntime"):
        return "onnxruntime", "fp32"
    return "torch", "fp32"
