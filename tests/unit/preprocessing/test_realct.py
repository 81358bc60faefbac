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

"""Transforms on real CT (../shared/data/realct, facts in its README.md): DICOM series (JPEG-2000) and NIfTI
label alignment, 3-slice DICOM + NRRD mask, PLI-oriented NIfTI, label remapping and 2.5D samples. These few
cases check geometry and plumbing only, not accuracy."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from pipofan_monai.preprocessing import MapDatasetLabelsd, get_preprocessing_transforms, load_ct_transforms
from pipofan_monai.apps.training import RandSlabCropd, SlabToChannelsd

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "realct"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real CT test data not found at {DATA}")

TS = DATA / "ts_upper_abdomen_dicom"
DCMQI = DATA / "dcmqi_ct3slice"
PLI = DATA / "deeplesion_pelvis" / "ct_pli.nii.gz"
# the TotalSegmentator label file: 1 liver, 2 right kidney, 3 left kidney, 4 spleen -> global ids
TS_TABLE = {"ts_abd4": {"label_map": {0: 0, 1: 1, 4: 3}, "labeled_classes": [1, 3]}}


@pytest.fixture(scope="module")
def ts_loaded():
    item = {"image": str(TS / "dicom"), "label": str(TS / "labels_abd4_ras.nii.gz"), "dataset": "ts_abd4"}
    return item, Compose(load_ct_transforms(("image", "label")))(item)


def test_dicom_series_and_label_alignment(ts_loaded):
    _, out = ts_loaded
    img, lab = out["image"], out["label"]
    assert img.shape == (1, 512, 512, 20) and lab.shape == (1, 512, 512, 20)
    aff = img.affine.numpy()
    np.testing.assert_allclose(np.diag(aff)[:3], [0.9766, 0.9766, 2.0], atol=1e-3)  # RAS: positive diagonal
    np.testing.assert_allclose(aff[:3, :3] - np.diag(np.diag(aff)[:3]), 0, atol=1e-6)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    np.testing.assert_allclose(lab.affine.numpy(), aff, atol=1e-3)  # CheckSameGridd passed as well
    assert float(img.min()) == -1024.0 and float(img.max()) > 1000  # real HU (decoded JPEG-2000)
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0, 4.0}
    liver, spleen = lab[0] == 1, lab[0] == 4
    assert 40 <= float(img[0][liver].median()) <= 200
    assert 40 <= float(img[0][spleen].median()) <= 200
    assert float(img[0][lab[0] == 0].median()) < 0  # background is mostly fat/air
    # RAS: x index grows toward the patient's right -> liver (right) at higher x than spleen (left)
    assert torch.nonzero(liver)[:, 0].float().mean() > torch.nonzero(spleen)[:, 0].float().mean() + 100
    # spleen is posterior to the liver's centre: lower y (anterior = high y)
    assert torch.nonzero(spleen)[:, 1].float().mean() < torch.nonzero(liver)[:, 1].float().mean()


def test_real_label_mapping_user_table(ts_loaded):
    _, out = ts_loaded
    mapped = MapDatasetLabelsd("label", datasets=TS_TABLE)(out)["label"]
    assert set(torch.unique(mapped).tolist()) == {0.0, 1.0, 3.0}
    assert mapped.meta["labeled_mask"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert int((mapped == 3).sum()) == int((out["label"] == 4).sum())
    assert int((mapped == 1).sum()) == int((out["label"] == 1).sum())
    torch.testing.assert_close(mapped.affine, out["label"].affine)
    with pytest.raises(ValueError, match=r"labels_abd4_ras\.nii\.gz.*\[4\]"):
        MapDatasetLabelsd("label", datasets={"ts_abd4": {"label_map": {0: 0, 1: 1}, "labeled_classes": [1]}})(out)


def test_real_25d_sample_matches_volume(ts_loaded):
    item, _ = ts_loaded
    pre = Compose(get_preprocessing_transforms(spatial_size=256, datasets=TS_TABLE))(item)
    vol, lab = pre["image"], pre["label"]
    assert vol.shape == (1, 256, 256, 20) and lab.shape == (1, 256, 256, 20)
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0, 3.0}  # nearest resize keeps label values
    assert -1.0 <= float(vol.min()) and float(vol.max()) <= 1.0
    np.testing.assert_allclose(np.diag(vol.affine.numpy())[:3], [1.953, 1.953, 2.0], atol=1e-3)
    crop = RandSlabCropd(("image", "label"), roi_size=(224, 224), pos_ratio=1.0, num_samples=4)
    crop.set_random_state(7)
    for slab in crop(pre):
        x0, y0, z = slab["image"].meta["slab_index"].tolist()
        s2d = SlabToChannelsd(("image", "label"))(slab)
        assert s2d["image"].shape == (3, 224, 224) and s2d["label"].shape == (1, 224, 224)
        np.testing.assert_array_equal(s2d["label"][0].numpy(), lab[0, x0:x0 + 224, y0:y0 + 224, z].numpy())
        for c, dz in enumerate((-1, 0, 1)):  # channel order z-1, z, z+1 (edges replicated)
            zz = min(max(z + dz, 0), 19)
            np.testing.assert_array_equal(s2d["image"][c].numpy(), vol[0, x0:x0 + 224, y0:y0 + 224, zz].numpy())
        assert bool(((lab[0, ..., z] == 1) | (lab[0, ..., z] == 3)).any())  # organ-centred
        assert s2d["label"].meta["labeled_mask"].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_dicom_3slice_with_nrrd_mask():
    out = Compose(load_ct_transforms(("image", "label")))(
        {"image": str(DCMQI / "dicom"), "label": str(DCMQI / "liver_seg.nrrd")}
    )
    img, lab = out["image"], out["label"]
    assert img.shape == (1, 512, 512, 3) and lab.shape == (1, 512, 512, 3)
    np.testing.assert_allclose(np.diag(img.affine.numpy())[:3], [0.8105, 0.8105, 1.0], atol=1e-3)
    np.testing.assert_allclose(lab.affine.numpy(), img.affine.numpy(), atol=1e-3)
    assert float(img.min()) == -3024.0  # outside-scan padding
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0}
    assert 20 <= float(img[0][lab[0] == 1].median()) <= 200  # liver-like HU under the mask
    assert all(bool((lab[0, ..., z] == 1).any()) for z in range(3))
    # exactly 3 slices: a 3-slice slab works, a 5-slice one is a clear error naming the files
    mapped = MapDatasetLabelsd("label", datasets={"liver_only": {"label_map": {0: 0, 1: 1}, "labeled_classes": [1]}})(
        {**out, "dataset": "liver_only"}
    )
    slab = RandSlabCropd(("image", "label"), roi_size=(224, 224))(mapped)
    assert slab["image"].shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match=r"liver_seg\.nrrd.*3 slices, thinner than the 5-slice slab"):
        RandSlabCropd(("image", "label"), roi_size=(224, 224), context=2)(mapped)


def test_pli_volume_reoriented_to_ras():
    raw = nib.load(str(PLI))
    assert nib.aff2axcodes(raw.affine) == ("P", "L", "I")
    out = Compose(load_ct_transforms("image"))({"image": str(PLI)})["image"]
    assert out.shape == (1, 512, 512, 13)
    assert nib.aff2axcodes(out.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:3], [0.9375, 0.9375, 5.0], atol=1e-4)
    # same voxels: RAS array = PLI array with axes (P, L, I) -> (L->R, P->A, I->S) i.e. transpose + flips
    data = np.asanyarray(raw.dataobj).astype(np.float32)
    expected = np.flip(np.transpose(data, (1, 0, 2)), axis=(0, 1, 2))
    np.testing.assert_array_equal(out[0].numpy(), expected)
