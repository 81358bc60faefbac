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

"""The geometry of DICOM SEG frames: which plane of a label map is the frame of which source instance.

Every output frame is matched to its source instance by ``ImagePositionPatient`` and its in-plane pixel order by
``ImageOrientationPatient`` and ``PixelSpacing``, so any axis order or flip of the label map's grid (ITK's file
order, RAS reorientation, series whose files run in descending z) maps correctly. Only headers are used. Separate
from the writer (:mod:`pipofan_monai.inference.dicom_seg`): pure numpy, testable without highdicom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["label_map_to_frames"]


@dataclass
class _Plane:
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool
    slice_axis: int


def _as_array_and_affine(label: Any, affine: Any | None) -> tuple[np.ndarray, np.ndarray, str]:
    arr = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
    meta = getattr(label, "meta", None) or {}
    if affine is None:
        affine = getattr(label, "affine", None)
    if affine is None:
        raise ValueError("the label map has no affine: pass a MetaTensor or affine=...")
    aff = affine.detach().cpu().numpy() if hasattr(affine, "detach") else np.asarray(affine)
    space = str(meta.get("space", "RAS")).upper()
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"the label map must have one channel, got shape {arr.shape}.")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"the label map must be (1, H, W, D) or (H, W, D), got shape {arr.shape}.")
    aff = np.asarray(aff, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"the label map affine must be 4x4, got {aff.shape}.")
    if space not in ("RAS", "LPS"):
        raise ValueError(f"unknown affine space {space!r} in the label map meta data (expected RAS or LPS).")
    if space == "RAS":  # DICOM patient coordinates are LPS
        aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    return arr, aff, str(meta.get("filename_or_obj", "") or "<label map>")


def label_map_to_frames(
    label: Any, sources: Sequence[Any], affine: Any | None = None, atol_voxel: float = 0.1
) -> tuple[np.ndarray, list]:
    """The label map's planes as frames of the source instances.

    Args:
        label: label map ``(1, H, W, D)`` or ``(H, W, D)`` (MetaTensor with ``affine`` and ``meta["space"]``, or an
            array with ``affine``), on a voxel grid of the source series (any axis order and flips).
        sources: the series' instance headers (pydicom Datasets, any order).
        affine: 4x4 voxel-to-world affine (in the label map's ``meta["space"]``, RAS by default) if ``label`` has
            none.
        atol_voxel: tolerance, in voxels, on the positions of the source pixels in the label map grid.

    Returns:
        ``(frames, ordered_sources)``: ``frames[i]`` (shape ``(Rows, Columns)``, the label map's dtype) is the label
        map on the pixels of ``ordered_sources[i]``; sources are ordered by their slice index in the label map.

    Raises:
        ValueError: the label map is not on the series' grid (other size, spacing, orientation, a slice without a
            source instance or two instances at one position), naming the files.
    """
    arr, aff, name = _as_array_and_affine(label, affine)
    return _frames(arr, aff, name, sources, atol_voxel)


def _frames(arr: np.ndarray, aff: np.ndarray, name: str, sources: Sequence[Any], atol_voxel: float = 0.1
            ) -> tuple[np.ndarray, list]:
    """:func:`label_map_to_frames` on an ``(H, W, D)`` array and its LPS affine."""
    if not sources:
        raise ValueError("no source instances.")
    first = sources[0]
    where = os.path.dirname(str(getattr(first, "filename", ""))) or "<source series>"
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    for s in sources[1:]:
        if not np.allclose([float(v) for v in s.ImageOrientationPatient], iop, atol=1e-4):
            raise ValueError(f"the DICOM series in {where} has slices with different ImageOrientationPatient "
                             f"({list(iop)} vs {list(s.ImageOrientationPatient)} in {s.filename}): not one volume.")
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    inv = np.linalg.inv(aff)
    step_col = inv[:3, :3] @ (row_dir * col_spacing)  # voxel-index step of one column
    step_row = inv[:3, :3] @ (col_dir * row_spacing)  # voxel-index step of one row
    grid_msg = (f"the label map {name} (shape {arr.shape}) is not on the voxel grid of the DICOM series in {where} "
                f"({int(first.Rows)}x{int(first.Columns)} pixels, {len(sources)} slices)")

    def unit_axis(step: np.ndarray, what: str) -> tuple[int, bool]:
        ax = int(np.argmax(np.abs(step)))
        expected = np.zeros(3)
        expected[ax] = np.sign(step[ax])
        # the error over a whole row/column must stay far below half a voxel
        if np.abs(step - expected).max() * max(arr.shape) > atol_voxel:
            raise ValueError(f"{grid_msg}: one source {what} is {np.round(step, 4).tolist()} voxels of the label map "
                             "(other spacing or orientation; write the label map on the original image grid).")
        return ax, bool(step[ax] < 0)

    col_axis, col_flip = unit_axis(step_col, "column")
    row_axis, row_flip = unit_axis(step_row, "row")
    if col_axis == row_axis:
        raise ValueError(f"{grid_msg}: degenerate ImageOrientationPatient {list(iop)}.")
    plane = _Plane(row_axis, row_flip, col_axis, col_flip, 3 - row_axis - col_axis)
    if arr.shape[plane.row_axis] != int(first.Rows) or arr.shape[plane.col_axis] != int(first.Columns):
        raise ValueError(f"{grid_msg}: in-plane size differs.")
    by_slice: dict[int, Any] = {}
    for s in sources:
        v = inv @ np.append(np.asarray([float(x) for x in s.ImagePositionPatient]), 1.0)
        k = int(round(v[plane.slice_axis]))
        expect = {plane.row_axis: arr.shape[plane.row_axis] - 1 if row_flip else 0,
                  plane.col_axis: arr.shape[plane.col_axis] - 1 if col_flip else 0, plane.slice_axis: k}
        off = max(abs(v[a] - expect[a]) for a in range(3))
        if off > atol_voxel or not 0 <= k < arr.shape[plane.slice_axis]:
            raise ValueError(f"{grid_msg}: instance {s.filename} (ImagePositionPatient "
                             f"{list(s.ImagePositionPatient)}) falls at voxel {np.round(v[:3], 3).tolist()}, not on "
                             "a slice of the label map.")
        if k in by_slice:
            raise ValueError(f"{grid_msg}: instances {by_slice[k].filename} and {s.filename} are at the same "
                             "position.")
        by_slice[k] = s
    missing = [k for k in range(arr.shape[plane.slice_axis]) if k not in by_slice]
    if missing:
        raise ValueError(f"{grid_msg}: label map slices {missing[:10]} have no source instance.")
    # (slice, row, column) view of the label map
    vol = np.transpose(arr, (plane.slice_axis, plane.row_axis, plane.col_axis))
    if row_flip:
        vol = vol[:, ::-1, :]
    if col_flip:
        vol = vol[:, :, ::-1]
    order = sorted(by_slice)
    return np.ascontiguousarray(vol[order]), [by_slice[k] for k in order]


# ---------------------------------------------------------------------------------------------- writing
def _checked_labels(arr: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """``arr`` as unsigned integers, checked to hold class indices ``0..num_classes - 1`` only (no full-volume
    ``np.unique``: min/max and one cast, a few passes over a 512x512x1000 volume)."""
    if arr.size == 0:
        raise ValueError(f"label map {name} is empty (shape {arr.shape}).")
    lo, hi = arr.min(), arr.max()
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > num_classes - 1:
        raise ValueError(f"label map {name} has values in [{lo}, {hi}], outside the classes 0..{num_classes - 1}.")
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    lab = arr.astype(dtype, copy=False)
    if arr.dtype.kind == "f" and not np.array_equal(lab, arr):
        raise ValueError(f"label map {name} has non-integer values: expected class indices (argmax), not "
                         "probabilities.")
    return lab
