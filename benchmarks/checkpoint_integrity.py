"""Checkpoints that cannot lie: what the SHA-256 digest costs on a real training checkpoint, and random
bit flips in saved files, every one of which must be refused with an error naming the file.

    python benchmarks/checkpoint_integrity.py [--model cgrseg_t] [--flips 50] [--repeats 5] [--seed 0]

1. Cost. A real ``last.pt`` (``lightseg.training.train``: the model, one AdamW step on synthetic
   64x64 crops, everything a resume needs) is written with ``atomic_save`` (torch.save through the
   hashing writer, fsync, rename) and the same way without the digest (what lightseg did before),
   alternately; then read with ``load_train_checkpoint`` (verify, then ``torch.load``) against a plain
   ``torch.load``, and the verification alone. Medians of ``--repeats``.
2. Bit flips. ``--flips`` single-bit flips in copies of that ``last.pt`` and of the model's
   ``save_weights`` safetensors file. Each flip picks a region of the file (uniformly, so that the
   small structural regions are hit as often as the tensor data), a byte in it and a bit. Regions are
   read from the formats' own definitions: for the zip archive ``torch.save`` writes, the pickle
   record, the tensor records, the other records, the local file headers, the data descriptors, the
   central directory, the end records and the archive comment (the digest); for safetensors the header-length field,
   the JSON header (with the digest entry on its own) and the tensor data. A flip is *detected* when
   every lightseg loader of that file raises ``CheckpointError`` whose message names the file: for
   ``last.pt`` ``load_train_checkpoint`` (resume, eval) and ``lightseg.load_checkpoint`` (predict,
   export, serve); for the safetensors file ``lightseg.load_checkpoint`` and ``load_weights``. For
   comparison, what a plain ``torch.load`` / ``safetensors`` read (lightseg before the digest) makes of
   the same damaged file: refused, loaded identical, or loaded with different content.

Writes ``benchmarks/results/checkpoint_integrity_<cpu>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightseg import create_model, load_checkpoint, load_weights, save_weights  # noqa: E402
from lightseg.config import config_from_dict  # noqa: E402
from lightseg.digest import verify  # noqa: E402
from lightseg.errors import CheckpointError  # noqa: E402
from lightseg.training import train  # noqa: E402
from lightseg.training.checkpoints import atomic_save, load_train_checkpoint  # noqa: E402

# --------------------------------------------------------------------------------------------------
# The regions of a file, from the formats' definitions


def zip_regions(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges ``[start, end)`` of each part of a ``torch.save`` zip archive (PKWARE APPNOTE):
    records' data by kind, local file headers, the data descriptors after each record's data,
    central directory, end records (zip64 end record, its locator, the end record) and the archive
    comment. They cover the file exactly."""
    data = path.read_bytes()
    regions: dict[str, list[tuple[int, int]]] = {}

    def add(name: str, start: int, end: int) -> None:
        if end > start:
            regions.setdefault(name, []).append((start, end))

    with zipfile.ZipFile(path) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
        comment = len(z.comment)
        cd_start = z.start_dir
    starts = [i.header_offset for i in infos] + [cd_start]
    for info, following in zip(infos, starts[1:]):
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
        body = info.header_offset + 30 + name_len + extra_len
        add("zip local headers", info.header_offset, body)
        kind = (
            "pickle"
            if info.filename.endswith("/data.pkl")
            else "tensor data"
            if "/data/" in info.filename
            else "other records"
        )
        add(kind, body, body + info.compress_size)
        add("zip data descriptors", body + info.compress_size, following)  # CRC and sizes after the data
    end_record = len(data) - comment - 22
    (locator,) = struct.unpack("<Q", data[end_record - 20 + 8 : end_record - 20 + 16])  # zip64 end offset
    add("central directory", cd_start, locator)
    add("end records", locator, end_record + 22)
    add("digest comment: tag", end_record + 22, len(data) - 64 if comment else len(data))
    add("digest comment: hex", len(data) - 64 if comment else len(data), len(data))
    covered = sum(e - s for spans in regions.values() for s, e in spans)
    assert covered == len(data), f"regions cover {covered} of {len(data)} bytes"
    return regions


def safetensors_regions(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges of a safetensors file: the 8-byte header length, the JSON header (the digest's
    hex digits apart) and the tensor data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + n]
    key = b'"lightseg_sha256":"'
    at = header.find(key)
    regions = {"header length": [(0, 8)], "tensor data": [(8 + n, len(data))]}
    if at < 0:
        regions["JSON header"] = [(8, 8 + n)]
    else:
        hex_start = 8 + at + len(key)
        regions["JSON header"] = [(8, hex_start), (hex_start + 64, 8 + n)]
        regions["digest hex"] = [(hex_start, hex_start + 64)]
    return regions


def pick(regions: dict[str, list[tuple[int, int]]], rng: random.Random) -> tuple[str, int, int]:
    """(region, byte offset, bit): a region uniformly, then a byte in it uniformly, then a bit."""
    name = rng.choice(sorted(regions))
    spans = regions[name]
    total = sum(e - s for s, e in spans)
    k = rng.randrange(total)
    for s, e in spans:
        if k < e - s:
            return name, s + k, rng.randrange(8)
        k -= e - s
    raise AssertionError


