#!/usr/bin/env bash
# Fresh-machine set-up: a virtual environment with the CPU build of torch 2.13.0 and lightseg.
# torch is installed first and pinned, so nothing later resolves to a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[export,openvino,tensorboard,effnet,video,serve,dev]"
python -c "import torch, lightseg; print('torch', torch.__version__, '| lightseg', lightseg.__version__)"
