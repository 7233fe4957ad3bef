"""The default path chosen by measurement: the decision with stubbed timings (the fastest wins, a
reduced precision whose labels disagree with fp32 is rejected, the cache key and its invalidation,
the overrides), its record, and the runners it builds (concurrent sessions for a server)."""

import json
import threading

import numpy as np
import pytest
import torch
from helpers import TinySeg

from lightseg import Segmenter
from lightseg.deploy import autoselect, export_cache
from lightseg.deploy.autoselect import Candidate, Measurement
from lightseg.deploy.options import RunnerOptions
from lightseg.deploy.runners import AutoRunner, ExportingRunner, TorchRunner, build_runner
from lightseg.deploy.runners import auto as auto_runners
from lightseg.deploy.runners.base import Runner
from lightseg.errors import ConfigError, InputError

ORT = Candidate("onnxruntime", "fp32")
OV32 = Candidate("openvino", "fp32")
OV16 = Candidate("openvino", "bf16")
PATHS = [ORT, OV32, OV16]
REAL_CANDIDATES = autoselect.candidates


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Decisions and exports of each test in a cache of its own, with a fixed list of paths."""
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(autoselect.ENV, raising=False)
    monkeypatch.setattr(autoselect, "candidates", lambda device="cpu", precision=None: _only(precision))


def _only(precision):
    return [c for c in PATHS if precision is None or c.precision == precision]


class Fake(Runner):
    """A path that returns the model's own logits (its labels are eager fp32's), or with classes 0
    and 1 swapped on the top ``swapped`` fraction of rows (its labels differ there)."""

    def __init__(self, model, candidate, swapped=0.0):
        self.model, self.meta = model, model.meta
        self.runtime, self.precision, self.swapped = candidate.runtime, candidate.precision, swapped

    @torch.no_grad()
    def __call__(self, x):
        y = self.model(x).clone()
        rows = round(y.shape[-2] * self.swapped)
        y[:, [0, 1], :rows] = y[:, [1, 0], :rows]
        return y


class Stubs:
    """Stubbed paths: ``ms`` per candidate label (the timer), ``swapped`` per label (the labels),
    and a log of the paths built."""

    def __init__(self, ms, swapped=None):
        self.ms, self.swapped, self.built = ms, swapped or {}, []

    def build(self, model, candidate, options):
        self.built.append(candidate)
        return Fake(model, candidate, self.swapped.get(candidate.label, 0.0))

    def timer(self, candidate, call):
        return self.ms[candidate.label] / 1e3

    def decide(self, model, size=(64, 64), options=None, **kw):
        torch.manual_seed(0)
        x = torch.randn(1, 3, *size)
        kw = {"timer": self.timer, "build": self.build, "say": lambda text: None, **kw}
        return auto_runners.decide(model, x, options or RunnerOptions(), **kw)


def model(seed: int = 0) -> TinySeg:
    torch.manual_seed(seed)
    return TinySeg().eval()


# --------------------------------------------------------------------------------------------------
# Choosing
# --------------------------------------------------------------------------------------------------
def test_the_fastest_path_wins_and_the_record_says_why():
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    decision, runner = stubs.decide(model())
    assert decision.chosen == OV16 and (runner.runtime, runner.precision) == ("openvino", "bf16")
    status = {m.candidate: m.status for m in decision.measurements}
    assert status == {OV16: "chosen", ORT: "dropped", OV32: "dropped"}  # > 1.5 x 38 ms after a round
    me = decision.measurement(OV16)
    assert me.median_ms == 38.0 and me.agreement == 1.0 and len(me.times_ms) >= 2
    why = decision.why()
    assert "38.0 ms" in why and "onnxruntime fp32 70.6" in why and "100.00%" in why
    table = decision.table().splitlines()
    assert table[2].startswith("| openvino bf16 | 38.0 | 38.0 |") and "chosen" in table[2]


def test_a_close_race_is_timed_longer_and_goes_to_the_fastest():
    stubs = Stubs({"onnxruntime fp32": 60.0, "openvino fp32": 50.0, "openvino bf16": 80.0})
    decision, _ = stubs.decide(model())
    assert decision.chosen == OV32
    assert decision.measurement(ORT).status == "slower" and len(decision.measurement(ORT).times_ms) >= 15
    assert decision.measurement(OV16).status == "dropped"  # 80 > 1.5 x 50


def test_fp32_within_five_percent_of_a_faster_bf16_is_chosen():
    stubs = Stubs({"onnxruntime fp32": 40.0, "openvino fp32": 75.0, "openvino bf16": 38.5})
    assert stubs.decide(model())[0].chosen == ORT  # 40.0 <= 1.05 x 38.5: the gain is noise
    stubs = Stubs({"onnxruntime fp32": 41.0, "openvino fp32": 75.0, "openvino bf16": 38.5})
    assert stubs.decide(model(), remeasure=True)[0].chosen == OV16  # 41.0 > 40.4


def test_a_bf16_path_whose_labels_disagree_with_fp32_is_rejected_untimed():
    stubs = Stubs(
        {"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0},
        swapped={"openvino bf16": 0.25},  # 2 of 8 logit rows: a quarter of the labels can change
    )
    decision, _ = stubs.decide(model())
    bf16 = decision.measurement(OV16)
    assert bf16.status == "rejected" and bf16.times_ms == []
    assert bf16.agreement < autoselect.AGREEMENT and "< 99.5%" in bf16.note
    assert decision.chosen == ORT
    assert "openvino bf16 rejected" in decision.why()


def test_agreement_is_measured_on_the_probe_against_eager_fp32():
    """The share of the probe's full-resolution pixels whose label equals eager fp32's: here
    computed directly, by upsampling both logits bilinearly (align_corners=False) and comparing
    argmaxes."""
    m = model()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    candidate = Candidate("openvino", "bf16")
    with torch.no_grad():
        ref, off = m(x), Fake(m, candidate, swapped=1 / 8)(x)

    def full_labels(logits):
        return torch.nn.functional.interpolate(logits, (64, 64), mode="bilinear", align_corners=False).argmax(
            1
        )

    expected = (full_labels(off) == full_labels(ref)).float().mean().item()
    assert 0.9 < expected < 1.0
    stubs = Stubs(
        {"onnxruntime fp32": 70, "openvino fp32": 75, "openvino bf16": 38}, swapped={"openvino bf16": 1 / 8}
    )
    decision, _ = stubs.decide(m)
    assert decision.measurement(OV16).agreement == pytest.approx(expected)


def test_a_path_that_fails_is_noted_and_the_others_still_compete():
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    real_build = stubs.build

    def build(model, candidate, options):
        if candidate.runtime == "openvino":
            raise InputError("the OpenVINO runtime is not installed")
        return real_build(model, candidate, options)

    decision, _ = stubs.decide(model(), build=build)
    assert decision.chosen == ORT
    assert (
        decision.measurement(OV16).status == "failed" and "not installed" in decision.measurement(OV16).note
    )


def test_eager_is_the_fallback_when_no_exported_path_runs(monkeypatch):
    stubs = Stubs(
        {"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0, "torch fp32": 140.0}
    )

    def build(model, candidate, options):
        if candidate.runtime != "torch":
            raise InputError("no ONNX exporter")
        return stubs.build(model, candidate, options)

    monkeypatch.setattr(
        autoselect, "fallbacks", lambda device="cpu", precision=None: [Candidate("torch", "fp32")]
    )
    decision, runner = stubs.decide(model(), build=build)
    assert decision.chosen == Candidate("torch", "fp32") and runner.runtime == "torch"
    assert {m.status for m in decision.measurements} == {"failed", "chosen"}


# --------------------------------------------------------------------------------------------------
# The cache: keyed by what the decision depends on
# --------------------------------------------------------------------------------------------------
def test_the_decision_is_cached_and_reused_without_measuring():
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    first, _ = stubs.decide(model())
    stubs.built.clear()
    again, runner = stubs.decide(model())
    assert runner is None and stubs.built == [] and again.cached and not first.cached
    assert again.chosen == OV16 and again.measurement(OV16).times_ms == first.measurement(OV16).times_ms
    assert "cached" in again.why()
    record = json.loads(next((export_cache.cache_root() / "decisions").glob("*.json")).read_text())
    assert record["chosen"] == {"runtime": "openvino", "precision": "bf16", "device": "cpu", "provider": None}
    assert record["versions"]["torch"] == torch.__version__ and record["machine"]["flags"]


@pytest.mark.parametrize(
    "change",
    ["runtime version", "cpu", "cpu flags", "threads", "size", "weights"],
)
def test_the_cache_key_changes_with_what_the_decision_depends_on(change, monkeypatch):
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    stubs.decide(model())
    stubs.built.clear()
    m, size, options = model(), (64, 64), RunnerOptions()
    if change == "runtime version":
        real = export_cache.library_versions
        monkeypatch.setattr(export_cache, "library_versions", lambda: {**real(), "openvino": "2099.0"})
    elif change in ("cpu", "cpu flags"):
        real_identity = autoselect.cpu_identity()
        other = (
            {"cpu": "Another CPU"} if change == "cpu" else {"flags": [*real_identity["flags"], "amx_bf16"]}
        )
        monkeypatch.setattr(autoselect, "cpu_identity", lambda: {**real_identity, **other})
    elif change == "threads":
        options = RunnerOptions(threads=autoselect.effective_threads(RunnerOptions()) + 1)
    elif change == "size":
        size = (64, 96)
    else:
        with torch.no_grad():
            m.conv.bias.add_(0.5)
    decision, _ = stubs.decide(m, size, options)
    assert not decision.cached and stubs.built == PATHS  # measured again
    stubs.built.clear()
    assert stubs.decide(m, size, options)[0].cached and stubs.built == []  # and cached under the new key


def test_a_decision_on_the_synthetic_probe_is_not_used_for_real_images():
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    stubs.decide(model(), probe_kind="synthetic")
    assert stubs.decide(model(), probe_kind="synthetic")[0].cached  # bench --auto reuses it
    stubs.built.clear()
    real, _ = stubs.decide(model())
    assert not real.cached and real.probe == "first input" and stubs.built == PATHS


def test_an_unreadable_or_old_record_is_measured_again():
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    stubs.decide(model())
    path = next((export_cache.cache_root() / "decisions").glob("*.json"))
    path.write_text("{not json")
    assert not stubs.decide(model())[0].cached
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "version": 0}))
    assert not stubs.decide(model())[0].cached


# --------------------------------------------------------------------------------------------------
# Overrides: asked for wins, then $LIGHTSEG_RUNTIME, then the measurement
# --------------------------------------------------------------------------------------------------
def test_the_environment_variable_overrides_the_measurement(monkeypatch):
    monkeypatch.setenv(autoselect.ENV, "openvino:bf16")
    runner = build_runner(TinySeg())
    assert isinstance(runner, ExportingRunner) and (runner.runtime, runner.precision) == ("openvino", "bf16")
    assert runner.why == f"${autoselect.ENV}"
    monkeypatch.setenv(autoselect.ENV, "onnxruntime")
    assert (build_runner(TinySeg()).runtime, build_runner(TinySeg()).precision) == ("onnxruntime", "fp32")
    monkeypatch.setenv(autoselect.ENV, "auto")
    assert isinstance(build_runner(TinySeg()), AutoRunner)


def test_asking_for_a_runtime_wins_over_the_variable_and_the_measurement(monkeypatch):
    monkeypatch.setenv(autoselect.ENV, "openvino:bf16")
    runner = build_runner(TinySeg(), runtime="torch")
    assert isinstance(runner, TorchRunner) and (runner.precision, runner.why) == ("fp32", "asked for")
    monkeypatch.delenv(autoselect.ENV)
    assert build_runner(TinySeg(), runtime="openvino").precision == "fp32"  # a runtime alone keeps fp32


def test_asking_for_a_precision_alone_measures_only_its_paths(monkeypatch):
    runner = build_runner(TinySeg(), precision="fp32")
    assert isinstance(runner, AutoRunner)
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    decision, _ = stubs.decide(model(), options=RunnerOptions(precision="fp32"))
    assert decision.chosen == ORT and stubs.built == [ORT, OV32]
    # bf16 asked for is never rejected for its labels: the figure is recorded
    stubs = Stubs({"openvino bf16": 38.0}, swapped={"openvino bf16": 0.25})
    decision, _ = stubs.decide(model(), options=RunnerOptions(precision="bf16"))
    assert decision.chosen == OV16 and "< 99.5%" in decision.measurement(OV16).note


@pytest.mark.parametrize("value", ["tensorrt", "torch:int8", "openvino:fp64"])
def test_a_bad_variable_names_itself_and_the_values(value, monkeypatch):
    monkeypatch.setenv(autoselect.ENV, value)
    with pytest.raises(ConfigError, match=f"{autoselect.ENV}={value!r}"):
        build_runner(TinySeg())


def test_int8_is_never_chosen_for_you(monkeypatch):
    monkeypatch.setattr(autoselect, "candidates", REAL_CANDIDATES)
    assert all(c.precision != "int8" for d in ("cpu", "cuda") for c in autoselect.candidates(d))
    with pytest.raises(InputError, match="calibration"):  # int8 alone: a runtime, no measurement
        build_runner(TinySeg(), precision="int8")


# --------------------------------------------------------------------------------------------------
# The runner: decided on the first input of each size
# --------------------------------------------------------------------------------------------------
def test_segmenter_decides_on_its_first_image_and_says_what_and_why(monkeypatch):
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    monkeypatch.setattr(auto_runners, "build_path", stubs.build)
    monkeypatch.setattr(autoselect, "_wall_clock", stubs.timer)
    seg = Segmenter(model(), scale="native")
    assert (seg.runtime, seg.precision) == (None, None) and "first input" in seg.why
    image = np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    labels = seg(image)
    assert (seg.runtime, seg.precision) == ("openvino", "bf16") and "38.0 ms" in seg.why
    assert np.array_equal(labels, Segmenter(model(), runtime="torch", optimize="none", scale="native")(image))
    assert set(seg.runner.decisions) == {(64, 72)}  # the padded size
    seg(np.zeros((100, 70, 3), np.uint8))
    assert set(seg.runner.decisions) == {(64, 72), (104, 72)}


def test_the_real_paths_run_and_agree_on_a_tiny_model(monkeypatch):
    """No stubs: the paths installed here are exported, built, checked and timed."""
    monkeypatch.setattr(autoselect, "candidates", REAL_CANDIDATES)
    seg = Segmenter(model(), scale="native")
    seg.runner.say = lambda text: None
    seg(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    decision = seg.runner.decisions[(64, 64)]
    timed = [m for m in decision.measurements if m.times_ms]
    assert timed and all(m.agreement >= autoselect.AGREEMENT for m in timed)
    assert seg.runtime == decision.chosen.runtime


def test_without_onnxruntime_or_openvino_eager_is_measured(monkeypatch):
    monkeypatch.setattr(autoselect, "candidates", REAL_CANDIDATES)
    monkeypatch.setattr(autoselect, "installed", lambda module: False)
    for bf16 in (True, False):
        monkeypatch.setattr(autoselect, "has_bf16", lambda bf16=bf16: bf16)
        want = [Candidate("torch", "fp32")] + ([Candidate("torch", "bf16")] if bf16 else [])
        assert autoselect.candidates() == want
    monkeypatch.setattr(autoselect, "installed", lambda module: module == "openvino")
    assert autoselect.candidates() == [OV32]  # no bf16 instructions: no bf16 path
    assert autoselect.candidates(precision="bf16") == [OV16]  # asked for: whatever the CPU


# --------------------------------------------------------------------------------------------------
# Candidates on a GPU machine (no GPU here: listed, not measured)
# --------------------------------------------------------------------------------------------------
def test_gpu_candidates_include_torch_half_precisions_and_ort_gpu_providers(monkeypatch):
    monkeypatch.setattr(autoselect, "candidates", REAL_CANDIDATES)
    monkeypatch.setattr(autoselect, "_cuda_bf16", lambda: True)
    monkeypatch.setattr(
        autoselect, "ort_gpu_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    )
    paths = autoselect.candidates("cuda")
    assert [c.label for c in paths] == [
        "torch fp32 cuda",
        "torch bf16 cuda",
        "torch fp16 cuda",
        "onnxruntime fp32 TensorRT",
        "onnxruntime fp32 CUDA",
    ]
    trt = paths[3].options(RunnerOptions())
    assert trt.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_fp16_is_refused_on_a_cpu():
    with pytest.raises(InputError, match="fp16 runs on CUDA"):
        build_runner(TinySeg(), runtime="torch", precision="fp16")


# --------------------------------------------------------------------------------------------------
# Concurrency for a server: sessions and streams
# --------------------------------------------------------------------------------------------------
def test_streams_run_side_by_side_with_the_same_results(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    m = model()
    for runtime in ("onnxruntime", "openvino"):
        one = build_runner(m, runtime=runtime, threads=2)(x)
        runner = build_runner(m, runtime=runtime, threads=2, streams=2)
        assert runner.concurrency == 2
        session = runner.file_runner(64, 64).session
        if runtime == "onnxruntime":
            assert len(session.sessions) == 2
            assert all(s.get_session_options().intra_op_num_threads == 1 for s in session.sessions)
        else:
            assert session.compiled.get_property("NUM_STREAMS") == 2
        outs = side_by_side(runner, x, 4)
        assert all(isinstance(o, torch.Tensor) and torch.allclose(o, one, atol=1e-5) for o in outs), outs


def side_by_side(runner, x, n: int) -> list:
    """``runner(x)`` from ``n`` threads at once: each result, or the exception it raised."""
    outs: list = [None] * n

    def call(i):
        try:
            outs[i] = runner(x)
        except Exception as e:
            outs[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outs


def test_measurement_records_round_trip():
    m = Measurement(OV16, [1.0, 2.0], 0.999, "chosen", "")
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


# --------------------------------------------------------------------------------------------------
# The command line: predict says what ran and why; bench --auto prints the table
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def stubbed(monkeypatch):
    stubs = Stubs({"onnxruntime fp32": 70.6, "openvino fp32": 75.4, "openvino bf16": 38.0})
    monkeypatch.setattr(auto_runners, "build_path", stubs.build)
    monkeypatch.setattr(autoselect, "_wall_clock", stubs.timer)
    return stubs


@pytest.fixture()
def checkpoint(tmp_path):
    from lightseg import create_model, save_weights

    torch.manual_seed(0)
    return save_weights(create_model("cgrseg_t", num_classes=3), tmp_path / "m.safetensors")


def test_predict_says_what_was_chosen_and_why(stubbed, checkpoint, tmp_path, capsys):
    from PIL import Image

    from lightseg.cli import main

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
        tmp_path / "a.png"
    )
    argv = [
        "predict",
        str(checkpoint),
        str(tmp_path / "a.png"),
        "--out",
        str(tmp_path / "o"),
        "--scale",
        "native",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "lightseg: choosing the fastest of 3 paths for cgrseg_t at 64x64" in captured.err
    assert "(cgrseg_t on openvino bf16: measured fastest of 3 paths on this machine at 64x64" in captured.out
    assert main(argv) == 0
    again = capsys.readouterr()
    assert (
        "choosing" not in again.err and "; measured " in again.out and ", cached, scale native" in again.out
    )


def test_bench_auto_prints_the_table_behind_the_choice(stubbed, checkpoint, capsys):
    from lightseg.cli import main

    assert main(["bench", "--auto", str(checkpoint), "--size", "64", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cgrseg_t at 64x64, ") and "probe: synthetic" in out[0]
    assert out[1] == "| path | median ms | min ms | timed runs | labels = eager fp32 | |"
    assert out[3].startswith("| openvino bf16 | 38.0 | 38.0 |") and out[3].endswith("| chosen |")
    assert out[-2].startswith("default: openvino bf16 (measured fastest")
    assert "predict decides again on its first image" in out[-1]
    assert main(["bench", "--auto", str(checkpoint), "--size", "64", "64", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["cached"] and record["chosen"]["precision"] == "bf16" and record["probe"] == "synthetic"


@pytest.mark.parametrize("threads, streams", [(1, 1), (2, 2), (4, 4), (6, 3), (8, 4), (16, 8), (64, 8)])
def test_a_server_runs_one_stream_per_core_up_to_four_then_one_per_two(threads, streams):
    from lightseg.deploy.cpu import serve_streams

    assert serve_streams(threads) == streams
