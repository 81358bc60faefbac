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

"""Mixed precision on the CPU: the bfloat16 hardware check, the one dtype rule of the bundle's ``amp`` and the
training inferer that autocasts where MONAI's trainer only autocasts on CUDA."""

from __future__ import annotations

import builtins
import io

import pytest
import torch

import pipofan_monai.inference.inferers as inferers
from pipofan_monai.inference import AutocastInferer, amp_dtype_for
from pipofan_monai.networks import PIPOFAN


class _Recorder(torch.nn.Module):
    """A convolution that records the dtype it computed in and returns two outputs, like a deep-supervision net."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return [y, y * 2]


def test_autocast_inferer_runs_bf16_and_returns_float32():
    net = _Recorder()
    x = torch.randn(2, 3, 16, 16)
    out = AutocastInferer("bfloat16")(x, net)
    assert net.seen == [torch.bfloat16]
    assert isinstance(out, list) and [o.dtype for o in out] == [torch.float32, torch.float32]
    ref = net.conv(x)
    err = (out[0] - ref).abs().max().item()
    assert 0 < err < 0.05  # bfloat16 rounding: not the float32 result, close to it
    torch.testing.assert_close(out[1], out[0] * 2)


def test_autocast_inferer_off_is_the_network_itself():
    net = _Recorder()
    x = torch.randn(2, 3, 16, 16)
    out = AutocastInferer(None)(x, net)
    assert net.seen == [torch.float32]
    assert torch.equal(out[0], net.conv(x))


def test_autocast_inferer_gradients_reach_float32_weights():
    torch.manual_seed(0)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=(4, 8, 16, 16, 16)).train()
    outs = AutocastInferer(torch.bfloat16)(torch.randn(2, 3, 32, 32), net)
    assert all(o.dtype == torch.float32 and o.shape[:2] == (2, 4) for o in outs)
    sum(o.mean() for o in outs).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_autocast_inferer_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="bfloat17"):
        AutocastInferer("bfloat17")


def test_amp_dtype_rule(monkeypatch):
    monkeypatch.setattr(inferers, "cpu_has_native_bf16", lambda: True)
    assert amp_dtype_for("cpu") is torch.bfloat16
    assert amp_dtype_for("cpu", amp=False) is None
    monkeypatch.setattr(inferers, "cpu_has_native_bf16", lambda: False)
    assert amp_dtype_for("cpu") is None  # emulated bfloat16 would be slower than float32


def test_cpu_bf16_check_reads_cpuinfo_without_torch_probes(monkeypatch):
    import torch.cpu as torch_cpu

    monkeypatch.delattr(torch_cpu, "_is_amx_tile_supported", raising=False)
    real_open = builtins.open

    def fake_open(flags):
        def opener(path, *a, **k):
            if str(path) == "/proc/cpuinfo":
                return io.StringIO(f"processor\t: 0\nflags\t\t: fpu sse {flags}\n")
            return real_open(path, *a, **k)
        return opener

    monkeypatch.setattr(builtins, "open", fake_open("avx2 avx512f amx_bf16 amx_tile"))
    assert inferers.cpu_has_native_bf16() is torch.backends.mkldnn.is_available()
    monkeypatch.setattr(builtins, "open", fake_open("avx2 avx512f avx512bw"))
    assert inferers.cpu_has_native_bf16() is False


def test_inference_amp_on_the_cpu_runs_pytorch_in_bfloat16():
    """The bundle's inference with ``amp`` on a CPU with bfloat16 units: PyTorch autocast (the ONNX export is
    float32), outputs float32 and close to the float32 ones; without amp "auto" keeps its meaning."""
    from pipofan_monai.inference import SlidingSliceInferer

    assert SlidingSliceInferer(backend="auto", amp=True, amp_dtype="bfloat16").backend == "torch"
    assert SlidingSliceInferer(backend="auto", amp=True, amp_dtype=None).backend == "auto"
    assert SlidingSliceInferer(backend="auto", amp=False, amp_dtype="bfloat16").backend == "auto"
    assert SlidingSliceInferer(backend="onnxruntime", amp=True, amp_dtype="bfloat16").backend == "onnxruntime"
    torch.manual_seed(0)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=(4, 8, 16, 16, 16)).eval()
    vol = torch.randn(1, 1, 32, 32, 6)
    with torch.no_grad():
        ref = SlidingSliceInferer(sw_batch_size=4)(vol, net)
        half = SlidingSliceInferer(sw_batch_size=4, amp=True, amp_dtype="bfloat16", backend="auto")(vol, net)
    assert half.dtype == torch.float32 and half.shape == ref.shape == (1, 4, 32, 32, 6)
    err = (half - ref).abs().max().item()
    assert 0 < err < 0.05  # computed in bfloat16: not bitwise the float32 result


@pytest.mark.parametrize("device", ["cpu", "$torch.device('cpu')"])
def test_train_config_amp_rule_with_device_as_string_or_torch_device(device, tmp_path, monkeypatch):
    """MONAI Label overrides ``device`` with a string: the training config's mixed-precision rule reads either."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    monkeypatch.setattr(inferers, "cpu_has_native_bf16", lambda: True)
    repo = Path(__file__).resolve().parents[3]
    parser = ConfigParser()
    parser.read_config(str(repo / "bundle" / "configs" / "train.json"))
    parser.update({"bundle_root": str(repo / "bundle"), "device": device, "output_dir": str(tmp_path),
                   "network_channels": [4, 8, 16, 32, 32]})
    net = parser.get_parsed_content("network")
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert parser.get_parsed_content("train#inferer").dtype is torch.bfloat16
    assert parser.get_parsed_content("validate#inferer").amp_dtype is torch.bfloat16
    parser["amp"] = False
    parser.ref_resolver.reset()
    assert parser.get_parsed_content("train#inferer").dtype is None
