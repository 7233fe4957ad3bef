"""Crash-safety soak: kill a short CamVid training at random instants, some of them while it writes a
checkpoint, run the same command again after every kill, and compare the end with an uninterrupted run.

    OMP_NUM_THREADS=1 python benchmarks/soak.py [--kills 24] [--iters 80] [--data-root DIR]

Every launch is ``lightseg train recipes/cgrseg-t_camvid_smoke.yaml`` (CGRSeg-T from scratch, 64x64
crops, batch 2, a checkpoint every 4 iterations) in its own process, killed with SIGKILL either at a
random instant (during start-up, or a random fraction of a step after a random iteration) or the
instant its n-th checkpoint write has begun (``last.pt.tmp`` exists). After each
kill the checkpoint on disk must load and never go backwards; the next launch must say it resumed from
exactly that checkpoint. At the end the final checkpoint (model, optimizer, scheduler, RNG) is compared
tensor by tensor with an uninterrupted run, and the training log record by record (every iteration
once, the same losses). Writes ``benchmarks/results/soak_<hardware>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightseg.training.checkpoints import load_train_checkpoint  # noqa: E402

RECIPE = ROOT / "recipes" / "cgrseg-t_camvid_smoke.yaml"
RESUMED = re.compile(r"resumed from (\S+) at iteration (\d+)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def command(work_dir: Path, args: argparse.Namespace) -> list[str]:
    overrides = {
        "data.root": args.data_root, "data.crop_size": "[64,64]", "data.scale": "[240,180]",
        "data.val_split": '""', "train.iters": args.iters, "train.batch_size": 2, "train.log_interval": 1,
        "train.ckpt_interval": 4, "run.tensorboard": "false", "run.seed": args.seed, "run.work_dir": work_dir,
    }  # fmt: skip
    cmd = [sys.executable, "-m", "lightseg.cli", "train", str(RECIPE)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def saved_iteration(work_dir: Path) -> int | None:
    last = work_dir / "last.pt"
    return load_train_checkpoint(last)["iteration"] if last.is_file() else None


def writing(tmp: Path, since_ns: int) -> bool:
    """A checkpoint write of the current process is under way: ``last.pt.tmp`` exists and was written
    since it started (a killed predecessor may have left an older one)."""
    try:
        return tmp.stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


def wait_for_writes(proc: subprocess.Popen, tmp: Path, n: int, since_ns: int, timeout: float) -> bool:
    """Poll until the n-th checkpoint write of this process has begun; False if it ended first."""
    seen, before, end = 0, False, time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        now = writing(tmp, since_ns)
        if now and not before:
            seen += 1
            if seen == n:
                return True
        before = now
        time.sleep(0.0002)
    return False


def latest_iteration(work_dir: Path) -> int:
    try:
        return json.loads((work_dir / "log.jsonl").read_text().splitlines()[-1])["iter"]
    except (OSError, IndexError, ValueError, KeyError):
        return 0


def wait_for_iteration(
    proc: subprocess.Popen, log: Path, work_dir: Path, target: int, timeout: float
) -> bool:
    """Poll until this process has logged iteration ``target`` (after it has cut the log back to its
    resumed iteration, which it announces before training); False if it ended first."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if "run directory:" in log.read_text() and latest_iteration(work_dir) >= target:
            return True
        time.sleep(0.002)
    return False


def train_records(work_dir: Path) -> list[dict]:
    lines = (work_dir / "log.jsonl").read_text().splitlines()
    return [{k: r[k] for k in ("iter", "loss", "lr")} for r in map(json.loads, lines) if r["kind"] == "train"]


