"""The training engine: parameter groups, schedule, config, a real short run, exact resume,
crash-safe checkpoints, divergence, and DDP (torchrun, gloo) against a single process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lightseg
from lightseg.config import ConfigError, apply_overrides, config_from_dict
from lightseg.evaluation import evaluate
from lightseg.training import TrainingDiverged, checkpoints, train
from lightseg.training import optim as optim_lib
from lightseg.training.checkpoints import load_train_checkpoint


class TinySeg(nn.Module):
    """A Segmentor-shaped toy: conv-BN-ReLU-dropout-conv at stride 4, size_divisor 8."""

    size_divisor = 8

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return self.head(self.backbone(x))

    def forward_train(self, x):
        return {"logits": self(x)}


class SyntheticSet(torch.utils.data.Dataset):
    """Images whose class is the brightest channel, in blocks; ``(i, seed)`` picks a random crop."""

    num_classes, ignore_index, classes = 3, 255, ["r", "g", "b"]

    def __init__(self, n: int = 8, size: int = 32, nan: bool = False):
        self.n, self.size, self.nan = n, size, nan

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        g = np.random.default_rng(1000 + i)
        mask = np.kron(g.integers(0, 3, (4, 4)), np.ones((12, 12), dtype=np.int64))  # 48 x 48
        mask[:2] = 255
        img = g.normal(0, 0.3, (3, 48, 48)).astype(np.float32)
        img += np.eye(3, dtype=np.float32)[np.minimum(mask, 2)].transpose(2, 0, 1)
        if seed is not None:  # a random training crop, decided by the seed only
            y, x = np.random.default_rng(seed).integers(0, 48 - self.size + 1, 2)
            img, mask = (
                img[:, y : y + self.size, x : x + self.size],
                mask[y : y + self.size, x : x + self.size],
            )
        if self.nan:
            img = img * np.nan
        return {
            "image": torch.from_numpy(img.copy()),
            "mask": torch.from_numpy(mask.copy()),
            "meta": {"image_path": f"img{i}"},
        }


def tiny_cfg(work_dir, **over):
    cfg = config_from_dict(
        {
            "data": {"num_workers": 0, "val_split": ""},
            "optim": {"lr": 0.01},
            "schedule": {"warmup_iters": 2},
            "train": {"iters": 6, "batch_size": 4, "log_interval": 1, "ckpt_interval": 3},
            "eval": {"interval": 0},
            "run": {"work_dir": str(work_dir), "tensorboard": False},
        }
    )
    apply_overrides(cfg, [t for k, v in over.items() for t in (f"--{k}", str(v))])
    return cfg


def _fresh_model():
    torch.manual_seed(0)
    return TinySeg()


# ---------------------------------------------------------------------------------------------


def test_param_groups_of_cgrseg_t_follow_the_original_rule():
    from lightseg import create_model

    model = create_model("cgrseg_t", num_classes=150)
    groups = {
        (g["lr_mult"], g["decay_mult"]): g["names"] for g in optim_lib.build_param_groups(model, 1.0, 0.01)
    }
    assert set(groups) == {(10.0, 1.0), (1.0, 0.0), (1.0, 1.0)}
    x10, no_decay, plain = groups[(10.0, 1.0)], groups[(1.0, 0.0)], groups[(1.0, 1.0)]
    # every decode-head parameter x10 (its norms keep their decay: "head" matches before "norm")
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    assert set(head) <= set(x10)
    # the talking_head quirk: EfficientFormerV2-S1 has 2 attention blocks in stages 3 and 4, each with
    # talking_head1/2 (weight, bias) -> 16 backbone parameters at x10
    quirk = sorted(set(x10) - set(head))
    assert len(quirk) == 16 and all(".token_mixer.talking_head" in n for n in quirk)
    assert "backbone.network.4.7.token_mixer.talking_head1.weight" in quirk
    # backbone norms (named norm / norm1 / norm2 / mid_norm in the official backbone): no decay
    assert all(n.startswith("backbone.") and "norm" in n for n in no_decay)
    assert {"backbone.network.0.0.mlp.norm1.weight", "backbone.network.0.0.mlp.mid_norm.bias"} <= set(
        no_decay
    )
    assert all(n.startswith("backbone.") and "norm" not in n and "head" not in n for n in plain)
    # without the quirk only head.* is x10
    strict = optim_lib.build_param_groups(model, 1.0, 0.01, head_substring_rule=False)
    assert {n for g in strict if g["lr_mult"] == 10 for n in g["names"]} == set(head)


def test_warmup_poly_schedule_matches_mmcv_formula():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.2e-4, "lr_mult": 1.0}])
    sched = optim_lib.build_scheduler(opt, 160_000, 1500, 1e-6, 1.0, 0.0)
    lrs = {}
    for it in range(1501):
        lrs[it] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.2e-4 * 1e-6)
    # it 750: regular = 1.2e-4 * (1 - 750/160000); warm-up factor 1 - 0.5 * (1 - 1e-6)
    assert lrs[750] == pytest.approx(1.2e-4 * (1 - 750 / 160_000) * (0.5 + 0.5e-6))
    assert lrs[1500] == pytest.approx(1.2e-4 * (1 - 1500 / 160_000))
    assert optim_lib.poly_warmup_factor(160_000, 160_000, 1.2e-4, 1500, 1e-6, 1.0, 0.0) == 0.0


def test_config_overrides_and_errors():
    cfg = tiny_cfg("x", **{"optim.lr": "1e-3", "data.crop_size": "[64,64]"})
    assert cfg.optim.lr == 1e-3 and cfg.data.crop_size == [64, 64]
    with pytest.raises(ConfigError, match="Did you mean: iters"):
        apply_overrides(cfg, ["--train.iter", "3"])
    with pytest.raises(ConfigError, match="expected true/false"):
        apply_overrides(cfg, ["--train.avg_non_ignore", "3"])
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        config_from_dict({"trian": {"iters": 1}})


def test_every_recipe_loads():
    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert len(recipes) >= 11
    from lightseg.config import load_config
    from lightseg.data import DATASETS

    registered = set(lightseg.list_models(kind="segmentor"))
    for r in recipes:
        cfg = load_config(r)
        assert cfg.model.name in registered, r.name
        assert cfg.data.dataset in DATASETS, r.name


def test_short_real_training_on_camvid_loss_falls(shared_data, tmp_path):
    from lightseg.data import build_dataset
    from lightseg.data.transforms import build_train_transform

    tf = build_train_transform(
        crop_size=(64, 64), scale=(480, 360), ratio_range=(0.25, 0.5), cat_max_ratio=1.0
    )
    ds = build_dataset("camvid", shared_data / "camvid", "train", transform=tf)
    torch.manual_seed(0)
    model = TinySeg(num_classes=11)
    cfg = tiny_cfg(
        tmp_path, **{"train.iters": 40, "train.batch_size": 8, "optim.lr": 0.02, "schedule.warmup_iters": 5}
    )
    train(cfg, model=model, train_set=ds)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4])


class Killed(Exception):
    pass


class DiesAfter(SyntheticSet):
    """Raises after ``limit`` samples, like a run killed in the middle of step 4."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.calls = limit, 0

    def __getitem__(self, key):
        self.calls += 1
        if self.calls > self.limit:
            raise Killed
        return super().__getitem__(key)


