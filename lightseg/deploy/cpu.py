"""The CPU a model runs on: its name, features and cores (recorded with every benchmark result and
part of the key of a measured default path, :mod:`lightseg.deploy.autoselect`), and how many
inferences a server runs at once on it."""

from __future__ import annotations

import functools
import os
import platform

# CPU features that decide which reduced precision pays (recorded with every benchmark result).
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# Flags (x86 "flags", Arm "Features") that give a CPU bfloat16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(model name, every flag) from /proc/cpuinfo; (the platform's processor name, ()) elsewhere."""
    name, flags = "", ()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = tuple(sorted(value.split()))
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def cpu_name() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> tuple[str, ...]:
    """The :data:`CPU_FEATURES` this CPU has (from /proc/cpuinfo; empty where there is none)."""
    have = set(_cpuinfo()[1])
    return tuple(f for f in CPU_FEATURES if f in have)


def cpu_identity() -> dict[str, object]:
    """The CPU model and all of its flags: another CPU, or the same model with other instructions
    enabled (VMs differ), is another machine to a measured default path."""
    name, flags = _cpuinfo()
    return {"cpu": name, "machine": platform.machine(), "flags": list(flags)}


def has_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16, AMX-BF16 or Arm BF16)."""
    return any(f in BF16_FLAGS for f in _cpuinfo()[1])


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def serve_streams(threads: int | None = None) -> int:
    """Inferences a server runs at once on ``threads`` CPU threads (default: every core): one per
    thread up to 4, then one per two threads, at most 8. Each runs on its share of the threads;
    small streams waste less of each core on synchronisation than one wide inference, and several
    keep the cores busy while a request's labels are computed and encoded."""
    n = int(threads or available_cores())
    return max(1, min(8, n if n <= 4 else n // 2))
