"""Inputs as they come: peak memory and time for a CamVid image (480x360), a 12 MP phone photo
(4032x3024 JPEG), a 4K video frame (3840x2160) and an 8 MP upload (2896x2896), on the default path.

Three ways in, each measured in processes of its own (peak resident memory = the process's VmHWM,
or ``ru_maxrss`` of a finished child):

A. ``Segmenter`` in a fresh process per input: seconds per image (median of ``--runs``, after a
   warm-up call at that size) and the peak memory of the process.
B. ``lightseg predict MODEL IMAGE`` as a user runs it: wall time and peak memory of the command
   (model load, first-call export of the default path and the written PNGs included).
C. ``lightseg serve MODEL --max-batch 4`` with ``--clients`` concurrent 8 MP PNG uploads, then 12 MP
   JPEG uploads: requests/s,
   answers by status and the server's peak memory over the run.

The inputs are a CamVid test image, and that image enlarged (bicubic) to each size: real content,
so the labels have real boundaries. Usage:

    LIGHTSEG_DATA=../shared/data python benchmarks/inputs_memory.py [--model cgrseg_t] [--runtime R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import write_results  # noqa: E402

DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data")) / "camvid"
SIZES = {
    "camvid 480x360 png": (480, 360, "png"),
    "phone 4032x3024 jpg": (4032, 3024, "jpg"),
    "4k frame 3840x2160 png": (3840, 2160, "png"),
    "upload 2896x2896 png": (2896, 2896, "png"),
}

SEGMENTER_CHILD = r"""
import json, statistics, sys, time
import numpy as np
from PIL import Image
import lightseg
from lightseg.deploy.bench import peak_rss_mb
from lightseg.deploy.media import read_image
from pathlib import Path

ckpt, image, runtime, runs = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seg = lightseg.Segmenter(ckpt, **({} if runtime == "default" else {"runtime": runtime}))
t = time.perf_counter(); arr = read_image(image); decode = time.perf_counter() - t
seg(arr)  # warm-up: first-call export of the default path at this input size
times = []
for _ in range(runs):
    t = time.perf_counter(); labels = seg(arr); times.append(time.perf_counter() - t)
print(json.dumps({"decode_s": round(decode, 3), "median_s": round(statistics.median(times), 3),
                  "peak_mb": peak_rss_mb(), "runtime": f"{seg.runtime} {seg.precision}",
                  "input_size": list(seg.input_size(*arr.shape[:2])), "labels": str(labels.dtype)}))
"""


def make_inputs(folder: Path) -> dict[str, Path]:
    src = Image.open(sorted((DATA / "test").glob("*.png"))[0]).convert("RGB")
    out = {}
    for label, (w, h, fmt) in SIZES.items():
        path = folder / f"{w}x{h}.{fmt}"
        img = src if (w, h) == src.size else src.resize((w, h), Image.BICUBIC)
        img.save(path, quality=90) if fmt == "jpg" else img.save(path)
        out[label] = path
    return out


def run_child(argv: list[str]) -> str:
    """The stdout of a child process that must succeed."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed:\n{done.stderr[-2000:]}")
    return done.stdout


def segmenter_part(ckpt: Path, inputs: dict[str, Path], runtime: str, runs: int) -> dict:
    rows = {}
    for label, path in inputs.items():
        out = run_child([sys.executable, "-c", SEGMENTER_CHILD, str(ckpt), str(path), runtime, str(runs)])
        rows[label] = json.loads(out.strip().splitlines()[-1])
        print(f"A {label:24s} {rows[label]}", file=sys.stderr, flush=True)
    return rows


def predict_part(ckpt: Path, inputs: dict[str, Path], runtime: str, folder: Path) -> dict:
    rows = {}
    for label, path in inputs.items():
        argv = [sys.executable, "-m", "lightseg.cli", "predict", str(ckpt), str(path), "--out", str(folder / "out"),
                "--no-progress"] + ([] if runtime == "default" else ["--runtime", runtime])  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, _, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        out, err = proc.stdout.read(), proc.stderr.read()
        rows[label] = {"wall_s": round(wall, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1), "ok": "wrote" in out,
                       "said": out.strip().splitlines()[-1] if out.strip() else err[-300:]}  # fmt: skip
        print(f"B {label:24s} {rows[label]}", file=sys.stderr, flush=True)
    return rows


