"""What the CPU's kernels reach: the numbers behind the "where the floor is" argument (issue 6).

1. fp32 matrix product, 2048 x 2048 x 2048: torch (``@``) vs. ONNX Runtime (``MatMul``), GFLOP/s.
   The issue's floor (~180 GFLOP/s, so CGRSeg-T's 4.6 GMACs >= ~51 ms) is torch's figure; ORT's
   MLAS kernel is what the exported graphs run on.
2. The element-wise work that stays in fp32 around CGRSeg-T's INT8 convolutions, on a
   1 x 128 x 128 x 128 tensor (the size of a stride-4 MLP activation): the ``DQ -> Gelu -> Q``
   chain that sits between two quantised convolutions 50 times in the INT8 graph, ``Gelu`` alone,
   ``Relu`` (a cheap memory-bound pass, for scale) and an approximate GELU built from uint8
   table-lookup ops (``QLinearSigmoid(1.702x)`` times x by ``QLinearMul``), which lightseg does
   not use (it changes the function). Each unit is repeated 8 times in one graph; nanoseconds per
   element and unit. "DQ + Q" costs the chain minus ``Gelu`` alone.

Every case at 1 and at ``--threads`` threads, interleaved in blocks so that load drift hits all
alike. Writes benchmarks/results/cpu_kernels_<cpu>.{json,md}.

    python benchmarks/cpu_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lightseg.deploy.bench import environment, time_fn
from lightseg.deploy.runners.onnxruntime import ort_session_options

ROOT = Path(__file__).resolve().parents[1]
GEMM_N = 2048
ACTIVATION = (1, 128, 128, 128)
# Quantisation parameters of a typical GELU input / output in the calibrated INT8 graph.
IN_SCALE, IN_ZERO, OUT_SCALE, OUT_ZERO = 0.05, 128, 0.03, 10


def _session(nodes, inputs, outputs, initializers, threads: int):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    return ort.InferenceSession(
        model.SerializeToString(), ort_session_options(threads), providers=["CPUExecutionProvider"]
    )


REPEATS = 8


def elementwise_graphs() -> dict[str, list]:
    """name -> nodes of the element-wise cases: uint8 in, uint8 out, the unit repeated
    ``REPEATS`` times in a row so that intermediates come from ORT's memory arena as inside a model
    (a single op writing a fresh graph output pays page faults that dominate its own time)."""
    from onnx import helper

    def unit(ops: list[str]) -> list:
        nodes, cur = [], "x"
        for r in range(REPEATS):
            for i, op in enumerate(ops):
                out = "y" if (r, i) == (REPEATS - 1, len(ops) - 1) else f"t{r}_{i}"
                nodes += _node(helper, op, cur, out)
                cur = out
        return nodes

    def between(op: str) -> list:  # DQ, op x REPEATS, Q
        ops = ["DQ"] + [op] * REPEATS + ["Q"]
        names = ["x"] + [f"t{i}" for i in range(len(ops) - 1)] + ["y"]
        return [n for i, o in enumerate(ops) for n in _node(helper, o, names[i], names[i + 1])]

    return {
        "DQ -> Gelu -> Q (the INT8 graph's chain, 50x in CGRSeg-T)": unit(["DQ", "Gelu", "Q"]),
        "Gelu alone (fp32)": between("Gelu"),
        "Relu alone (fp32; a cheap memory-bound pass)": between("Relu"),
        "QLinearSigmoid(1.702x) * x (approximate GELU by table lookups, not used)": unit(["QSigmoidMul"]),
    }


def _node(helper, op: str, src: str, dst: str) -> list:
    if op == "DQ":
        return [helper.make_node("DequantizeLinear", [src, "s_in", "z_in"], [dst])]
    if op == "Q":
        return [helper.make_node("QuantizeLinear", [src, "s_out", "z_out"], [dst])]
    if op == "QSigmoidMul":  # both com.microsoft ops work on uint8 through 256-entry tables
        sig = helper.make_node(
            "QLinearSigmoid",
            [src, "s_in_1702", "z_in", "s_sig", "z_sig"],
            [dst + "_sig"],
            domain="com.microsoft",
        )
        mul = helper.make_node(
            "QLinearMul",
            [src, "s_in", "z_in", dst + "_sig", "s_sig", "z_sig", "s_in", "z_in"],
            [dst],
            domain="com.microsoft",
        )
        return [sig, mul]
    return [helper.make_node(op, [src], [dst])]


def _scalars():
    from onnx import TensorProto as T
    from onnx import helper

    values = {
        "s_in": (T.FLOAT, IN_SCALE),
        "z_in": (T.UINT8, IN_ZERO),
        "s_in_1702": (T.FLOAT, IN_SCALE * 1.702),
        "s_sig": (T.FLOAT, 1 / 256),
        "z_sig": (T.UINT8, 0),
        "s_out": (T.FLOAT, OUT_SCALE),
        "z_out": (T.UINT8, OUT_ZERO),
    }
    return [helper.make_tensor(name, dt, [], [v]) for name, (dt, v) in values.items()]


def cases(threads: int) -> dict[str, tuple[Callable[[], object], float, str]]:
    """name -> (function, work per call, unit) for ``threads`` threads."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32))
    flops = 2.0 * GEMM_N**3

    def torch_mm():
        torch.set_num_threads(threads)
        return a @ b

    shape = [GEMM_N, GEMM_N]
    mm = _session(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", T.FLOAT, shape)],
        [helper.make_tensor_value_info("y", T.FLOAT, shape)],
        [numpy_helper.from_array(b.numpy(), "w")],
        threads,
    )
    x_mm = a.numpy()
    out: dict[str, tuple[Callable[[], object], float, str]] = {
        "fp32 GEMM 2048, torch": (torch_mm, flops, "GFLOP/s"),
        "fp32 GEMM 2048, ONNX Runtime": (lambda: mm.run(None, {"x": x_mm}), flops, "GFLOP/s"),
    }
    x = rng.integers(0, 256, ACTIVATION, dtype=np.uint8)
    for name, nodes in elementwise_graphs().items():
        sess = _session(
            nodes,
            [helper.make_tensor_value_info("x", T.UINT8, list(ACTIVATION))],
            [helper.make_tensor_value_info("y", T.UINT8, list(ACTIVATION))],
            _scalars(),
            threads,
        )
        per_call = int(np.prod(ACTIVATION)) * REPEATS
        out[name] = (lambda s=sess: s.run(None, {"x": x}), per_call, "ns/element")
    return out


