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

"""pipofan train against the bundle runner: a tiny training run each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bundle_utils import REPO, TINY_TRAIN, TRAIN, make_tiny_demo


@pytest.mark.slow
def test_train_tiny_run_equals_bundle_runner_and_ends_with_the_segment_command(tmp_path):
    """``pipofan train`` and ``python -m monai.bundle run training`` with the same overrides: the same metrics
    and weights; the last log line of each names the model and the pipofan segment command."""
    import torch

    demo = make_tiny_demo(tmp_path / "demo")
    outputs = {}
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for name, cmd in (("pipofan", ["-m", "pipofan_monai", "train"]),
                      ("runner", ["-m", "monai.bundle", "run", "training", "--config_file", TRAIN])):
        run = tmp_path / name
        over = TINY_TRAIN + ["--datalist", str(demo), "--max_epochs", "1", "--val_interval", "1",
                             "--ckpt_dir", str(run / "models"), "--output_dir", str(run / "runs")]
        proc = subprocess.run([sys.executable] + cmd + over, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
        last = [line for line in proc.stdout.splitlines() if line.strip()][-1]
        model = (tmp_path / name / "models" / "model.pt").resolve()
        assert last.endswith(f"pipofan segment CT.nii.gz -o segmentations --model {model}"), last
        assert "best model (epoch " in last and model.is_file()
        outputs[name] = (json.loads((tmp_path / name / "runs" / "metrics.json").read_text()),
                         torch.load(model, map_location="cpu", weights_only=True))
    (m1, c1), (m2, c2) = outputs["pipofan"], outputs["runner"]
    assert [r["loss"] for r in m1] == pytest.approx([r["loss"] for r in m2], rel=1e-6)
    assert [r.get("val_mean_dice") for r in m1] == pytest.approx([r.get("val_mean_dice") for r in m2], rel=1e-6)
    assert c1["epoch"] == c2["epoch"] and c1["plans"]["network"] == c2["plans"]["network"]
    assert all(torch.allclose(c1["model"][k].float(), v.float()) for k, v in c2["model"].items())