def _memory_mb(pid: int) -> dict[str, float]:
    """Resident and peak resident MiB of a process (VmRSS, VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    field = {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}
    return {"rss": round(field["VmRSS"], 1), "peak": round(field["VmHWM"], 1)}


def serve_part(ckpt: Path, upload: Path, runtime: str, clients: int, requests: int) -> dict:
    import httpx

    port = 18000 + os.getpid() % 1000
    argv = [sys.executable, "-m", "lightseg.cli", "serve", str(ckpt), "--port", str(port), "--max-batch", "4",
            "--no-access-log"] + ([] if runtime == "default" else ["--runtime", runtime])  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lightseg serve did not start:\n{server.stdout.read()[-2000:]}")
            time.sleep(0.5)
        body = upload.read_bytes()
        with httpx.Client(base_url=base, timeout=600) as c:  # warm-up: the first-call export
            c.post("/v1/segment", content=body)
        warm = _memory_mb(server.pid)
        # The peak of the load alone: VmHWM restarts from the current resident size.
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")

        def one(_):
            t = time.perf_counter()
            with httpx.Client(base_url=base, timeout=600) as c:
                r = c.post("/v1/segment", content=body)
            return r.status_code, time.perf_counter() - t

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
        load = _memory_mb(server.pid)
        latencies = sorted(s for code, s in answers if code == 200)
        by_status: dict[str, int] = {}
        for code, _ in answers:
            by_status[str(code)] = by_status.get(str(code), 0) + 1
        row = {
            "clients": clients,
            "requests": requests,
            "by_status": by_status,
            "requests_per_s": round(len(answers) / wall, 2),
            "p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
            "server_after_warmup_mb": warm["rss"],
            "server_peak_through_warmup_mb": warm["peak"],
            "server_peak_through_load_mb": load["peak"],
            "server_after_load_mb": load["rss"],
        }
        print(f"C {row}", file=sys.stderr, flush=True)
        return row
    finally:
        server.terminate()
        server.wait(timeout=60)


def markdown(env: dict, args: argparse.Namespace, result: dict) -> str:
    """The results as tables for the docs."""
    lines = [
        f"# Inputs as they come: {args.model}, {args.runtime} path, {env.get('cpu')}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {env.get('torch')}, {torch.get_num_threads()} threads; 1-minute load average "
        f"{result['load']['before']:.1f} before, {result['load']['after']:.1f} after. Random weights, 11 classes (labels change almost everywhere: the "
        f"slowest label computation). {args.note}",
        "",
        "| input | Segmenter: decode s | segment s (median) | peak MB | predict: wall s | peak MB | run at |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, a in result["segmenter"].items():
        b = result["predict"][label]
        size = "x".join(map(str, a["input_size"]))
        lines.append(
            f"| {label} | {a['decode_s']} | {a['median_s']} | {a['peak_mb']} | {b['wall_s']} | {b['peak_mb']} | "
            f"{size}, {a['runtime']} |"
        )
    lines += [
        "",
        "| serve at --max-batch 4 | answers | requests/s | p50 s | p99 s | peak MB (load) | "
        "after warm-up MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["serve"]:
        lines.append(
            f"| {row['upload']}: {row['clients']} clients, {row['requests']} requests | {row['by_status']} | {row['requests_per_s']} | "
            f"{row['p50_s']} | {row['p99_s']} | {row['server_peak_through_load_mb']} | {row['server_after_warmup_mb']} |"
        )
    lines += ["", f"Summary: `{json.dumps(result['summary'])}`", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument("--runtime", default="default", help="'default' (the path predict chooses) or a runtime")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, nargs="+", default=[16, 48], help="one serve run per count")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--note", default="")
    args = p.parse_args()
    import lightseg
    from lightseg.deploy.bench import environment

    with tempfile.TemporaryDirectory(prefix="lightseg-inputs-") as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        model = lightseg.create_model(args.model, num_classes=11)
        ckpt = lightseg.save_weights(model, folder / "model.safetensors")  # random weights, 11 classes
        inputs = make_inputs(folder)
        load = {"before": os.getloadavg()[0]}
        result = {
            "segmenter": segmenter_part(ckpt, inputs, args.runtime, args.runs),
            "predict": predict_part(ckpt, inputs, args.runtime, folder),
            "serve": [
                {"upload": label}
                | serve_part(ckpt, inputs[label], args.runtime, n, n * args.requests_per_client)
                for label in ("upload 2896x2896 png", "phone 4032x3024 jpg")
                for n in args.clients
            ],
        }
        load["after"] = os.getloadavg()[0]
        result["load"] = load
    env = environment(torch.get_num_threads()) | {"loadavg_1min": load, "note": args.note}
    seg = result["segmenter"]
    small, phone = seg["camvid 480x360 png"], seg["phone 4032x3024 jpg"]
    result["summary"] = {
        # decoded and segmented, against the same for the 480x360 image; then the segmentation alone
        "phone_vs_camvid_time": round(
            (phone["decode_s"] + phone["median_s"]) / (small["decode_s"] + small["median_s"]), 2
        ),
        "phone_vs_camvid_segment_time": round(phone["median_s"] / small["median_s"], 2),
        "phone_vs_camvid_predict_wall": round(
            result["predict"]["phone 4032x3024 jpg"]["wall_s"]
            / result["predict"]["camvid 480x360 png"]["wall_s"],
            2,
        ),
        "phone_predict_peak_mb": result["predict"]["phone 4032x3024 jpg"]["peak_mb"],
        "serve_peak_mb": {
            f"{row['upload']}, {row['clients']} clients": max(
                row["server_peak_through_warmup_mb"], row["server_peak_through_load_mb"]
            )
            for row in result["serve"]
        },
    }
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("cpu", platform.machine()))).strip("-").lower()[:40]
    doc = {"environment": env, "config": vars(args), **result}
    write_results(f"inputs_memory_{args.model}_{args.runtime}_{cpu}", doc, markdown(env, args, result))
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
