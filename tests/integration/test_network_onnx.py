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

"""ONNX export of the full network against eager PyTorch (minutes of export on a CPU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pipofan_monai.networks import PIPOFAN

TINY = (8, 16, 32, 64, 64)


def test_onnx_export(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = PIPOFAN(channels=TINY).eval()
    x = torch.randn(2, 3, 64, 48)
    path = tmp_path / "pipofan.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x,), str(path), input_names=["image"], output_names=["pred"],
            dynamic_axes={"image": {0: "batch", 2: "h", 3: "w"}},
        )
    sess = ort.InferenceSession(str(path))
    for shape in [(2, 3, 64, 48), (1, 3, 32, 96)]:
        xx = torch.randn(*shape)
        out = sess.run(None, {"image": xx.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, net(xx).numpy(), atol=1e-5)
