"""Runs that cannot be corrupted: a resumed run is the same run or a clear refusal, results are never
overwritten, only finite state is saved, data errors name the file, and the command line reports
user errors (only those) without a traceback."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import DiesAfter, Killed, SyntheticSet, TinySeg, _fresh_model, tiny_cfg

from lightseg.cli import main
from lightseg.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    LightsegError,
    OutOfMemoryError,
    StorageError,
)
from lightseg.training import checkpoints, train
from lightseg.training.checkpoints import load_train_checkpoint
from lightseg.training.distributed import DistInfo
from lightseg.training.optim import poly_warmup_factor
from lightseg.training.sampling import ResumableBatches

# ----------------------------------------------------------------------------------------------
# Resume: the same run or a clear refusal


def _three_of_six(work_dir, **over):
    """A 6-iteration run stopped after its checkpoint at iteration 3."""
    with pytest.raises(Killed):
        train(tiny_cfg(work_dir, **over), model=_fresh_model(), train_set=DiesAfter(3 * 4 + 2))
    assert load_train_checkpoint(work_dir / "last.pt")["iteration"] == 3


@pytest.mark.parametrize(
    "change",
    [
        {"train.batch_size": 8},
        {"run.seed": 1},
        {"data.crop_size": "[32,32]"},
        {"schedule.warmup_iters": 3},
        {"optim.lr": 0.1},
        {"data.dataset": "camvid"},
    ],
)
def test_resume_with_a_different_run_definition_is_refused_listing_it(tmp_path, change):
    _three_of_six(tmp_path)
    key = next(iter(change))
    with pytest.raises(
        ConfigError, match=rf"(?s)differs.*{key}: .* \(checkpoint\) -> .*allow_changes \[{key}\]"
    ):
        train(tiny_cfg(tmp_path, **change), model=_fresh_model(), train_set=SyntheticSet())
    assert load_train_checkpoint(tmp_path / "last.pt")["iteration"] == 3  # nothing was touched


def test_an_allowed_lr_change_is_applied_logged_and_recorded(tmp_path):
    _three_of_six(tmp_path)
    train(
        tiny_cfg(tmp_path, **{"optim.lr": 0.1, "run.allow_changes": "[optim.lr]"}),
        model=_fresh_model(),
        train_set=SyntheticSet(),
    )
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = {r["iter"]: r["lr"] for r in records if r["kind"] == "train"}
    # the lr after iteration t: the poly schedule (6 iterations, 2 warm-up) of the base lr in force
    for it in (1, 2, 3):
        assert lrs[it] == pytest.approx(0.01 * poly_warmup_factor(it, 6, 0.01, 2, 1e-6, 1.0, 0.0))
    for it in (4, 5):
        assert lrs[it] == pytest.approx(0.1 * poly_warmup_factor(it, 6, 0.1, 2, 1e-6, 1.0, 0.0))
    (resume,) = [r for r in records if r["kind"] == "resume"]
    assert resume["changes"] == {"optim.lr": [0.01, 0.1]}
    assert "lr: 0.1" in (tmp_path / "config.yaml").read_text()
    assert load_train_checkpoint(tmp_path / "last.pt")["config"]["optim"]["lr"] == 0.1


def test_a_model_of_another_class_count_is_a_clear_refusal(tmp_path):
    _three_of_six(tmp_path)

    class FiveClasses(SyntheticSet):
        num_classes = 5

    with pytest.raises(ConfigError, match="predicts 3 classes, the dataset has 5"):
        train(tiny_cfg(tmp_path), model=TinySeg(num_classes=5), train_set=FiveClasses())


def test_a_checkpoint_past_the_configured_end_says_so(tmp_path):
    train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=SyntheticSet())
    over = {"train.iters": 4, "run.allow_changes": "[train.iters]"}
    with pytest.raises(ConfigError, match=r"at iteration 6, past the configured end \(train.iters 4\)"):
        train(tiny_cfg(tmp_path, **over), model=_fresh_model(), train_set=SyntheticSet())


def test_a_finished_run_is_never_overwritten(tmp_path, capsys):
    val = SyntheticSet(n=4)
    train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=SyntheticSet(), val_set=val)
    before = {
        n: (tmp_path / n).read_bytes() for n in ("best.pt", "final_metrics.json", "log.jsonl", "last.pt")
    }
    with pytest.raises(ConfigError, match=r"holds another run \(last.pt, best.pt, final_metrics.json"):
        train(tiny_cfg(tmp_path, **{"run.resume": "none"}), model=_fresh_model(), train_set=SyntheticSet())
    # the same command again: complete, nothing to do, nothing rewritten
    train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=SyntheticSet(), val_set=val)
    assert "this run is complete" in capsys.readouterr().out
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_the_log_holds_every_iteration_once_after_resumes(tmp_path):
    with pytest.raises(Killed):  # killed during iteration 5: it logged iteration 4 after the checkpoint at 3
        train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=DiesAfter(4 * 4 + 2))
    assert '"iter": 4' in (tmp_path / "log.jsonl").read_text()
    train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=SyntheticSet())
    iters = [json.loads(line)["iter"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_iters = [
        json.loads(line)["iter"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert train_iters == [1, 2, 3, 4, 5, 6], iters


def test_keeps_the_last_checkpoints_and_a_corrupt_last_pt_falls_back(tmp_path, capsys):
    cfg = {"train.iters": 9}
    train(tiny_cfg(tmp_path / "straight", **cfg), model=_fresh_model(), train_set=SyntheticSet())
    with pytest.raises(Killed):  # checkpoints at 3 and 6, killed during iteration 7
        train(tiny_cfg(tmp_path / "run", **cfg), model=_fresh_model(), train_set=DiesAfter(6 * 4 + 2))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.pt")) == ["iter_00000003.pt", "last.pt"]  # keep_checkpoints 2
    (run / "last.pt").write_bytes(b"\0" * 1000)  # bit rot
    train(tiny_cfg(run, **cfg), model=_fresh_model(), train_set=SyntheticSet())
    out = capsys.readouterr().out
    assert "last.pt: not a readable checkpoint" in out and "resumed from" in out and "iter_00000003.pt" in out
    assert (run / "last.pt.corrupt").is_file()
    a = load_train_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_train_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # from iteration 3 on, the very same run


def test_disk_full_during_a_checkpoint_names_the_path_and_leaves_no_tmp(tmp_path, monkeypatch):
    train(tiny_cfg(tmp_path, **{"train.iters": 3}), model=_fresh_model(), train_set=SyntheticSet())
    good = (tmp_path / "last.pt").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    over = {"train.iters": 6, "run.allow_changes": "[train.iters]"}
    with pytest.raises(
        StorageError,
        match=rf"^cannot write checkpoint {tmp_path / 'last.pt'}: the disk is full; the previous last.pt is intact\. "
        rf"Free some space, then run the same command again to resume from {tmp_path / 'last.pt'} at iteration 3\.$",
    ):
        train(tiny_cfg(tmp_path, **over), model=_fresh_model(), train_set=SyntheticSet())
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / "last.pt").read_bytes() == good


# ----------------------------------------------------------------------------------------------
# Only finite state is saved


class BlowsUp(TinySeg):
    """A model whose BatchNorm statistics become infinite in the forward pass of iteration
    ``at`` while the loss stays finite (as with a huge lr: running_var = inf)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward_train(self, x):
        self.calls += 1
        if self.calls == self.at:
            with torch.no_grad():
                self.backbone[1].running_var.fill_(float("inf"))
        return super().forward_train(x)


