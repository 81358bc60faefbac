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

"""Tests of the evaluation metrics (hand-computed values) and the partial-label validation metric."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

from pipofan_monai.evaluation import (
    PartialDiceMetric,
    evaluate_case,
    format_table,
    organ_metrics,
    partial_dice,
    summarize,
    write_reports,
)


def _cube(shape, start, size, value=1, dtype=np.uint8):
    a = np.zeros(shape, dtype=dtype)
    a[tuple(slice(s, s + size) for s in start)] = value
    return a


def test_dice_shifted_cube_and_perfect():
    gt = _cube((10, 10, 10), (2, 2, 2), 4)
    pred = _cube((10, 10, 10), (3, 2, 2), 4)
    res = organ_metrics(pred > 0, gt > 0, (1.0, 1.0, 1.0))
    assert res["intersection"] == 48 and res["pred_voxels"] == 64 and res["gt_voxels"] == 64
    assert res["dice"] == pytest.approx(0.75)  # 2 * 48 / 128
    perfect = organ_metrics(gt > 0, gt > 0, (0.7, 0.7, 2.5))
    assert perfect["dice"] == 1.0 and perfect["hd95"] == 0.0 and perfect["assd"] == 0.0
    assert perfect["surface_dice"] == 1.0 and perfect["note"] is None
    assert perfect["gt_volume_ml"] == pytest.approx(64 * 0.7 * 0.7 * 2.5 / 1000)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_surface_distances_overlapping_cube_shift_anisotropic(axis):
    # 4-cube shifted by 1 voxel along `axis` whose spacing (0.8 mm) is the smallest: of the 56 boundary voxels
    # of each cube, 36 lie on the other boundary (distance 0) and 20 are one step (0.8 mm) away, both ways.
    spacing = [1.5, 2.0, 1.7]
    spacing[axis] = 0.8
    start = [2, 2, 2]
    start[axis] = 3
    gt = _cube((9, 9, 9), (2, 2, 2), 4) > 0
    pred = _cube((9, 9, 9), tuple(start), 4) > 0
    res = organ_metrics(pred, gt, spacing, tolerance_mm=0.5)
    assert res["dice"] == pytest.approx(0.75)
    assert res["hd95"] == pytest.approx(0.8)
    assert res["assd"] == pytest.approx(40 * 0.8 / 112)  # = 0.285714 mm
    assert res["surface_dice"] == pytest.approx(72 / 112)
    assert organ_metrics(pred, gt, spacing, tolerance_mm=0.8)["surface_dice"] == pytest.approx(1.0)
    # the same numbers as MONAI's reference functions
    p, g = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(gt)[None, None].float()
    kw = dict(include_background=True, spacing=spacing)
    assert float(compute_hausdorff_distance(p, g, percentile=95, **kw)) == pytest.approx(res["hd95"], rel=1e-5)
    assert float(compute_average_surface_distance(p, g, symmetric=True, **kw)) == pytest.approx(res["assd"], rel=1e-5)
    assert float(compute_surface_dice(p, g, [0.5], **kw)) == pytest.approx(res["surface_dice"], rel=1e-5)


@pytest.mark.parametrize("axis", [0, 2])
def test_surface_distances_disjoint_cube_shift(axis):
    # 3-cube shifted by 5 voxels (gap of 2): boundary levels are 3, 4, 5 steps away (9, 8, 9 voxels)
    spacing = [0.7, 0.9, 0.6]
    spacing[axis] = 2.5
    start = [1, 1, 1]
    start[axis] = 6
    gt = _cube((12, 12, 12), (1, 1, 1), 3) > 0
    pred = _cube((12, 12, 12), tuple(start), 3) > 0
    res = organ_metrics(pred, gt, spacing)
    assert res["dice"] == 0.0
    assert res["assd"] == pytest.approx(4 * 2.5)  # (9*3 + 8*4 + 9*5) / 26 steps
    assert res["hd95"] == pytest.approx(5 * 2.5)
    assert res["surface_dice"] == 0.0


def test_empty_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    blob = _cube((6, 6, 6), (1, 1, 1), 2) > 0
    both = organ_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95"] == 0.0 and both["note"] == "both empty"
    miss = organ_metrics(empty, blob, (1, 1, 1))
    assert miss["dice"] == 0.0 and miss["hd95"] is None and miss["assd"] is None
    assert miss["surface_dice"] == 0.0 and miss["note"] == "prediction empty"
    fp = organ_metrics(blob, empty, (1, 1, 1))
    assert fp["dice"] == 0.0 and fp["hd95"] is None and fp["note"] == "ground truth empty"


def _two_cases():
    lab_a = _cube((10, 10, 10), (2, 2, 2), 4)  # liver
    pred_a = _cube((10, 10, 10), (3, 2, 2), 4)
    lab_a[8:10, 8:10, 8:10] = 3  # spleen (8 voxels), predicted perfectly
    pred_a[8:10, 8:10, 8:10] = 3
    lab_b = _cube((10, 10, 10), (4, 4, 4), 2)  # small liver (8 voxels), 1 voxel predicted
    pred_b = np.zeros_like(lab_b)
    pred_b[4, 4, 4] = 1
    pred_b[0:2, 0:2, 0:2] = 2  # a kidney that this (liver-only) dataset does not label
    a = evaluate_case(pred_a, lab_a, spacing=(1.0, 1.0, 2.0), case_id="a")  # fully labeled (BTCV-like)
    b = evaluate_case(pred_b, lab_b, spacing=(1.0, 1.0, 2.0), labeled_classes="lits", case_id="b")
    return a, b


def test_not_applicable_organs():
    a, b = _two_cases()
    assert b["labeled_classes"] == [1]
    for organ in ("kidney", "spleen"):
        entry = b["organs"][organ]
        assert entry["applicable"] is False
        assert all(entry[m] is None for m in ("dice", "hd95", "assd", "surface_dice"))
    assert a["organs"]["kidney"]["applicable"] is True
    assert a["organs"]["kidney"]["dice"] == 1.0 and a["organs"]["kidney"]["note"] == "both empty"
    assert b["organs"]["liver"]["dice"] == pytest.approx(2 / 9)
    with pytest.raises(ValueError, match="outside"):
        evaluate_case(a_pred := np.zeros((4, 4, 4), np.uint8), a_pred, labeled_classes=[4])


def test_global_vs_average_dice():
    a, b = _two_cases()
    s = summarize([a, b])
    liver = s["organs"]["liver"]
    assert liver["n_cases"] == 2
    assert liver["dice_mean"] == pytest.approx((0.75 + 2 / 9) / 2)  # 0.486111
    assert liver["dice_std"] == pytest.approx(np.std([0.75, 2 / 9], ddof=1))
    assert liver["global_dice"] == pytest.approx(2 * (48 + 1) / (128 + 9))  # 0.715328
    spleen = s["organs"]["spleen"]
    assert spleen["n_cases"] == 1 and spleen["dice_mean"] == 1.0 and spleen["dice_std"] == 0.0
    assert s["organs"]["kidney"]["n_cases"] == 1  # only case a labels kidneys
    assert s["organs"]["kidney"]["global_dice"] is None  # empty everywhere: pooled Dice undefined
    assert s["mean_over_organs"]["dice_mean"] == pytest.approx(((0.75 + 2 / 9) / 2 + 1.0 + 1.0) / 3)
    assert s["mean_over_organs"]["global_dice"] == pytest.approx((98 / 137 + 1.0) / 2)


def test_spacing_from_metatensor_affine():
    lab = _cube((9, 9, 9), (2, 2, 2), 4)
    pred = _cube((9, 9, 9), (2, 2, 3), 4)
    affine = torch.diag(torch.tensor([1.5, 2.0, 0.8, 1.0], dtype=torch.float64))
    res = evaluate_case(MetaTensor(torch.as_tensor(pred)[None]), MetaTensor(torch.as_tensor(lab)[None], affine=affine))
    assert res["spacing"] == pytest.approx([1.5, 2.0, 0.8])
    assert res["organs"]["liver"]["hd95"] == pytest.approx(0.8)


def test_reports_written_and_readable(tmp_path):
    a, b = _two_cases()
    paths = write_reports([a, b], tmp_path / "out", prefix="eval")
    data = json.loads(open(paths["json"]).read())
    assert data["summary"]["organs"]["liver"]["global_dice"] == pytest.approx(98 / 137)
    assert data["cases"][1]["organs"]["kidney"]["dice"] is None
    rows = list(csv.DictReader(open(paths["cases_csv"])))
    assert [r["case"] for r in rows] == ["a", "b"]
    assert float(rows[0]["dice_liver"]) == pytest.approx(0.75)
    assert rows[1]["dice_kidney"] == "n/a" and rows[1]["hd95_spleen"] == "n/a"
    assert float(rows[1]["dice_liver"]) == pytest.approx(2 / 9, rel=1e-5)
    summary_rows = {r["organ"]: r for r in csv.DictReader(open(paths["summary_csv"]))}
    assert set(summary_rows) == {"liver", "kidney", "spleen", "mean_over_organs"}
    assert float(summary_rows["liver"]["dice_mean"]) == pytest.approx((0.75 + 2 / 9) / 2, rel=1e-5)
    table = format_table(data["summary"])
    assert "liver" in table and "48.61 ±" in table and "71.53" in table and "mean" in table


def test_reports_with_undefined_distance(tmp_path):
    lab = _cube((8, 8, 8), (2, 2, 2), 3)
    case = evaluate_case(np.zeros_like(lab), lab, spacing=1.0, labeled_classes=[1], case_id="miss")
    paths = write_reports([case], tmp_path, prefix="x")
    row = next(csv.DictReader(open(paths["cases_csv"])))
    assert row["dice_liver"] == "0" and row["hd95_liver"] == "" and "prediction empty" in row["notes"]
    s = summarize([case])
    assert s["organs"]["liver"]["n_inf_distance"] == 1 and s["organs"]["liver"]["hd95_mean"] is None
    assert "n/a" in format_table(s)


# ------------------------------------------------------------------------------------- torch side
def _onehot(lab: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(lab.long(), k).movedim(-1, 1).float()


def _square_batch():
    gt = torch.zeros(2, 8, 8, dtype=torch.long)
    gt[:, 2:6, 2:6] = 1  # a 4x4 liver square in both samples
    gt[1, 6:8, 6:8] = 3  # a spleen in sample 1
    pred = torch.zeros_like(gt)
    pred[:, 3:7, 2:6] = 1  # shifted by one row: Dice 2 * 12 / 32 = 0.75
    pred[1, 6:8, 6:8] = 3
    pred[0, 0:2, 0:2] = 2  # kidney predicted in sample 0 (liver-only dataset: ignored)
    return _onehot(pred), _onehot(gt)


def test_partial_dice_function():
    p, g = _square_batch()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    d = partial_dice(p, g, mask)
    assert d.shape == (2, 3)
    np.testing.assert_allclose(d[0, 0].item(), 0.75)
    assert torch.isnan(d[0, 1:]).all()  # unlabeled in sample 0
    np.testing.assert_allclose(d[1].tolist(), [0.75, float("nan"), 1.0])  # kidney: empty GT ignored
    d_empty = partial_dice(p, g, mask, ignore_empty=False, include_background=True)
    assert d_empty.shape == (2, 4) and d_empty[1, 2].item() == 1.0
    assert partial_dice(g, g).nan_to_num(1.0).eq(1.0).all()
    with pytest.raises(ValueError, match="same one-hot shape"):
        partial_dice(p, g[:, :3])
    with pytest.raises(ValueError, match="labeled_mask"):
        partial_dice(p, g, torch.ones(3))


def test_partial_dice_metric_reads_meta_and_aggregates():
    p, g = _square_batch()
    y = MetaTensor(g, meta={"labeled_mask": torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])})
    metric = PartialDiceMetric()
    out = metric(y_pred=p, y=y)
    assert out.shape == (2, 3)
    # a perfect third sample, fully labeled
    metric(y_pred=g[1:], y=MetaTensor(g[1:], meta={"labeled_mask": torch.ones(1, 4)}))
    per_class = metric.aggregate(per_class=True)
    np.testing.assert_allclose(per_class[0].item(), (0.75 + 0.75 + 1.0) / 3)  # liver
    assert torch.isnan(per_class[1])  # kidney never defined
    np.testing.assert_allclose(per_class[2].item(), 1.0)  # spleen
    np.testing.assert_allclose(metric.aggregate().item(), ((2.5 / 3) + 1.0) / 2)
    d = metric.aggregate_dict()
    assert set(d) == {"liver", "kidney", "spleen", "mean"} and d["spleen"] == 1.0
    liver_only = PartialDiceMetric(class_index=1)
    liver_only(y_pred=p, y=y)
    np.testing.assert_allclose(liver_only.aggregate().item(), 0.75)
    metric.reset()
    perfect = PartialDiceMetric()
    perfect(y_pred=[g[0], g[1]], y=[g[0], g[1]])  # list of channel-first tensors
    assert perfect.aggregate().item() == 1.0


def test_partial_dice_metric_decollated_meta_and_ignite():
    from ignite.engine import Engine
    from monai.data import decollate_batch
    from monai.handlers import IgniteMetricHandler

    p, g = _square_batch()
    y = MetaTensor(g, meta={"labeled_mask": torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])})
    y.is_batch = True
    items = decollate_batch(y)
    assert tuple(items[0].meta["labeled_mask"].shape) == (4,)
    engine = Engine(lambda e, batch: {"pred": list(p), "label": items})
    IgniteMetricHandler(PartialDiceMetric(), output_transform=lambda o: (o["pred"], o["label"])).attach(engine, "dice")
    engine.run([0], max_epochs=1)
    np.testing.assert_allclose(engine.state.metrics["dice"], (0.75 + 1.0) / 2)
