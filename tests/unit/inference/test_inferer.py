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

"""Tests of the 2.5D sliding-slice inferer against a naive per-slice loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer

from pipofan_monai.inference import SlidingSliceInferer
from pipofan_monai.preprocessing import make_slab_indices


def _net(k: int = 4, kernel: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, k, kernel, padding=kernel // 2).eval()


def _naive(volume: torch.Tensor, network, context: int = 1) -> torch.Tensor:
    """Reference: one slab per forward pass, edge slices replicated by hand."""
    b_all, _, _, _, depth = volume.shape
    outs = []
    for b in range(b_all):
        slices = []
        for z in range(depth):
            idx = [min(max(z + o, 0), depth - 1) for o in range(-context, context + 1)]
            slab = torch.stack([volume[b, 0, :, :, i] for i in idx], dim=0)[None]  # (1, C, H, W)
            slices.append(network(slab)[0])  # (K, H, W)
        outs.append(torch.stack(slices, dim=-1))
    return torch.stack(outs, dim=0)


def test_is_monai_inferer():
    assert isinstance(SlidingSliceInferer(), Inferer)


def test_slab_indices_edges():
    np.testing.assert_array_equal(make_slab_indices(0, 4, 4).numpy(), [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    np.testing.assert_array_equal(make_slab_indices(0, 1, 1).numpy(), [[0, 0, 0]])
    np.testing.assert_array_equal(make_slab_indices(0, 2, 2).numpy(), [[0, 0, 1], [0, 1, 1]])
    np.testing.assert_array_equal(make_slab_indices(1, 2, 5, context=2).numpy(), [[0, 0, 1, 2, 3]])


@pytest.mark.parametrize("depth", [1, 2, 3, 7])
@pytest.mark.parametrize("sw_batch_size", [1, 2, 3, 64])
def test_equals_naive_loop(depth, sw_batch_size):
    net = _net()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 16, 32, depth)
    with torch.no_grad():
        out = SlidingSliceInferer(sw_batch_size=sw_batch_size)(x, net)
        ref = _naive(x, net)
    assert out.shape == (2, 4, 16, 32, depth)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_edge_slices_use_replicated_neighbours():
    # a network returning its 3 input channels shows exactly which slices were stacked
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 1, 4).expand(1, 1, 16, 16, 4).clone()
    out = SlidingSliceInferer(sw_batch_size=3)(x, lambda s: s)
    np.testing.assert_array_equal(out[0, :, 0, 0, :].T.numpy(), [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])


def test_context_two_channels():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(5, 2, 3, padding=1).eval()
    x = torch.randn(1, 1, 16, 16, 4)
    with torch.no_grad():
        out = SlidingSliceInferer(context=2, sw_batch_size=3)(x, net)
        ref = _naive(x, net, context=2)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_forward_batches_bounded_by_sw_batch_size():
    seen = []

    def net(s):
        seen.append(tuple(s.shape))
        return s[:, :2]

    SlidingSliceInferer(sw_batch_size=4)(torch.zeros(1, 1, 16, 16, 10), net)
    assert [s[0] for s in seen] == [4, 4, 2]
    assert all(s[1:] == (3, 16, 16) for s in seen)


def test_auto_sw_batch_size_fits_the_available_memory(monkeypatch):
    """"auto": half the available memory over the estimated peak of one slab (first convolution's width x the
    padded input size x SLAB_BYTES_PER_PIXEL_CHANNEL), between 1 and 32; same output as a fixed batch size."""
    import pipofan_monai.inference.inferers as inferers

    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, s):
            seen.append(s.shape[0])
            return self.conv(s)[:, :2]

    torch.manual_seed(0)
    net = Net().eval()
    per_slab = inferers.SLAB_BYTES_PER_PIXEL_CHANNEL * 32 * 32 * 8  # 30x20 slices padded to 32x32, 8 channels
    x = torch.randn(1, 1, 30, 20, 70)
    with torch.no_grad():
        ref = SlidingSliceInferer(sw_batch_size=7)(x, net)
        for available, expected in ((10.4 * per_slab, 5), (0.3 * per_slab, 1), (1e6 * per_slab, 32), (None, 32)):
            monkeypatch.setattr(inferers, "available_memory", lambda device, a=available: a)
            seen.clear()
            inferer = SlidingSliceInferer(sw_batch_size="auto")
            out = inferer(x, net)
            assert inferer.sw_batch_size == expected and max(seen) == expected and sum(seen) == 70, (available, seen)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the real probe on this machine: a positive byte count on the CPU, none for a device it cannot ask
    monkeypatch.undo()
    assert inferers.available_memory("cpu") > 0 and inferers.available_memory("meta") is None
    assert inferers.first_conv_channels(net) == 8 and inferers.first_conv_channels(lambda s: s) == 64
    with pytest.raises(ValueError, match="'auto'"):
        SlidingSliceInferer(sw_batch_size="many")


def test_softmax_activation():
    net = _net()
    x = torch.randn(1, 1, 16, 16, 3)
    with torch.no_grad():
        prob = SlidingSliceInferer(output_activation="softmax")(x, net)
        ref = torch.softmax(_naive(x, net), dim=1)
    np.testing.assert_allclose(prob.sum(1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(prob.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_roi_windows_equal_whole_slice_for_pointwise_net():
    net = _net(kernel=1)
    x = torch.randn(1, 1, 48, 40, 5)
    with torch.no_grad():
        whole = SlidingSliceInferer(sw_batch_size=2)(x, net)
        windows = SlidingSliceInferer(sw_batch_size=3, roi_size=(32, 16), overlap=0.5, mode="constant")(x, net)
        gauss = SlidingSliceInferer(roi_size=16, overlap=0.25, mode="gaussian")(x, net)
    assert windows.shape == whole.shape == (1, 4, 48, 40, 5)
    np.testing.assert_allclose(windows.numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gauss.numpy(), whole.numpy(), rtol=1e-4, atol=1e-5)


def test_roi_windows_see_only_roi_sized_inputs():
    sizes = set()

    def net(s):
        sizes.add(tuple(s.shape[2:]))
        return s[:, :2] * 2.0

    x = torch.randn(1, 1, 40, 20, 3)  # smaller than the window along W: padded then cropped
    out = SlidingSliceInferer(roi_size=(32, 32), overlap=0.5)(x, net)
    assert sizes == {(32, 32)}
    assert out.shape == (1, 2, 40, 20, 3)
    np.testing.assert_allclose(out[0, 1].numpy(), 2 * x[0, 0].numpy(), rtol=1e-5)


def test_non_divisible_size_is_padded_and_cropped():
    sizes = []

    def checked(net):
        def run(s):
            sizes.append(tuple(s.shape[2:]))
            if s.shape[2] % 16 or s.shape[3] % 16:
                raise ValueError("not divisible by 16")
            return net(s)

        return run

    net = _net()
    x = torch.randn(1, 1, 20, 17, 3)
    with torch.no_grad():
        out = SlidingSliceInferer()(x, checked(net))
        # reference: replicate-pad each slab to 32 x 32 at the high end, run, crop back
        ref = _naive(x, lambda s: net(F.pad(s, (0, 15, 0, 12), mode="replicate"))[..., :20, :17])
        out_c = SlidingSliceInferer(padding_mode="constant", cval=-1.0)(x, checked(net))
        ref_c = _naive(x, lambda s: net(F.pad(s, (0, 15, 0, 12), value=-1.0))[..., :20, :17])
    assert set(sizes) == {(32, 32)}
    assert out.shape == (1, 4, 20, 17, 3)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_c.numpy(), ref_c.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.numpy(), out_c.numpy())


def test_devices_and_metatensor():
    net = _net()
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.randn(1, 1, 16, 16, 4), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    with torch.no_grad():
        out = SlidingSliceInferer(sw_device="cpu", device="cpu", sw_batch_size=3)(x, net)
    assert out.device.type == "cpu"
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    np.testing.assert_allclose(out.affine.numpy(), affine.numpy())
    ref = _naive(x.as_tensor(), net).detach().numpy()
    np.testing.assert_allclose(out.as_tensor().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_integer_input_and_progress_and_channels_last():
    net = _net()
    x = torch.randint(-200, 200, (1, 1, 16, 16, 5), dtype=torch.int16)
    with torch.no_grad():
        out = SlidingSliceInferer(sw_batch_size=2, progress=True, channels_last=True)(x, net)
        ref = _naive(x.float(), net)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_amp_cpu_noop_unless_dtype_given():
    net = _net()
    x = torch.randn(1, 1, 16, 16, 3)
    with torch.no_grad():
        ref = _naive(x, net)
        noop = SlidingSliceInferer(amp=True)(x, net)
        bf16 = SlidingSliceInferer(amp=True, amp_dtype="bfloat16")(x, net)
    np.testing.assert_allclose(noop.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    assert bf16.dtype == torch.float32
    np.testing.assert_allclose(bf16.numpy(), ref.numpy(), atol=0.1)
    assert not np.array_equal(bf16.numpy(), ref.numpy())


@pytest.mark.parametrize(
    "shape, match",
    [((1, 16, 16, 3), "5D"), ((1, 2, 16, 16, 3), "1 channel"), ((1, 1, 16, 16, 0), "empty")],
)
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        SlidingSliceInferer()(torch.zeros(shape), _net())


def test_nan_input():
    x = torch.zeros(1, 1, 16, 16, 3)
    x[0, 0, 3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SlidingSliceInferer()(x, _net())


def test_bad_network_output_and_options():
    x = torch.zeros(1, 1, 16, 16, 3)
    with pytest.raises(ValueError, match="ONE tensor"):
        SlidingSliceInferer()(x, lambda s: (s, s))
    with pytest.raises(ValueError, match="expected"):
        SlidingSliceInferer()(x, lambda s: s[..., :8, :8])
    with pytest.raises(ValueError, match="roi_size"):
        SlidingSliceInferer(roi_size=(30, 30))
    with pytest.raises(ValueError, match="sw_batch_size"):
        SlidingSliceInferer(sw_batch_size=0)
    with pytest.raises(ValueError, match="output_activation"):
        SlidingSliceInferer(output_activation="sigmoid")
    with pytest.raises(ValueError, match="overlap"):
        SlidingSliceInferer(roi_size=16, overlap=1.0)
