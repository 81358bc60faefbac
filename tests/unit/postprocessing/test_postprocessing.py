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
