"""timm's EfficientFormerV2 as the reference for the ``efficientformerv2-timm`` layout.

The fixture ``fixtures/timm_efficientformerv2.json.gz`` holds, per variant, every state-dict key of
timm's model with its shape, and the per-channel mean/std of its four stage outputs for the
deterministic weights and input made here (attention-bias tables zeroed: see
``test_weights_layouts.py``). It was extracted from timm (version in the file) by running this
module: ``PYTHONPATH=. python tests/timm_reference.py``. timm imports torchvision for a few names
only; :func:`timm_efficientformer_v2` stubs it, so ``pip install --no-deps timm`` is enough.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.abc
import importlib.machinery
import json
import sys
import types
import zlib
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "timm_efficientformerv2.json.gz"
VARIANTS = ("s0", "s1", "s2", "l")
INPUT_SIZE = 224  # timm's model has fixed-size attention: 224 px only


def randomized_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Weights that depend on the key name only (CRC32-seeded): BN variances positive, the
    fixed-size ``attention_biases`` zero, integer buffers zero."""
    out = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("attention_biases"):
            out[key] = torch.zeros(shape)
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def reference_input() -> torch.Tensor:
    return torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))


def stage_stats(features: list[torch.Tensor]) -> list[dict[str, list[float]]]:
    """Per-channel mean and std of each N=1 stage output."""
    return [
        {
            key: [float(f"{v:.7g}") for v in t.tolist()]
            for key, t in (("mean", f[0].mean((1, 2))), ("std", f[0].std((1, 2))))
        }
        for f in features
    ]


class _AnyName(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyName(name, (torch.nn.Module,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@contextlib.contextmanager
def timm_efficientformer_v2():
    """``timm.models.efficientformer_v2`` imported with a stand-in torchvision; sys.modules and
    the import machinery are restored afterwards. Raises ImportError without timm."""
    saved = dict(sys.modules)
    finder = _StubFinder()
    if "torchvision" not in sys.modules:
        sys.meta_path.insert(0, finder)
    try:
        import timm.models.efficientformer_v2 as module

        yield module
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]


def main() -> None:
    data: dict = {"variants": {}}
    with timm_efficientformer_v2() as tm:
        import timm

        data["timm_version"] = timm.__version__
        data["torch_version"] = torch.__version__.split("+")[0]
        for v in VARIANTS:
            model = getattr(tm, f"efficientformerv2_{v}")().eval()
            shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
            model.load_state_dict(randomized_state(shapes))
            with torch.no_grad():
                feats = model.forward_intermediates(reference_input(), intermediates_only=True)
            data["variants"][v] = {
                "keys": [[k, list(s)] for k, s in shapes.items()],
                "stages": stage_stats(feats),
            }
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_bytes(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0))


def load_fixture() -> dict:
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))


if __name__ == "__main__":
    main()