def test_non_finite_buffers_are_never_saved_and_the_stop_names_the_last_finite_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(
        DivergenceError,
        match=r"not finite at iteration 6 .*model.backbone.1.running_var.*not saved. Last finite checkpoint: "
        r".*last.pt at iteration 3",
    ):
        train(tiny_cfg(tmp_path), model=BlowsUp(at=5), train_set=SyntheticSet())
    ckpt = load_train_checkpoint(tmp_path / "last.pt")
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


class NanAt(SyntheticSet):
    """NaN images for the samples of one optimizer step (given as their sample seeds)."""

    def __init__(self, bad):
        super().__init__()
        self.bad = set(bad)

    def __getitem__(self, key):
        s = super().__getitem__(key)
        if key[1] in self.bad:
            s["image"] = s["image"] * float("nan")
        return s


def test_skip_nonfinite_skips_bad_steps_up_to_the_limit(tmp_path):
    step3 = {seed for _, seed in ResumableBatches(8, 4, 1, 0, DistInfo(), 0).micro_batch(2, 0)}
    with pytest.raises(DivergenceError, match="loss is nan at iteration 3"):
        train(tiny_cfg(tmp_path / "a"), model=_fresh_model(), train_set=NanAt(step3))
    res = train(
        tiny_cfg(tmp_path / "b", **{"train.skip_nonfinite": 1}), model=_fresh_model(), train_set=NanAt(step3)
    )
    assert res["iteration"] == 6
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "skipped_step"] == [3]
    ckpt = load_train_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------------
