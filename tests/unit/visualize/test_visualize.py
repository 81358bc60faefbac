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

"""Tests of the PNG pictures: overlays (orientation, colours), training curves and cross-validation charts."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipofan_monai.visualize import (
    plot_crossval,
    plot_training_curves,
    save_overlay_png,
    to_radiological_axial,
    to_radiological_coronal,
)
from pipofan_monai.visualize.curves import crossval_table, load_metrics_rows

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


def _is_png(path, min_bytes=3000) -> bool:
    raw = Path(path).read_bytes()
    return raw[:8] == PNG_MAGIC and len(raw) > min_bytes


def _volume():
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(10), indexing="ij")
    img = (np.hypot(x - 20, y - 18) < 15) * 40.0 - 100.0 + 0.5 * x  # HU-like body disc
    lab = np.zeros((40, 36, 10), dtype=np.uint8)
    lab[25:35, 10:25, 2:8] = 1  # liver on the patient's right (high x: RAS +x points to the patient's Right)
    lab[6:12, 12:20, 3:7] = 3  # spleen on the patient's left (low x)
    return img.astype(np.float32), lab


def test_radiological_display_convention():
    # RAS (x, y): +x points to the patient's Right, +y to Anterior
    s = np.zeros((4, 3))
    s[3, 2] = 1  # most Right (x max) and most Anterior (y max)
    d = to_radiological_axial(s)
    assert d.shape == (3, 4) and d[0, 0] == 1  # top-left: anterior row, patient's right on the image left
    c = np.zeros((4, 5))
    c[3, 4] = 1  # most Right, most Superior
    dc = to_radiological_coronal(c)
    assert dc.shape == (5, 4) and dc[0, 0] == 1


def test_overlay_created_and_colours_where_label(tmp_path):
    img, lab = _volume()
    p_lab = save_overlay_png(img, lab, tmp_path / "lab.png", axial_slices=[5], coronal=False, spacing=(1, 1, 3))
    p_empty = save_overlay_png(
        img, np.zeros_like(lab), tmp_path / "empty.png", axial_slices=[5], coronal=False, spacing=(1, 1, 3)
    )
    assert _is_png(p_lab) and _is_png(p_empty)
    a, b = mpimg.imread(p_lab)[..., :3], mpimg.imread(p_empty)[..., :3]
    assert a.shape == b.shape
    changed = np.abs(a - b).sum(-1) > 0.05
    assert changed.sum() > 100  # organ pixels differ
    # the changed pixels are tinted with the organ colours: orange-red liver (R > B) and blue spleen (B > R)
    diff = a[changed] - b[changed]
    assert (diff[:, 0] > 0.05).sum() > 20 and (diff[:, 2] > 0.05).sum() > 20
    # liver (patient right) is drawn on the image LEFT of the spleen (patient left)
    cols_red = np.nonzero(changed & (a[..., 0] > a[..., 2] + 0.1))[1]
    cols_blue = np.nonzero(changed & (a[..., 2] > a[..., 0] + 0.1))[1]
    assert cols_red.mean() < cols_blue.mean()


def test_overlay_with_ground_truth_and_metatensor(tmp_path):
    img, lab = _volume()
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image = MetaTensor(torch.as_tensor(img)[None], affine=torch.as_tensor(affine))
    pred = lab.copy()
    pred[pred == 3] = 0
    p = save_overlay_png(image, pred, tmp_path / "sub" / "gt.png", ground_truth=lab[None], title="case 1")
    assert _is_png(p)
    single = mpimg.imread(save_overlay_png(image, pred, tmp_path / "single.png"))
    double = mpimg.imread(p)
    assert double.shape[0] > 1.5 * single.shape[0]  # two rows


def test_overlay_reorients_from_affine(tmp_path):
    # the same anatomy stored LPS-flipped with the matching affine renders identically
    img, lab = _volume()
    ras = save_overlay_png(img, lab, tmp_path / "ras.png", affine=np.eye(4), axial_slices=[5], coronal_slice=17)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [39, 35]
    lps = save_overlay_png(
        img[::-1, ::-1].copy(),
        lab[::-1, ::-1].copy(),
        tmp_path / "lps.png",
        affine=flip,
        axial_slices=[5],
        coronal_slice=17,
    )
    np.testing.assert_allclose(mpimg.imread(ras), mpimg.imread(lps), atol=1e-6)


def test_overlay_all_background_and_errors(tmp_path):
    img, lab = _volume()
    assert _is_png(save_overlay_png(img, np.zeros_like(lab), tmp_path / "bg.png", window=None))
    with pytest.raises(ValueError, match="shape"):
        save_overlay_png(img, lab[:, :, :5], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside"):
        save_overlay_png(img, lab, tmp_path / "x.png", axial_slices=[99])
    with pytest.raises(ValueError, match="window"):
        save_overlay_png(img, lab, tmp_path / "x.png", window=(10, -10))


def _metric_rows():
    rows = []
    for e in range(12):
        row = {"epoch": e, "loss": 1.5 * 0.8**e, "lr": 2e-4 * 0.99 ** (e // 4), "stage": "dps" if e < 8 else "fused"}
        if e % 2 == 1:
            row.update(val_dice_liver=0.5 + 0.03 * e, val_dice_kidney=0.4 + 0.04 * e, val_mean_dice=0.45 + 0.035 * e)
        rows.append(row)
    return rows


def test_training_curves_json_csv_and_missing_columns(tmp_path):
    rows = _metric_rows()
    (tmp_path / "m.json").write_text(json.dumps(rows))
    assert _is_png(plot_training_curves(tmp_path / "m.json", tmp_path / "curves_json.png"))
    cols = ["epoch", "loss", "val_dice_liver", "val_dice_kidney", "val_dice_spleen", "val_mean_dice", "lr", "stage"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    assert len(load_metrics_rows(tmp_path / "m.csv")) == 12
    assert _is_png(plot_training_curves(tmp_path / "m.csv", tmp_path / "curves_csv.png"))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"epoch": r["epoch"], "loss": r["loss"]}) for r in rows))
    assert _is_png(plot_training_curves(tmp_path / "m.jsonl", tmp_path / "loss_only.png"))
    assert _is_png(plot_training_curves({"epochs": []}, tmp_path / "nothing.png"), min_bytes=1000)
    with pytest.raises(FileNotFoundError):
        plot_training_curves(tmp_path / "missing.json", tmp_path / "x.png")


def test_crossval_chart(tmp_path):
    report = {
        "folds": [
            {"fold": k, "dice": {"liver": 0.95 + 0.004 * k, "kidney": 0.96 - 0.01 * k, "spleen": 0.93}}
            for k in range(5)
        ]
    }
    labels, organs, arr = crossval_table(report)
    assert labels == [f"fold {k}" for k in range(5)] and organs == ["liver", "kidney", "spleen"]
    assert arr.shape == (5, 3) and arr[4, 1] == pytest.approx(0.92)
    (tmp_path / "cv.json").write_text(json.dumps(report))
    assert _is_png(plot_crossval(tmp_path / "cv.json", tmp_path / "cv.png"))
    alt = {"liver": [0.9, 0.95, None], "kidney": [0.8, "n/a", 0.85]}
    _, organs2, arr2 = crossval_table(alt)
    assert organs2 == ["liver", "kidney"] and np.isnan(arr2[2, 0]) and np.isnan(arr2[1, 1])
    assert _is_png(plot_crossval(alt, tmp_path / "cv2.png"))
    with pytest.raises(ValueError):
        plot_crossval({"folds": [{"fold": 0}]}, tmp_path / "cv3.png")


def test_real_ct_overlay(tmp_path):
    folder = DATA / "realct" / "ts_upper_abdomen_dicom"
    if not folder.is_dir():
        pytest.skip(f"shared real-CT data not found at {folder} (CI places shared/ beside the repository)")
    from monai.transforms import LoadImage, Orientation

    image = Orientation(axcodes="RAS")(LoadImage(reader="ITKReader", ensure_channel_first=True)(str(folder / "dicom")))
    label = Orientation(axcodes="RAS")(LoadImage(ensure_channel_first=True)(str(folder / "labels_abd4_ras.nii.gz")))
    label = torch.where(label == 4, torch.full_like(label, 3), label)  # the file's spleen 4 -> global 3
    path = save_overlay_png(image, label, tmp_path / "real.png", num_axial=2)
    assert _is_png(path, min_bytes=50000)
    rgb = mpimg.imread(path)[..., :3]
    # liver (orange-red) appears on the image left half, spleen (blue) on the right half (radiological)
    h, w = rgb.shape[:2]
    axial = rgb[:, : w // 2]  # the first axial panel lies in the left half of the figure
    red = (axial[..., 0] > axial[..., 2] + 0.25) & (axial[..., 0] > axial[..., 1] + 0.15)
    blue = (axial[..., 2] > axial[..., 0] + 0.25)
    first = slice(0, w // 4)
    assert red[:, first].sum() > 500 and blue[:, first].sum() > 200
    assert np.nonzero(red[:, first])[1].mean() < np.nonzero(blue[:, first])[1].mean()
