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

"""Per-organ statistics of a label map on its CT: voxel count, volume in ml, HU of the original CT, bounding box in
millimetres, connected components and whether the organ is cut off by the edge of the scan.

What a radiologist or a study reads from a segmentation (TotalSegmentator's ``--statistics`` gives the volume and
mean intensity per organ). The label map must lie on the CT's own grid (a prediction resampled back to the input,
as the inference writes it), so every number refers to the original voxels and Hounsfield units.

Output of :func:`organ_statistics`, one entry per organ (class name -> fields):

=================  ==========================================================================================
field              meaning (an organ without voxels: ``voxels`` 0, ``volume_ml`` 0.0, ``components`` 0,
                   ``touches_edge`` False, every other field ``None``)
=================  ==========================================================================================
``voxels``         number of voxels labelled with the organ (int)
``volume_ml``      ``voxels * |det(affine[:3, :3])| / 1000`` (mm^3 -> ml)
``hu_mean``        mean of the CT inside the organ (HU)
``hu_std``         population standard deviation (``ddof=0``) of the CT inside the organ (HU)
``hu_median``      median of the CT inside the organ (HU; the mean of the two middle values for an even count)
``bbox_mm``        ``{"min": [x, y, z], "max": [x, y, z]}``: the smallest and largest world coordinate of the
                   organ's voxel centres along each world axis of the affine's frame (mm)
``components``     number of connected pieces (26-connectivity: voxels sharing a face, edge or corner connect)
``touches_edge``   the organ has a voxel on the first or last slice of any axis: it may continue outside the
                   scan, so ``volume_ml`` is a lower bound of the organ's real volume
``note``           why a number is not the whole story (cut off by the edge, no voxels), else ``None``
=================  ==========================================================================================

:func:`write_statistics_json` writes one case's statistics (``statistics.json``), :func:`write_statistics_csv` the
statistics of a whole run (one row per case and organ), both atomically.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from pipofan_monai.utils import atomic_write, atomic_write_json

__all__ = ["STATISTICS_FIELDS", "organ_statistics", "write_statistics_json", "write_statistics_csv"]

#: the fields of one organ's entry, in the order of the CSV columns (``bbox_mm`` becomes six columns there)
STATISTICS_FIELDS = (
    "voxels", "volume_ml", "hu_mean", "hu_std", "hu_median", "bbox_mm", "components", "touches_edge", "note",
)
#: the note of an organ that touches the edge of the volume
NOTE_EDGE = "touches the edge of the scan: cut off, the volume is a lower bound"
#: the note of an organ without voxels
NOTE_EMPTY = "no voxels"
#: CSV cell of a missing value (as in the metric tables)
_NA = "n/a"
_CSV_COLUMNS = (
    "case", "organ", "voxels", "volume_ml", "hu_mean", "hu_std", "hu_median",
    "bbox_min_x_mm", "bbox_min_y_mm", "bbox_min_z_mm", "bbox_max_x_mm", "bbox_max_y_mm", "bbox_max_z_mm",
    "components", "touches_edge", "note",
)
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def _as_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor or MONAI MetaTensor (on the CPU, without copying when possible)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _squeeze_channel(x: np.ndarray) -> np.ndarray:
    """``(1, X, Y, Z)`` (MONAI's channel-first layout) -> ``(X, Y, Z)``; other shapes unchanged."""
    return x[0] if x.ndim == 4 and x.shape[0] == 1 else x


def _integer_labels(label: np.ndarray, n_classes: int) -> np.ndarray:
    """The label map as integers, checked to hold class ids ``0 .. n_classes - 1`` only."""
    if label.dtype == bool:
        label = label.astype(np.uint8)
    if not np.issubdtype(label.dtype, np.integer):
        as_int = label.astype(np.int32)
        if not np.array_equal(as_int, label):
            raise ValueError("label map holds non-integer values; expected integer class ids.")
        label = as_int
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"label map holds class id {bad}, outside 0..{n_classes - 1} of the {n_classes} class names.")
    return label


def _check_inputs(label: np.ndarray, image: np.ndarray, affine: np.ndarray, class_names: Sequence[str]) -> None:
    if label.ndim != 3:
        raise ValueError(f"label map must be 3D (X, Y, Z), got shape {tuple(label.shape)}.")
    if image.shape != label.shape:
        raise ValueError(
            f"image shape {tuple(image.shape)} differs from label map shape {tuple(label.shape)}: the label map must "
            "lie on the CT's own grid (resample the prediction back to the input first)."
        )
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {tuple(affine.shape)}.")
    if abs(np.linalg.det(affine[:3, :3])) == 0:
        raise ValueError("affine is singular (a zero voxel size or collapsed axes): volumes would be 0.")
    if len(class_names) < 2:
        raise ValueError(f"class_names needs the background and at least one organ, got {list(class_names)}.")


def _empty_entry() -> dict[str, Any]:
    return {"voxels": 0, "volume_ml": 0.0, "hu_mean": None, "hu_std": None, "hu_median": None, "bbox_mm": None,
            "components": 0, "touches_edge": False, "note": NOTE_EMPTY}


