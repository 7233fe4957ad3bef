"""Your own data: folder layouts, the recorded flat split, pre-flight checks, recipe-free training with
its TensorBoard summaries, one option syntax with a field reference that cannot drift, multi-scale TTA
from the original image, and the commands of docs/custom-data.md run as written."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lightseg.cli import main as cli_main
from lightseg.config import Config, apply_overrides, load_config, reference_markdown
from lightseg.data import build_dataset
from lightseg.data.layouts import LAYOUTS, find_layout
from lightseg.errors import ConfigError, DataError, InputError

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "heaven",
    "house",
    "post",
    "street",
    "sidewalk",
    "greenery",
    "sign",
    "barrier",
    "vehicle",
    "person",
    "cyclist",
]


def _image(path: Path, h: int = 8, w: int = 12, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, values, h: int = 8, w: int = 12, palette_mode: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.asarray(values, dtype=np.uint8), h * w).reshape(h, w)
    im = Image.fromarray(arr)
    if palette_mode:
        im = im.convert("P")
        im.putpalette([c for i in range(256) for c in (255 - i, i, (7 * i) % 256)])
    im.save(path)


# ---------------------------------------------------------------------------------------------------
# layouts


def test_each_layout_is_detected_and_pairs_match_by_stem(tmp_path: Path, caplog) -> None:
    a = tmp_path / "a"  # images/<split> + masks/<split>, jpg images with png masks
    for split in ("train", "val"):
        _image(a / f"images/{split}/x.jpg")
        _mask(a / f"masks/{split}/x.png", [0, 1])
    (a / "classes.txt").write_text("bg\nfg\n")
    b = tmp_path / "b"  # <split>/images + <split>/masks, P-mode masks, classes.json with colours
    for split in ("train", "test"):
        _image(b / f"{split}/images/y.png")
        _mask(b / f"{split}/masks/y.png", [0, 2], palette_mode=True)
    (b / "classes.json").write_text(
        json.dumps([{"name": n, "color": [i, i, i]} for i, n in enumerate("pqr")])
    )
    c = tmp_path / "c"  # flat with split lists, classes.yaml with a palette
    for n in ("u", "v"):
        _image(c / f"images/{n}.jpeg")
        _mask(c / f"masks/{n}.png", [0, 1])
    (c / "val.txt").write_text("v\n")
    (c / "classes.yaml").write_text(
        yaml.safe_dump({"classes": ["m", "n"], "palette": [[1, 2, 3], [4, 5, 6]]})
    )
    d = tmp_path / "d"  # flat
    for i in range(5):
        _image(d / f"images/{i}.bmp")
        _mask(d / f"masks/{i}.png", [0, 1])

    def detect_layout(root):
        found = find_layout(root)
        return found.kind, found.splits

    assert detect_layout(a) == ("images/<split>", ["train", "val"])
    assert detect_layout(b) == ("<split>/images", ["test", "train", "val", "all"])  # val held out of train
    assert detect_layout(c) == ("split lists", ["val", "all"])
    assert detect_layout(d) == ("flat", ["train", "val", "all"])

    ds = build_dataset("folder", a, "val")
    assert [(p.name, m.name) for p, m in ds.files] == [("x.jpg", "x.png")] and ds.classes == ["bg", "fg"]
    ds = build_dataset("folder", b, "test")
    assert ds.classes == ["p", "q", "r"] and ds.palette == [(0, 0, 0), (1, 1, 1), (2, 2, 2)]
    assert set(np.unique(ds.load(0)[1])) == {0, 2}  # palette indices, not colours
    ds = build_dataset("folder", c, "val")
    assert [p.name for p, _ in ds.files] == ["v.jpeg"] and ds.palette == [(1, 2, 3), (4, 5, 6)]
    with caplog.at_level("WARNING"):
        ds = build_dataset("folder", d, "all")
    assert "2 classes inferred from the masks" in caplog.text
    assert len(ds) == 5 and ds.classes == ["0", "1"]
    # --data.classes (a list) wins over inference and needs no file
    assert build_dataset("folder", d, "all", classes=["sky", "road"]).classes == ["sky", "road"]


def test_layout_errors_list_the_accepted_layouts(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    _image(tmp_path / "pics/a.jpg")
    with pytest.raises(DataError, match=r"found: pics/") as e:
        build_dataset("folder", tmp_path, "train")
    assert LAYOUTS in str(e.value)
    a = tmp_path / "a"
    _image(a / "images/train/x.jpg")
    _mask(a / "masks/train/x.png", [0])
    with pytest.raises(DataError, match=r"no split 'test'; splits here: train") as e:
        build_dataset("folder", a, "test", classes=["bg"])
    assert LAYOUTS in str(e.value)
    _image(a / "images/train/x.png")
    with pytest.raises(DataError, match=r"two image files share the name 'x'"):
        build_dataset("folder", a, "train", classes=["bg"])


def test_flat_split_is_seeded_disjoint_and_recorded(tmp_path: Path) -> None:
    for i in range(20):
        _image(tmp_path / f"images/{i:02d}.jpg")
        _mask(tmp_path / f"masks/{i:02d}.png", [0, 1])
    opts = {"classes": ["a", "b"]}
    train, val = (build_dataset("folder", tmp_path, s, **opts) for s in ("train", "val"))
    stems = lambda ds: [p.stem for p, _ in ds.files]  # noqa: E731
    assert len(val) == 2 and len(train) == 18 and not set(stems(train)) & set(stems(val))
    assert stems(build_dataset("folder", tmp_path, "val", **opts)) == stems(val)  # deterministic
    assert train.split_record == val.split_record
    assert train.split_record["val"] == stems(val) and train.split_record["train"] == stems(train)
    other = build_dataset("folder", tmp_path, "val", split_seed=1, val_fraction=0.25, **opts)
    assert len(other) == 5 and stems(other) != stems(val)


# ---------------------------------------------------------------------------------------------------
# pre-flight: each check fires with its message before any training step


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for i in range(4):
        _image(root / f"images/{i}.jpg", 32, 32, seed=i)
        _mask(root / f"masks/{i}.png", [0, 1, 2], 32, 32)
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def _cfg(root: Path, tmp_path: Path, *tokens: str) -> Config:
    cfg = Config()
    apply_overrides(cfg, [
        "--model.name", "cgrseg_t", "--data.dataset", "folder", "--data.root", str(root),
        "--data.crop_size", "[32,32]", "--data.test_scale", "[32,32]", "--data.num_workers", "0",
        "--train.iters", "2", "--train.batch_size", "2", "--schedule.warmup_iters", "0",
        "--run.work_dir", str(tmp_path / "run"), "--run.tensorboard", "false", "--run.device", "cpu",
    ])  # fmt: skip
    return apply_overrides(cfg, list(tokens))


PREFLIGHT_CASES = [
    (["--train.iters", "0"], r"train.iters is 0; allowed: an integer > 0"),
    (["--train.iters", "-5"], r"train.iters is -5; allowed: an integer > 0"),
    (["--train.batch_size", "0"], r"train.batch_size is 0; allowed: an integer > 0"),
    (["--train.log_interval", "0"], r"train.log_interval is 0"),
    (["--train.ckpt_interval", "-1"], r"train.ckpt_interval is -1"),
    (["--eval.interval", "-1"], r"eval.interval is -1; allowed: an integer > 0, or 0"),
    (["--schedule.warmup_iters", "100"], r"schedule.warmup_iters is 100 with train.iters 2; allowed: 0 <="),
    (["--data.crop_size", "[0,32]"], r"data.crop_size is \[0, 32\]; allowed: two integers > 0"),
    (["--train.amp", "fp8"], r"train.amp is 'fp8'; allowed: off, bf16, fp16, auto"),
    (["--run.device", "tpu"], r"run.device is 'tpu'; allowed: auto, cpu, cuda, cuda:N"),
    (["--data.val_split", "test"], r"data.val_split 'test': .*no split 'test'; splits here: train, val, all"),
    (["--data.train_split", "training"], r"data.train_split 'training': .*no split 'training'"),
    (["--data.classes", "[a, b]"], r"model predicts 3 classes but the dataset has 2|has 2 classes"),
]


@pytest.mark.parametrize(("tokens", "message"), PREFLIGHT_CASES, ids=[t[0] for t, _ in PREFLIGHT_CASES])
def test_preflight_check_fires_before_any_step(small_folder, tmp_path, monkeypatch, tokens, message):
    from lightseg.training import loop as train_mod

    def no_step(*a, **k):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(train_mod, "_train_step", no_step)
    model = None
    if tokens[0] == "--data.classes":  # a model built for another class count (e.g. other weights)
        import lightseg

        model = lightseg.create_model("cgrseg_t", num_classes=3)
    with pytest.raises(ConfigError, match=message):
        train_mod.train(_cfg(small_folder, tmp_path, *tokens), model=model)


def test_preflight_device_output_dir_and_yaml(small_folder, tmp_path, monkeypatch):
    from lightseg.training import loop as train_mod

    monkeypatch.setattr(train_mod, "_train_step", lambda *a, **k: pytest.fail("a training step ran"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"run.device is 'cuda' but this machine has no usable CUDA"):
            train_mod.train(_cfg(small_folder, tmp_path, "--run.device", "cuda"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match=r"run.work_dir .*a_file is a file; allowed: a folder"):
        train_mod.train(_cfg(small_folder, tmp_path, "--run.work_dir", str(tmp_path / "a_file")))
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  name: cgrseg_t\ntrain:\n  iters: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 5, column 1: invalid YAML"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"--data.crop_size, line 1, column .*: invalid YAML"):
        apply_overrides(Config(), ["--data.crop_size", "[1, 2"])


# ---------------------------------------------------------------------------------------------------
# one option syntax, documented


def test_data_fields_are_one_syntax_and_the_reference_does_not_drift(capsys):
    cfg = apply_overrides(Config(), ["--data.ignore_index", "11", "--data.name", "camvid"])
    assert cfg.data.ignore_index == 11 and cfg.data.dataset == "camvid"  # `name`: the older spelling
    with pytest.raises(ConfigError, match=r"--data.ignore_index: not an option of dataset 'camvid'"):
        from lightseg.data import dataset_options

        dataset_options(cfg.data)
    for verb in (["train"], ["eval"], ["data", "check"]):
        with pytest.raises(SystemExit):
            cli_main([*verb, "--help"])
        assert "--data.ignore_index" in capsys.readouterr().out
    assert (ROOT / "docs/config-reference.md").read_text() == reference_markdown(), (
        "docs/config-reference.md is out of date: python -m lightseg.config > docs/config-reference.md"
    )


# ---------------------------------------------------------------------------------------------------
# multi-scale TTA resizes the ORIGINAL image to each scale (mmseg 0.27)


class TinySeg(torch.nn.Module):
    """Logits at stride 4 with inputs padded to multiples of 8: enough to tell scales apart."""

    size_divisor, num_classes = 8, 3

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 3, 3, stride=2, padding=1),
        )

    def forward(self, x):
        return self.net(x)


def test_multiscale_tta_equals_hand_rolled_average_from_the_original(tmp_path: Path) -> None:
    from lightseg.config import EvalConfig
    from lightseg.data.transforms import Normalize, build_eval_transform, rescale_size, resize_image
    from lightseg.evaluation import evaluate
    from lightseg.inference import forward_whole, predict_probs

    torch.manual_seed(0)
    model = TinySeg().eval()
    _image(tmp_path / "images/a.jpg", 45, 70)
    _mask(tmp_path / "masks/a.png", [0, 1, 2], 45, 70)
    scale, ratios = (64, 48), [0.75, 1.0, 1.5]
    ds = build_dataset(
        "folder",
        tmp_path,
        "all",
        classes=["a", "b", "c"],
        transform=build_eval_transform(scale, ratios=ratios),
    )
    original, _ = ds.load(0)
    total = 0
    for r in ratios:  # by hand: rescale the uint8 original to scale x r, normalise, run, average softmax
        size = rescale_size(45, 70, (int(scale[0] * r), int(scale[1] * r)))
        x = Normalize()({"image": resize_image(original, size), "mask": None})["image"][None]
        logits = forward_whole(model, x)
        total = total + torch.nn.functional.interpolate(logits, (45, 70), mode="bilinear").softmax(1)
    expected = (total / len(ratios)).argmax(1)[0]

    preds = []
    evaluate(model, ds, EvalConfig(scales=ratios), progress=False, on_prediction=lambda p, m: preds.append(p))
    assert torch.equal(preds[0], expected)
    sizes = [tuple(x.shape[-2:]) for x in ds[0]["images"]]
    assert sizes == [rescale_size(45, 70, (int(scale[0] * r), int(scale[1] * r))) for r in ratios]

    # predict_probs on a tensor: each scale is one resize of the image given, never of another scale
    img = torch.randn(1, 3, 40, 56)
    hand = sum(
        torch.nn.functional.interpolate(
            forward_whole(model, torch.nn.functional.interpolate(img, size, mode="bilinear")),
            (40, 56), mode="bilinear",
        ).softmax(1)
        for size in ((20, 28), (50, 70))  # 40 x 56 at 0.5 and 1.25
    ) / 2  # fmt: skip
    assert torch.allclose(predict_probs(model, img, scales=(0.5, 1.25)), hand, atol=1e-6)
    with pytest.raises(InputError, match=r"a 1x1 image is too small for test-time scale 0.5"):
        predict_probs(model, torch.randn(1, 3, 1, 1), scales=(0.5, 1.0))


# ---------------------------------------------------------------------------------------------------
# recipe-free training with TensorBoard, and the walkthrough of docs/custom-data.md


def _camvid_folder(shared_data: Path, dest: Path, n: int = 20) -> Path:
    """``n`` CamVid train images as a flat folder with P-mode masks and our own class names."""
    src = shared_data / "camvid"
    for p in sorted((src / "train").glob("*.png"))[:n]:
        dest.joinpath("images").mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(dest / "images" / f"{p.stem}.jpg", quality=92)
        _mask(
            dest / "masks" / p.name,
            np.asarray(Image.open(src / "trainannot" / p.name)).ravel(),
            360,
            480,
            True,
        )
    (dest / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return dest


FAST = [
    "--train.iters", "2", "--train.batch_size", "2", "--data.crop_size", "[64,64]",
    "--data.scale", "[160,120]", "--data.test_scale", "[160,120]", "--data.num_workers", "0",
    "--eval.interval", "0",
]  # fmt: skip


def test_recipe_free_run_trains_evaluates_and_shows_the_model(shared_data, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _camvid_folder(shared_data, tmp_path / "street")
    monkeypatch.chdir(tmp_path)
    # No hub is reachable here: the ImageNet start (the default for cgrseg_t) is switched off.
    argv = ["train", "--model", "cgrseg_t", "--data.root", "street", "--data.ignore_index", "11",
            "--model.pretrained", "false", *FAST]  # fmt: skip
    assert cli_main(argv) == 0
    run = tmp_path / "runs/cgrseg_t_street"
    out = capsys.readouterr().out
    assert "initial weights: none, cgrseg_t starts from random initialisation" in out
    assert "run directory runs/cgrseg_t_street (named after model and data" in out
    assert {"last.pt", "best.pt", "config.yaml", "final_metrics.json", "split.json"} <= {
        p.name for p in run.iterdir()
    }
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 18
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["dataset"] == "folder" and saved["schedule"]["warmup_iters"] == 0  # 10% of 2
    assert set(json.loads((run / "final_metrics.json").read_text())["per_class"]) == set(NAMES)

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {f"val_IoU/{n}" for n in ("heaven", "street")} <= scalars
    assert {"val/confusion", "val/samples"} <= set(events.Tags()["images"])
    grid = events.Images("val/samples")[-1]
    assert grid.height == 2 * (160 + 4) and grid.width > 3 * 160  # 2 val images: image | truth | prediction

    # eval takes the model and the data settings from the checkpoint
    assert cli_main(["eval", "--weights", str(run / "last.pt"), "--split", "val", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class"].keys() == set(NAMES)

    # the same command again would get a new directory and leave this run untouched
    from lightseg.training.preflight import resolve_work_dir

    again, note = resolve_work_dir(load_config(run / "config.yaml", ["--run.work_dir", ""]))
    assert again == Path("runs/cgrseg_t_street_2") and "runs/cgrseg_t_street holds another run" in note


def _doc_commands() -> list[str]:
    text = (ROOT / "docs/custom-data.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("lightseg ")]


@pytest.mark.slow  # about two minutes on a free core: two trainings, prediction of 20 images, an export
def test_custom_data_doc_commands_run_as_written(shared_data, tmp_path, monkeypatch, capsys):
    commands = _doc_commands()
    verbs = [" ".join(c.split()[1:3]) if c.split()[1] == "data" else c.split()[1] for c in commands]
    assert verbs == ["data check", "train", "train", "eval", "predict", "export", "data convert"]
    _camvid_folder(shared_data, tmp_path / "my_data")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "train":
            argv += [*FAST, "--model.pretrained", "false"]  # made short; no hub is reachable here
        assert cli_main(argv) == 0, command
    out = capsys.readouterr().out
    assert "[all] 20 pairs — OK" in out and "mIoU" in out
    assert len(list((tmp_path / "predictions").rglob("*.png"))) >= 20
    assert (tmp_path / "my_model.onnx").stat().st_size > 1_000_000
    assert "wrote 20 pairs (train 18, val 2)" in out
    assert build_dataset("folder", tmp_path / "my_data_ids", "val").classes == NAMES


def test_recipe_free_defaults_come_from_the_model_and_yield_to_the_command_line():
    from lightseg.cli.train import recipe_free_config

    scratch = recipe_free_config(
        [
            "--model.name",
            "cgrseg_t",
            "--data.root",
            "d",
            "--train.iters",
            "300",
            "--model.pretrained",
            "false",
        ]
    )
    assert (scratch.data.dataset, scratch.model.pretrained, scratch.optim.lr, scratch.optim.head_lr_mult) == (
        "folder",
        False,
        2e-3,
        1.0,
    )
    # cgrseg_t's backbone has published ImageNet weights: they are the default start.
    published = recipe_free_config(["--model.name", "cgrseg_t", "--data.root", "d"])
    assert published.model.pretrained is True and published.optim.lr == 1.2e-4
    assert published.optim.head_lr_mult == 10.0
    assert scratch.schedule.warmup_iters == 30 and scratch.eval.interval == 75 and scratch.run.work_dir == ""
    imagenet = recipe_free_config(["--model.name", "frm_effnetlite0", "--data.root", "d"])
    assert imagenet.model.pretrained is True and imagenet.optim.lr == 6e-5
    assert imagenet.optim.head_lr_mult == 10.0 and imagenet.schedule.warmup_iters == 1500
    mine = recipe_free_config(["--model.name", "cgrseg_t", "--data.root", "d", "--optim.lr", "0.01"])
    assert mine.model.pretrained is True
    assert mine.optim.lr == 0.01
    with pytest.raises(ConfigError, match=r"needs --data\.root"):
        recipe_free_config(["--model.name", "cgrseg_t"])


def test_paper_recipes_train_in_fp32():
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert recipes and all(load_config(r).train.amp == "off" for r in recipes)
    assert (
        Config().train.amp == "off" and apply_overrides(Config(), ["--train.amp", "off"]).train.amp == "off"
    )


# ---------------------------------------------------------------------------------------------------
# a run that cannot start leaves nothing behind; --help says what a run without a recipe uses


def test_a_failed_start_leaves_no_run_folder(small_folder, tmp_path, monkeypatch, capsys):
    import lightseg.models.build as build
    from lightseg.errors import WeightsNotFoundError

    def offline(*args, **kwargs):
        raise WeightsNotFoundError("cannot fetch https://example.invalid/weights.pth (offline)")

    monkeypatch.setattr(build, "create_model", offline)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model", "cgrseg_t", "--data.root", str(small_folder), "--data.num_workers", "0"]
    assert cli_main(argv) == 2
    assert "offline" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # so the next attempt gets runs/cgrseg_t_data, not _2


def test_train_help_states_the_recipe_free_defaults(capsys):
    from lightseg.cli.train import RECIPE_FREE_HELP, recipe_free_config
    from lightseg.config import field_rows

    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--data.dataset str (default ade20k; without a recipe: folder)" in text
    assert "--model.pretrained Any (default false; without a recipe: true where the backbone" in text
    assert "--preset {quick}" in text and "lightseg train --preset quick --data.root my_data" in text
    # every field a recipe-free run changes is one --help names
    for tokens in (
        ["--model.name", "cgrseg_t"],
        ["--model.name", "frm_van_b0", "--model.pretrained", "false"],
    ):
        cfg, base = recipe_free_config([*tokens, "--data.root", "d"]), Config()
        changed = {
            option
            for section in ("model", "data", "optim", "schedule", "train", "eval", "run")
            for option, *_ in field_rows(section)
            if getattr(getattr(cfg, section), option.split(".")[1])
            != getattr(getattr(base, section), option.split(".")[1])
        }
        assert changed - {"model.name", "data.root", "model.pretrained"} <= set(RECIPE_FREE_HELP)


def test_quick_preset_is_a_recipe_free_run_your_options_win(tmp_path):
    from lightseg.cli.train import PRESETS, preset_tokens, recipe_free_config

    cfg = recipe_free_config([*preset_tokens("quick"), "--data.root", "d"])
    quick = PRESETS["quick"]
    assert cfg.model.name == quick["model.name"] == "frm_effnetlite0" and cfg.model.pretrained is True
    assert cfg.data.dataset == "folder" and cfg.data.crop_size == quick["data.crop_size"]
    assert cfg.train.iters == quick["train.iters"] and cfg.schedule.warmup_iters == quick["train.iters"] // 10
    mine = recipe_free_config(
        [*preset_tokens("quick"), "--data.root", "d", "--train.iters", "7", "--model.name", "cgrseg_t"]
    )
    assert mine.train.iters == 7 and mine.model.name == "cgrseg_t"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: cgrseg_t\n")
    assert cli_main(["train", str(recipe), "--preset", "quick"]) == 2


def test_an_interrupted_run_in_a_chosen_folder_says_how_to_continue_it(
    small_folder, tmp_path, monkeypatch, capsys
):
    """The same command again would start a new run beside the folder it chose, so the advice names
    the folder; run with it, the run continues there instead of in a `_2` beside it."""
    monkeypatch.chdir(tmp_path)
    good = (small_folder / "images/3.jpg").read_bytes()
    (small_folder / "images/3.jpg").write_bytes(good[:40])  # truncated: fails when the loader reads it
    argv = [
        "train", "--model", "cgrseg_t", "--model.pretrained", "false", "--data.root", str(small_folder),
        "--data.crop_size", "[32,32]", "--data.test_scale", "[32,32]", "--data.num_workers", "0",
        "--train.iters", "2", "--train.batch_size", "2", "--run.tensorboard", "false",
    ]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "3.jpg" in err and "run the same command again with --run.work_dir runs/cgrseg_t_data" in err
    (small_folder / "images/3.jpg").write_bytes(good)
    assert cli_main([*argv, "--run.work_dir", "runs/cgrseg_t_data"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["cgrseg_t_data"]
    assert (tmp_path / "runs/cgrseg_t_data/last.pt").is_file()
