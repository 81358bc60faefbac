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

"""Unit tests of pipofan_monai.preprocessing on small synthetic tensors and tiny NIfTI files."""

from __future__ import annotations

import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import RandFlipd, Resized, ScaleIntensityRanged

from pipofan_monai.preprocessing import CheckFinited, CheckSameGridd, HUWindowd, LoadCTd, MapDatasetLabelsd, SlicesToChannelsd, get_val_transforms, stack_neighbour_slices
from pipofan_monai.apps.training import RandSlabCropd, SlabToChannelsd, get_train_transforms

AFFINE = torch.tensor([[2.0, 0, 0, 10], [0, 2.0, 0, 20], [0, 0, 5.0, 30], [0, 0, 0, 1]], dtype=torch.float64)


def _label(values, fname="seg.nii.gz"):
    """(1, 2, 2, len(values)//4) MetaTensor label holding ``values``."""
    arr = torch.tensor(values, dtype=torch.float32).reshape(1, 2, 2, -1)
    return MetaTensor(arr, affine=AFFINE.clone(), meta={"filename_or_obj": fname})


# ---------------------------------------------------------------------- label mapping
@pytest.mark.parametrize(
    "dataset, raw, expected, mask",
    [
        ("lits", [0, 1, 2, 0], [0, 1, 1, 0], [1, 1, 0, 0]),
        ("kits19", [0, 1, 2, 2], [0, 2, 2, 2], [1, 0, 1, 0]),
        ("kits", [0, 1, 2, 2], [0, 2, 2, 2], [1, 0, 1, 0]),  # alias
        ("msd_spleen", [0, 1, 1, 0], [0, 3, 3, 0], [1, 0, 0, 1]),
        ("btcv", list(range(14)) + [0, 0], [0, 3, 2, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1]),
        (None, [0, 1, 2, 3], [0, 1, 2, 3], [1, 1, 1, 1]),
    ],
)
def test_map_dataset_labels(dataset, raw, expected, mask):
    item = {"label": _label(raw)}
    if dataset is not None:
        item["dataset"] = dataset
    out = MapDatasetLabelsd("label")(item)["label"]
    assert isinstance(out, MetaTensor)
    np.testing.assert_array_equal(out.reshape(-1).numpy(), np.array(expected, dtype=np.float32))
    assert out.dtype == torch.float32 and out.shape == item["label"].shape
    assert out.meta["labeled_mask"].dtype == torch.float32
    np.testing.assert_array_equal(out.meta["labeled_mask"].numpy(), np.array(mask, dtype=np.float32))
    np.testing.assert_array_equal(out.affine.numpy(), AFFINE.numpy())
    assert out.meta["filename_or_obj"] == "seg.nii.gz"


def test_map_labels_user_table_and_errors():
    table = {"ts": {"label_map": {0: 0, 1: 1, 4: 3}, "labeled_classes": [1, 3]}}
    out = MapDatasetLabelsd("label", datasets=table)({"label": _label([0, 1, 4, 4]), "dataset": "ts"})["label"]
    np.testing.assert_array_equal(out.reshape(-1).numpy(), [0, 1, 3, 3])
    np.testing.assert_array_equal(out.meta["labeled_mask"].numpy(), [1, 1, 0, 1])
    with pytest.raises(ValueError, match=r"lits_seg_7\.nii.*\[3, 5\]"):
        MapDatasetLabelsd("label")({"label": _label([0, 1, 3, 5], "lits_seg_7.nii"), "dataset": "lits"})
    with pytest.raises(ValueError, match=r"full\.nii.*\[4\]"):  # no dataset id: values must be < K
        MapDatasetLabelsd("label")({"label": _label([0, 1, 2, 4], "full.nii")})
    with pytest.raises(ValueError, match=r"-1"):
        MapDatasetLabelsd("label")({"label": _label([0, -1, 0, 0]), "dataset": "lits"})
    with pytest.raises(ValueError, match="non-integer"):
        MapDatasetLabelsd("label")({"label": _label([0, 0.5, 1, 1]), "dataset": "lits"})
    with pytest.raises(KeyError, match="unknown dataset"):
        MapDatasetLabelsd("label")({"label": _label([0, 0, 0, 0]), "dataset": "nope"})
    with pytest.raises(ValueError, match="3 .*outside"):  # table maps to a class >= K
        MapDatasetLabelsd("label", num_classes=2)({"label": _label([0, 0, 0, 0]), "dataset": "msd_spleen"})
    # plain tensors become MetaTensors with the mask
    out = MapDatasetLabelsd("label")({"label": torch.ones(1, 2, 2, 1), "dataset": "lits"})["label"]
    assert isinstance(out, MetaTensor) and out.meta["labeled_mask"].tolist() == [1, 1, 0, 0]


