"""A full, read-only or vanished disk: one line naming the path and what to do, no partial file left
behind, and a rerun after fixing it continues bit-exact.

Full and read-only disks are real: a small tmpfs mounted for the test (as root; skipped where mounting
is not allowed). Where no mount is possible, a writer that raises ENOSPC from inside torch.save still
exercises the path through torch's zip writer.
"""

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import DiesAfter, Killed, SyntheticSet, TinySeg, _fresh_model, tiny_cfg

from lightseg import Segmenter, create_model, save_weights
from lightseg.cli import main
from lightseg.deploy.export import export_model
from lightseg.deploy.predict import predict_paths
from lightseg.errors import StorageError
from lightseg.meta import ModelMeta
from lightseg.storage import atomic_file
from lightseg.training import checkpoints, train
from lightseg.training.checkpoints import load_train_checkpoint


class Disk:
    """A tmpfs of ``size`` mounted at ``path``: ``fill()`` it, ``free()`` it, mount it read-only."""

    def __init__(self, path: Path, size: str):
        self.path, self.filler = path, path / f".filler-{uuid.uuid4().hex}"
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")

    def fill(self) -> None:
        """Write a file until the disk is full."""
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(bytes(4096))
            except OSError as e:
                assert e.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink()

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(tmp_path):
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    disks = []

    def make(size="4m", name="disk"):
        disks.append(Disk(tmp_path / name, size))
        return disks[-1]

    yield make
    for d in disks:
        d.unmount()


class ActsAt(SyntheticSet):
    """Calls ``act()`` when sample number ``at`` is read (batch 4: sample 17 opens iteration 5)."""

    def __init__(self, at: int, act):
        super().__init__()
        self.at, self.act, self.calls = at, act, 0

    def __getitem__(self, key):
        self.calls += 1
        if self.calls == self.at:
            self.act()
        return super().__getitem__(key)


def _one_line_naming(e: StorageError, path: Path, cause: str) -> str:
    message = str(e)
    assert "\n" not in message and message.startswith("cannot write ")
    assert f" {path}: {cause}" in message, message
    return message


def _leftovers(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".partial")
    )


def _same_run(a: Path, b: Path) -> None:
    x, y = load_train_checkpoint(a), load_train_checkpoint(b)
    assert x["iteration"] == y["iteration"]
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), k
    for sx, sy in zip(x["optimizer"]["state"].values(), y["optimizer"]["state"].values()):
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
    assert x["rng"][0]["torch"].equal(y["rng"][0]["torch"])


# Where a full disk stops the run. The checkpoint at 6 when the disk fills during iteration 5 and no log
# record comes first; log.jsonl when the disk fills after the checkpoint at 60 (tmpfs allocates 4 KiB
# pages: the log fails at its next page, within 50 records, before the next checkpoint).
WHERE = {
    "last.pt": ({"train.iters": 9, "train.ckpt_interval": 3, "train.log_interval": 100}, 3),
    "log.jsonl": ({"train.iters": 120, "train.ckpt_interval": 60, "train.log_interval": 1}, 60),
}


@pytest.mark.parametrize("where", list(WHERE))
def test_a_full_disk_stops_training_in_one_line_and_the_rerun_is_bit_exact(disk, tmp_path, where):
    over, kept = WHERE[where]
    train(tiny_cfg(tmp_path / "straight", **over), model=_fresh_model(), train_set=SyntheticSet())
    d = disk()
    work = d.path / "run"
    with pytest.raises(StorageError) as e:
        train(tiny_cfg(work, **over), model=_fresh_model(), train_set=ActsAt(kept * 4 + 5, d.fill))
    message = _one_line_naming(e.value, work / where, "the disk is full")
    assert "Free some space, then run the same command again to resume" in message
    assert _leftovers(d.path) == []
    assert load_train_checkpoint(work / "last.pt")["iteration"] == kept  # intact
    for line in (work / "log.jsonl").read_text().splitlines():  # only whole records
        json.loads(line)
    d.free()
    train(tiny_cfg(work, **over), model=_fresh_model(), train_set=SyntheticSet())
    _same_run(tmp_path / "straight" / "last.pt", work / "last.pt")
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    iters = over["train.iters"]
    assert [r["iter"] for r in records if r["kind"] == "train"] == (
        [9] if where == "last.pt" else list(range(1, iters + 1))
    )


