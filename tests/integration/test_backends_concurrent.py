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

"""Two processes exporting one ONNX model at once export it once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from inference_utils import bn_network, plans_checkpoint

from pipofan_monai.inference import backends

REPO = Path(__file__).resolve().parents[2]


_CONCURRENT = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from pipofan_monai.inference.backends import prepare_network, OnnxRuntimeNetwork
from pipofan_monai.plans import read_plans, network_from_plans, load_network_weights
ckpt = sys.argv[1]
plans = read_plans(ckpt)
net = load_network_weights(network_from_plans(plans), ckpt).eval()
sys.stdin.read()  # both processes start exporting together
out = prepare_network(net, plans, ckpt, "onnxruntime")
x = torch.ones(1, 3, 64, 64)
with torch.inference_mode():
    print("DIFF", float((out(x) - net(x)).abs().max()), isinstance(out, OnnxRuntimeNetwork))
"""


@pytest.mark.slow
def test_concurrent_exporters_export_once(tmp_path):
    ckpt = plans_checkpoint(tmp_path / "model.pt", bn_network())
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop(backends.BACKEND_ENV, None)
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, str(ckpt)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outs = [p.communicate("", timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    text = "\n".join(outs)
    assert text.count("to ONNX for inputs") == 1, text  # one exported, the other waited for it and loaded it
    diffs = [float(line.split()[1]) for line in text.splitlines() if line.startswith("DIFF")]
    assert len(diffs) == 2 and max(diffs) < 1e-4 and text.count("True") >= 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx") == ["model.pt.64x64.onnx"]
