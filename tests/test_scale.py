"""Images as they come: seen at the model's own scale, labels as evaluation computes them, memory
bounded by design (a 12 MP photo under an address-space cap, passes planned against a budget)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lightseg import Segmenter, create_model, load_checkpoint, save_weights
from lightseg.config import EvalConfig
from lightseg.data import build_dataset
from lightseg.data.transforms import build_eval_transform
from lightseg.deploy.memory import PassCost, parse_size
from lightseg.deploy.scale import input_size, resolve_scale
from lightseg.errors import InputError, MemoryBudgetError
from lightseg.evaluation import evaluate
from lightseg.inference import upsample
from lightseg.meta import DEFAULT_TEST_SCALE, ModelMeta
from lightseg.visualize import draw_legend, legend_font_px


class BlockNet(nn.Module):
    """Stride-8 logits from the mean colour of each 8 x 8 block: on a real photo its labels follow
    sky, road and buildings and change at their edges, so the labels' upsampling is exercised
    where it matters (at boundaries), as with a trained model."""

    size_divisor, output_stride, num_classes = 32, 8, 11

    def __init__(self, test_scale=DEFAULT_TEST_SCALE):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 11, 1)
        self.meta = ModelMeta("blocknet", 11, size_divisor=32, output_stride=8, test_scale=test_scale)

    def forward(self, x):
        return 3 * self.conv(F.avg_pool2d(x, 8))


@pytest.mark.parametrize("scale", [(240, 180), (683, 512)], ids=["down-0.5x", "up-1.42x"])
def test_predict_gives_the_labels_evaluation_gives_at_the_model_scale(shared_data, scale):
    model = BlockNet(scale).eval()
    ds = build_dataset("camvid", shared_data / "camvid", "test", transform=build_eval_transform(scale=scale))
    subset = torch.utils.data.Subset(ds, range(4))
    subset.num_classes, subset.ignore_index, subset.classes = 11, 255, None
    preds = []
    evaluate(
        model, subset, EvalConfig(), progress=False, on_prediction=lambda p, meta: preds.append(p.numpy())
    )
    seg = Segmenter(model, runtime="torch", optimize="none")  # scale="model": the model's test_scale
    labels = seg([ds.load(i)[0] for i in range(4)])
    for lab, pred in zip(labels, preds):
        assert lab.shape == (360, 480) and len(np.unique(pred)) >= 3
        np.testing.assert_array_equal(lab, pred)


def test_the_scale_rule_is_evaluations_and_refuses_what_cannot_be_seen():
    assert input_size(3024, 4032, (2048, 512)) == (512, 683)  # a phone photo at ADE20K's scale
    assert input_size(360, 480, (480, 360)) == (360, 480)  # CamVid at its own recipe's scale
    assert input_size(360, 480, None) == (360, 480)  # native
    assert input_size(360, 480, (2048, 512), fixed=(192, 256)) == (192, 256)  # within a fixed graph
    assert resolve_scale("model", ModelMeta("m", 3, test_scale=(512, 2048))) == (2048, 512)
    with pytest.raises(InputError, match="too elongated"):
        input_size(32, 262144, (2048, 512))
    with pytest.raises(InputError, match="scale must be"):
        resolve_scale((0, 5), ModelMeta("m", 3))


def test_the_scale_travels_with_the_model_into_every_file(tmp_path):
    model = create_model("cgrseg_t", num_classes=3)
    model.meta = model.meta.replace(test_scale=(480, 360))
    back = load_checkpoint(save_weights(model, tmp_path / "m.safetensors"))
    assert back.meta.test_scale == (480, 360)
    assert Segmenter(back, runtime="torch").bound == (480, 360)
    assert ModelMeta.from_json(json.dumps({"name": "old", "num_classes": 2})).test_scale == DEFAULT_TEST_SCALE
    from lightseg.deploy.export import export_model
    from lightseg.deploy.metadata import exported_facts

    pytest.importorskip("onnx")
    for fmt, suffix in (("onnx", ".onnx"), ("openvino", ".xml")):
        if fmt == "openvino":
            pytest.importorskip("openvino")
        path = export_model(back, tmp_path / f"m{suffix}", (64, 64), fmt)
        assert exported_facts(path)[0].test_scale == (480, 360)


def test_training_records_its_test_scale(tmp_path):
    from lightseg.config import Config
    from lightseg.training.components import record_data_facts

    model, cfg = create_model("cgrseg_t", num_classes=3), Config()
    cfg.data.test_scale = [1024, 512]
    ds = type("DS", (), {"classes": ["a", "b", "c"], "palette": None})()
    record_data_facts(model, ds, cfg)
    assert model.meta.test_scale == (1024, 512) and model.meta.classes == ("a", "b", "c")


def test_a_training_checkpoint_from_before_the_record_takes_its_runs_test_scale(tmp_path):
    """Checkpoints written before models recorded their scale carry their run's configuration:
    its data.test_scale, not the ADE20K default, is how the model sees images."""
    from lightseg.checkpoint import FORMAT_KEY, META_KEY, TRAIN_FORMAT

    model = create_model("cgrseg_t", num_classes=3)
    old_meta = {k: v for k, v in model.meta.to_dict().items() if k != "test_scale"}
    ckpt = {FORMAT_KEY: TRAIN_FORMAT, META_KEY: json.dumps(old_meta), "model": model.state_dict()}
    torch.save({**ckpt, "config": {"data": {"test_scale": [480, 360]}}}, tmp_path / "old.pt")
    torch.save(ckpt, tmp_path / "older.pt")  # no configuration either: the documented default
    assert load_checkpoint(tmp_path / "old.pt").meta.test_scale == (480, 360)
    assert load_checkpoint(tmp_path / "older.pt").meta.test_scale == DEFAULT_TEST_SCALE


def test_a_pass_over_the_budget_runs_in_windows_or_is_refused_with_the_figures():
    model = BlockNet().eval()
    big = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    seg = Segmenter(model, runtime="torch", scale="native", max_memory="4G")
    assert seg.plan(1, 1200, 1600).mode == "whole"
    # a quadratic cost (attention over all tokens) makes a whole pass too large; windows are not
    seg.cost = PassCost(per_pixel=50.0, per_pixel2=1e-3, measured=True)
    plan = seg.plan(1, 1200, 1600)
    assert plan.mode == "slide" and plan.bytes <= seg.budget and plan.crop[0] % 32 == 0
    whole = Segmenter(model, runtime="torch", scale="native")(big)
    windows = seg(big)
    assert windows.shape == (1200, 1600) and (windows == whole).mean() > 0.99  # BlockNet sees 8x8 blocks
    seg.budget = parse_size("200M")
    with pytest.raises(MemoryBudgetError, match=r"memory budget is 200 MB .*--max-memory"):
        seg(big)


def test_batches_are_cut_to_what_the_budget_holds():
    seg = Segmenter(BlockNet().eval(), runtime="torch", scale="native", batch_size=8, max_memory="800M")
    seg.cost = PassCost(per_pixel=100.0, per_pixel2=0.0, measured=True)
    one = seg.plan(1, 960, 1280).bytes
    n = seg._batch_size(960, 1280)
    assert 1 < n == seg.budget // one < 8 and seg.plan(n, 960, 1280).bytes <= seg.budget


def test_labels_at_full_size_are_computed_a_band_at_a_time(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(1, 11, 45, 60)  # labels change everywhere: the direct computation
    full = upsample.resize_logits(logits, (365, 481)).argmax(1)
    monkeypatch.setattr(upsample, "DIRECT_WORKSPACE", 64 * 1024)  # many bands
    banded = upsample.upsample_argmax(logits, (365, 481), dtype=torch.uint8)
    assert banded.dtype == torch.uint8 and (banded.long() == full).float().mean() >= 0.9999


def test_labels_are_uint8_up_to_256_classes(shared_data):
    img = np.asarray(Image.open(sorted((shared_data / "camvid" / "test").glob("*.png"))[0]).convert("RGB"))
    assert Segmenter(BlockNet().eval(), runtime="torch")(img).dtype == np.uint8


def test_the_legend_scales_with_the_image():
    palette = [[i * 20, 0, 0] for i in range(11)]
    names = [f"class {i}" for i in range(11)]
    assert legend_font_px(240, 180) == 8 and legend_font_px(4032, 3024) == 84
    small = np.zeros((180, 240), np.uint8)
    small[:, ::22] = np.arange(11)[None, : small[:, ::22].shape[1]]  # 11 classes present
    pic = np.asarray(draw_legend(Image.new("RGB", (240, 180)), small, palette, names))
    rows = np.nonzero(pic.any(axis=(1, 2)))[0]
    assert rows.max() < 0.45 * 180  # the box covers at most ~40% of a small frame's height


CAP_CHILD = textwrap.dedent(
    """
    import resource, sys, numpy as np, torch
    from PIL import Image
    cap = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import lightseg
    seg = lightseg.Segmenter(sys.argv[1], runtime="torch")
    photo = np.asarray(Image.open(sys.argv[3]).convert("RGB"))
    labels = seg(photo)
    print(labels.shape, labels.dtype)
    """
)


def test_a_12mp_photo_runs_under_an_address_space_cap(shared_data, tmp_path):
    """The report: a 4032 x 3024 photo killed predict at 24 GB. At the model's scale it runs in a
    process whose address space is capped at what torch alone reserves plus 2 GB."""
    src = Image.open(sorted((shared_data / "camvid" / "test").glob("*.png"))[0]).convert("RGB")
    src.resize((4032, 3024), Image.BICUBIC).save(tmp_path / "phone.jpg", quality=90)
    torch.manual_seed(0)
    ckpt = save_weights(create_model("cgrseg_t", num_classes=11), tmp_path / "m.safetensors")
    probe = "import torch, lightseg; print(int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024)"
    base = int(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    )
    cap = base + 2 * 2**30
    done = subprocess.run(
        [sys.executable, "-c", CAP_CHILD, str(ckpt), str(cap), str(tmp_path / "phone.jpg")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(3024, 4032) uint8" in done.stdout
