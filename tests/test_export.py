"""ONNX / torch.export graphs match eager PyTorch; full-resolution argmax without full-res logits."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from lightseg.deploy.calibration import CalibrationImages
from lightseg.deploy.export import export_pt2
from lightseg.deploy.export_onnx import export_onnx, export_onnx_file, quantize_onnx_int8
from lightseg.deploy.runners import FileRunner
from lightseg.deploy.runners.onnxruntime import OrtSession
from lightseg.inference import upsample_argmax
from lightseg.models import create_model

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
    got = OrtSession(path, threads=2)(x)
    with torch.no_grad():
        ref = cgrseg_t(x).numpy()
    assert got.shape == (1, 11, 32, 24)  # stride 8
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999
    # Opset 20: each of CGRSeg-T's 57 GELUs is one Gelu node (at opset 18 the exporter writes
    # Div/Erf/Add/Mul/Mul, which ONNX Runtime does not fuse), and every BN is folded away.
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Gelu") == 57 and "Erf" not in ops and "BatchNormalization" not in ops


def test_cgrseg_t_uint8_argmax_graph_equals_eager(cgrseg_t, tmp_path):
    x = torch.randn(2, 3, 128, 128)
    path = export_onnx_file(cgrseg_t, tmp_path / "a.onnx", (128, 128), output="argmax", dynamic_batch=True)
    runner = FileRunner(path)
    assert runner.output == "argmax" and runner.info.batch is None
    got = runner(x)
    assert got.dtype == torch.uint8 and got.shape == (2, 128, 128)
    assert (got == _eager_full_argmax(cgrseg_t, x)).float().mean() >= 0.999


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
        OrtSession(tmp_path / "nope.onnx")


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
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = upsample_argmax(logits, size, crop)
        # The boundary pass runs on one thread; the caller's thread count comes back.
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert got.shape == ref.shape
    assert (got == ref).float().mean().item() >= 0.9999


def test_int8_falls_back_to_minmax_when_a_range_is_degenerate(tmp_path):
    """An activation spread over a few float32 steps (0.035 + 1e-7 * x: as a random-init CGRSeg-T
    gave at 64x64) breaks the percentile histogram (numpy: too many bins for the range of 2048
    bins); min-max ranges still quantise the graph."""
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.full((4, 3, 1, 1), 1e-7, np.float32), "w1")
    b1 = numpy_helper.from_array(np.full(4, 0.035, np.float32), "b1")
    w2 = numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1", "b1"], ["y"]),
            helper.make_node("Conv", ["y", "w2"], ["z"]),
        ],
        "degenerate",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 8, 8])],
        [w1, b1, w2],
    )
    src = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), src)
    batches = [np.random.default_rng(i).standard_normal((1, 3, 8, 8), dtype=np.float32) for i in range(2)]
    with pytest.warns(UserWarning, match="using min-max ranges"):
        dst = quantize_onnx_int8(src, tmp_path / "q.onnx", batches, keep_ends_fp32=False)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert "QuantizeLinear" in ops and not (tmp_path / "q.pre.onnx").exists()


def test_int8_quantises_convs_only_and_stays_close(cgrseg_t, shared_data, tmp_path):
    test_dir = shared_data / "camvid" / "test"
    mean, std = cgrseg_t.meta.mean, cgrseg_t.meta.std
    calib = CalibrationImages([test_dir], (128, 128), mean, std, 2)  # real images, normalised, 1 x 3 x H x W
    fp32 = export_onnx(cgrseg_t, tmp_path / "f.onnx", (128, 128))
    int8 = quantize_onnx_int8(fp32, tmp_path / "q.onnx", calib)
    graph = onnx.load(str(int8)).graph
    weights = {t.name for t in graph.initializer}
    int8_weights = {
        o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights for o in n.output
    }
    # Only convolutions get int8 weights (GELU, Mul, Add, MatMul, Softmax stay fp32) ...
    assert {n.op_type for n in graph.node if int8_weights & set(n.input)} == {"Conv"}
    # ... and no Softmax output is re-quantised (ORT would fuse that into a slow QLinearSoftmax):
    # the talking-head conv reading it keeps fp32 weights.
    softmax_out = {o for n in graph.node if n.op_type == "Softmax" for o in n.output}
    assert softmax_out and not any(
        n.op_type == "QuantizeLinear" and n.input[0] in softmax_out for n in graph.node
    )
    heads = [n for n in graph.node if n.op_type == "Conv" and softmax_out & set(n.input)]
    assert heads and all(n.input[1] in weights for n in heads)
    # The first conv (reads the image) and the classifier (writes the logits) stay fp32 too.
    ends = [n for n in graph.node if n.op_type == "Conv" and {"image", "logits"} & {*n.input, *n.output}]
    assert len(ends) == 2 and all(n.input[1] in weights for n in ends)
    x = next(iter(CalibrationImages([sorted(test_dir.glob("*.png"))[-1]], (128, 128), mean, std, 1)))
    a, b = OrtSession(fp32)(x), OrtSession(int8)(x)
    # Random weights (tiny, near-uniform logits), so no accuracy claim here (the benchmark measures
    # CamVid mIoU with trained weights): the int8 logits follow the fp32 ones. Wrong scales or zero
    # points give a correlation near 0.
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.9


def test_fold_channel_scales_is_exact_and_leaves_shared_tensors_alone():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from lightseg.deploy.export_onnx import fold_channel_scales

    rng = np.random.default_rng(0)
    init = {
        "w1": rng.standard_normal((3, 4, 3, 3)).astype(np.float32),
        "w2": rng.standard_normal((3, 4, 1, 1)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32),  # shared by both convs
        "s": rng.standard_normal((3, 1, 1)).astype(np.float32),  # per channel: folds
        "t": np.array([0.5], np.float32),  # not per output channel: left as a Mul
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s", "c1"], ["m1"]),
        helper.make_node("Conv", ["x", "w2", "b"], ["c2"]),
        helper.make_node("Mul", ["c2", "t"], ["m2"]),
        helper.make_node("Add", ["m1", "m2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in init.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)

    def run(p):
        sess = ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]

    ref = run(proto)
    assert fold_channel_scales(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Conv", "Mul", "Add"]
    np.testing.assert_allclose(run(proto), ref, rtol=1e-5, atol=1e-5)
    # The second conv still reads the original, unscaled shared bias.
    conv2 = proto.graph.node[1]
    assert conv2.input[2] == "b"
    b = next(t for t in proto.graph.initializer if t.name == "b")
    np.testing.assert_array_equal(numpy_helper.to_array(b), init["b"])


def test_bench_runner_reuses_an_exported_graph(cgrseg_t, tmp_path):
    from lightseg.deploy.bench import make_runner

    x = torch.randn(1, 3, 64, 64)
    first = make_runner(cgrseg_t, (64, 64), runtime="onnxruntime", cache_dir=tmp_path, threads=1)
    (path,) = tmp_path.glob("*.onnx")
    stamp = path.stat().st_mtime_ns
    again = make_runner(cgrseg_t, (64, 64), runtime="onnxruntime", cache_dir=tmp_path, threads=1)
    assert path.stat().st_mtime_ns == stamp  # reused, not exported again
    with torch.no_grad():
        ref = cgrseg_t(x).numpy()
    assert np.abs(first(x).numpy() - ref).max() <= 1e-4 and torch.equal(first(x), again(x))


def test_bench_cli_times_each_path_in_its_own_process(tmp_path, capsys):
    import json

    from lightseg.cli import main

    argv = ["bench", "cgrseg_t", "--size", "64", "64", "--runs", "2", "--warmup", "1", "--threads", "1"]
    argv += ["--runtime", "torch", "onnxruntime", "--format", "json", "--onnx-dir", str(tmp_path)]
    argv += ["--rounds", "2"]  # two processes per path, one run each
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["environment"]["paths_timed"] == "each in its own process"
    rows = report["results"]
    assert [(r["runtime"], r["optimize"], r["output"]) for r in rows] == [
        ("torch", "fold-bn", "logits"),
        ("onnxruntime", "fold-bn", "logits"),
    ]
    for r in rows:
        assert r["runs"] == 2 and len(r["times_ms"]) == 2
        assert min(r["times_ms"]) > 0
        assert (r["min_ms"], r["max_ms"]) == pytest.approx((min(r["times_ms"]), max(r["times_ms"])), abs=0.01)
        # The child's own peak (torch imported, model built), not what it inherited at fork.
        assert 100 < r["peak_mem_mb"] < 2000
    assert len(list(tmp_path.glob("*.onnx"))) == 1  # exported once, by the parent


def test_bench_cli_int8_json_is_clean(shared_data, tmp_path, capsys):
    import json

    from lightseg.cli import main

    argv = ["bench", "cgrseg_t", "--size", "64", "64", "--runs", "1", "--warmup", "0", "--no-isolate"]
    argv += ["--runtime", "onnxruntime", "--precision", "int8", "--format", "json"]
    torch.manual_seed(0)  # the CLI builds a random-init model
    argv += ["--calibration", str(shared_data / "camvid" / "train"), "--calibration-count", "1"]
    assert main(argv) == 0
    # ONNX Runtime's calibrator prints progress; none of it may reach the JSON on stdout.
    report = json.loads(capsys.readouterr().out)
    assert report["environment"]["paths_timed"] == "in one process, one after another"
    (row,) = report["results"]
    assert row["precision"] == "int8" and row["runtime"] == "onnxruntime"


@pytest.mark.parametrize("coarse", [(3, 4), (12, 16)])
def test_upsample_argmax_at_a_factor_other_than_an_even_integer_takes_the_cheaper_exact_way(
    coarse, monkeypatch
):
    """To an image's own size (a factor of 11.8 here) the pixel-by-pixel boundary pass runs only where
    labels change rarely; otherwise the banded direct computation, which is faster there."""
    from lightseg.inference import upsample

    g = torch.Generator().manual_seed(2)
    logits = F.interpolate(torch.randn(1, 11, *coarse, generator=g) * 3, size=(64, 86), mode="bilinear")
    low = logits.argmax(1)
    rare = (low[:, 1:] != low[:, :-1]).float().mean().item() <= upsample.MAX_BOUNDARY_FRACTION_PIXELS
    calls = []
    pixel = upsample._pixel_argmax
    monkeypatch.setattr(upsample, "_pixel_argmax", lambda *a: calls.append(1) or pixel(*a))
    monkeypatch.setattr(upsample, "DIRECT_WORKSPACE", 2**20)  # bands also for this small output
    size, crop = (756, 1008), (750, 1000)
    got = upsample.upsample_argmax(logits, size, crop)
    ref = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)[:, :750, :1000]
    assert bool(calls) == rare and rare == (coarse == (3, 4))
    assert (got == ref).float().mean().item() >= 0.9999