def _bbox_mm(mask: np.ndarray, origin: Sequence[int], affine: np.ndarray) -> dict[str, list[float]]:
    """World extent of the voxel centres in ``mask`` (a crop starting at index ``origin``): exact for any affine,
    rotated or sheared (the extremes of a linear map over the voxels, not of the index box's corners)."""
    idx = np.nonzero(mask)
    lo, hi = [], []
    for w in range(3):
        coord = affine[w, 3] + sum(affine[w, a] * (idx[a] + origin[a]).astype(np.float64) for a in range(3))
        lo.append(float(coord.min()))
        hi.append(float(coord.max()))
    return {"min": lo, "max": hi}


def _organ_entry(label: np.ndarray, image: np.ndarray, affine: np.ndarray, class_id: int, box: tuple[slice, ...],
                 voxel_ml: float) -> dict[str, Any]:
    """The statistics of class ``class_id`` whose voxels lie inside the index box ``box``."""
    mask = label[box] == class_id
    voxels = int(np.count_nonzero(mask))
    hu = image[box][mask].astype(np.float64)
    touches = any(s.start == 0 or s.stop == n for s, n in zip(box, label.shape))
    return {
        "voxels": voxels,
        "volume_ml": voxels * voxel_ml,
        "hu_mean": float(hu.mean()),
        "hu_std": float(hu.std()),
        "hu_median": float(np.median(hu)),
        "bbox_mm": _bbox_mm(mask, [s.start for s in box], affine),
        "components": int(ndimage.label(mask, structure=_CONNECTIVITY_26)[1]),
        "touches_edge": bool(touches),
        "note": NOTE_EDGE if touches else None,
    }


def organ_statistics(
    label: Any,
    image: Any,
    affine: Any,
    class_names: Sequence[str],
    organs: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Statistics of every organ of a label map, measured on the original CT (fields in the module docstring).

    Args:
        label: ``(X, Y, Z)`` integer class ids (index into ``class_names``; 0 is the background) on the CT's own
            grid. numpy array or torch tensor; a ``(1, X, Y, Z)`` channel-first array is accepted too. Float arrays
            are accepted when they hold whole numbers.
        image: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) the original CT in Hounsfield units, on the same grid.
        affine: ``4 x 4`` voxel-to-world matrix in mm of that grid (voxel index ``(i, j, k)`` -> world
            ``affine @ (i, j, k, 1)``). ``bbox_mm`` is given in the world frame of this matrix: RAS+ for the
            affines of MONAI's readers (``ITKReader`` turns DICOM's LPS into RAS by default) and of NIfTI files,
            LPS for an affine taken from a DICOM header as it is.
        class_names: name of each class id, background first (e.g. ``("background", "liver", "kidney", ...)``).
        organs: class names to report (default: every class except the background), in this order.

    Returns:
        organ name -> its statistics (``voxels``, ``volume_ml``, ``hu_mean``, ``hu_std``, ``hu_median``,
        ``bbox_mm``, ``components``, ``touches_edge``, ``note``). An organ without voxels is present with
        ``voxels`` 0 and ``None`` statistics.

    Raises:
        ValueError: not 3D, image and label on different grids, a bad affine, class ids outside ``class_names``,
            or an unknown or background name in ``organs``.
    """
    label = _squeeze_channel(_as_numpy(label))
    image = _squeeze_channel(_as_numpy(image))
    affine = _as_numpy(affine).astype(np.float64)
    names = list(class_names)
    _check_inputs(label, image, affine, names)
    wanted = names[1:] if organs is None else list(organs)
    unknown = [o for o in wanted if o not in names[1:]]
    if unknown:
        raise ValueError(f"unknown organ(s) {unknown}; the organs of this model are {names[1:]}.")
    label = _integer_labels(label, len(names))
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    boxes = ndimage.find_objects(label, max_label=len(names) - 1)  # one index box per class id 1.., None if absent
    out: dict[str, dict[str, Any]] = {}
    for name in wanted:
        class_id = names.index(name)
        box = boxes[class_id - 1]
        out[name] = _empty_entry() if box is None else _organ_entry(label, image, affine, class_id, box, voxel_ml)
    return out


def write_statistics_json(stats: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write one case's :func:`organ_statistics` to ``path`` (JSON, atomically: a kill leaves the old file or none)."""
    atomic_write_json(path, {name: dict(entry) for name, entry in stats.items()})


def _cell(value: Any) -> Any:
    return _NA if value is None else value


def write_statistics_csv(stats_by_case: Mapping[str, Mapping[str, Mapping[str, Any]]],
                         path: str | os.PathLike) -> None:
    """Write the statistics of a run as CSV (one row per case and organ, in the given order; atomically).

    Columns: ``case, organ, voxels, volume_ml, hu_mean, hu_std, hu_median, bbox_min_x_mm .. bbox_max_z_mm,
    components, touches_edge, note``; a missing value (an organ without voxels) is ``n/a``, no note an empty cell.

    Args:
        stats_by_case: case name (e.g. the input file) -> :func:`organ_statistics` of that case.
        path: the CSV file.
    """
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_CSV_COLUMNS)
        for case, stats in stats_by_case.items():
            for organ, e in stats.items():
                bbox = e.get("bbox_mm")
                corners = [None] * 6 if bbox is None else [*bbox["min"], *bbox["max"]]
                row = [case, organ, e["voxels"], e["volume_ml"], e["hu_mean"], e["hu_std"], e["hu_median"],
                       *corners, e["components"], e["touches_edge"]]
                writer.writerow([*(_cell(v) for v in row), e.get("note") or ""])