def flip(src: Path, dst: Path, offset: int, bit: int) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def lightseg_outcome(load, path: Path) -> str:
    """``detected: <first words>`` for a CheckpointError naming the file; anything else is a failure."""
    try:
        load(path)
    except CheckpointError as e:
        message = str(e)
        if str(path) not in message:
            return f"FAILED: error without the file: {message[:120]}"
        why = message.split(str(path), 1)[1].lstrip(": ")
        return "detected: " + " ".join(why.split()[:6])
    except Exception as e:
        return f"FAILED: {type(e).__name__}: {str(e)[:120]}"
    return "FAILED: loaded"


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def plain_torch_load(path: Path):
    return torch.load(str(path), map_location="cpu", weights_only=True)


def plain_safetensors_load(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {"tensors": {k: f.get_tensor(k) for k in f.keys()}, "metadata": f.metadata()}  # noqa: SIM118


def plain_outcome(load, path: Path, pristine) -> str:
    try:
        got = load(path)
    except Exception:
        return "refused"
    return "loaded, identical content" if same(got, pristine) else "loaded, DIFFERENT content"


# --------------------------------------------------------------------------------------------------
# A real training checkpoint


class Synthetic(torch.utils.data.Dataset):
    num_classes, ignore_index = 11, 255
    classes = tuple(f"c{i}" for i in range(11))

    def __len__(self):
        return 8

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, 0)
        g = np.random.default_rng(1000 * i + (seed or 0) % 1000)
        return {
            "image": torch.from_numpy(g.normal(0, 1, (3, 64, 64)).astype(np.float32)),
            "mask": torch.from_numpy(g.integers(0, 11, (64, 64))),
            "meta": {"image_path": f"synthetic{i}"},
        }


def training_checkpoint(model_name: str, folder: Path) -> Path:
    cfg = config_from_dict(
        {
            "model": {"name": model_name},
            "data": {"num_workers": 0, "val_split": "", "crop_size": [64, 64]},
            "train": {"iters": 1, "batch_size": 2, "log_interval": 1, "ckpt_interval": 1},
            "schedule": {"warmup_iters": 0},
            "eval": {"interval": 0},
            "run": {"work_dir": str(folder), "tensorboard": False},
        }
    )
    torch.manual_seed(0)
    train(cfg, model=create_model(model_name, num_classes=11), train_set=Synthetic())
    return folder / "last.pt"