# ---------------------------------------------------------------------- intensity
def test_hu_window_scale_and_zscore():
    x = MetaTensor(torch.tensor([-1000.0, -200, 0, 100, 200, 500]).reshape(1, 6, 1, 1), affine=AFFINE.clone(),
                   meta={"filename_or_obj": "ct.nii"})
    out = HUWindowd("image")({"image": x})["image"]
    np.testing.assert_allclose(out.reshape(-1).numpy(), [-1, -1, 0, 0.5, 1, 1], atol=1e-6)
    scale = ScaleIntensityRanged("image", a_min=-200, a_max=200, b_min=-1, b_max=1, clip=True)
    ref = scale({"image": x.clone()})["image"]
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-6)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, AFFINE)
    z = HUWindowd("image", mode="zscore")({"image": x})["image"]
    clipped = np.clip(x.numpy().reshape(-1), -200, 200)
    np.testing.assert_allclose(z.reshape(-1).numpy(), (clipped - clipped.mean()) / clipped.std(ddof=1), rtol=1e-5)
    bad = x.clone()
    bad[0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"ct\.nii has 1 NaN"):
        HUWindowd("image")({"image": bad})
    with pytest.raises(ValueError, match=r"ct\.nii"):
        CheckFinited("image")({"image": bad})
    with pytest.raises(ValueError, match="mode"):
        HUWindowd("image", mode="minmax")


# ---------------------------------------------------------------------- slices
def _zvol(h=6, w=5, d=4):
    """(1, H, W, D) volume whose voxel value is 100*x + 10*y + z (position encoded)."""
    x, y, z = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(d), indexing="ij")
    return (100 * x + 10 * y + z).float()[None]


def test_stack_neighbour_slices():
    v = _zvol(d=4)
    out = stack_neighbour_slices(v, context=1)
    assert out.shape == (3, 6, 5, 4)
    zs = out[:, 0, 0, :]  # (3, D) slice ids: rows z-1, z, z+1, edges replicated
    np.testing.assert_array_equal(zs.numpy(), [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 3]])
    torch.testing.assert_close(out[1], v[0])
    b = stack_neighbour_slices(torch.stack([v, v + 1000]), context=2)  # (B, C, H, W, D)
    assert b.shape == (2, 5, 6, 5, 4)
    np.testing.assert_array_equal(b[1, :, 0, 0, 0].numpy(), [1000, 1000, 1000, 1001, 1002])
    two = stack_neighbour_slices(torch.cat([v, v + 1000]), context=1)  # 2 input channels -> 6
    np.testing.assert_array_equal(two[:, 0, 0, 1].numpy(), [0, 1, 2, 1000, 1001, 1002])
    mt = MetaTensor(v, affine=AFFINE.clone())
    out = SlicesToChannelsd("image")({"image": mt})["image"]
    assert isinstance(out, MetaTensor) and out.shape == (3, 6, 5, 4) and torch.equal(out.affine, AFFINE)
    with pytest.raises(ValueError, match="shape"):
        stack_neighbour_slices(torch.zeros(4, 4, 4))


def _slab_item(organ_slices=(2, 3), kidney_slices=(), d=10, mask=(1, 1, 0, 0), fname="vol.nii.gz"):
    img = MetaTensor(_zvol(8, 7, d), affine=AFFINE.clone(), meta={"filename_or_obj": fname})
    lab = torch.zeros(1, 8, 7, d)
    for z in organ_slices:
        lab[0, 3:5, 2:4, z] = 1
    for z in kidney_slices:
        lab[0, 1, 1, z] = 2
    lab = MetaTensor(lab, affine=AFFINE.clone(), meta={"filename_or_obj": fname.replace("vol", "seg")})
    lab.meta["labeled_mask"] = torch.tensor(mask, dtype=torch.float32)
    return {"image": img, "label": lab}


