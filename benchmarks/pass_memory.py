"""How much memory one inference pass takes, per model and runtime: the calibration behind
``lightseg.deploy.memory`` (the estimate that keeps predict and serve inside their budget).

For every registered segmentor and every runtime it runs one pass at a few input sizes, each in a
fresh process, and records the rise of the process's peak resident memory (VmHWM) over what it held
with the model loaded and warmed up at a small size: activations, the runtime's work buffers and, for
ONNX Runtime and OpenVINO, the session of that input size. It fits

    bytes(P) = per_pixel * P + per_pixel2 * P**2        (P = input pixels, batch 1)

by least squares with both coefficients >= 0: the P**2 term is attention over all tokens
(EfficientFormerV2's last stages), the P term everything convolutional. The fit and the raw
measurements are written to ``lightseg/deploy/pass_memory.json`` (read by the package) and to
``benchmarks/results/pass_memory_<cpu>.json``.

    LIGHTSEG_DATA=../shared/data python benchmarks/pass_memory.py [--models cgrseg_t ...] [--runtimes torch onnxruntime openvino]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((256, 256), (512, 512), (768, 768), (1024, 1024))
NUM_CLASSES = 150  # the widest classifier of the published recipes

CHILD = r"""
import json, sys, torch
import lightseg
from lightseg.deploy.bench import peak_rss_mb
from lightseg.deploy.runners import build_runner

name, runtime, h, w, k, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
torch.set_num_threads(2)
model = lightseg.create_model(name, num_classes=k).eval()
runner = build_runner(model, runtime=runtime, precision="fp32", threads=2, cache_dir=cache)
d = model.meta.size_divisor
with torch.no_grad():
    runner(torch.randn(1, 3, 2 * d, 2 * d))  # warm: libraries, pools and a small session loaded
    if runtime != "torch":
        runner.file_runner(h, w)  # the file is exported before this process (cache): load only
    base = peak_rss_mb()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = peak_rss_mb()
    runner(torch.randn(1, 3, h, w))
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb(), "base_mb": base}))
"""


def measure(name: str, runtime: str, size: tuple[int, int], cache: str) -> float:
    """MiB one pass at ``size`` adds to the peak of a process that holds the warmed-up model."""
    if runtime != "torch":  # export in a process of its own first: exporting is not the pass
        prep = (
            "import sys, torch, lightseg\n"
            "from lightseg.deploy.runners import build_runner\n"
            "torch.manual_seed(0)\n"
            f"m = lightseg.create_model({name!r}, num_classes={NUM_CLASSES}).eval()\n"
            f"build_runner(m, runtime={runtime!r}, precision='fp32', cache_dir={cache!r}).file_runner(*{size!r})\n"
        )
        subprocess.run([sys.executable, "-c", prep], check=True, capture_output=True)
    argv = [sys.executable, "-c", CHILD, name, runtime, *map(str, size), str(NUM_CLASSES), cache]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name} {runtime} {size}: {done.stderr[-2000:]}")
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    return max(rec["peak_mb"] - rec["before_mb"], 0.0)


def fit(pixels: list[int], mib: list[float]) -> tuple[float, float]:
    """(bytes per pixel, bytes per pixel squared), both >= 0, least squares."""
    p = np.asarray(pixels, np.float64)
    y = np.asarray(mib, np.float64) * 2**20
    a = np.stack([p, p**2], 1)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    if coef[1] < 0:  # linear only
        coef = np.array([max(float(p @ y / (p @ p)), 0.0), 0.0])
    elif coef[0] < 0:  # quadratic only
        coef = np.array([0.0, max(float((p**2) @ y / ((p**2) @ (p**2))), 0.0)])
    return float(coef[0]), float(coef[1])


def main() -> int:
    import lightseg

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=lightseg.list_models(kind="segmentor"))
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "openvino"])
    args = p.parse_args()
    out_path = ROOT / "lightseg" / "deploy" / "pass_memory.json"
    table = json.loads(out_path.read_text()) if out_path.is_file() else {"models": {}}
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="lightseg-passmem-") as cache:
        for name in args.models:
            for runtime in args.runtimes:
                mib = [measure(name, runtime, s, cache) for s in SIZES]
                pixels = [h * w for h, w in SIZES]
                b, c = fit(pixels, mib)
                table["models"].setdefault(name, {})[runtime] = {"per_pixel": round(b, 2), "per_pixel2": c}
                raw[f"{name} {runtime}"] = {f"{h}x{w}": round(m, 1) for (h, w), m in zip(SIZES, mib)}
                print(f"{name:26s} {runtime:12s} {raw[f'{name} {runtime}']} -> {b:.1f} B/px + {c:.3g} B/px^2",
                      flush=True)  # fmt: skip
    cpu = platform.processor() or platform.machine()
    table["measured"] = {
        "by": "benchmarks/pass_memory.py",
        "cpu": cpu,
        "torch": torch.__version__,
        "num_classes": NUM_CLASSES,
        "threads": 2,
        "sizes": [list(s) for s in SIZES],
    }
    out_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    results = ROOT / "benchmarks" / "results" / "pass_memory_cpu.json"
    results.write_text(json.dumps({"measured": table["measured"], "peak_rise_mib": raw}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
