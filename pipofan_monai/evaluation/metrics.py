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

"""Evaluation metrics for multi-organ segmentation from partially labeled data (the paper's
per-organ Dice, plus surface metrics, because Dice alone hides boundary errors).

Two layers:

* numpy/scipy side, one case at a time: :py:func:`evaluate_case` computes per-organ hard Dice, HD95, ASSD and
  surface Dice in millimetres; :py:func:`summarize` aggregates cases into the paper's "average Dice" (mean over
  cases) and "global Dice" (2 sum I / sum (|A| + |B|) over all cases, Tables VI/VIII); :py:func:`write_reports`
  and :py:func:`format_table` write JSON/CSV files and a console table.
* torch side, during validation (:mod:`pipofan_monai.evaluation.dice_metric`, re-exported here):
  :py:class:`PartialDiceMetric` (a MONAI ``CumulativeIterationMetric``) and :py:func:`partial_dice`, per-organ
  hard Dice that ignores organs not labeled in a sample's source dataset.

Conventions (per case and organ, for organs labeled in the case's source dataset):

====================================  ======  ===========  ============  =====================
case                                   Dice    surface Dice  HD95 / ASSD   ``note``
====================================  ======  ===========  ============  =====================
both non-empty                         value   value         value (mm)    ``None``
ground truth and prediction empty      1.0     1.0           0.0           ``"both empty"``
ground truth non-empty, prediction     0.0     0.0           ``None``      ``"prediction empty"``
empty (distance infinite)
ground truth empty, prediction         0.0     0.0           ``None``      ``"ground truth empty"``
non-empty (distance infinite)
====================================  ======  ===========  ============  =====================

Organs NOT labeled in the case's source dataset (e.g. the kidney in a LiTS case) are "not applicable": every
metric is ``None`` (``"n/a"`` in CSV files and tables), ``applicable`` is ``False``, and they are left out of
every average -- never counted as 0 or NaN. Distance averages skip ``None`` values and report how many cases
had an infinite distance (``n_inf_distance``).

Surface metrics follow MONAI (``monai.metrics.utils.get_edge_surface_distance``: boundary voxels by binary
erosion, exact Euclidean distances in mm using the voxel spacing): HD95 is the larger of the two directed 95th
percentiles (as ``compute_hausdorff_distance(percentile=95)``), ASSD the mean of the pooled distances of both
directions (``compute_average_surface_distance(symmetric=True)``), surface Dice the fraction of boundary
voxels of both surfaces within the tolerance (``compute_surface_dice``).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics.utils import get_edge_surface_distance
from monai.utils import convert_to_numpy

from pipofan_monai.evaluation.dice_metric import (  # noqa: F401  (re-exported: the validation metric's old home)
    COUNT_CHUNK,
    PartialDiceMetric,
    label_map_counts,
    partial_dice,
    per_class_dice_metrics,
)

from pipofan_monai.vocabulary.datasets import CLASS_NAMES, get_dataset_spec
from pipofan_monai.utils import atomic_write, atomic_write_json

__all__ = [
    "METRIC_NAMES",
    "organ_metrics",
    "evaluate_case",
    "summarize",
    "write_reports",
    "format_table",
    "partial_dice",
    "PartialDiceMetric",
    "per_class_dice_metrics",
]

#: per-organ metrics reported per case, in table order.
METRIC_NAMES: tuple[str, ...] = ("dice", "hd95", "assd", "surface_dice")

NOT_APPLICABLE = "not labeled in this case's source dataset"


# ---------------------------------------------------------------------------------------------- one organ
def organ_metrics(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
    surface: bool = True,
) -> dict[str, Any]:
    """Dice, HD95, ASSD (mm) and surface Dice of one binary organ mask (see the module docstring for empties).

    Args:
        pred_mask: predicted binary mask ``(H, W[, D])``.
        gt_mask: ground-truth binary mask, same shape.
        spacing: voxel size in mm per axis (``len == pred_mask.ndim``).
        tolerance_mm: surface Dice tolerance in mm.
        surface: compute the surface metrics (HD95, ASSD, surface Dice); when False they are ``None``.

    Returns:
        dict with ``dice``, ``hd95``, ``assd``, ``surface_dice``, ``intersection``, ``pred_voxels``, ``gt_voxels``,
        ``pred_volume_ml``, ``gt_volume_ml`` and ``note``.
    """
    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {pred_mask.shape} vs {gt_mask.shape}.")
    spacing = [float(s) for s in spacing]
    if len(spacing) != pred_mask.ndim or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must hold {pred_mask.ndim} positive values (mm), got {spacing}.")
    n_pred, n_gt = int(pred_mask.sum()), int(gt_mask.sum())
    inter = int(np.logical_and(pred_mask, gt_mask).sum())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    res: dict[str, Any] = {
        "dice": None,
        "hd95": None,
        "assd": None,
        "surface_dice": None,
        "intersection": inter,
        "pred_voxels": n_pred,
        "gt_voxels": n_gt,
        "pred_volume_ml": n_pred * voxel_ml,
        "gt_volume_ml": n_gt * voxel_ml,
        "note": None,
    }
    if n_pred == 0 and n_gt == 0:
        res.update(dice=1.0, note="both empty")
        if surface:
            res.update(hd95=0.0, assd=0.0, surface_dice=1.0)
        return res
    res["dice"] = 2.0 * inter / (n_pred + n_gt)
    if n_pred == 0 or n_gt == 0:
        res["note"] = "prediction empty" if n_pred == 0 else "ground truth empty"
        if surface:
            res["surface_dice"] = 0.0
        return res
    if surface:
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            _, (d_pg, d_gp), _ = get_edge_surface_distance(
                torch.from_numpy(pred_mask), torch.from_numpy(gt_mask), spacing=spacing, symmetric=True, warn_empty=False
            )
        d_pg, d_gp = convert_to_numpy(d_pg), convert_to_numpy(d_gp)  # float32 mm, as in MONAI
        tol = np.float32(tolerance_mm)  # compared in float32 like compute_surface_dice
        res["surface_dice"] = float(((d_pg <= tol).sum() + (d_gp <= tol).sum()) / (d_pg.size + d_gp.size))
        d_pg, d_gp = d_pg.astype(np.float64), d_gp.astype(np.float64)
        # rounded to 1e-6 mm: the distances are float32, extra digits are noise
        res["hd95"] = round(float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))), 6)
        res["assd"] = round(float(np.concatenate([d_pg, d_gp]).mean()), 6)
    return res


# ---------------------------------------------------------------------------------------------- one case
def _as_label_map(x, name: str) -> np.ndarray:
    arr = convert_to_numpy(x)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"{name} must be a label map (H, W, D) or (1, H, W, D), got shape {arr.shape}.")
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a label map (H, W, D) or (1, H, W, D), got shape {arr.shape}.")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values.")
        arr = np.rint(arr).astype(np.int64)
    return arr


def _resolve_spacing(spacing, pred, label, ndim: int) -> list[float]:
    if spacing is None:
        for x in (label, pred):
            if isinstance(x, MetaTensor):
                return [float(s) for s in affine_to_spacing(x.affine, r=ndim)]
        return [1.0] * ndim
    if np.isscalar(spacing):
        return [float(spacing)] * ndim
    spacing = [float(s) for s in np.asarray(convert_to_numpy(spacing), dtype=np.float64).ravel()]
    if len(spacing) != ndim:
        raise ValueError(f"spacing must have {ndim} values (mm), got {spacing}.")
    return spacing


def evaluate_case(
    pred,
    label,
    spacing: Sequence[float] | float | None = None,
    labeled_classes: Sequence[int] | str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    tolerance_mm: float | Mapping[str, float] = 2.0,
    surface: bool = True,
    case_id: str | None = None,
) -> dict[str, Any]:
    """Per-organ metrics of one case.

    Args:
        pred: predicted label map ``(H, W, D)`` or ``(1, H, W, D)`` (global class ids), numpy/torch/MetaTensor.
        label: ground-truth label map in global class ids, same shape.
        spacing: voxel size in mm per spatial axis (or one number); ``None`` reads it from the affine of a
            MetaTensor ``label`` (else ``pred``), falling back to 1 mm.
        labeled_classes: organ ids annotated in the case's source dataset, or a dataset name known to
            :py:func:`pipofan_monai.vocabulary.datasets.get_dataset_spec` (e.g. ``"lits"``); ``None`` means fully
            labeled (all organs ``1 .. len(class_names) - 1``).
        class_names: names of the classes, index = class id (index 0 = background, not evaluated).
        tolerance_mm: surface Dice tolerance in mm, one value or ``{organ name: mm}``.
        surface: also compute HD95, ASSD and surface Dice (slower); when False they are ``None``.
        case_id: identifier stored in the result (e.g. the file name).

    Returns:
        ``{"case": case_id, "spacing": [...], "labeled_classes": [...], "organs": {name: {"class_id", "applicable",
        "dice", "hd95", "assd", "surface_dice", "intersection", "pred_voxels", "gt_voxels", "pred_volume_ml",
        "gt_volume_ml", "note"}}}``; see the module docstring for the empty-mask and not-applicable conventions.

    Raises:
        ValueError: shapes differ, bad spacing, or labeled classes outside the class list.
    """
    p = _as_label_map(pred, "pred")
    g = _as_label_map(label, "label")
    if p.shape != g.shape:
        raise ValueError(f"pred and label shapes differ: {p.shape} vs {g.shape}.")
    sp = _resolve_spacing(spacing, pred, label, p.ndim)
    n_cls = len(class_names)
    if isinstance(labeled_classes, str):  # a dataset name: its annotated organs in this vocabulary
        labeled = set(get_dataset_spec(labeled_classes).resolve(class_names)[1])
    elif labeled_classes is None:
        labeled = set(range(1, n_cls))
    else:
        labeled = {int(c) for c in labeled_classes}
    bad = sorted(c for c in labeled if not 0 < c < n_cls)
    if bad:
        raise ValueError(f"labeled_classes {bad} are outside the organ ids 1..{n_cls - 1}.")
    organs: dict[str, Any] = {}
    for cid in range(1, n_cls):
        name = str(class_names[cid])
        if cid not in labeled:
            organs[name] = {"class_id": cid, "applicable": False, **{m: None for m in METRIC_NAMES}}
            organs[name].update(note=NOT_APPLICABLE)
            continue
        tol = tolerance_mm.get(name, 2.0) if isinstance(tolerance_mm, Mapping) else tolerance_mm
        metrics = organ_metrics(p == cid, g == cid, sp, float(tol), surface)
        organs[name] = {"class_id": cid, "applicable": True, **metrics}
    return {"case": case_id, "spacing": sp, "labeled_classes": sorted(labeled), "organs": organs}


# ---------------------------------------------------------------------------------------------- many cases
def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one value); (None, None) for no values."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate :py:func:`evaluate_case` results (Tables VI/VIII of the paper).

    Per organ, over the cases where the organ is applicable: ``dice_mean`` / ``dice_std`` ("average Dice", the
    mean over cases, with the sample standard deviation, ddof=1; 0 for one case), ``global_dice``
    (2 sum I / sum (|A| + |B|) pooled over the cases; ``None`` when all are empty), and ``<metric>_mean`` /
    ``<metric>_std`` for HD95, ASSD and surface Dice over the cases where they are defined, with
    ``n_inf_distance`` counting cases whose distance was infinite (one mask empty). ``mean_over_organs`` averages
    each organ-level number over the organs that have at least one applicable case ("average" column of the paper).

    Args:
        cases: list of case results from :py:func:`evaluate_case`.

    Returns:
        ``{"n_cases": int, "organs": {name: {...}}, "mean_over_organs": {...}}``.
    """
    names: list[str] = []
    for case in cases:
        for name in case["organs"]:
            if name not in names:
                names.append(name)
    organs: dict[str, Any] = {}
    for name in names:
        rows = [c["organs"][name] for c in cases if name in c["organs"] and c["organs"][name].get("applicable")]
        entry: dict[str, Any] = {"n_cases": len(rows)}
        entry["dice_mean"], entry["dice_std"] = mean_std([r["dice"] for r in rows if r["dice"] is not None])
        denom = sum(r["pred_voxels"] + r["gt_voxels"] for r in rows)
        entry["global_dice"] = 2.0 * sum(r["intersection"] for r in rows) / denom if denom else None
        for m in METRIC_NAMES[1:]:
            entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std([r[m] for r in rows if r.get(m) is not None])
        entry["n_inf_distance"] = sum(1 for r in rows if r.get("note") in ("prediction empty", "ground truth empty"))
        organs[name] = entry
    overall: dict[str, Any] = {}
    for key in ("dice_mean", "global_dice", "hd95_mean", "assd_mean", "surface_dice_mean"):
        vals = [organs[n][key] for n in names if organs[n]["n_cases"] and organs[n][key] is not None]
        overall[key] = float(np.mean(vals)) if vals else None
    return {"n_cases": len(cases), "organs": organs, "mean_over_organs": overall}


