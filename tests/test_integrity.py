"""Checkpoints that cannot lie: every checkpoint and safetensors file lightseg writes carries the SHA-256
of its bytes; a file that changed afterwards (one flipped bit anywhere) is refused naming it, resume
falls back to the newest intact checkpoint, and files without a digest load as before."""

import hashlib
import importlib.util
import json
import random
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_engine import DiesAfter, Killed, SyntheticSet, _fresh_model, tiny_cfg

from lightseg import create_model, load_checkpoint, load_weights, save_weights
from lightseg.checkpoint import read_checkpoint, read_safetensors
from lightseg.errors import CheckpointError, DivergenceError
from lightseg.meta import META_KEY
from lightseg.training import train
from lightseg.training.checkpoints import atomic_save, load_train_checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "checkpoint_integrity", ROOT / "benchmarks" / "checkpoint_integrity.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # the benchmark's region maps (from the zip and safetensors specs) and flips


def _sha256_with_zeros(data: bytes, start: int) -> str:
    return hashlib.sha256(data[:start] + b"0" * 64 + data[start + 64 :]).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 9-iteration run killed during iteration 7: last.pt at 6, iter_00000003.pt kept."""
    work = tmp_path_factory.mktemp("run")
    with pytest.raises(Killed):
        train(tiny_cfg(work, **{"train.iters": 9}), model=_fresh_model(), train_set=DiesAfter(6 * 4 + 2))
    return work


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("cgrseg_t", num_classes=3)
    return save_weights(model, tmp_path_factory.mktemp("w") / "cgrseg_t.safetensors", classes=["a", "b", "c"])


def test_a_training_checkpoint_ends_in_the_sha256_of_its_bytes(run):
    path = run / "last.pt"
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:  # still a valid zip archive: the digest is its comment
        assert z.testzip() is None
        comment = z.comment
    assert comment[:16] == b"lightseg-sha256:" and len(comment) == 80
    assert comment[16:].decode() == _sha256_with_zeros(data, len(data) - 64)
    plain = torch.load(path, weights_only=True)  # any torch reads it as before
    assert plain["iteration"] == 6 and plain["digest"] == "sha256"


def test_save_weights_holds_the_sha256_of_its_bytes(weights):
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + n])["__metadata__"]
    digest = metadata["lightseg_sha256"]
    assert metadata["lightseg_digest"] == "sha256" and data.count(digest.encode()) == 1
    assert digest == _sha256_with_zeros(data, data.index(digest.encode()))
    with safe_open(str(weights), framework="pt") as f:  # any safetensors reader reads it as before
        assert len(list(f.keys())) == len(create_model("cgrseg_t", num_classes=3).state_dict())
    _, header = read_safetensors(weights)
    assert "lightseg_sha256" not in header and "lightseg_digest" not in header  # callers see what they wrote


def _flips(regions: dict, per_region: int, seed: int):
    """``per_region`` random (offset, bit) in every region of the file."""
    rng = random.Random(seed)
    for name, spans in sorted(regions.items()):
        for _ in range(per_region):
            yield name, *bench.pick({name: spans}, rng)[1:]


def _refused_naming(load, path: Path, why: str = "") -> None:
    with pytest.raises(CheckpointError) as e:
        load(path)
    assert f"{path}: {why}" in str(e.value)


def test_one_flipped_bit_anywhere_in_a_training_checkpoint_is_refused_naming_the_file(run, tmp_path):
    src = run / "last.pt"
    regions = bench.zip_regions(src)
    assert {"pickle", "tensor data", "zip local headers", "central directory", "end records"} <= set(regions)
    pristine = torch.load(src, weights_only=True)
    silently_different = 0
    for region, offset, bit in _flips(regions, per_region=3, seed=0):
        damaged = tmp_path / f"{region.replace(' ', '_').replace(':', '')}_{offset}_{bit}.pt"
        bench.flip(src, damaged, offset, bit)
        why = (
            "damaged (it was written with a SHA-256 digest, which is missing"
            if region == "digest comment: tag"
            else "damaged (its bytes do not match the SHA-256 digest"
        )
        _refused_naming(load_train_checkpoint, damaged, why)  # resume, eval
        _refused_naming(load_checkpoint, damaged, why)  # predict, export, serve
        silently_different += bench.plain_outcome(bench.plain_torch_load, damaged, pristine).endswith(
            "DIFFERENT content"
        )
    assert silently_different >= 3  # without the digest, at least the tensor-data flips loaded wrong values


def test_one_flipped_bit_anywhere_in_a_safetensors_file_is_refused_naming_the_file(weights, tmp_path):
    regions = bench.safetensors_regions(weights)
    assert set(regions) == {"header length", "JSON header", "digest hex", "tensor data"}
    model = create_model("cgrseg_t", num_classes=3)
    for region, offset, bit in _flips(regions, per_region=4, seed=1):
        damaged = tmp_path / f"{region.replace(' ', '_')}_{offset}_{bit}.safetensors"
        bench.flip(weights, damaged, offset, bit)
        _refused_naming(lambda p: load_weights(model, p), damaged)
        _refused_naming(read_checkpoint, damaged)


def test_a_digest_that_went_missing_is_refused(run, weights, tmp_path):
    data = (run / "last.pt").read_bytes()
    end = len(data) - 80 - 22  # the zip end record, then the 80-byte comment
    stripped = tmp_path / "stripped.pt"
    stripped.write_bytes(data[: end + 20] + b"\0\0")  # the same archive without its comment
    assert torch.load(stripped, weights_only=True)["iteration"] == 6  # torch reads it ...
    with pytest.raises(CheckpointError, match=r"stripped.pt: damaged .*digest, which is missing"):
        load_train_checkpoint(stripped)  # ... lightseg knows it was sealed
    renamed = tmp_path / "renamed.safetensors"  # one bit turns the key lightseg_sha256 into lightseg_sha257
    st = weights.read_bytes()
    at = st.index(b'"lightseg_sha256"') + len('"lightseg_sha25')
    renamed.write_bytes(st[:at] + bytes([st[at] ^ 1]) + st[at + 1 :])
    with pytest.raises(CheckpointError, match=r"renamed.safetensors: damaged .*digest, which is missing"):
        load_checkpoint(renamed)


def test_files_without_a_digest_load_as_before(run, weights, tmp_path):
    ckpt = load_train_checkpoint(run / "last.pt")
    del ckpt["digest"]
    old = tmp_path / "written_before_the_digest.pt"
    torch.save(ckpt, old)  # a training checkpoint as lightseg wrote it before
    assert load_train_checkpoint(old)["iteration"] == 6
    assert load_weights(_fresh_model(), old) == "lightseg-train"
    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        header = {k: v for k, v in f.metadata().items() if k not in ("lightseg_sha256", "lightseg_digest")}
    old_st = tmp_path / "old.safetensors"
    save_file(tensors, str(old_st), metadata=header)  # lightseg metadata, no digest
    assert META_KEY in header
    assert load_checkpoint(old_st).meta.classes == ("a", "b", "c")
    # files from elsewhere (official mmseg, ImageNet): tests/test_weights_layouts.py loads them


def test_resume_falls_back_from_a_checkpoint_whose_tensors_changed(run, tmp_path, capsys):
    straight = tmp_path / "straight"
    train(tiny_cfg(straight, **{"train.iters": 9}), model=_fresh_model(), train_set=SyntheticSet())
    work = tmp_path / "run"
    shutil.copytree(run, work)
    last = work / "last.pt"
    (start, _), *_ = bench.zip_regions(last)["tensor data"]
    bench.flip(run / "last.pt", last, start + 4, 0)  # one bit in one weight: torch.load takes it
    plain = bench.plain_outcome(bench.plain_torch_load, last, torch.load(run / "last.pt", weights_only=True))
    assert plain == "loaded, DIFFERENT content"
    train(tiny_cfg(work, **{"train.iters": 9}), model=_fresh_model(), train_set=SyntheticSet())
    out = capsys.readouterr().out
    assert f"warning: {last}: damaged (its bytes do not match the SHA-256 digest" in out
    assert f"resumed from {work / 'iter_00000003.pt'} at iteration 3" in out
    assert "set the damaged last.pt aside as last.pt.corrupt" in out and (work / "last.pt.corrupt").is_file()
    a, b = load_train_checkpoint(straight / "last.pt"), load_train_checkpoint(last)
    assert a["iteration"] == b["iteration"] == 9
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


class DamagesThenDiverges(SyntheticSet):
    """From sample ``at`` on: the images are NaN, and the first such read flips a bit of ``path``."""

    def __init__(self, at: int, path: Path | None = None):
        super().__init__()
        self.at, self.path, self.calls = at, path, 0

    def __getitem__(self, key):
        self.calls += 1
        s = super().__getitem__(key)
        if self.calls == self.at and self.path is not None:
            (start, _), *_ = bench.zip_regions(self.path)["tensor data"]
            data = bytearray(self.path.read_bytes())
            data[start] ^= 1
            self.path.write_bytes(bytes(data))
        if self.calls >= self.at:
            s["image"] = s["image"] * float("nan")
        return s


def test_divergence_verifies_the_checkpoint_it_names(tmp_path):
    with pytest.raises(
        DivergenceError,
        match=r"at iteration 4.*Last finite checkpoint: .*last.pt at iteration 3 \(digest verified\)",
    ):
        train(tiny_cfg(tmp_path / "intact"), model=_fresh_model(), train_set=DamagesThenDiverges(13))
    work = tmp_path / "damaged"
    with pytest.raises(DivergenceError) as e:
        train(tiny_cfg(work), model=_fresh_model(), train_set=DamagesThenDiverges(13, work / "last.pt"))
    message = str(e.value)
    assert (
        f"The last finite checkpoint, {work / 'last.pt'} at iteration 3, cannot be used: {work / 'last.pt'}: damaged"
        in message
    )
    assert "Last finite checkpoint:" not in message


def test_atomic_save_of_any_object_round_trips(tmp_path):
    obj = {"format": "x", "t": torch.arange(10.0), "nested": [1, {"a": torch.ones(2, dtype=torch.int8)}]}
    path = atomic_save(obj, tmp_path / "x.pt")
    back = torch.load(path, weights_only=True)
    assert bench.same(back, obj)
    assert not list(tmp_path.glob("*.tmp"))