def test_resume_is_bit_exact(tmp_path):
    train(tiny_cfg(tmp_path / "straight"), model=_fresh_model(), train_set=SyntheticSet())
    with pytest.raises(Killed):  # killed during iteration 4, after the checkpoint at 3
        train(tiny_cfg(tmp_path / "split"), model=_fresh_model(), train_set=DiesAfter(3 * 4 + 2))
    assert load_train_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 3
    # same command again: auto-resume from <work_dir>/last.pt (a fresh model: weights come from the file)
    torch.manual_seed(123)
    train(tiny_cfg(tmp_path / "split"), model=TinySeg(), train_set=SyntheticSet())
    a = load_train_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_train_checkpoint(tmp_path / "split" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # and the resumed run really differs from a fresh one (the test can fail)
    train(tiny_cfg(tmp_path / "other", **{"run.seed": 1}), model=_fresh_model(), train_set=SyntheticSet())
    c = load_train_checkpoint(tmp_path / "other" / "last.pt")["model"]
    assert not all(torch.equal(a["model"][k], c[k]) for k in c)


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    train(tiny_cfg(tmp_path, **{"train.iters": 3}), model=_fresh_model(), train_set=SyntheticSet())
    good = (tmp_path / "last.pt").read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04" + bytes(100))  # a half-written archive, then the process "dies"
        raise Killed

    monkeypatch.setattr(checkpoints.torch, "save", dying_save)
    longer = {"train.iters": 6, "run.allow_changes": "[train.iters]"}
    with pytest.raises(Killed):
        train(tiny_cfg(tmp_path, **longer), model=_fresh_model(), train_set=SyntheticSet())
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert (tmp_path / "last.pt").read_bytes() == good
    assert load_train_checkpoint(tmp_path / "last.pt")["iteration"] == 3
    assert not (tmp_path / "last.pt.tmp").exists()  # the half-written file is removed
    # the training checkpoint also rebuilds through the public loader's layout detection
    from lightseg.checkpoint import load_weights

    assert load_weights(TinySeg(), tmp_path / "last.pt") == "lightseg-train"


def test_nan_loss_stops_naming_iteration_and_checkpoint(tmp_path):
    train(tiny_cfg(tmp_path, **{"train.iters": 3}), model=_fresh_model(), train_set=SyntheticSet())
    longer = {"train.iters": 6, "run.allow_changes": "[train.iters]"}
    with pytest.raises(TrainingDiverged, match=r"at iteration 4.*last.pt at iteration 3"):
        train(tiny_cfg(tmp_path, **longer), model=_fresh_model(), train_set=SyntheticSet(nan=True))
    with pytest.raises(TrainingDiverged, match=r"iteration 1.*none written yet"):
        train(tiny_cfg(tmp_path / "b"), model=_fresh_model(), train_set=SyntheticSet(nan=True))


TORCHRUN_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from test_engine import SyntheticSet, TinySeg, tiny_cfg
from lightseg.training import train
torch.manual_seed(0)
cfg = tiny_cfg({work!r}, **{{"train.iters": 4, "train.batch_size": 4}})
res = train(cfg, model=TinySeg(), train_set=SyntheticSet(), val_set=SyntheticSet(n=7))
if torch.distributed.get_rank() == 0:
    json.dump(res["metrics"], open({out!r}, "w"))
"""


def test_torchrun_two_processes_metrics_equal_single_process(tmp_path):
    script = tmp_path / "run.py"
    out = tmp_path / "metrics.json"
    tests = str(Path(__file__).parent)
    script.write_text(TORCHRUN_SCRIPT.format(tests=tests, work=str(tmp_path / "run"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(script),
    ]
    # Its own session: torchrun signals process groups when a worker fails, never ours.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plain BN fallback" in proc.stdout + proc.stderr
    dist_metrics = json.loads(out.read_text())
    model = TinySeg()
    model.load_state_dict(load_train_checkpoint(tmp_path / "run" / "last.pt")["model"])
    single = evaluate(model, SyntheticSet(n=7), tiny_cfg("x").eval, progress=False)
    assert dist_metrics["mIoU"] == pytest.approx(single["mIoU"], abs=1e-9)
    assert dist_metrics["aAcc"] == pytest.approx(single["aAcc"], abs=1e-9)


class TinyEmbedSeg(TinySeg):
    """TinySeg whose head also gives embedding features, like the FRM head (``embed_channels``)."""

    def __init__(self, num_classes: int = 3):
        super().__init__(num_classes)
        self.head.embed_channels = 8

    def forward_train(self, x):
        feats = self.backbone(x)
        return {"logits": self.head(feats), "embed_features": feats}


def _embed_model():
    torch.manual_seed(0)
    return TinyEmbedSeg()


def test_contrastive_term_trains_its_projection_head_and_resumes_exactly(tmp_path):
    over = {"train.contrastive_weight": 0.1}
    train(tiny_cfg(tmp_path / "straight", **over), model=_embed_model(), train_set=SyntheticSet())
    with pytest.raises(Killed):
        train(tiny_cfg(tmp_path / "split", **over), model=_embed_model(), train_set=DiesAfter(3 * 4 + 2))
    train(tiny_cfg(tmp_path / "split", **over), model=TinyEmbedSeg(), train_set=SyntheticSet())
    a = load_train_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_train_checkpoint(tmp_path / "split" / "last.pt")
    proj = [k for k in a["loss"] if k.endswith("weight")]
    assert proj, "the projection head's weights are saved with the run"
    for k in [*proj, "contrastive._extra_state"]:
        if k in a["loss"] and isinstance(a["loss"][k], torch.Tensor):
            assert torch.equal(a["loss"][k], b["loss"][k]), k
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the projection head is trained (AdamW state exists for every loss parameter) ...
    n_model = len(list(TinyEmbedSeg().parameters()))
    n_loss = len(proj) * 2  # weight + bias per conv
    assert len(a["optimizer"]["state"]) == n_model + n_loss
    # ... and is absent from the model that is saved for inference
    assert not any("project" in k or "contrastive" in k for k in a["model"])


def test_contrastive_weight_on_a_model_without_embeddings_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="contrastive_weight"):
        train(
            tiny_cfg(tmp_path, **{"train.contrastive_weight": 0.1}),
            model=_fresh_model(),
            train_set=SyntheticSet(),
        )
