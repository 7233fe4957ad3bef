"""ONNX / torch.export graphs match eager PyTorch; full-resolution argmax without full-res logits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightseg.engine.export import OrtRunner, export_onnx, export_pt2
from lightseg.engine.predict import upsample_argmax
from lightseg.models import create_model, list_models

pytest.importorskip("onnxruntime")


def _eager_full_argmax(model, x):
    with torch.no_grad():
        return F.interpolate(model(x), size=x.shape[-2:], mode="bilinear", align_corners=False).argmax(1)


@pytest.fixture(scope="module")
def cgrseg_t():
    torch.manual_seed(0)
    return create_model("cgrseg_t", num_classes=11).eval()


def test_cgrseg_t_onnx_matches_eager(cgrseg_t, tmp_path):
    x = torch.randn(1, 3, 256, 192)
    path = export_onnx(cgrseg_t, tmp_path / "t.onnx", (256, 192))
    got = OrtRunner(path, threads=2)(x)
    with torch.no_grad():
        ref = cgrseg_t(x).numpy()
    assert got.shape == (1, 11, 32, 24)  # stride 8
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_cgrseg_t_uint8_argmax_graph_equals_eager(cgrseg_t, tmp_path):
    x = torch.randn(2, 3, 128, 128)
    path = export_onnx(cgrseg_t, tmp_path / "a.onnx", (128, 128), output="argmax", dynamic_batch=True)
    runner = OrtRunner(path)
    assert runner.output == "argmax" and runner.input_shape[0] is None
    got = runner(x)
    assert got.dtype == np.uint8 and got.shape == (2, 128, 128)
    assert (got == _eager_full_argmax(cgrseg_t, x).numpy()).mean() >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(kind="segmentor"))
def test_every_segmentor_exports(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(
        name, num_classes=5, **({"pooling": "avg"} if name.startswith("frm_") else {})
    ).eval()
    size = (64, 64)
    x = torch.randn(1, 3, *size)
    got = OrtRunner(export_onnx(model, tmp_path / "m.onnx", size))(x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(got - ref).max() <= 1e-4


def test_pt2_roundtrip(cgrseg_t, tmp_path):
    x = torch.randn(1, 3, 128, 96)
    path = export_pt2(cgrseg_t, tmp_path / "t.pt2", (128, 96))
    got = torch.export.load(str(path)).module()(x)
    with torch.no_grad():
        torch.testing.assert_close(got, cgrseg_t(x), atol=1e-4, rtol=1e-4)


def test_export_rejects_size_off_the_multiple(cgrseg_t, tmp_path):
    with pytest.raises(ValueError, match=r"multiple of 32.*128x128"):
        export_onnx(cgrseg_t, tmp_path / "x.onnx", (100, 128))


def test_ort_runner_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        OrtRunner(tmp_path / "nope.onnx")


@pytest.mark.parametrize(
    "shape,size,crop",
    [((64, 64), (512, 512), None), ((45, 60), (360, 480), (353, 479)), ((7, 9), (50, 70), (49, 69))],
)
@pytest.mark.parametrize("smooth", [True, False])
def test_upsample_argmax_equals_direct(shape, size, crop, smooth):
    g = torch.Generator().manual_seed(1)
    if smooth:  # few boundaries: the boundary-only path runs
        logits = F.interpolate(torch.randn(2, 20, 4, 5, generator=g) * 3, size=shape, mode="bilinear")
    else:  # labels change everywhere: the direct fallback runs
        logits = torch.randn(2, 20, *shape, generator=g)
    ref = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
    if crop:
        ref = ref[:, : crop[0], : crop[1]]
    got = upsample_argmax(logits, size, crop)
    assert got.shape == ref.shape
    assert (got == ref).float().mean().item() >= 0.9999