def measure(threads: list[int], rounds: int, runs: int) -> list[dict]:
    """Every case at every thread count, interleaved: ``rounds`` blocks of ``runs`` calls each."""
    built = {t: cases(t) for t in threads}
    times: dict[tuple[str, int], list[float]] = {(name, t): [] for t in threads for name in built[t]}
    for _ in range(rounds):
        for t in threads:
            for name, (fn, _, _) in built[t].items():
                times[(name, t)] += time_fn(fn, warmup=2, runs=runs)
    torch.set_num_threads(max(threads))
    rows = []
    for (name, t), ts in times.items():
        _, work, unit = built[t][name]
        med = statistics.median(ts)
        value = work / med / 1e9 if unit == "GFLOP/s" else med / work * 1e9
        rows.append(
            {
                "case": name,
                "threads": t,
                "value": round(value, 3),
                "unit": unit,
                "median_ms": round(med * 1e3, 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--runs", type=int, default=10, help="timed calls per case and round")
    args = p.parse_args(argv)
    rows = measure(sorted({1, args.threads}), args.rounds, args.runs)
    env = environment(args.threads)
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("cpu", "cpu"))).strip("-").lower()[:40]
    out = ROOT / "benchmarks" / "results" / f"cpu_kernels_{cpu}"
    out.with_suffix(".json").write_text(
        json.dumps({"environment": env, "config": vars(args), "rows": rows}, indent=2)
    )
    md = [
        f"# CPU kernels ({args.rounds} rounds x {args.runs} calls, medians)",
        "",
        " · ".join(f"{k}: {v}" for k, v in env.items()),
        "",
        f"Produced by `python benchmarks/cpu_kernels.py --threads {args.threads}`. GEMM: {GEMM_N}^3 fp32; "
        f"element-wise: a {'x'.join(map(str, ACTIVATION))} tensor.",
        "",
        "| case | threads | value | unit | median_ms |",
        "|---|---|---|---|---|",
    ]
    md += [f"| {r['case']} | {r['threads']} | {r['value']} | {r['unit']} | {r['median_ms']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