def _write_without_digest(obj, path: Path) -> None:
    """The write before the digest: torch.save to <path>.tmp, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cost(ckpt_path: Path, folder: Path, repeats: int) -> dict:
    obj = load_train_checkpoint(ckpt_path)
    a, b = folder / "with_digest.pt", folder / "without_digest.pt"
    times: dict[str, list[float]] = {k: [] for k in ("write", "write_plain", "read", "read_plain", "verify")}
    for _ in range(repeats):
        times["write_plain"].append(timed(lambda: _write_without_digest(obj, b)))
        times["write"].append(timed(lambda: atomic_save(obj, a)))
        times["read_plain"].append(timed(lambda: plain_torch_load(b)))
        times["read"].append(timed(lambda: load_train_checkpoint(a)))
        times["verify"].append(timed(lambda: verify(a)))
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    return {
        "file_bytes": a.stat().st_size,
        "file_mb": round(a.stat().st_size / 1e6, 1),
        "median_s": med,
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "write_overhead_s": round(med["write"] - med["write_plain"], 4),
        "read_overhead_s": round(med["read"] - med["read_plain"], 4),
    }


# --------------------------------------------------------------------------------------------------


def trials(kind: str, src: Path, folder: Path, n: int, rng: random.Random, loaders, plain, regions) -> list:
    pristine = plain(src)
    out = []
    for i in range(n):
        region, offset, bit = pick(regions, rng)
        damaged = folder / f"damaged_{kind}_{i:02d}{src.suffix}"
        flip(src, damaged, offset, bit)
        results = {name: lightseg_outcome(load, damaged) for name, load in loaders.items()}
        out.append(
            {
                "trial": i + 1,
                "region": region,
                "offset": offset,
                "bit": bit,
                "lightseg": results,
                "detected": all(r.startswith("detected") for r in results.values()),
                "plain_load": plain_outcome(plain, damaged, pristine),
            }
        )
        damaged.unlink()
        print(f"{kind} {i + 1:2d}/{n}: {region:22s} @{offset:>10d} bit {bit}: {out[-1]['plain_load']}; "
              f"lightseg {'detected' if out[-1]['detected'] else 'MISSED'}", flush=True)  # fmt: skip
    return out


def summary(rows: list) -> dict:
    by_region: dict[str, dict[str, int]] = {}
    for r in rows:
        d = by_region.setdefault(r["region"], {"flips": 0, "detected": 0, "plain_loaded_different": 0,
                                               "plain_loaded_identical": 0, "plain_refused": 0})  # fmt: skip
        d["flips"] += 1
        d["detected"] += r["detected"]
        key = {"refused": "plain_refused", "loaded, identical content": "plain_loaded_identical"}.get(
            r["plain_load"], "plain_loaded_different"
        )
        d[key] += 1
    return {"flips": len(rows), "detected": sum(r["detected"] for r in rows), "by_region": by_region}


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(result: dict) -> str:
    c = result["cost"]
    m = c["median_s"]
    lines = [
        "# Checkpoint digest: cost and bit flips",
        "",
        f"{result['hardware']}, torch {result['torch']}, {result['threads']} threads, files on "
        f"{result['filesystem']}; `{result['command']}` ({result['date']}; load average "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])} at the end: a shared machine).",
        "",
        f"## Cost on a {c['file_mb']} MB training checkpoint ({result['model']}, model + AdamW state)",
        "",
        "| | with the digest | without | difference |",
        "|---|---|---|---|",
        f"| write (torch.save, fsync, rename) | {m['write']:.3f} s | {m['write_plain']:.3f} s | "
        f"{c['write_overhead_s']:+.3f} s |",
        f"| read (load_train_checkpoint vs torch.load) | {m['read']:.3f} s | {m['read_plain']:.3f} s | "
        f"{c['read_overhead_s']:+.3f} s |",
        f"| verification alone (SHA-256 of the file) | {m['verify']:.3f} s | | |",
        "",
        f"Medians of {result['repeats']} alternating repeats.",
        "",
    ]
    for kind in ("training checkpoint", "safetensors"):
        s = result["bit_flips"][kind]["summary"]
        lines += [
            f"## {s['flips']} single-bit flips in a {kind} ({result['bit_flips'][kind]['file_mb']} MB): "
            f"{s['detected']} detected",
            "",
            "| region | flips | detected by lightseg | plain load: refused | loaded identical | "
            "loaded DIFFERENT |",
            "|---|---|---|---|---|---|",
        ]
        for region, d in sorted(s["by_region"].items()):
            lines.append(
                f"| {region} | {d['flips']} | {d['detected']} | {d['plain_refused']} | "
                f"{d['plain_loaded_identical']} | {d['plain_loaded_different']} |"
            )
        lines.append("")
    lines += [
        "Detected: every lightseg loader of the file raised `CheckpointError` naming the file. Plain "
        "load: `torch.load(weights_only=True)` / `safetensors.safe_open`, as lightseg read these files "
        "before the digest; identical content means the flip hit bytes the reader skips.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cgrseg_t")
    p.add_argument("--flips", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the files are written (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="ckpt-integrity-", dir=args.dir))
    try:
        ckpt = training_checkpoint(args.model, folder / "run")
        print(f"training checkpoint {ckpt}: {ckpt.stat().st_size / 1e6:.1f} MB", flush=True)
        result_cost = cost(ckpt, folder, args.repeats)
        print(json.dumps(result_cost["median_s"]), flush=True)
        model = create_model(args.model, num_classes=11)
        weights = save_weights(model, folder / f"{args.model}.safetensors")
        pt_loaders = {"load_train_checkpoint": load_train_checkpoint, "load_checkpoint": load_checkpoint}
        st_loaders = {
            "load_checkpoint": load_checkpoint,
            "load_weights": lambda path: load_weights(create_model(args.model, num_classes=11), path),
        }
        flips = {
            "training checkpoint": (ckpt, pt_loaders, plain_torch_load, zip_regions(ckpt)),
            "safetensors": (weights, st_loaders, plain_safetensors_load, safetensors_regions(weights)),
        }
        bit_flips = {}
        for kind, (src, loaders, plain, regions) in flips.items():
            rows = trials(kind.split()[0], src, folder, args.flips, rng, loaders, plain, regions)
            bit_flips[kind] = {
                "file_mb": round(src.stat().st_size / 1e6, 1),
                "regions_bytes": {k: sum(e - s for s, e in v) for k, v in regions.items()},
                "summary": summary(rows),
                "trials": rows,
            }
        fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout.split("\n")[1]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    hardware = f"{cpu_name()}, {os.cpu_count()} cores"
    result = {
        "what": "cost of the SHA-256 digest on a real training checkpoint, and random single-bit flips in "
        "saved files (every one must be refused naming the file)",
        "command": "python benchmarks/checkpoint_integrity.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "repeats": args.repeats,
        "seed": args.seed,
        "cost": result_cost,
        "bit_flips": bit_flips,
        "all_detected": all(b["summary"]["detected"] == b["summary"]["flips"] for b in bit_flips.values()),
        "hardware": hardware,
        "filesystem": " ".join(fs.split()[1:2]) or "unknown",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
    }
    tag = cpu_name().lower().replace("(r)", "").replace(" ", "-").strip("-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"checkpoint_integrity_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"checkpoint_integrity_{tag}.md").write_text(markdown(result))
    print(markdown(result))
    sys.exit(0 if result["all_detected"] else 1)


if __name__ == "__main__":
    main()
