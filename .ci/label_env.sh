#!/usr/bin/env bash
# Creates the MONAI Label environment (default .venv-label, or the folder given as $1) from scratch: MONAI Label
# 0.8.5 and this project with its `label` extra, plus pytest, for tests/integration/test_monailabel.py. CPU is enough.
#   bash .ci/label_env.sh && .venv-label/bin/python -m pytest tests/integration/test_monailabel.py
# MONAI Label pins numpy < 2 and pydicom 2, so it gets its own environment (the main one keeps numpy 2).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-label}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }

python3 -m venv --clear "$VENV"
PY="$VENV/bin/python"
# MONAI Label imports torchvision unconditionally. torch 2.14.1 + torchvision 0.29.1 is a matching pair that this
# machine keeps on local disk (the CPU build of torch 2.13.0 has no matching torchvision here); CPU works with it.
quiet "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
# MONAI Label depends on sam2, published as an sdist only: an isolated build would download and unpack another
# torch just to build it. Build it against the torch installed above, without its optional CUDA extension.
quiet "$PY" -m pip install -q "setuptools>=70.1" wheel
SAM2_BUILD_CUDA=0 quiet "$PY" -m pip install -q --no-build-isolation -e ".[label]" pytest
quiet "$PY" -m pip check
"$PY" -c "import monailabel, monai, torch, torchvision, numpy, pipofan_monai
print('MONAI Label', monailabel.__version__, '| MONAI', monai.__version__, '| torch', torch.__version__,
      '| torchvision', torchvision.__version__, '| numpy', numpy.__version__)"
