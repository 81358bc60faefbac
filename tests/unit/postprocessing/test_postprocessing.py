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

"""Tests of the per-organ connected-component post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipofan_monai.postprocessing import (
    DEFAULT_NUM_COMPONENTS,
    KeepLargestOrganComponents,
    KeepLargestOrganComponentsd,
    keep_largest_components,
)


def _abdomen() -> np.ndarray:
    """(24, 20, 12) label map: liver block + 1-voxel liver speck, two kidneys + two kidney specks, a spleen."""
    lab = np.zeros((24, 20, 12), dtype=np.uint8)
    lab[2:10, 2:10, 2:10] = 1  # liver, 512 voxels
    lab[20, 18, 10] = 1  # liver speck
    lab[12:16, 2:6, 2:8] = 2  # right kidney, 96 voxels
    lab[18:22, 2:6, 2:8] = 2  # left kidney, 96 voxels
    lab[14, 14, 1] = 2  # kidney specks
    lab[12:14, 16:18, 10:11] = 2
    lab[14:20, 10:16, 3:9] = 3  # spleen
    return lab


def test_default_config():
    assert DEFAULT_NUM_COMPONENTS == {1: 1, 2: 2, 3: 1}


def test_two_kidneys_plus_specks_and_liver_speck():
    lab = _abdomen()
    out = keep_largest_components(lab)
    expected = lab.copy()
    expected[20, 18, 10] = 0
    expected[14, 14, 1] = 0
    expected[12:14, 16:18, 10:11] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    assert lab[20, 18, 10] == 1  # input untouched
    assert (out == 2).sum() == 192  # both kidneys kept


def test_absent_organ_and_one_kidney():
    lab = _abdomen()
    lab[lab == 3] = 0  # no spleen
    lab[18:22, 2:6, 2:8] = 0  # only one kidney (plus its specks)
    out = keep_largest_components(lab)
    assert (out == 3).sum() == 0
    # one kidney and the 4-voxel speck are the two largest kidney components; the 1-voxel speck goes
    assert (out == 2).sum() == 96 + 4
    assert out[14, 14, 1] == 0
    only_bg = np.zeros((5, 5, 5), dtype=np.int64)
    np.testing.assert_array_equal(keep_largest_components(only_bg), only_bg)


def test_per_organ_config_and_untouched_classes():
    lab = _abdomen()
    lab[0, 0, 0] = 5  # a class not in the config stays
    out = keep_largest_components(lab, {"2": 1, "1": None})
    assert out[0, 0, 0] == 5
    assert out[20, 18, 10] == 1  # liver untouched (None)
    assert (out == 2).sum() == 96  # only one kidney kept
    with pytest.raises(ValueError, match="num_components"):
        keep_largest_components(lab, {1: 0})
    with pytest.raises(ValueError, match="organ ids"):
        keep_largest_components(lab, {0: 1})


def test_connectivity():
    lab = np.zeros((6, 6, 6), dtype=np.int32)
    lab[0:2, 0:2, 0:2] = 1  # 8 voxels
    lab[2, 2, 2] = 1  # touches the block by a corner only
    full = keep_largest_components(lab, {1: 1}, connectivity=3)
    faces = keep_largest_components(lab, {1: 1}, connectivity=1)
    assert full[2, 2, 2] == 1 and faces[2, 2, 2] == 0
    with pytest.raises(ValueError, match="connectivity"):
        keep_largest_components(lab, connectivity=4)


def test_tensor_metatensor_and_dict_transform():
    lab = _abdomen()
    affine = torch.diag(torch.tensor([0.7, 0.7, 3.0, 1.0], dtype=torch.float64))
    mt = MetaTensor(torch.as_tensor(lab[None]).to(torch.int64), affine=affine, meta={"filename_or_obj": "x.nii"})
    out = KeepLargestOrganComponentsd(keys="pred")({"pred": mt, "other": 3})
    pred = out["pred"]
    assert isinstance(pred, MetaTensor)
    assert pred.dtype == torch.int64 and pred.shape == (1, 24, 20, 12)
    assert pred.meta["filename_or_obj"] == "x.nii"
    np.testing.assert_allclose(pred.affine.numpy(), affine.numpy())
    np.testing.assert_array_equal(pred[0].numpy(), keep_largest_components(lab))
    assert out["other"] == 3
    floats = KeepLargestOrganComponents()(torch.as_tensor(lab[None], dtype=torch.float32))
    assert floats.dtype == torch.float32 and float(floats[0, 20, 18, 10]) == 0.0
    KeepLargestOrganComponentsd(keys="missing", allow_missing_keys=True)({"pred": mt})


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        keep_largest_components(np.zeros((2, 4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="integer"):
        keep_largest_components(np.full((4, 4, 4), 0.5, dtype=np.float32))


# ---------------------------------------------------------------------------------------------- the fast path
def _reference_filter(lab: np.ndarray, num_components, connectivity: int) -> np.ndarray:
    """The filter as first written: find_objects bounding box, label, a whole-volume bincount, a stable argsort of
    the sizes (ties: first labelled, i.e. first in scan order) and a lookup table of the kept components."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(lab.ndim, connectivity)
    out = lab.copy()
    for cls, keep in num_components.items():
        mask = lab == cls
        if not mask.any():
            continue
        bbox = ndimage.find_objects(mask.astype(np.uint8))[0]
        comp, n = ndimage.label(mask[bbox], structure=structure)
        if n <= keep:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        kept = np.zeros(n + 1, dtype=bool)
        kept[np.argsort(-sizes, kind="stable")[:keep] + 1] = True
        region = out[bbox]
        region[~kept[comp] & mask[bbox]] = 0
    return out


