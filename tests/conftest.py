import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LIGHTSEG_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data). Present in CI; skipped with a reason elsewhere."""
    if not DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder missing in CI: {DATA}")
        pytest.skip(f"shared data folder not found at {DATA} (set LIGHTSEG_DATA)")
    return DATA