# ---------------------------------------------------------------------------------------------- writers
_SUMMARY_COLUMNS = (
    "n_cases",
    "dice_mean",
    "dice_std",
    "global_dice",
    "hd95_mean",
    "hd95_std",
    "assd_mean",
    "assd_std",
    "surface_dice_mean",
    "surface_dice_std",
    "n_inf_distance",
)


def _cell(value: Any, applicable: bool = True) -> Any:
    if not applicable:
        return "n/a"
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return value


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_reports(
    results: Sequence[Mapping[str, Any]] | Mapping[str, Any], output_dir: str | os.PathLike, prefix: str = "evaluation"
) -> dict[str, str]:
    """Write an evaluation as JSON and CSV files.

    Files (``<prefix>`` defaults to ``evaluation``):

    * ``<prefix>.json``: ``{"summary": summarize(cases), "cases": cases}`` (not-applicable values are ``null``
      with ``"applicable": false``);
    * ``<prefix>_cases.csv``: one row per case, columns ``case``, then ``<metric>_<organ>`` for every metric and
      organ, then ``notes``; ``n/a`` where the organ is not labeled in that case's dataset, an empty cell where
      a distance is undefined (see ``notes``);
    * ``<prefix>_summary.csv``: one row per organ plus a ``mean_over_organs`` row.

    Args:
        results: list of :py:func:`evaluate_case` results, or a dict ``{"cases": [...], "summary": {...}}``.
        output_dir: folder, created when missing.
        prefix: file name prefix.

    Returns:
        ``{"json": path, "cases_csv": path, "summary_csv": path}``.
    """
    if isinstance(results, Mapping):
        cases = list(results["cases"])
        summary = results.get("summary") or summarize(cases)
    else:
        cases = list(results)
        summary = summarize(cases)
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, f"{prefix}.json"),
        "cases_csv": os.path.join(output_dir, f"{prefix}_cases.csv"),
        "summary_csv": os.path.join(output_dir, f"{prefix}_summary.csv"),
    }
    atomic_write_json(paths["json"], _json_safe({"summary": summary, "cases": cases}))

    names: list[str] = []
    for case in cases:
        names.extend(n for n in case["organs"] if n not in names)
    with atomic_write(paths["cases_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case"] + [f"{m}_{n}" for m in METRIC_NAMES for n in names] + ["notes"])
        for i, case in enumerate(cases):
            row: list[Any] = [case.get("case") if case.get("case") is not None else str(i)]
            notes = []
            for m in METRIC_NAMES:
                for n in names:
                    o = case["organs"].get(n, {"applicable": False})
                    row.append(_cell(o.get(m), bool(o.get("applicable"))))
            for n in names:
                o = case["organs"].get(n, {})
                if o.get("applicable") and o.get("note"):
                    notes.append(f"{n}: {o['note']}")
            row.append("; ".join(notes))
            writer.writerow(row)

    with atomic_write(paths["summary_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["organ", *_SUMMARY_COLUMNS])
        for n, entry in summary["organs"].items():
            writer.writerow([n] + [_cell(entry.get(c), bool(entry.get("n_cases"))) for c in _SUMMARY_COLUMNS])
        overall = summary["mean_over_organs"]
        writer.writerow(["mean_over_organs"] + [_cell(overall[c]) if c in overall else "" for c in _SUMMARY_COLUMNS])
    return paths


def format_table(summary: Mapping[str, Any]) -> str:
    """Console table of a :py:func:`summarize` result: one row per organ and a mean row; Dice values in %.

    Columns: cases, average Dice (mean ± std), global Dice, HD95 (mm), ASSD (mm), surface Dice (%); ``n/a`` where
    an organ had no applicable case or a value is undefined.
    """

    def pm(mean, std, scale=1.0, digits=2):
        if mean is None:
            return "n/a"
        if std is None:
            return f"{mean * scale:.{digits}f}"
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"

    def one(v, scale=1.0, digits=2):
        return "n/a" if v is None else f"{v * scale:.{digits}f}"

    header = ["organ", "cases", "Dice % (avg)", "Dice % (global)", "HD95 mm", "ASSD mm", "surface Dice %"]
    rows = [header]
    for name, e in summary["organs"].items():
        rows.append(
            [
                name,
                str(e["n_cases"]),
                pm(e["dice_mean"], e["dice_std"], 100),
                one(e["global_dice"], 100),
                pm(e["hd95_mean"], e["hd95_std"]),
                pm(e["assd_mean"], e["assd_std"]),
                pm(e["surface_dice_mean"], e["surface_dice_std"], 100),
            ]
        )
    o = summary["mean_over_organs"]
    rows.append(
        [
            "mean",
            str(summary.get("n_cases", "")),
            one(o["dice_mean"], 100),
            one(o["global_dice"], 100),
            one(o["hd95_mean"]),
            one(o["assd_mean"]),
            one(o["surface_dice_mean"], 100),
        ]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