def test_rand_slab_crop_organ_centred_and_content():
    item = _slab_item(organ_slices=(2, 3), kidney_slices=(7,), mask=(1, 1, 0, 0))  # kidney not annotated
    crop = RandSlabCropd(("image", "label"), roi_size=(4, 3), pos_ratio=1.0)
    crop.set_random_state(0)
    centres = set()
    for _ in range(40):
        out = crop(item)
        x0, y0, z = out["image"].meta["slab_index"].tolist()
        centres.add(z)
        assert out["image"].shape == (1, 4, 3, 3) and out["label"].shape == (1, 4, 3, 3)
        zi = np.clip([z - 1, z, z + 1], 0, 9)
        np.testing.assert_array_equal(out["image"][0].numpy(), item["image"][0, x0:x0 + 4, y0:y0 + 3][..., zi].numpy())
        np.testing.assert_array_equal(out["label"][0].numpy(), item["label"][0, x0:x0 + 4, y0:y0 + 3][..., zi].numpy())
        expected_affine = AFFINE.clone()
        expected_affine[:3, 3] += torch.tensor([2.0 * x0, 2.0 * y0, 5.0 * (z - 1)], dtype=torch.float64)
        torch.testing.assert_close(out["image"].affine, expected_affine)
        assert out["label"].meta["labeled_mask"].tolist() == [1, 1, 0, 0]
    assert centres == {2, 3}  # only annotated-organ slices (kidney slice 7 is not annotated for this item)
    full = _slab_item(organ_slices=(2, 3), kidney_slices=(7,), mask=(1, 1, 1, 1))
    assert {crop(full)["label"].meta["slab_index"][2].item() for _ in range(60)} == {2, 3, 7}
    rnd = RandSlabCropd(("image", "label"), roi_size=(4, 3), pos_ratio=0.0)
    rnd.set_random_state(1)
    assert {rnd(item)["image"].meta["slab_index"][2].item() for _ in range(200)} == set(range(10))
    # without a mask every non-zero label counts
    item_nomask = _slab_item(organ_slices=(5,), kidney_slices=(8,))
    del item_nomask["label"].meta["labeled_mask"]
    assert {crop(item_nomask)["label"].meta["slab_index"][2].item() for _ in range(60)} == {5, 8}


def test_rand_slab_crop_edges_samples_and_errors():
    item = _slab_item(organ_slices=(0,), d=5)
    out = RandSlabCropd(("image", "label"), roi_size=(-1, -1), pos_ratio=1.0)(item)
    assert out["image"].shape == (1, 8, 7, 3)
    np.testing.assert_array_equal(out["image"][0, 0, 0].numpy(), [0, 0, 1])  # z-1 replicated at the edge
    many = RandSlabCropd(("image", "label"), roi_size=(4, 4), num_samples=3)(item)
    assert isinstance(many, list) and len(many) == 3
    with pytest.raises(ValueError, match=r"vol\.nii\.gz.*2 slices"):
        RandSlabCropd(("image", "label"), roi_size=(4, 4))(_slab_item(organ_slices=(0,), d=2))
    with pytest.raises(ValueError, match="roi_size"):
        RandSlabCropd(("image", "label"), roi_size=(9, 4))(item)
    empty = _slab_item(organ_slices=(), d=5)
    with pytest.raises(ValueError, match=r"vol\.nii\.gz, seg\.nii\.gz contains none"):
        RandSlabCropd(("image", "label"), roi_size=(4, 4), organ_free="error")(empty)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = RandSlabCropd(("image", "label"), roi_size=(4, 4), organ_free="warn")(empty)
    assert out["image"].shape == (1, 4, 4, 3)
    assert any("seg.nii.gz" in str(w.message) and "random slice" in str(w.message) for w in rec)
    with pytest.raises(ValueError, match="pos_ratio"):
        RandSlabCropd(("image", "label"), pos_ratio=1.5)


def test_slab_to_channels_flips_and_collation():
    item = _slab_item(organ_slices=(4,), d=9)
    crop = RandSlabCropd(("image", "label"), roi_size=(4, 4))
    crop.set_random_state(3)
    slab = crop(item)
    z = int(slab["image"].meta["slab_index"][2])
    assert z == 4
    out = SlabToChannelsd(("image", "label"))(slab)
    assert out["image"].shape == (3, 4, 4) and out["label"].shape == (1, 4, 4)
    for c in range(3):  # channels are slices z-1, z, z+1
        np.testing.assert_array_equal(out["image"][c].numpy(), slab["image"][0, ..., c].numpy())
    np.testing.assert_array_equal(out["label"][0].numpy(), slab["label"][0, ..., 1].numpy())
    assert out["image"][1, 0, 0].item() % 10 == 4
    shifted = slab["image"].affine.clone()
    shifted[:3, 3] += shifted[:3, 2]
    torch.testing.assert_close(out["image"].affine, shifted)  # moved to the centre slice
    flipped = RandFlipd(("image", "label"), prob=1.0, spatial_axis=0)(out)
    flipped = RandFlipd(("image", "label"), prob=1.0, spatial_axis=1)(flipped)
    np.testing.assert_array_equal(flipped["image"].numpy(), out["image"].flip(1).flip(2).numpy())
    np.testing.assert_array_equal(flipped["label"].numpy(), out["label"].flip(1).flip(2).numpy())
    batch = list_data_collate([flipped, flipped])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["label"].shape == (2, 1, 4, 4)
    assert batch["label"].meta["labeled_mask"].shape == (2, 4)
    with pytest.raises(ValueError, match="odd number"):
        SlabToChannelsd("image", center_only=False)({"image": torch.zeros(1, 4, 4, 2)})