def _random_labels(shape, seed: int) -> np.ndarray:
    """Classes 0-4 as thresholded smoothed noise (blobs of many sizes) plus single-voxel salt, and, for class 3,
    equal-sized cubes (ties in size, decided by scan order)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    lab = np.digitize(smooth, np.quantile(smooth, [0.4, 0.6, 0.75, 0.9])).astype(np.uint8)
    salt = rng.random(shape) < 0.02
    lab[salt] = rng.integers(0, 5, int(salt.sum()))
    lab[lab == 3] = 0
    side = [min(2, s) for s in shape]
    for _ in range(6):  # six 2x2x2 (or 2x2) cubes of class 3: equal sizes unless they touch
        corner = [int(rng.integers(0, s - d + 1)) for s, d in zip(shape, side)]
        lab[tuple(slice(c, c + d) for c, d in zip(corner, side))] = 3
    return lab


@pytest.mark.parametrize("seed,shape", [(0, (40, 37, 23)), (1, (31, 64, 9)), (2, (57, 45)), (3, (1, 50, 50))])
def test_fast_filter_equals_the_reference_on_random_maps(seed, shape):
    """Many components per class, ties in size (the cubes), connectivity 1..ndim, few and many kept components
    (comparisons and lookup table), one thread and several: the same label map as the first implementation."""
    lab = _random_labels(shape, seed)
    rules = [{1: 1, 2: 2, 3: 1}, {1: 3, 2: 7, 3: 2, 4: 1}, {3: 4, 1: 9}]
    for connectivity in range(1, lab.ndim + 1):
        for rule in rules:
            expected = _reference_filter(lab, rule, connectivity)
            for threads in (1, 2, 3):
                got = keep_largest_components(lab, rule, connectivity=connectivity, threads=threads)
                np.testing.assert_array_equal(got, expected, err_msg=f"{rule} {connectivity} {threads}")
            assert (expected != lab).any()  # something was removed: the comparison means something


def test_bounding_box_and_sizes_equal_scipy(monkeypatch):
    from scipy import ndimage

    from pipofan_monai.postprocessing import components
    from pipofan_monai.postprocessing.components import _bounding_box, _component_sizes

    lab = _random_labels((30, 26, 12), 5)
    for cls in range(6):
        mask = lab == cls
        expected = ndimage.find_objects(mask.astype(np.uint8))
        assert _bounding_box(mask) == (expected[0] if expected else None)
    comp, n = ndimage.label(lab == 1)
    expected = np.bincount(comp.ravel(), minlength=n + 1)
    for chunk in (components._COUNT_CHUNK, 1, 7, 1000, comp.size):  # chunk boundaries inside and between runs
        monkeypatch.setattr(components, "_COUNT_CHUNK", chunk)
        for c in (comp, comp.astype(np.uint16)):
            np.testing.assert_array_equal(_component_sizes(c, n), expected)


def test_more_components_than_uint16_labels():
    """41³ = 68921 single-voxel components (every other voxel; apart even with 26-connectivity) plus a bigger
    one: the uint16 labelling falls back to int32, and the filter keeps only the big one."""
    from pipofan_monai.postprocessing.components import _label

    lab = np.zeros((84, 82, 82), dtype=np.uint8)
    lab[:82:2, ::2, ::2] = 1
    lab[82:, :3, :3] = 1  # 2 x 3 x 3 = 18 voxels
    comp, n = _label(lab == 1, np.ones((3, 3, 3), dtype=bool))
    assert n == 41**3 + 1 and comp.dtype == np.int32
    out = keep_largest_components(lab, {1: 1}, threads=1)
    assert int((out == 1).sum()) == 18 and (out[82:, :3, :3] == 1).all()
    np.testing.assert_array_equal(out, _reference_filter(lab, {1: 1}, 3))
