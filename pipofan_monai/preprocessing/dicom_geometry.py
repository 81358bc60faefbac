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

"""The slice geometry of a DICOM series, checked before it is read as one volume.

ITK (MONAI's ``ITKReader``) stacks a series' slices on a uniform grid: the spacing is the distance from the first
to the last slice divided by the number of gaps, along the first slice's normal. A series with a missing slice,
two slices at one position, slices of different orientations or a gantry tilt is therefore read without an error
onto a wrong grid (a 20-slice series at 2.0 mm missing one slice becomes 19 slices at 2.111 mm, misplaced by up
to ~1 mm). :func:`dicom_geometry_problem` finds these from the headers only (``ImagePositionPatient`` projected
on the slice normal, ``ImageOrientationPatient``, ``GantryDetectorTilt``), read with ITK's GDCM ImageIO without
decoding pixels (about 1 ms per file).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["SliceHeader", "read_slice_headers", "dicom_geometry_problem"]

logger = logging.getLogger(__name__)

#: cosines of two orientations may differ by this much (DICOM writes them with limited precision)
ORIENTATION_ATOL = 1e-3
#: two slices closer than this (mm, along the normal) are at one position
DUPLICATE_MM = 0.01
#: a step between neighbouring slices may differ from the median step by this fraction (or by 0.01 mm)
SPACING_RTOL = 0.1
#: slices stacked along a direction more than this many degrees from their normal: a gantry tilt (or a shear)
TILT_DEG = 0.5


@dataclass(frozen=True)
class SliceHeader:
    """What the geometry check needs from one file: its name, ``ImagePositionPatient`` (mm),
    ``ImageOrientationPatient`` (row then column cosines) and ``GantryDetectorTilt`` (degrees); None when absent."""

    file: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    tilt: float | None = None


def _numbers(value: str | None, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in str(value).replace(" ", "").split("\\") if v != "")
    except ValueError:
        return None
    return out if len(out) == n else None


def read_slice_headers(files: Sequence[str]) -> list[SliceHeader]:
    """The :class:`SliceHeader` of each DICOM file (header only, with ITK's GDCM ImageIO)."""
    import itk

    out = []
    for f in files:
        io = itk.GDCMImageIO.New()
        io.SetFileName(str(f))
        io.ReadImageInformation()
        md = io.GetMetaDataDictionary()
        tag = {k: (str(md[k]) if md.HasKey(k) else None) for k in ("0018|1120", "0020|0032", "0020|0037")}
        tilt = _numbers(tag["0018|1120"], 1)
        out.append(SliceHeader(str(f), _numbers(tag["0020|0032"], 3), _numbers(tag["0020|0037"], 6),  # type: ignore
                               None if tilt is None else tilt[0]))
    return out


def _name(h: SliceHeader) -> str:
    return os.path.basename(h.file)


def dicom_geometry_problem(folder: str | os.PathLike, headers: Sequence[SliceHeader]) -> str | None:
    """Why the slices of one DICOM series cannot be read as a regular volume, or None when they can.

    Args:
        folder: the series' folder (for the message).
        headers: one :class:`SliceHeader` per file of the series, in any order.

    Returns:
        None, or a message naming the folder and the problem: mixed orientations (cosines differ by more than
        1e-3), duplicate positions (closer than 0.01 mm along the normal), uneven positions (a step differs from
        the median step by more than 10 %, e.g. a missing slice: the gap, its files and positions, the expected
        spacing and how far a uniform grid would misplace the slices), or a gantry tilt (slices stacked more than
        0.5 degree off their normal). Series of one slice, or whose files lack position or orientation, are not
        checked (None).
    """
    folder = os.fspath(folder)
    if len(headers) < 2 or any(h.position is None or h.orientation is None for h in headers):
        return None
    ref = np.asarray(headers[0].orientation, dtype=np.float64)
    for h in headers[1:]:
        if np.abs(np.asarray(h.orientation) - ref).max() > ORIENTATION_ATOL:
            return (f"DICOM series in folder {folder} mixes slice orientations: {_name(headers[0])} has "
                    f"ImageOrientationPatient {tuple(ref)}, {_name(h)} has {tuple(h.orientation)}; one volume needs "
                    "one orientation (put each orientation, e.g. each scout or reformat, in its own folder).")
    normal = np.cross(ref[:3], ref[3:])
    normal /= np.linalg.norm(normal)
    z = np.array([np.dot(h.position, normal) for h in headers])
    order = np.argsort(z, kind="stable")
    hs, z = [headers[i] for i in order], z[order]
    steps = np.diff(z)
    dup = np.flatnonzero(steps < DUPLICATE_MM)
    if dup.size:
        i = int(dup[0])
        return (f"DICOM series in folder {folder} has {dup.size} duplicate slice position(s): {_name(hs[i])} and "
                f"{_name(hs[i + 1])} are both at {z[i]:.3f} mm along the slice normal (e.g. two acquisitions or "
                "copied files in one folder); keep one file per position.")
    problem = _uneven(folder, hs, z, steps)
    if problem is not None:
        return problem
    span = np.asarray(hs[-1].position, dtype=np.float64) - np.asarray(hs[0].position, dtype=np.float64)
    cos = min(1.0, abs(float(np.dot(span, normal))) / float(np.linalg.norm(span)))
    angle = math.degrees(math.acos(cos))
    if angle > TILT_DEG:
        tag = next((h.tilt for h in hs if h.tilt), None)
        return (f"DICOM series in folder {folder} is tilted: its slices are stacked along a direction {angle:.2f} "
                f"degrees off their normal" + (f" (GantryDetectorTilt {tag:g} degrees)" if tag else "") + "; read as "
                "one volume it would be sheared. Resample it onto a regular grid first (e.g. dcm2niix corrects a "
                "gantry tilt) and segment the result.")
    return None


def _uneven(folder: str, hs: Sequence[SliceHeader], z: np.ndarray, steps: np.ndarray) -> str | None:
    expected = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - expected) > max(SPACING_RTOL * expected, DUPLICATE_MM))
    if not bad.size:
        return None
    gaps = "; ".join(f"{_name(hs[i])} at {z[i]:.3f} mm and {_name(hs[i + 1])} at {z[i + 1]:.3f} mm are "
                     f"{steps[i]:.3f} mm apart" for i in bad[:3])
    gaps += f"; and {bad.size - 3} more" if bad.size > 3 else ""
    uniform = (z[-1] - z[0]) / (len(z) - 1)
    misplaced = float(np.abs(z - (z[0] + uniform * np.arange(len(z)))).max())
    missing = round(float(np.sum(np.maximum(steps[bad] / expected - 1, 0))))
    cause = f"about {missing} slice(s) missing" if missing and (steps[bad] > expected).all() else "uneven spacing"
    return (f"DICOM series in folder {folder} has uneven slice positions ({cause}): {gaps}; expected "
            f"{expected:.3f} mm (the median spacing of its {len(z)} slices). Read as one volume it would be placed "
            f"on a uniform {uniform:.3f} mm grid, misplacing slices by up to {misplaced:.2f} mm. Restore the missing "
            "file(s), or resample the series onto a regular grid (e.g. convert it with dcm2niix) and segment that.")