# Data errors name the file


def _camvid_like(root, n=8, size=48):
    """A CamVid-layout folder of ``n`` random 48x48 pairs (labels 0..11, 11 = unlabelled)."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"train/{i}.png")
        Image.fromarray(rng.integers(0, 12, (size, size), dtype=np.uint8)).save(root / f"trainannot/{i}.png")
        lines.append(f"/SegNet/CamVid/train/{i}.png /SegNet/CamVid/trainannot/{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def _camvid_cfg(work_dir, root, **over):
    data = {"data.dataset": "camvid", "data.root": str(root), "data.crop_size": "[32,32]",
            "data.scale": "[48,48]", "data.ratio_range": "[1.0,1.0]", "train.batch_size": 2}  # fmt: skip
    return tiny_cfg(work_dir, **{**data, **over})


def _model11():
    torch.manual_seed(0)
    return TinySeg(num_classes=11)


def test_out_of_memory_says_what_to_change_and_keeps_the_work(tmp_path, capsys):
    """A device out of memory mid-run (raised here on the CPU as torch raises it on CUDA) stops
    with one line naming the settings that lower the need, after saving the steps done; the same
    command then continues and ends as a run that never failed."""
    root = _camvid_like(tmp_path / "camvid")
    train(_camvid_cfg(tmp_path / "straight", root), model=_model11())
    model, calls = _model11(), []
    forward = model.forward

    def out_of_memory_on_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    model.forward = out_of_memory_on_the_third_step
    with pytest.raises(OutOfMemoryError, match=r"(?s)out of cpu memory at iteration 3 .*"
                       r"--train\.accum_steps 2.*emergency checkpoint .*last\.pt at iteration 2"):  # fmt: skip
        train(_camvid_cfg(tmp_path / "run", root), model=model)
    train(_camvid_cfg(tmp_path / "run", root), model=_model11())
    a = load_train_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_train_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _first_index_of_step(step):
    return ResumableBatches(8, 2, 1, 0, DistInfo(), 0).micro_batch(step, 0)[0][0]


def test_a_label_beyond_the_classes_names_the_file_and_an_emergency_checkpoint_keeps_the_work(tmp_path):
    root = _camvid_like(tmp_path / "camvid")
    train(_camvid_cfg(tmp_path / "straight", root), model=_model11())
    bad = _first_index_of_step(2)  # read in iteration 3; no regular checkpoint before iteration 3
    mask_path = root / f"trainannot/{bad}.png"
    good = mask_path.read_bytes()
    Image.fromarray(np.full((48, 48), 50, np.uint8)).save(mask_path)
    with pytest.raises(DataError, match=rf"(?s){mask_path}: label values 50 are not class ids of camvid.*"
                       r"emergency checkpoint .*last.pt at iteration 2"):  # fmt: skip
        train(_camvid_cfg(tmp_path / "run", root), model=_model11())
    mask_path.write_bytes(good)  # fixed: the same command continues and ends as the straight run
    train(_camvid_cfg(tmp_path / "run", root), model=_model11())
    a = load_train_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_train_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_worker_error_is_one_clean_message(tmp_path):
    root = _camvid_like(tmp_path / "camvid")
    (root / "train/3.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        train(_camvid_cfg(tmp_path / "run", root, **{"data.num_workers": 1}), model=_model11())
    assert str(e.value).startswith(f"{root / 'train/3.png'}: cannot decode image")
    assert "Traceback" not in str(e.value) and "DataLoader worker" not in str(e.value)


def test_on_error_skip_skips_unreadable_samples_and_lists_them(tmp_path, capsys):
    root = _camvid_like(tmp_path / "camvid")
    (root / "train/3.png").write_bytes(b"not a png")
    res = train(_camvid_cfg(tmp_path / "run", root, **{"data.on_error": "skip"}), model=_model11())
    assert res["iteration"] == 6
    assert res["skipped"] and all(str(root / "train/3.png") in m for m in res["skipped"])
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "skipped" and "train/3.png" in r["error"] for r in logged)
    assert "unreadable sample(s) skipped" in capsys.readouterr().out


def test_a_decompression_bomb_is_named_with_the_option_to_raise_the_limit(tmp_path):
    root = _camvid_like(tmp_path / "camvid")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with pytest.raises(DataError, match=r"train/\d\.png: refused by PIL's decompression-bomb guard.*"
                           r"--data.max_image_pixels"):  # fmt: skip
            train(_camvid_cfg(tmp_path / "a", root, **{"data.max_image_pixels": 1000}), model=_model11())
        res = train(_camvid_cfg(tmp_path / "b", root, **{"data.max_image_pixels": 48 * 48}), model=_model11())
        assert res["iteration"] == 6
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_a_symlink_loop_is_named_as_such(tmp_path):
    root = _camvid_like(tmp_path / "camvid")
    img = root / "train/5.png"
    img.unlink()
    os.symlink(root / "train/5b.png", img)
    os.symlink(img, root / "train/5b.png")
    with pytest.raises(DataError, match=rf"{img}: symlink loop"):
        train(_camvid_cfg(tmp_path / "run", root), model=_model11())


# ----------------------------------------------------------------------------------------------
# The command line: user errors are one message, bugs keep their traceback


def test_cli_reports_user_errors_only(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  iters: 5\n  batch_size: [1,\n")
    assert main(["train", str(recipe)]) == 2
    assert (
        f"{recipe}, line 4, column 1: invalid YAML" in capsys.readouterr().err
    )  # the file and line of the YAML error
    recipe.write_text("train:\n  iters: 5\n")

    def bug(cfg):
        raise ValueError("an internal bug")

    monkeypatch.setattr("lightseg.training.train", bug)
    with pytest.raises(ValueError, match="an internal bug"):  # not disguised as a user error
        main(["train", str(recipe)])

    def user_error(cfg):
        raise DataError("x.png: cannot decode image")

    monkeypatch.setattr("lightseg.training.train", user_error)
    assert main(["train", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == "lightseg train: error: x.png: cannot decode image"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "missing.yaml"],
        ["flops", "nomodel"],
        ["flops", "cgrseg_t", "--size", "0", "64"],
        ["data", "check", "--data.name", "nodataset", "--data.root", "/nowhere"],
        ["data", "check", "--data.name", "camvid", "--data.root", "/nowhere"],
    ],
)
def test_user_errors_across_verbs_are_in_the_hierarchy(argv, capsys):
    from lightseg.cli import _VERBS, parse

    args, rest = parse(argv)
    with pytest.raises(LightsegError):
        _VERBS[args.verb][2](args, rest)


def test_a_run_killed_in_its_final_evaluation_evaluates_when_run_again(tmp_path):
    class DiesOnce(SyntheticSet):
        died = False

        def __getitem__(self, key):
            if not self.died:
                self.died = True
                raise Killed
            return super().__getitem__(key)

    val = DiesOnce(n=4)
    with pytest.raises(Killed):
        train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=SyntheticSet(), val_set=val)
    assert load_train_checkpoint(tmp_path / "last.pt")["iteration"] == 6
    assert not (tmp_path / "final_metrics.json").exists()
    res = train(tiny_cfg(tmp_path), model=_fresh_model(), train_set=SyntheticSet(), val_set=val)
    assert res["metrics"] is not None and (tmp_path / "final_metrics.json").is_file()


def test_cli_drops_the_worker_traceback_of_an_evaluation_data_error(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  iters: 5\n")
    ds = SyntheticSet()
    ds.__class__ = type("Broken", (SyntheticSet,), {"__getitem__": lambda self, k: _raise_data_error()})
    loader = torch.utils.data.DataLoader(ds, num_workers=1)

    def run_eval(*args, **kwargs):
        next(iter(loader))  # re-raised from the worker with its traceback in the message

    monkeypatch.setattr("lightseg.cli.evaluate.evaluate_weights", run_eval)
    assert main(["eval", str(recipe), "--weights", "w.pt"]) == 2
    assert capsys.readouterr().err == "lightseg eval: error: v.png: cannot decode image\n"


def _raise_data_error():
    raise DataError("v.png: cannot decode image")


def test_the_dataset_doctor_reports_a_decompression_bomb_instead_of_crashing(tmp_path):
    from lightseg.data.doctor import check

    root = _camvid_like(tmp_path / "camvid", n=2)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1000  # 48x48 = 2304 pixels: above twice the limit
        report = check("camvid", root, ["train"])["train"]
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert not report["ok"]
    assert {u["file"] for u in report["unreadable"]} >= {str(root / "train/0.png"), str(root / "train/1.png")}
    assert all("decompression bomb" in u["error"] for u in report["unreadable"])