def test_resized_keeps_slices_and_label_values():
    lab = torch.zeros(1, 16, 16, 5)
    lab[0, 4:12, 4:12, 1:3] = 2
    lab[0, 0:4, 0:4, 4] = 3
    img = torch.randn(1, 16, 16, 5)
    out = Resized(("image", "label"), spatial_size=(8, 8, -1), mode=("trilinear", "nearest"))(
        {"image": MetaTensor(img, affine=AFFINE.clone()), "label": MetaTensor(lab, affine=AFFINE.clone())}
    )
    assert out["image"].shape == (1, 8, 8, 5) and out["label"].shape == (1, 8, 8, 5)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 2.0, 3.0}
    # 16 -> 8 trilinear (align_corners=False) equals 2x2 in-plane averaging
    np.testing.assert_allclose(out["image"][0].numpy(), img[0].reshape(8, 2, 8, 2, 5).mean((1, 3)).numpy(), atol=1e-5)
    spacing = out["image"].affine[:3, :3].diagonal()
    torch.testing.assert_close(spacing, torch.tensor([4.0, 4.0, 5.0], dtype=torch.float64))


# ---------------------------------------------------------------------- loading / grid checks
def _nii(path, arr, affine=np.diag([2.0, 2.0, 5.0, 1.0])):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        LoadCTd("image")({"image": str(tmp_path / "missing.nii.gz")})
    good = _nii(tmp_path / "ok.nii.gz", np.random.default_rng(0).integers(-100, 100, (16, 16, 8)).astype(np.int16))
    raw = gzip.decompress(open(good, "rb").read())
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    with pytest.raises(RuntimeError, match=r"image file .*truncated\.nii\.gz"):
        LoadCTd("image")({"image": str(bad)})
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not a nifti at all" * 10)
    with pytest.raises(RuntimeError, match=r"garbage\.nii"):
        LoadCTd("image")({"image": str(garbage)})
    out = LoadCTd("image")({"image": good})["image"]
    assert out.shape == (1, 16, 16, 8)


def test_check_same_grid(tmp_path):
    img = _nii(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.int16))
    lab_shape = _nii(tmp_path / "lab_shape.nii.gz", np.zeros((8, 8, 5), np.uint8))
    lab_aff = _nii(tmp_path / "lab_aff.nii.gz", np.zeros((8, 8, 4), np.uint8), np.diag([2.0, 2.0, 4.0, 1.0]))
    load = LoadCTd(("image", "label"))
    with pytest.raises(ValueError, match=r"lab_shape\.nii\.gz has spatial shape \(8, 8, 5\)"):
        CheckSameGridd()(load({"image": img, "label": lab_shape}))
    with pytest.raises(ValueError, match=r"lab_aff\.nii\.gz .* different grids"):
        CheckSameGridd()(load({"image": img, "label": lab_aff}))


def test_pipelines_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.integers(-300, 300, (40, 36, 6)).astype(np.int16)
    seg = np.zeros((40, 36, 6), np.uint8)
    seg[10:20, 10:20, 3] = 2  # LiTS tumour -> liver
    item = {"image": _nii(tmp_path / "volume-0.nii.gz", ct), "label": _nii(tmp_path / "segmentation-0.nii.gz", seg),
            "dataset": "lits"}
    train = get_train_transforms(spatial_size=32, roi_size=24)
    train.set_random_state(0)
    out = train(item)
    assert out["image"].shape == (3, 24, 24) and out["label"].shape == (1, 24, 24)
    assert out["label"].meta["labeled_mask"].tolist() == [1, 1, 0, 0]
    assert int(out["label"].meta["slab_index"][2]) == 3  # the only liver slice
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0} and out["label"].max() == 1
    assert -1.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    val = get_val_transforms(spatial_size=32)(item)
    assert val["image"].shape == (1, 32, 32, 6) and val["label"].shape == (1, 32, 32, 6)
    val3 = get_val_transforms(spatial_size=32, context=1, label_key=None)({"image": item["image"]})
    assert val3["image"].shape == (3, 32, 32, 6)
