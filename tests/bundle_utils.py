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

"""Helpers shared by the bundle tests: a tiny demo dataset and the bundle runner as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundle" / "configs" / "train.json")
TINY_CHANNELS = "[8,16,32,64,64]"

# overrides that make one epoch take about a second on 2 CPU cores
TINY_TRAIN = [
    "--network_channels", TINY_CHANNELS,
    "--spatial_size", "64",
    "--roi_size", "48",
    "--samples_per_epoch", "8",
    "--batch_size", "4",
    "--num_workers", "0",
    "--sw_batch_size", "16",
    "--progress_bar", "False",
    "--max_val_volumes", "2",
]


def make_tiny_demo(root: Path) -> Path:
    from pipofan_monai.apps.dataset_conversion import generate_demo_dataset

    return Path(generate_demo_dataset(root, num_cases_per_source=5, num_test=2, shape=(64, 64, 12), seed=0))


def run_bundle(args: list[str], cwd: Path = REPO, timeout: int = 600, runner: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` (or another runner prefix) and return the finished process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = (runner or [sys.executable, "-m", "monai.bundle"]) + args
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
