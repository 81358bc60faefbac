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

"""Streamed inference memory per slice, measured in fresh processes at 512x512."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from inference_utils import TINY, strong_ckpt

REPO = Path(__file__).resolve().parents[2]


_MEMORY_SCRIPT = r"""
import json, sys, gc
import torch
from benchmarks.memory import _inference_memory_cases
print("RESULT " + json.dumps(_inference_memory_cases(json.loads(sys.argv[1]))))
"""


@pytest.mark.slow
def test_streamed_inference_memory_per_slice_is_bounded(tmp_path):
    """A 512x512x40 int16 CT through the bundle (in-plane 64, tiny network) in a fresh process: the peak RSS
    rise of the case over the RSS before it stays under the 4 MiB/slice target (the 4-class float32
    probabilities at 512²) times the slices plus a fixed allowance, where the whole-volume path needs more than
    that (both measured here, each in its own process)."""
    from benchmarks import write_synthetic_ct

    depth = 40
    img = tmp_path / "ct.nii.gz"
    write_synthetic_ct(img, tmp_path / "seg.nii.gz", (512, 512, depth))
    ckpt = strong_ckpt(tmp_path / "m.pt", 0)
    rises = {}
    for path, slices in (("streamed", 16), ("plain", 0)):
        case = {"image": str(img), "ckpt": str(ckpt), "label": path, "overrides": {
            "bundle_root": str(REPO / "bundle"), "network_channels": TINY, "spatial_size": 64, "sw_batch_size": 8,
            "output_dir": str(tmp_path / path), "device": "$torch.device('cpu')", "amp": False, "save_overlay": False,
            "overwrite": True, "stream_slices": slices}}
        # the checkout under test first: benchmarks/ is not installed, and pipofan_monai must be this tree's
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, json.dumps({"cases": [case], "threads": 1})],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert proc.returncode == 0 and line, proc.stderr[-3000:]
        res = json.loads(line[7:])[0]
        assert res["output_shape"] == [512, 512, depth]
        rises[path] = res["rise_mib"]
    target = 512 * 512 * 4 * 4 / 2**20 * depth  # 160 MiB
    allowance = 100.0  # MiB: one slab of 16 full-resolution slices (64 MiB), argmax slab, allocator slack
    assert rises["streamed"] <= target + allowance, rises
    assert rises["plain"] > target + allowance, rises  # the bound does separate the two paths
