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

"""Bundle export and verification commands on configs/inference.json: verify_net_in_out, TorchScript
(ckpt_export, run as the documented command line) and ONNX (onnx_export with dynamic batch and slice size);
exported outputs must equal the eager network's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import onnx_export, verify_net_in_out
from monai.data import load_net_with_metadata

from pipofan_monai.networks import PIPOFAN

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "bundle" / "configs" / "inference.json")
META = str(REPO / "bundle" / "configs" / "metadata.json")
TINY = [8, 16, 32, 64, 64]



@pytest.fixture(scope="module")
def eager(tmp_path_factory):
    """A random-weight tiny network in eval mode and its checkpoint (plain state_dict)."""
    torch.manual_seed(0)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY)
    # non-trivial BatchNorm statistics, so that eval-mode normalisation is exercised by the comparison
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("export") / "model.pt"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 48, 80, generator=g) * 2 - 1]


def test_verify_net_in_out_default_network():
    """The command of the docs, on the full-size default network: 3 channels in, 4 float32 channels out."""
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=CONFIG, device="cpu")


def test_torchscript_export_cli_matches_eager(tmp_path, eager):
    net, ckpt = eager
    out = tmp_path / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(out),
           "--ckpt_file", str(ckpt), "--meta_file", META, "--config_file", CONFIG,
           "--network_channels", "[8,16,32,64,64]"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ts, meta, extra = load_net_with_metadata(str(out), more_extra_files=("inference.json",))
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    assert b"SlidingSliceInferer" in extra["inference.json"]
    ts.eval()
    with torch.no_grad():
        for x in _inputs():
            np.testing.assert_allclose(ts(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)


def test_onnx_export_matches_eager(tmp_path, eager):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net, ckpt = eager
    out = tmp_path / "model.onnx"
    dyn = {0: "batch", 2: "height", 3: "width"}
    onnx_export(
        net_id="network_def", filepath=str(out), ckpt_file=str(ckpt), meta_file=META, config_file=CONFIG,
        input_shape=[2, 3, 64, 64], network_channels=TINY,
        converter_kwargs={"input_names": ["image"], "output_names": ["pred"],
                          "dynamic_axes": {"image": dyn, "pred": dyn}},
    )
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    with torch.no_grad():
        for x in _inputs():  # a different batch size and slice size than the export example
            y = sess.run(None, {"image": x.numpy()})[0]
            np.testing.assert_allclose(y, net(x).numpy(), rtol=1e-4, atol=1e-4)