def test_a_log_record_cut_short_by_a_full_disk_is_removed_again(tmp_path, monkeypatch):
    """The kernel writes what fits and refuses the rest: the half record is cut off again."""
    real, armed = os.write, []

    def nearly_full(fd, data):
        if armed and os.readlink(f"/proc/self/fd/{fd}").endswith("log.jsonl"):
            if armed[0] == "half":
                armed[0] = "full"
                return real(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", nearly_full)
    work = tmp_path / "run"
    with pytest.raises(StorageError) as e:
        train(tiny_cfg(work), model=_fresh_model(), train_set=ActsAt(4 * 4 + 1, lambda: armed.append("half")))
    _one_line_naming(e.value, work / "log.jsonl", "the disk is full; it keeps its complete records")
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    armed.clear()
    train(tiny_cfg(work), model=_fresh_model(), train_set=SyntheticSet())
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


class FullAfter(checkpoints.SealingWriter):
    """The file torch.save writes into, on a disk that is full after 4 KiB."""

    written = 0

    def write(self, data) -> int:
        self.written += memoryview(data).nbytes
        if self.written > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_enospc_inside_torch_save_is_one_line_without_a_mount(tmp_path, monkeypatch):
    train(tiny_cfg(tmp_path, **{"train.iters": 3}), model=_fresh_model(), train_set=SyntheticSet())
    good = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(checkpoints, "SealingWriter", FullAfter)
    with pytest.raises(StorageError) as e:
        train(
            tiny_cfg(tmp_path, **{"train.iters": 9, "run.allow_changes": "[train.iters]"}),
            model=_fresh_model(),
            train_set=SyntheticSet(),
        )
    assert isinstance(e.value.__cause__, RuntimeError) and "unexpected pos" in str(e.value.__cause__)
    message = _one_line_naming(
        e.value, tmp_path / "last.pt", "the disk is full; the previous last.pt is intact"
    )
    assert message.endswith(f"resume from {tmp_path / 'last.pt'} at iteration 3.")
    assert (tmp_path / "last.pt").read_bytes() == good and _leftovers(tmp_path) == []


def test_a_read_only_run_folder_is_one_line_and_the_rerun_is_bit_exact(disk, tmp_path):
    train(
        tiny_cfg(tmp_path / "straight", **{"train.iters": 9}), model=_fresh_model(), train_set=SyntheticSet()
    )
    d = disk()
    work = d.path / "run"
    nine = {"train.iters": 9}
    with pytest.raises(Killed):  # stopped during iteration 5, after the checkpoint at 3
        train(tiny_cfg(work, **nine), model=_fresh_model(), train_set=DiesAfter(4 * 4 + 2))
    d.remount("ro")
    with pytest.raises(StorageError) as e:
        train(tiny_cfg(work, **nine), model=_fresh_model(), train_set=SyntheticSet())
    _one_line_naming(e.value, work / "log.jsonl", "the file system is read-only")
    assert "Make it writable, then run the same command again" in str(e.value)
    d.remount("rw")
    train(tiny_cfg(work, **nine), model=_fresh_model(), train_set=SyntheticSet())
    _same_run(tmp_path / "straight" / "last.pt", work / "last.pt")
    d.remount("ro")
    with pytest.raises(StorageError, match=r"cannot write the run log .*: the file system is read-only"):
        train(tiny_cfg(d.path / "new"), model=_fresh_model(), train_set=SyntheticSet())


def test_a_run_folder_deleted_during_the_run_is_one_line(tmp_path):
    work = tmp_path / "run"
    with pytest.raises(StorageError) as e:
        train(tiny_cfg(work), model=_fresh_model(), train_set=ActsAt(4 * 4 + 1, lambda: shutil.rmtree(work)))
    message = _one_line_naming(
        e.value, work / "last.pt", f"the folder {work} no longer exists (deleted or unmounted)"
    )
    assert f"Recreate it, then run the same command again: {work / 'last.pt'} is gone too" in message


def test_tensorboard_on_a_full_disk_is_one_line_without_a_thread_traceback(disk, tmp_path, capfd):
    work = tmp_path / "run"
    d = disk(size="1m", name="run/tb")
    over = {
        "run.tensorboard": True,
        "train.iters": 60,
        "train.ckpt_interval": 60,
    }  # events beyond a 4 KiB page
    with pytest.raises(StorageError) as e:
        train(tiny_cfg(work, **over), model=_fresh_model(), train_set=ActsAt(5, d.fill))
    _one_line_naming(e.value, d.path / "events", "the disk is full; the events written so far are kept")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err


@pytest.fixture
def tiny():
    model = TinySeg().eval()
    model.meta = ModelMeta("tinyseg", 3, size_divisor=8, output_stride=4)
    return model


SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2"}


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(disk, tiny, fmt):
    if fmt == "openvino":
        pytest.importorskip("openvino")
    d = disk(size="256k")
    d.fill()
    path = d.path / "out" / ("tiny" + SUFFIX[fmt])
    with pytest.raises(StorageError) as e:
        export_model(tiny, path, (64, 64), fmt)
    _one_line_naming(e.value, path, "the disk is full")
    assert "Free some space, then run the export again." in str(e.value)
    assert sorted(p.name for p in d.path.rglob("*") if not p.name.startswith(".filler")) == ["out"]
    d.free()
    assert export_model(tiny, path, (64, 64), fmt).is_file()


def test_an_export_into_a_read_only_folder_is_one_line(disk, tiny):
    d = disk()
    d.remount("ro")
    with pytest.raises(StorageError) as e:
        export_model(tiny, d.path / "a" / "tiny.onnx", (64, 64), "onnx")
    _one_line_naming(e.value, d.path / "a" / "tiny.onnx", "the file system is read-only")


def test_predict_onto_a_full_disk_is_one_line_and_leaves_no_partial_file(disk, tiny, tmp_path):
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(image)
    seg = Segmenter(tiny, runtime="torch")
    d = disk(size="256k")
    (d.path / "out").mkdir()
    d.fill()
    with pytest.raises(StorageError) as e:
        predict_paths(seg, [image], d.path / "out", save_probs=True, progress=False)
    _one_line_naming(e.value, d.path / "out" / "x.png", "the disk is full")
    assert "Free some space, then run predict again." in str(e.value)
    assert list((d.path / "out").iterdir()) == []
    d.free()
    report = predict_paths(seg, [image], d.path / "out", save_probs=True, progress=False)
    assert [p.name for p in report.written] == ["x.png", "x_overlay.jpg", "x_probs.npy"]
    assert np.load(d.path / "out" / "x_probs.npy").shape == (3, 60, 50)


def test_predict_command_into_a_read_only_folder_is_one_line(disk, tmp_path, capsys):
    torch.manual_seed(0)
    weights = save_weights(create_model("cgrseg_t", num_classes=3), tmp_path / "w.safetensors")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    d = disk()
    (d.path / "out").mkdir()
    d.remount("ro")
    out = d.path / "out"
    rc = main(
        [
            "predict",
            "cgrseg_t",
            "--weights",
            str(weights),
            str(image),
            "--out",
            str(out),
            "--no-progress",
            "--runtime",
            "torch",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith(
        f"lightseg predict: error: cannot write prediction {d.path / 'out' / 'x.png'}: the file system is read-only"
    )


def test_numpy_hides_the_errno_and_the_folder_is_asked(disk):
    d = disk(size="64k")
    big = np.zeros(200_000)
    with pytest.raises(OSError) as raw, open(d.path / "raw.npy", "wb") as f:  # what numpy says on its own
        np.save(f, big)
    assert raw.value.errno is None
    (d.path / "raw.npy").unlink()
    with pytest.raises(StorageError) as e, atomic_file(d.path / "a.npy", "probabilities", "run again") as f:
        np.save(f, big)
    _one_line_naming(e.value, d.path / "a.npy", "the disk is full")
    assert list(d.path.iterdir()) == []


def test_weights_onto_a_full_disk_are_one_line(disk, tiny):
    d = disk(size="64k")
    d.fill()
    with pytest.raises(StorageError) as e:
        save_weights(create_model("cgrseg_t", num_classes=3), d.path / "w.safetensors")
    _one_line_naming(e.value, d.path / "w.safetensors", "the disk is full")
    assert _leftovers(d.path) == []


def test_predict_of_a_video_onto_a_full_disk_removes_both_videos(disk, tiny, tmp_path):
    av = pytest.importorskip("av")
    src = tmp_path / "clip.mp4"
    noise = np.random.default_rng(0)
    with av.open(str(src), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for _ in range(10):
            frame = noise.integers(0, 255, (64, 96, 3), dtype=np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    d = disk(size="256k")
    (d.path / "out").mkdir()
    d.fill()
    with pytest.raises(StorageError) as e:
        predict_paths(Segmenter(tiny, runtime="torch"), [src], d.path / "out", progress=False)
    assert str(e.value).startswith(f"cannot write video {d.path / 'out' / 'clip_'}")
    assert "the disk is full" in str(e.value) and "\n" not in str(e.value)
    assert list((d.path / "out").iterdir()) == []
    d.free()
    report = predict_paths(Segmenter(tiny, runtime="torch"), [src], d.path / "out", progress=False)
    assert sorted(p.name for p in report.written) == ["clip_labels.mp4", "clip_overlay.mp4"]
