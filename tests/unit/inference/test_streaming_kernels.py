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

"""The streamed inversion's fast kernels equal what they replace, bit for bit: the uint8 argmax against
``torch.argmax`` (ties, signed zeros, infinities, strided outputs), the planar (per-slice 2D) resize against MONAI's
``Resize.inverse_transform`` (odd sizes, both ``align_corners``, several slab depths), and ``SlabInverter.labels``
with the planar path, with the fallback and with non-finite inputs against the per-slab MONAI reference."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Invertd, Resize
from monai.utils import TraceKeys

from pipofan_monai.inference import streaming
from pipofan_monai.inference.streaming import SlabInverter, argmax_uint8, planar_resize_matches


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_argmax_uint8_equals_torch_argmax_with_ties(k):
    g = torch.Generator().manual_seed(k)
    # few distinct values: ties between classes in most voxels, signed zeros, infinities
    levels = torch.tensor([-float("inf"), -1.0, -0.0, 0.0, 0.25, 0.5, float("inf")])
    x = levels[torch.randint(0, len(levels), (k, 13, 11, 7), generator=g)]
    expected = torch.argmax(x, dim=0).to(torch.uint8)
    out = torch.full((13, 11, 7), 99, dtype=torch.uint8)
    assert argmax_uint8(x, out) is out
    assert torch.equal(out, expected)
    # continuous values, and a strided output (a slab of a label volume)
    y = torch.rand(k, 9, 10, 5, generator=g)
    labels = torch.full((1, 9, 10, 12), 7, dtype=torch.uint8)
    argmax_uint8(y, labels[0, :, :, 3:8])
    assert torch.equal(labels[0, :, :, 3:8], torch.argmax(y, dim=0).to(torch.uint8))
    assert (labels[..., :3] == 7).all() and (labels[..., 8:] == 7).all()  # nothing written outside
    # a transposed (non-contiguous) input
    z = torch.rand(5, 6, k, generator=g).permute(2, 0, 1)
    out = torch.empty((5, 6), dtype=torch.uint8)
    assert torch.equal(argmax_uint8(z, out), torch.argmax(z, dim=0).to(torch.uint8))


def _op(height: int, width: int, n: int, mode: str = "trilinear", align=TraceKeys.NONE) -> dict:
    return {TraceKeys.CLASS_NAME: "Resize", TraceKeys.ORIG_SIZE: (height, width, n),
            TraceKeys.EXTRA_INFO: {"mode": mode, "align_corners": align, "dtype": "float32", "new_dim": 0}}


#: (K, h, w, n) -> (H, W), align_corners: upsampling and downsampling, odd and unequal sizes, the bundle's size
PLANAR_CASES = [
    ((4, 32, 32, 4), (150, 140), TraceKeys.NONE),
    ((3, 37, 41, 5), (101, 77), TraceKeys.NONE),
    ((2, 17, 9, 7), (250, 3), TraceKeys.NONE),
    ((4, 64, 64, 3), (200, 180), TraceKeys.NONE),
    ((4, 48, 48, 5), (97, 61), True),
    ((4, 96, 80, 2), (61, 47), TraceKeys.NONE),  # downsampling (a CT smaller than the network's input)
    ((4, 256, 256, 16), (512, 512), TraceKeys.NONE),  # the bundle's 512² CT at 256²
    ((4, 27, 23, 4), (30, 28), TraceKeys.NONE),  # small outputs: PyTorch may take another kernel
]


@pytest.mark.parametrize("shape,size,align", PLANAR_CASES)
def test_planar_resize_equals_monai_inverse_where_it_is_used(shape, size, align):
    """Where the once-per-shape check accepts the planar path, it equals MONAI's inverse on other data too
    (other seeds, probabilities and raw values, every chunk size); where it refuses, the inverter takes MONAI's path
    (below). The bundle's case must be accepted (it is what makes the inversion fast)."""
    op = _op(*size, shape[-1], align=align)
    ok = planar_resize_matches(shape, op)
    if shape == (4, 256, 256, 16):
        assert ok
    if not ok:
        return
    g = torch.Generator().manual_seed(1)
    for x in (torch.softmax(torch.randn(*shape, generator=g) * 8, 0), torch.randn(*shape, generator=g) * 100):
        ref = Resize(spatial_size=(*size, shape[-1])).inverse_transform(MetaTensor(x), op).as_tensor()
        for chunk in (1, 2, 3, shape[-1]):
            got = torch.empty_like(ref)
            for z, resized in streaming._planar_chunks(x, op, chunk):
                got[..., z:z + resized.shape[0]] = resized.permute(1, 2, 3, 0)
            assert torch.equal(got, ref), (chunk, float((got - ref).abs().max()))