def compare(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ (tensors bit for bit), recursively."""
    diff = []
    for k in sorted(set(a) | set(b), key=str):
        x, y, name = a.get(k), b.get(k), f"{prefix}{k}"
        if isinstance(x, dict) and isinstance(y, dict):
            diff += compare(x, y, name + ".")
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.shape != y.shape or not torch.equal(x, y):
                diff.append(name)
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            diff += compare(dict(enumerate(x)), dict(enumerate(y)), name + ".")
        elif x != y:
            diff.append(name)
    return diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=24)
    p.add_argument("--iters", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    data = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data"))
    p.add_argument(
        "--data-root", default=str(data / "camvid"), help="CamVid (default: $LIGHTSEG_DATA/camvid)"
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rng = random.Random(args.seed)
    tmp_root = Path(tempfile.mkdtemp(prefix="lightseg-soak-"))
    ref_dir, soak_dir = tmp_root / "uninterrupted", tmp_root / "killed"
    print(f"runs and launch logs in {tmp_root}")

    t0 = time.perf_counter()
    ref = subprocess.run(command(ref_dir, args), capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if ref.returncode:
        sys.exit(f"the uninterrupted run failed:\n{ref.stdout[-3000:]}")
    ref_wall = time.perf_counter() - t0
    print(f"uninterrupted run: {ref_wall:.1f} s")

    events, previous, launches = [], None, 0
    while len(events) < args.kills:
        launches += 1
        log = tmp_root / f"launch{launches:03d}.log"
        since_ns = time.time_ns()
        proc = launch(command(soak_dir, args), log)
        mode = "checkpoint-write" if launches % 2 else "random"
        start = time.perf_counter()
        if mode == "random":  # during start-up, or a random fraction of a step after a random iteration
            ahead = rng.randint(0, 6)
            if ahead == 0:
                time.sleep(rng.uniform(0.2, 3.0))
                hit = proc.poll() is None
            else:
                target = (previous or 0) + ahead
                hit = wait_for_iteration(proc, log, soak_dir, target, timeout=ref_wall * 3)
                time.sleep(rng.uniform(0.0, 0.1))
                hit = hit and proc.poll() is None
        else:
            hit = wait_for_writes(proc, soak_dir / "last.pt.tmp", rng.randint(1, 2), since_ns, ref_wall * 3)
        if not hit:
            proc.wait()
            sys.exit(f"launch {launches} ended before its kill (status {proc.returncode}); use more --iters")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        during_write = writing(soak_dir / "last.pt.tmp", since_ns)
        saved = saved_iteration(soak_dir)  # must load: the kill never leaves a broken last.pt
        resumed = RESUMED.search(log.read_text())
        events.append({
            "launch": launches, "mode": mode, "after_s": round(time.perf_counter() - start, 3),
            "during_checkpoint_write": during_write, "checkpoint_before": previous, "checkpoint_after": saved,
            "resumed_at": int(resumed.group(2)) if resumed else None,
        })  # fmt: skip
        print(json.dumps(events[-1]))
        if saved is not None and previous is not None and saved < previous:
            sys.exit(f"checkpoint went backwards: {previous} -> {saved}")
        previous = saved

    final_log = tmp_root / "final.log"
    final = launch(command(soak_dir, args), final_log)
    final.wait()
    if final.returncode:
        sys.exit(f"the final launch failed:\n{final_log.read_text()[-3000:]}")
    resumed = RESUMED.search(final_log.read_text())
    events.append({"launch": launches + 1, "mode": "final", "checkpoint_before": previous,
                   "resumed_at": int(resumed.group(2)) if resumed else None})  # fmt: skip

    # a launch "loaded its resume" when it said it resumed from the checkpoint the previous kill left
    due = [e for e in events if e["checkpoint_before"] is not None]
    reached = [e for e in due if e["resumed_at"] is not None]
    loaded = [e for e in reached if e["resumed_at"] == e["checkpoint_before"]]
    a = load_train_checkpoint(ref_dir / "last.pt")
    b = load_train_checkpoint(soak_dir / "last.pt")
    keys = ("model", "optimizer", "scheduler", "scaler", "iteration", "rng")
    differing = compare({k: a[k] for k in keys}, {k: b[k] for k in keys})
    ref_rec, soak_rec = train_records(ref_dir), train_records(soak_dir)
    iters = [r["iter"] for r in soak_rec]
    result = {
        "what": "SIGKILL soak of `lightseg train` (CGRSeg-T, CamVid 480x360 train split, 64x64 crops, "
        "batch 2, checkpoint every 4 iterations); every launch is the same command",
        "command": " ".join(command(Path("<work_dir>"), args)[1:]),
        "iterations": args.iters,
        "kills": len(events) - 1,
        "kills_during_checkpoint_write": sum(e.get("during_checkpoint_write", False) for e in events),
        "launches_with_a_checkpoint_to_resume": len(due),
        "launches_that_got_to_resume_before_their_kill": len(reached),
        "resumes_loaded_the_expected_checkpoint": len(loaded),
        "final_bit_exact_with_uninterrupted": not differing,
        "final_differing_entries": differing[:20],
        "log_every_iteration_once": iters == list(range(1, args.iters + 1)),
        "log_losses_equal_to_uninterrupted": soak_rec == ref_rec,
        "uninterrupted_wall_s": round(ref_wall, 1),
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "events": events,
    }
    hw = f"cpu{os.cpu_count()}-{platform.machine()}"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"soak_{hw}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k not in ("events", "command", "what")}
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    shutil.rmtree(tmp_root)  # kept (for the logs of every launch) when the soak stops on a failure


if __name__ == "__main__":
    main()
