"""The official VAN (Visual-Attention-Network/VAN-Classification ``models/van.py``) as the reference
for the ``van-imagenet`` layout.

``fixtures/van_official.json.gz`` holds, per variant, every state-dict key of the official model with
its shape, and the per-channel mean/std of its four stage outputs (after each stage's LayerNorm, as
its ``forward_features`` computes them) for the deterministic weights and input of
:mod:`timm_reference`. Extracted by running this module on the official file (not vendored here):
``PYTHONPATH=.:tests python tests/van_reference.py /path/to/VAN-Classification/models/van.py``;
the official code imports timm (``pip install --no-deps timm``; torchvision is stubbed).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import torch
from timm_reference import randomized_state, stage_stats, timm_efficientformer_v2

FIXTURE = Path(__file__).parent / "fixtures" / "van_official.json.gz"
VARIANTS = ("van_b0", "van_b1", "van_b2", "van_b3")  # the official factories have the same names
INPUT_SIZE = 128


def reference_input() -> torch.Tensor:
    return torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))


def official_stages(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The official ``forward_features`` loop, keeping every stage's normalised map (NCHW)."""
    outs = []
    for i in range(1, model.num_stages + 1):
        x, h, w = getattr(model, f"patch_embed{i}")(x)
        for blk in getattr(model, f"block{i}"):
            x = blk(x)
        x = getattr(model, f"norm{i}")(x.flatten(2).transpose(1, 2))
        x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
        outs.append(x)
    return outs


def load_fixture() -> dict:
    return json.loads(gzip.decompress(FIXTURE.read_bytes()))


def main(van_py: str) -> None:
    data: dict = {"source": "Visual-Attention-Network/VAN-Classification models/van.py", "variants": {}}
    with timm_efficientformer_v2():  # makes timm importable with a stand-in torchvision
        spec = importlib.util.spec_from_file_location("official_van", van_py)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # timm's register_model looks its module up there
        spec.loader.exec_module(module)
        for name in VARIANTS:
            model = getattr(module, name)().eval()
            shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
            model.load_state_dict(randomized_state(shapes))
            with torch.no_grad():
                feats = official_stages(model, reference_input())
            data["variants"][name] = {
                "keys": [[k, list(s)] for k, s in shapes.items()],
                "stages": stage_stats(feats),
            }
    FIXTURE.write_bytes(gzip.compress(json.dumps(data, separators=(",", ":")).encode(), mtime=0))


if __name__ == "__main__":
    main(sys.argv[1])