def test_planar_check_is_cached_and_refuses_other_modes():
    op = _op(150, 140, 4)
    key = ((4, 32, 32, 4), ((150, 140), "trilinear", TraceKeys.NONE), torch.get_num_threads())
    streaming._PLANAR_CHECKED.pop(key, None)
    assert planar_resize_matches((4, 32, 32, 4), op, check=False) is False  # not checked yet: MONAI's path
    first = planar_resize_matches((4, 32, 32, 4), op)
    assert streaming._PLANAR_CHECKED[key] == first
    assert planar_resize_matches((4, 32, 32, 4), op, check=False) == first
    for mode in ("nearest", "area", "bicubic"):
        assert not planar_resize_matches((4, 32, 32, 4), _op(150, 140, 4, mode=mode))
    assert not planar_resize_matches((4, 32, 32, 4), {**op, TraceKeys.EXTRA_INFO: {
        **op[TraceKeys.EXTRA_INFO], "dtype": "float64"}})


def _inverter(slices: int, align: bool | None = None, depth: int = 11) -> tuple[SlabInverter, MetaTensor]:
    """An inverter whose preprocessing is a reorientation and an in-plane Resize (the bundle's kind), and the
    preprocessed image with its applied operations (an LPS-like affine: the reorientation flips)."""
    from monai.transforms import Compose, Orientationd, Resized

    pre = Compose([Orientationd("image", axcodes="RAS"),
                   Resized("image", spatial_size=(32, 32, -1), mode="trilinear", align_corners=align)])
    image = pre({"image": MetaTensor(torch.zeros(1, 150, 140, depth), affine=torch.diag(torch.tensor(
        [0.7, -0.8, 2.5, 1.0], dtype=torch.float64)))})["image"]
    inv = SlabInverter([], Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                       AsDiscreted("pred", argmax=True), slices=slices)
    return inv, image


def _reference_labels(inv: SlabInverter, probs: torch.Tensor, image: MetaTensor) -> MetaTensor:
    """MONAI's way: Invertd on the whole volume, then AsDiscreted's argmax."""
    d = inv.invertd({"image": image, "pred": MetaTensor(probs.clone())})
    return inv.argmax(d)["pred"]


@pytest.mark.parametrize("slices,align,depth", [(4, None, 11), (11, None, 11), (16, None, 11), (1, True, 5),
                                                (4, True, 11), (1, True, 2), (3, None, 1)])
def test_slab_labels_equal_monai_per_slab_with_and_without_the_planar_path(slices, align, depth, monkeypatch):
    """Labels and affine equal the whole-volume Invertd + argmax: slabs that divide the depth or not, one slab,
    one-slice slabs, a one-slice volume, align_corners False and True (MONAI scales an axis of one slice by 0
    then: the affine must not come from a one-slice slab of a thicker volume)."""
    inv, image = _inverter(slices, align, depth)
    g = torch.Generator().manual_seed(slices)
    probs = torch.softmax(torch.randn(4, 32, 32, depth, generator=g) * 3, 0)
    ref = _reference_labels(inv, probs, image)
    expected, affine = ref.as_tensor().to(torch.uint8), ref.affine
    calls = []
    planar = SlabInverter._planar_labels
    monkeypatch.setattr(SlabInverter, "_planar_labels", staticmethod(
        lambda *a: (calls.append(a[0].shape), planar(*a))[1]))
    out = inv.labels({"image": image, "pred": probs})["pred"]
    assert out.dtype == torch.uint8 and torch.equal(out.as_tensor(), expected)
    assert torch.equal(out.affine, affine)
    op = _op(150, 140, slices, align=TraceKeys.NONE if align is None else align)
    if slices <= depth and planar_resize_matches((4, 32, 32, slices), op):
        assert calls  # the planar path did run (full slabs; a shorter last one only when already checked)
    # the planar path refused: MONAI's resize with the fast argmax, the same labels
    calls.clear()
    monkeypatch.setattr(streaming, "planar_resize_matches", lambda *a, **k: False)
    out = inv.labels({"image": image, "pred": probs})["pred"]
    assert not calls and torch.equal(out.as_tensor(), expected) and torch.equal(out.affine, affine)


def test_non_finite_slabs_take_monais_argmax():
    """A NaN (torch.argmax takes it as the maximum) or inf in a slab: that slab goes through MONAI's resize and
    AsDiscrete, so the labels still equal MONAI's."""
    inv, image = _inverter(4)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 32, 32, 11, generator=g), 0)
    probs[2, 5, 7, 1] = float("nan")
    probs[1, 9, 9, 6] = float("inf")
    expected = _reference_labels(inv, probs, image).as_tensor().to(torch.uint8)
    out = inv.labels({"image": image, "pred": probs})["pred"]
    assert torch.equal(out.as_tensor(), expected)
    assert (expected[0, ..., 1] == 2).any()  # the NaN did win somewhere: the check means something
    assert (expected[0, ..., 6] == 1).any()
