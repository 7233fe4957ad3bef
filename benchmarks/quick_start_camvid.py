"""The CPU quick start of docs/custom-data.md, measured: `lightseg train --preset quick` on CamVid
480x360 laid out as your own folder, then its mIoU on the 233 test images.

    python benchmarks/quick_start_camvid.py [--section.field value ...]

The folder is made in a temporary directory from ../shared/data/camvid (symbolic links, nothing
copied): images/{train,val,test} + masks/{train,val,test} + classes.json with CamVid's names and
colours; value 11 marks unlabelled pixels (--data.ignore_index 11). The run is the documented
command, in this process, with extra overrides appended. Recorded: wall time of the training
command (model build, 367-image training, its final evaluation on the 101 val images), the CPU
seconds of this process and its loader workers, the 1-minute load average before and after (the
machine may be shared), test mIoU and per-class IoU. Output:
benchmarks/results/quick_start_camvid_<hardware>.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from lightseg.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_camvid import cpu_seconds, hardware  # noqa: E402

DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data")) / "camvid"
NAMES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
COLOURS = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]  # fmt: skip


def camvid_folder(dest: Path) -> Path:
    for split in ("train", "val", "test"):
        for kind, source in (("images", split), ("masks", f"{split}annot")):
            (dest / kind / split).mkdir(parents=True)
            for p in sorted((DATA / source).glob("*.png")):
                (dest / kind / split / p.name).symlink_to(p)
    rows = [{"name": n, "color": c} for n, c in zip(NAMES, COLOURS)]
    (dest / "classes.json").write_text(json.dumps(rows))
    return dest


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        camvid_folder(Path(tmp) / "camvid")
        command = ["train", "--preset", "quick", "--data.root", "camvid", "--data.ignore_index", "11", *extra]
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        assert cli_main(command) == 0
        wall, cpu = time.perf_counter() - t0, cpu_seconds()
        load_after = os.getloadavg()[0]
        run = Path("runs/frm_effnetlite0_camvid")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            cli_main(["eval", "--weights", str(run / "last.pt"), "--split", "test", "--format", "json"])
        test = json.loads(printed.getvalue())
        config = (run / "config.yaml").read_text()
    out = {
        "dataset": "CamVid 480x360 as a folder (train 367 / val 101 / test 233)",
        "command": "lightseg " + " ".join(command),
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "load_average_1min": {"before": load_before, "after": load_after},
        "test_mIoU": test["mIoU"],
        "test_mAcc": test["mAcc"],
        "test_aAcc": test["aAcc"],
        "test_per_class_IoU": {k: v["IoU"] for k, v in test["per_class"].items()},
        "hardware": {"device": hardware(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "config_yaml": config,
    }
    path = ROOT / "benchmarks" / "results" / f"quick_start_camvid_{hardware()}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"quick start: {wall / 60:.1f} min, test mIoU {test['mIoU']:.2f} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
