# Copyright (c) pipofan-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Test-session settings: one torch thread per process, so parallel workers and subprocesses on a 2-core machine
do not oversubscribe the CPU (which makes small forward passes 100x slower); and a check that the tests write only
to temporary folders, never into the checkout (e.g. TensorBoard files or checkpoints in bundle/runs); and the same
random state at the start of every test, whichever pytest-xdist worker runs it and in which order; and the
PyTorch inference backend where configs say "auto" (ONNX Runtime is tested explicitly). Also the demo items that
the unit and the integration tests of the preprocessed cache share."""

from __future__ import annotations

import os
import sys
import random
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# "auto" inference backend = PyTorch in the suite (an ONNX export per tiny test model would cost seconds each);
# tests/unit/inference/test_backends.py runs ONNX Runtime explicitly
os.environ.setdefault("PIPOFAN_BACKEND", "torch")


REPO = Path(__file__).resolve().parents[1]
# the helper modules shared by unit and integration tests (bundle_utils, inference_utils, ...) live here, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))
_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", "build", "dist", ".whl", ".gl", ".mypy_cache", ".ruff_cache"}
# ignored output folders of the bundle: a rewritten file there counts too (e.g. models/model.pt)
_OUTPUT_DIRS = ("bundle/models", "bundle/runs", "bundle/outputs", "bundle/eval", "bundle/logs", "outputs")


def _checkout_files() -> dict[str, int]:
    """Files of the checkout (relative path -> mtime in ns; 0 outside the output folders), without caches and
    virtual environments."""
    found: dict[str, int] = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".venv") and not d.endswith(".egg-info")]
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), REPO)
            watched = rel.replace(os.sep, "/").startswith(_OUTPUT_DIRS)
            try:
                found[rel] = os.stat(os.path.join(root, name)).st_mtime_ns if watched else 0
            except OSError:
                continue
    return found


@pytest.fixture(autouse=True)
def same_random_state_in_every_test():
    """Seed torch, numpy and random before each test: a test that draws random weights or data (without a seed of
    its own) then sees the same values on every run, instead of whatever the tests before it on that xdist worker
    left behind (a failure seen once in CI must be reproducible)."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def tests_write_only_to_temporary_folders():
    """Fail the session when a test created files in the checkout (or rewrote the bundle's outputs)."""
    before = _checkout_files()
    yield
    after = _checkout_files()
    changed = sorted(k for k, v in after.items() if k not in before or before[k] != v)
    if changed:
        pytest.fail(f"tests wrote into the checkout {REPO} (tests must write only to temporary folders): "
                    f"{changed[:20]}", pytrace=False)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """The cache tests' datalist items: four demo volumes of ``cache_utils.SHAPE``, one per source dataset (LiTS,
    KiTS19, MSD Spleen, BTCV), in their own conventions. A module that needs other items defines its own fixture."""
    from cache_utils import SHAPE

    from pipofan_monai.apps.dataset_conversion import generate_demo_dataset, load_datalist

    root = tmp_path_factory.mktemp("demo")
    return load_datalist(generate_demo_dataset(root / "demo", num_cases_per_source=1, num_test=1, shape=SHAPE,
                                               seed=0))["training"]
