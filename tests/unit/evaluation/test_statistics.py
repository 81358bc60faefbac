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

"""Per-organ statistics (pipofan_monai.evaluation.statistics): a phantom whose organ sizes, HU values, bounding
boxes and pieces are known by construction, on an anisotropic, rotated grid; and a real CT (../shared/data/realct)
against an independent numpy computation from the label file's own header."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipofan_monai.evaluation import organ_statistics, write_statistics_csv, write_statistics_json
from pipofan_monai.evaluation.statistics import NOTE_EDGE, NOTE_EMPTY

REALCT = Path(__file__).resolve().parents[4] / "shared" / "data" / "realct"
TS = REALCT / "ts_upper_abdomen_dicom"

NAMES = ("background", "liver", "kidney", "spleen", "pancreas", "stomach")
SHAPE = (20, 16, 12)
SPACING = (0.8, 1.25, 2.5)  # voxel volume 2.5 mm^3 = 0.0025 ml
COS, SIN = math.cos(math.radians(30)), math.sin(math.radians(30))
ORIGIN = (-100.0, 50.0, 10.0)


def _affine() -> np.ndarray:
    """Rotation of 30 degrees about z times the anisotropic spacing, plus an origin: no axis is aligned with x/y."""
    rot = np.array([[COS, -SIN, 0.0], [SIN, COS, 0.0], [0.0, 0.0, 1.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(SPACING)
    aff[:3, 3] = ORIGIN
    return aff


def _world(i: float, j: float, k: float) -> tuple[float, float, float]:
    """World coordinate of index (i, j, k), written out by hand."""
    sx, sy, sz = SPACING
    return (ORIGIN[0] + COS * sx * i - SIN * sy * j, ORIGIN[1] + SIN * sx * i + COS * sy * j, ORIGIN[2] + sz * k)


@pytest.fixture()
def phantom():
    """liver: 5x6x4 box (120 voxels), half 40 HU, half 80 HU; kidney: 3x4x3 box on the x = 0 face (36 voxels, 30 HU);
    spleen: a 2x2x2 box (100 HU) and a 3x2x2 box (120 HU) apart, plus one voxel (141 HU) touching the second box
    only at a corner (21 voxels, 2 pieces under 26-connectivity); pancreas: none; stomach: a ball of radius 2
    voxels (33 voxels: 1 + 6 + 12 + 8 + 6), 55 HU."""
    label = np.zeros(SHAPE, np.uint8)
    image = np.full(SHAPE, -1000.0, np.float32)
    label[2:7, 3:9, 2:6] = 1
    image[2:7, 3:6, 2:6] = 40
    image[2:7, 6:9, 2:6] = 80
    label[0:3, 10:14, 5:8] = 2
    image[0:3, 10:14, 5:8] = 30
    label[10:12, 10:12, 3:5] = 3
    image[10:12, 10:12, 3:5] = 100
    label[14:17, 2:4, 7:9] = 3
    image[14:17, 2:4, 7:9] = 120
    label[17, 4, 9] = 3  # shares only the corner (16, 3, 8) with the box before
    image[17, 4, 9] = 141
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    ball = (i - 14) ** 2 + (j - 12) ** 2 + (k - 5) ** 2 <= 4
    label[ball] = 5
    image[ball] = 55
    return label, image, _affine()


def test_phantom_exact_values(phantom):
    label, image, aff = phantom
    stats = organ_statistics(label, image, aff, NAMES)
    assert list(stats) == ["liver", "kidney", "spleen", "pancreas", "stomach"]  # no background, class order

    liver = stats["liver"]
    assert liver["voxels"] == 120 and liver["components"] == 1 and liver["touches_edge"] is False
    assert liver["volume_ml"] == pytest.approx(120 * 2.5 / 1000, rel=1e-12)
    assert liver["hu_mean"] == 60.0 and liver["hu_std"] == 20.0 and liver["hu_median"] == 60.0
    assert liver["note"] is None
    # the box's voxel centres run i 2..6, j 3..8, k 2..5; x falls with j (-sin), y grows with i and j
    np.testing.assert_allclose(liver["bbox_mm"]["min"], [_world(2, 8, 0)[0], _world(2, 3, 0)[1], _world(0, 0, 2)[2]])
    np.testing.assert_allclose(liver["bbox_mm"]["max"], [_world(6, 3, 0)[0], _world(6, 8, 0)[1], _world(0, 0, 5)[2]])

    kidney = stats["kidney"]
    assert kidney["voxels"] == 36 and kidney["volume_ml"] == pytest.approx(0.09, rel=1e-12)
    assert kidney["touches_edge"] is True and kidney["note"] == NOTE_EDGE and "lower bound" in NOTE_EDGE
    assert (kidney["hu_mean"], kidney["hu_std"], kidney["hu_median"], kidney["components"]) == (30.0, 0.0, 30.0, 1)

    spleen = stats["spleen"]
    assert spleen["voxels"] == 21 and spleen["components"] == 2 and spleen["touches_edge"] is False
    mean = (8 * 100 + 12 * 120 + 141) / 21
    assert spleen["hu_mean"] == pytest.approx(mean, rel=1e-12)
    assert spleen["hu_std"] == pytest.approx(math.sqrt((8 * 100**2 + 12 * 120**2 + 141**2) / 21 - mean**2), rel=1e-9)
    assert spleen["hu_median"] == 120.0  # the 11th of 21 sorted values: 8 x 100, then 120
    # x = cos*0.8*i - sin*1.25*j and y = sin*0.8*i + cos*1.25*j over the three pieces' voxel centres
    lo, hi = spleen["bbox_mm"]["min"], spleen["bbox_mm"]["max"]
    np.testing.assert_allclose(lo, [_world(10, 11, 0)[0], _world(14, 2, 0)[1], _world(0, 0, 3)[2]])
    np.testing.assert_allclose(hi, [_world(16, 2, 0)[0], _world(11, 11, 0)[1], _world(0, 0, 9)[2]])

    assert stats["pancreas"] == {"voxels": 0, "volume_ml": 0.0, "hu_mean": None, "hu_std": None, "hu_median": None,
                                 "bbox_mm": None, "components": 0, "touches_edge": False, "note": NOTE_EMPTY}

    stomach = stats["stomach"]
    assert stomach["voxels"] == 33 and stomach["components"] == 1 and stomach["hu_mean"] == 55.0
    assert stomach["volume_ml"] == pytest.approx(33 * 0.0025, rel=1e-12)
    # a ball: the extremes along x lie where the rotated axes' combination is largest, not at the index box corners
    xs = [_world(14 + a, 12 + b, 5)[0] for a in range(-2, 3) for b in range(-2, 3) if a * a + b * b <= 4]
    assert stomach["bbox_mm"]["min"][0] == pytest.approx(min(xs))
    assert stomach["bbox_mm"]["max"][0] == pytest.approx(max(xs))
    assert min(xs) > _world(12, 14, 5)[0]  # the corner of the index box lies outside the ball


def test_channel_first_torch_and_organ_subset(phantom):
    label, image, aff = phantom
    full = organ_statistics(label, image, aff, NAMES)
    sub = organ_statistics(torch.from_numpy(label[None].astype(np.float32)), torch.from_numpy(image[None]),
                           torch.from_numpy(aff), NAMES, organs=["spleen", "pancreas"])
    assert list(sub) == ["spleen", "pancreas"]
    assert sub == {k: full[k] for k in ("spleen", "pancreas")}


def test_bad_inputs_named(phantom):
    label, image, aff = phantom
    with pytest.raises(ValueError, match=r"image shape \(20, 16, 11\) differs from label map shape \(20, 16, 12\)"):
        organ_statistics(label, image[..., :11], aff, NAMES)
    with pytest.raises(ValueError, match=r"unknown organ\(s\) \['liverr'\]"):
        organ_statistics(label, image, aff, NAMES, organs=["liverr"])
    with pytest.raises(ValueError, match=r"unknown organ\(s\) \['background'\]"):
        organ_statistics(label, image, aff, NAMES, organs=["background"])
    with pytest.raises(ValueError, match=r"class id 5, outside 0\.\.4"):
        organ_statistics(label, image, aff, NAMES[:5])
    with pytest.raises(ValueError, match="non-integer"):
        organ_statistics(label + 0.5, image, aff, NAMES)
    with pytest.raises(ValueError, match="4x4"):
        organ_statistics(label, image, aff[:3], NAMES)
    with pytest.raises(ValueError, match="3D"):
        organ_statistics(label[..., 0], image[..., 0], aff, NAMES)


def test_write_json_and_csv(phantom, tmp_path):
    label, image, aff = phantom
    stats = organ_statistics(label, image, aff, NAMES)
    write_statistics_json(stats, tmp_path / "case1" / "statistics.json")
    assert json.loads((tmp_path / "case1" / "statistics.json").read_text()) == stats
    write_statistics_csv({"a/ct.nii.gz": stats, "b/ct.nii.gz": {"liver": stats["liver"]}}, tmp_path / "statistics.csv")
    with open(tmp_path / "statistics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [("a/ct.nii.gz", o) for o in NAMES[1:]] + [("b/ct.nii.gz", "liver")]
    assert [(r["case"], r["organ"]) for r in rows] == expected
    kidney, pancreas = rows[1], rows[3]
    assert kidney["voxels"] == "36" and float(kidney["volume_ml"]) == pytest.approx(0.09)
    assert kidney["touches_edge"] == "True" and kidney["note"] == NOTE_EDGE
    assert float(kidney["bbox_min_z_mm"]) == pytest.approx(_world(0, 0, 5)[2])
    assert pancreas["hu_mean"] == "n/a" and pancreas["bbox_max_x_mm"] == "n/a" and pancreas["voxels"] == "0"
    assert rows[0]["note"] == "" and float(rows[0]["hu_std"]) == 20.0
    assert sorted(os.listdir(tmp_path)) == ["case1", "statistics.csv"]  # no temporary file left


@pytest.mark.slow
@pytest.mark.skipif(not TS.is_dir(), reason=f"real CT test data not found at {TS}")
def test_real_ct_liver_against_numpy():
    """The real upper-abdomen series (JPEG-2000 DICOM, loaded and turned to RAS as the pipelines do) with its
    TotalSegmentator label file (1 liver, 4 spleen): volume from the NIfTI header's voxel sizes, HU by numpy."""
    from monai.transforms import Compose

    from pipofan_monai.preprocessing import load_ct_transforms

    out = Compose(load_ct_transforms(("image", "label")))({"image": str(TS / "dicom"),
                                                           "label": str(TS / "labels_abd4_ras.nii.gz")})
    img, lab = out["image"], out["label"]
    names = ("background", "liver", "right kidney", "left kidney", "spleen")
    stats = organ_statistics(lab, img, img.affine, names, organs=["liver", "spleen", "right kidney"])

    nii = nib.load(TS / "labels_abd4_ras.nii.gz")
    ref = np.asarray(nii.dataobj)
    liver_ref = ref == 1
    zooms = nii.header.get_zooms()[:3]
    assert stats["liver"]["voxels"] == int(liver_ref.sum())
    assert stats["liver"]["volume_ml"] == pytest.approx(liver_ref.sum() * float(np.prod(zooms)) / 1000, rel=1e-4)
    hu = img[0].numpy()[lab[0].numpy() == 1].astype(np.float64)
    assert stats["liver"]["hu_mean"] == pytest.approx(hu.sum() / hu.size, rel=1e-9)
    assert stats["liver"]["hu_median"] == float(np.median(hu))
    assert 40 <= stats["liver"]["hu_mean"] <= 200  # contrast-enhanced liver parenchyma
    assert stats["liver"]["touches_edge"] is True  # a 20-slice slab cuts the liver off at top and bottom
    assert stats["spleen"]["voxels"] == int((ref == 4).sum()) > 0
    assert stats["right kidney"]["voxels"] == 0  # this slab has no kidneys
