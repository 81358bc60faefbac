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

"""DICOM Segmentation (SEG) output for label maps predicted from a DICOM series.

A DICOM SEG object (SOP class Segmentation Storage) is written with `highdicom <https://highdicom.readthedocs.io>`_
(optional dependency: ``pip install "pipofan-monai[dicom]"``). It references the source series (study, series,
frame of reference and, per frame, the source instance), has one BINARY segment per organ of ``class_names``
(background excluded) with SNOMED CT codes from the DICOM code tables (CID 7150 categories, CID 7166 property
types, laterality as a property type modifier, tumours as "Neoplasm" in their organ), and names pipofan-monai in
its algorithm identification. Empty frames are omitted; an organ absent from the prediction is still a segment
(with no frames).

Geometry: the label map arrives as a MetaTensor ``(1, H, W, D)`` (or ``(H, W, D)``) on a voxel grid of the
source series, with its affine (MONAI's ``ITKReader`` gives RAS affines, ``meta["space"]`` says which). Every
output frame is matched to its source instance by ``ImagePositionPatient`` and its in-plane pixel order by
``ImageOrientationPatient`` and ``PixelSpacing``, so any axis order or flip of the grid (ITK's file order, RAS
reorientation, series whose files run in descending z) maps correctly. Only DICOM headers are read: the pixel data
are never decoded (a JPEG-2000 series needs no decoder here).

Highdicom versions: 0.22 (the last for pydicom 2, i.e. MONAI Label's ``pydicom==2.4.4`` with ``numpy<2``) up to
0.28 (pydicom 3); the few differences are handled here.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from pipofan_monai.vocabulary.organs import DEFAULT_CLASS_NAMES, get_organ, organ_table

__all__ = [
    "Code3",
    "SegmentCode",
    "SEGMENT_CATEGORY_ANATOMY",
    "segment_code_for",
    "check_dicom_seg_input",
    "read_series_headers",
    "label_map_to_frames",
    "write_dicom_seg",
    "rgb_to_dicom_lab",
    "SaveDicomSegd",
    "OUTPUT_FORMATS",
    "output_formats",
]

Code3 = tuple  # (code value, coding scheme designator, code meaning), e.g. ("10200004", "SCT", "Liver")

#: CID 7150 (Segmentation Property Categories)
SEGMENT_CATEGORY_ANATOMY: Code3 = ("123037004", "SCT", "Anatomical Structure")
SEGMENT_CATEGORY_ALTERED: Code3 = ("49755003", "SCT", "Morphologically Altered Structure")
_LATERALITY = {"left": ("7771000", "SCT", "Left"), "right": ("24028007", "SCT", "Right")}
_LESION_WORDS = {"tumour", "tumor", "tumours", "tumors", "lesion", "lesions", "cancer", "neoplasm", "mass"}
_NEOPLASM: Code3 = ("108369006", "SCT", "Neoplasm")
_AI_FAMILY: Code3 = ("123110", "DCM", "Artificial Intelligence")  # CID 7162 (Algorithm Family)


@dataclass(frozen=True)
class SegmentCode:
    """The codes of one segment.

    Args:
        category: segmented property category (CID 7150), e.g. ``SEGMENT_CATEGORY_ANATOMY``.
        property_type: segmented property type (CID 7151/7166), e.g. ``("10200004", "SCT", "Liver")``.
        modifier: property type modifier, e.g. laterality ``("7771000", "SCT", "Left")``, or None.
        anatomic_region: where the structure lies (for lesions: the organ), or None.
        anatomic_region_modifier: laterality of ``anatomic_region``, or None.
    """

    category: Code3
    property_type: Code3
    modifier: Code3 | None = None
    anatomic_region: Code3 | None = None
    anatomic_region_modifier: Code3 | None = None


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()


def segment_code_for(name: str, segment_codes: Mapping[str, SegmentCode | Code3] | None = None,
                     organs: Mapping[str, Any] | None = None) -> SegmentCode:
    """The SNOMED CT codes of an organ name of ``class_names``, from the organ table
    (:data:`pipofan_monai.vocabulary.organs.ORGANS`, with ``organs`` on top: the codes are defined there only).

    Names are matched case-insensitively with ``_``/``-``/spaces alike; ``left``/``right`` anywhere in the name is
    laterality on the organ's code (``"kidney_left"``, ``"Right kidney"``: Kidney, modifier Left / Right), a lesion
    word (tumour, tumor, lesion, cancer, neoplasm, mass) makes a "Neoplasm" in the named organ (``"liver tumour"``;
    ``"tumour"`` alone has no organ).

    Args:
        name: the class name.
        segment_codes: user codes that take precedence, by class name (as written in ``class_names``): a
            :class:`SegmentCode`, or a ``(value, scheme, meaning)`` property type in the anatomical structure
            category.
        organs: the config's ``organ_table`` (its ``code`` and ``category`` fields are used here).

    Returns:
        the :class:`SegmentCode`.

    Raises:
        ValueError: the name is not in the table and not in ``segment_codes`` (the message lists the known organs).
    """
    if segment_codes:
        for key, code in segment_codes.items():
            if _normalise(key) == _normalise(name):
                if isinstance(code, SegmentCode):
                    return code
                if isinstance(code, (tuple, list)) and len(code) == 3 and all(isinstance(c, str) for c in code):
                    return SegmentCode(SEGMENT_CATEGORY_ANATOMY, tuple(code))
                raise ValueError(f"segment_codes[{key!r}] must be a SegmentCode or (value, scheme, meaning), "
                                 f"got {code!r}.")
    words = _normalise(name).split()
    side = [w for w in words if w in _LATERALITY]
    lesion = any(w in _LESION_WORDS for w in words)
    rest = " ".join(w for w in words if w not in _LATERALITY and w not in _LESION_WORDS)
    modifier = _LATERALITY[side[0]] if len(side) == 1 else None
    organ = _coded_organ(rest, organs) if rest else None
    if lesion:
        if rest and organ is None:
            raise ValueError(_unknown(name, organs))
        return SegmentCode(SEGMENT_CATEGORY_ALTERED, _NEOPLASM, anatomic_region=organ.code if organ else None,
                           anatomic_region_modifier=modifier if rest else None)
    if organ is None or len(side) > 1:
        raise ValueError(_unknown(name, organs))
    return SegmentCode(tuple(organ.category), tuple(organ.code), modifier=modifier)


def _coded_organ(name: str, organs: Mapping[str, Any] | None) -> Any:
    """The organ table's entry of ``name`` if it has a code, else None."""
    try:
        spec = get_organ(name, organs)
    except (KeyError, ValueError):
        return None
    return spec if spec.code is not None else None


def _unknown(name: str, organs: Mapping[str, Any] | None) -> str:
    known = sorted(n for n, o in organ_table(organs).items() if o.code is not None)
    return (f"no standard code known for class {name!r} (DICOM SEG output): organs with a code are {known} "
            "(with left/right and tumour variants); give its SNOMED CT code in the organ_table "
            f"({{{name!r}: {{'code': [value, 'SCT', meaning]}}}}) or with "
            "segment_codes={name: (value, 'SCT', meaning)}.")


# ---------------------------------------------------------------------------------------------- source series
def _import_dicom_libs() -> tuple[Any, Any]:
    try:
        import highdicom
        import pydicom
    except ImportError as e:
        raise ImportError(
            f"DICOM SEG output needs highdicom and pydicom ({e}): pip install \"pipofan-monai[dicom]\"."
        ) from e
    return highdicom, pydicom


def _dicom_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(str(p) for p in Path(path).iterdir() if p.is_file() and not p.name.startswith("."))


_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def _read_header(f: str, pydicom: Any) -> Any | None:
    """The header of an image instance (pixel data not read), or None for other files and DICOM objects."""
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
        return None  # not a DICOM file
    meta = getattr(ds, "file_meta", None)
    # some anonymisers blank the instance UIDs in the data set and keep them in the file meta information
    for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(ds.get(key, "") or "") and meta is not None and str(meta.get(meta_key, "") or ""):
            setattr(ds, key, meta.get(meta_key))
    if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.5.1.4.1.1.66.4":  # a Segmentation, not a source
        return None
    if not all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                                 "Columns")):
        return None  # DICOMDIR, SR, ...: no image plane
    return ds


def _require_uids(ds: Any, f: str) -> None:
    blank = [k for k in _UIDS if not str(ds.get(k, "") or "")]
    if blank:
        raise ValueError(f"DICOM file {f} has no {', '.join(blank)} (blanked by anonymisation?): a DICOM SEG must "
                         "reference the source study, series and instances by UID; use output_format 'nifti' for "
                         "this input.")


def read_series_headers(source: str | os.PathLike, series_instance_uid: str | None = None) -> dict[str, list]:
    """Headers (no pixel data) of the image instances in a DICOM folder (or one DICOM file), by series.

    Files that are not DICOM, and DICOM objects without an image plane (DICOMDIR, SR, an existing SEG), are skipped.

    Args:
        source: a DICOM series folder (files directly inside, as MONAI's ``ITKReader`` reads them) or one file.
        series_instance_uid: keep only this series.

    Returns:
        ``{SeriesInstanceUID: [pydicom Dataset, ...]}`` (``filename`` set on each dataset).

    Raises:
        ValueError: no DICOM image instance found (the message names ``source``).
    """
    _, pydicom = _import_dicom_libs()
    path = os.fspath(source)
    series: dict[str, list] = {}
    for f in _dicom_files(path):
        ds = _read_header(f, pydicom)
        if ds is None:
            continue
        _require_uids(ds, f)
        uid = str(ds.SeriesInstanceUID)
        if series_instance_uid is None or uid == series_instance_uid:
            series.setdefault(uid, []).append(ds)
    if not series:
        which = f" of series {series_instance_uid}" if series_instance_uid else ""
        raise ValueError(f"DICOM SEG output: {path} holds no DICOM image instances{which} (single-frame slices with "
                         "ImagePositionPatient/ImageOrientationPatient).")
    return series


def check_dicom_seg_input(path: str | os.PathLike) -> str:
    """Check, before any inference work, that an input can get a DICOM SEG output: a DICOM series folder (or a
    DICOM file), and that highdicom is installed.

    Args:
        path: the input image path.

    Returns:
        the path.

    Raises:
        ValueError: the input is not DICOM (e.g. a NIfTI or NRRD file), naming the file.
        ImportError: highdicom / pydicom are not installed.
    """
    p = os.fspath(path)
    _, pydicom = _import_dicom_libs()
    if not os.path.exists(p):
        raise FileNotFoundError(f"input not found: {p}")
    if os.path.isfile(p):
        ds = _read_header(p, pydicom)
        if ds is not None:
            _require_uids(ds, p)
            return p
        raise ValueError(
            f"output_format 'dicom_seg' needs a DICOM series as input, but {p} is not a DICOM image file (a DICOM SEG "
            "references the source DICOM instances): give the series folder, or use output_format 'nifti' for "
            "this input."
        )
    if os.path.isdir(p):
        for f in _dicom_files(p):
            ds = _read_header(f, pydicom)
            if ds is not None:
                _require_uids(ds, f)
                return p
        raise ValueError(f"output_format 'dicom_seg' needs a DICOM series as input, but folder {p} contains no "
                         "DICOM image files.")
    return p


# ---------------------------------------------------------------------------------------------- geometry
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


def _code(hd: Any, c: Code3) -> Any:
    return hd.sr.CodedConcept(value=c[0], scheme_designator=c[1], meaning=c[2])


def rgb_to_dicom_lab(rgb: Sequence[float]) -> list[int]:
    """sRGB (0..1) to DICOM's RecommendedDisplayCIELabValue: CIE L*a*b* (D65) scaled to 0..65535 (L* 0..100,
    a*/b* -128..127), as PS3.3 C.10.7.1.1 specifies.

    Args:
        rgb: red, green, blue in 0..1.

    Returns:
        ``[L, a, b]`` as unsigned 16-bit integers.
    """
    c = np.clip(np.asarray(rgb, dtype=np.float64)[:3], 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    lab = (116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2]))
    scaled = (lab[0] / 100.0 * 65535.0, (lab[1] + 128.0) / 255.0 * 65535.0, (lab[2] + 128.0) / 255.0 * 65535.0)
    return [int(round(min(max(v, 0.0), 65535.0))) for v in scaled]


def _segment_descriptions(hd: Any, class_names: Sequence[str], codes: Sequence[SegmentCode],
                          algorithm: Any, colors: Mapping[int, Sequence[float]] | None) -> list:
    from pipofan_monai.visualize.overlay import _color  # the overview PNG's colours, so both views agree

    out = []
    for number, (name, code) in enumerate(zip(class_names[1:], codes), start=1):
        region = None
        if code.anatomic_region is not None:
            region = _code(hd, code.anatomic_region)
            if code.anatomic_region_modifier is not None:
                region.AnatomicRegionModifierSequence = [_code(hd, code.anatomic_region_modifier)]
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(name)[:64],
            segmented_property_category=_code(hd, code.category),
            segmented_property_type=_code(hd, code.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[region] if region is not None else None,
        )
        desc.RecommendedDisplayCIELabValue = rgb_to_dicom_lab(_color(number, dict(colors) if colors else None))
        if code.modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _code(hd, code.modifier)
            ]
        out.append(desc)
    return out


def _clean_sources(sources: Sequence[Any]) -> list:
    """Shallow copies of the headers that highdicom accepts: an empty SpecificCharacterSet (allowed by DICOM, means
    the default repertoire) is rejected by highdicom >= 0.23, so it is dropped."""
    out = []
    for s in sources:
        s = s.copy()
        if "SpecificCharacterSet" in s and not s.SpecificCharacterSet:
            del s.SpecificCharacterSet
        out.append(s)
    return out


def write_dicom_seg(
    label: Any,
    source: str | os.PathLike,
    class_names: Sequence[str],
    output_path: str | os.PathLike,
    *,
    affine: Any | None = None,
    segment_codes: Mapping[str, SegmentCode | Code3] | None = None,
    organs: Mapping[str, Any] | None = None,
    series_instance_uid: str | None = None,
    series_description: str = "PIPO-FAN segmentation",
    series_number: int | None = None,
    algorithm_version: str | None = None,
    algorithm_parameters: Mapping[str, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> str:
    """Write the DICOM SEG of a label map predicted from a DICOM series.

    Args:
        label: label map ``(1, H, W, D)`` or ``(H, W, D)`` with integer values ``0..len(class_names) - 1`` (0 is
            background), on the source series' grid (e.g. the runner's ``pred`` after ``Invertd``: the grid
            MONAI's ``LoadImaged`` gave the series), as a MetaTensor (affine and ``meta["space"]``) or an array
            with ``affine``.
        source: the DICOM series folder (or DICOM file) the label map was predicted from.
        class_names: names by label value, ``class_names[0]`` the background; segment ``c`` is class ``c``.
        output_path: the ``.dcm`` file to write (atomically: temp file in the same folder, fsync, rename).
        affine: voxel-to-world affine if ``label`` has none (RAS unless ``label.meta["space"]`` says LPS).
        segment_codes: codes by class name, before the organ table's (see :func:`segment_code_for`).
        organs: the config's ``organ_table``: codes and display colours of its organs.
        series_instance_uid: the source series, if the folder holds several (default: the one on the label map's
            grid, which must be unique).
        series_description: of the SEG series. Default ``"PIPO-FAN segmentation"``.
        series_number: of the SEG series. Default: the source's SeriesNumber + 1000.
        algorithm_version: in the algorithm identification. Default: the pipofan-monai version.
        algorithm_parameters: extra name/value strings in the algorithm identification (e.g. the checkpoint).
        colors: ``{class id: (r, g, b)}`` in 0..1 for the segments' recommended display colours. Default: the
            overview PNG's colours (the organ table's, ``pipofan_monai.visualize.overlay.class_colors``).

    Returns:
        the output path.

    Raises:
        ValueError: unknown class name, label values outside the classes, a label map not on the series' grid, no
            DICOM instances in ``source`` (each naming the file).
        ImportError: highdicom is not installed.
    """
    hd, _ = _import_dicom_libs()
    names = list(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names needs the background and at least one organ, got {names!r}.")
    codes = [segment_code_for(n, segment_codes, organs) for n in names[1:]]  # unknown names fail before reading
    if colors is None:
        from pipofan_monai.visualize.overlay import class_colors

        colors = class_colors(names, organs)
    arr, aff, name = _as_array_and_affine(label, affine)
    lab = _checked_labels(arr, len(names), name)
    series = read_series_headers(source, series_instance_uid)
    matches, errors = [], []
    for uid, instances in series.items():
        try:
            matches.append((uid, *_frames(lab, aff, name, instances)))
        except ValueError as e:
            errors.append(f"series {uid}: {e}" if len(series) > 1 else str(e))
    if not matches:
        raise ValueError("\n".join(errors))
    if len(matches) > 1:
        raise ValueError(f"{os.fspath(source)} holds {len(matches)} DICOM series on the label map's grid "
                         f"({[m[0] for m in matches]}): pass series_instance_uid, or put each series in its own "
                         "folder.")
    _, frames, ordered = matches[0]
    import pipofan_monai

    algorithm = hd.AlgorithmIdentificationSequence(
        name="pipofan-monai",
        family=_code(hd, _AI_FAMILY),
        version=str(algorithm_version or pipofan_monai.__version__),
        source="PIPO-FAN (Fang & Yan, IEEE TMI 2020)",
        parameters={str(k): str(v) for k, v in algorithm_parameters.items()} if algorithm_parameters else None,
    )
    src = _clean_sources(ordered)
    number = series_number if series_number is not None else int(src[0].get("SeriesNumber", 0) or 0) + 1000
    hd_logger = logging.getLogger("highdicom")
    level = hd_logger.level
    # highdicom logs every copied module at INFO, dozens of lines per SEG under the bundle's INFO logging
    hd_logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            # the source's patient name as stored ("single component") is copied as is: not our warning to give
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
            seg = hd.seg.Segmentation(
                source_images=src,
                pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=_segment_descriptions(hd, names, codes, algorithm, colors),
                series_instance_uid=hd.UID(),
                series_number=number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="pipofan-monai",
                manufacturer_model_name="PIPO-FAN",
                software_versions=str(pipofan_monai.__version__),
                device_serial_number="0",
                series_description=series_description[:64],
                omit_empty_frames=True,
            )
    finally:
        hd_logger.setLevel(level)
    return _atomic_save(seg, output_path)


def _atomic_save(ds: Any, output_path: str | os.PathLike) -> str:
    """``ds.save_as`` through :func:`pipofan_monai.utils.atomic_path` (temp file ``.<name>.<pid>.<random>.tmp.dcm``
    in the same folder, fsync, ``os.replace``, folder fsync, as the NIfTI outputs, so the runner also clears what a
    killed write left): an existing file is replaced only by a complete SEG."""
    from pipofan_monai.utils import atomic_path

    with atomic_path(output_path) as tmp:
        ds.save_as(tmp)
    return os.fspath(output_path)


# ---------------------------------------------------------------------------------------------- option
OUTPUT_FORMATS = ("nifti", "dicom_seg")


def output_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Parse the inference ``output_format`` option.

    Args:
        value: ``"nifti"`` (default when None), ``"dicom_seg"``, both as a list (``["nifti", "dicom_seg"]``, as
            written on the command line: ``--output_format "['nifti','dicom_seg']"``) or comma-separated
            (``"nifti,dicom_seg"``). Case and surrounding spaces are ignored; ``"dicom-seg"``/``"seg"``/``"dcm"``
            mean ``"dicom_seg"``, ``"nii"`` means ``"nifti"``.

    Returns:
        the formats, each once, in :data:`OUTPUT_FORMATS` order.

    Raises:
        ValueError: an unknown or empty format, naming it.
    """
    if value is None:
        return ("nifti",)
    if isinstance(value, str) and value.strip().startswith(("[", "(")):  # a list written as text
        import ast

        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"output_format {value!r} is not a list of formats: {e}") from e
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"output_format must be 'nifti', 'dicom_seg' or a list of them, got {value!r}.")
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    aliases = {"nii": "nifti", "nii.gz": "nifti", "dicom-seg": "dicom_seg", "dicomseg": "dicom_seg", "seg": "dicom_seg",
               "dcm": "dicom_seg"}
    out = set()
    for part in parts:
        key = aliases.get(part.strip().lower(), part.strip().lower())
        if key not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {list(OUTPUT_FORMATS)} or a list of them, got {value!r}.")
        out.add(key)
    if not out:
        raise ValueError(f"output_format is empty ({value!r}): give 'nifti', 'dicom_seg' or both.")
    return tuple(f for f in OUTPUT_FORMATS if f in out)


# ---------------------------------------------------------------------------------------------- transform
class SaveDicomSegd(MapTransform):
    """Dict transform: write ``d[key]`` (a label map on the source series' grid) as a DICOM SEG of the DICOM series
    the item's image was read from.

    Place after ``AsDiscreted(argmax)`` and the connected-component filtering, beside (or instead of) the NIfTI
    ``SaveImaged`` (the bundle's ``output_format`` option enables it). The output is
    ``<output_dir>/<input name>_<output_postfix>.dcm`` (MONAI's ``FolderLayout``, named as the NIfTI output).

    Args:
        keys: the label map key (one). Default ``"pred"``.
        class_names: names by label value (``class_names[0]`` background).
        output_dir: output folder.
        output_postfix: file name postfix. Default ``"seg"``.
        source_key: key whose path (a string, or a MetaTensor's ``meta["filename_or_obj"]``) is the source DICOM
            folder. Default ``"image"``.
        segment_codes: codes by class name, before the organ table's (see :func:`segment_code_for`).
        organs: the config's ``organ_table`` (its organs' codes and colours; the bundle passes ``@organ_table``).
        allow_missing_keys: don't raise if the key is absent.
        label_space: a :class:`~pipofan_monai.vocabulary.LabelSpace` giving ``class_names`` and ``organs`` in one
            object (then leave those two unset).
        **kwargs: passed to :func:`write_dicom_seg` (series_description, series_number, ...).

    Raises:
        ValueError: at construction, a class name without a code; when called, as :func:`write_dicom_seg`, or the
            source is not DICOM.
        ImportError: at construction, highdicom is not installed.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        class_names: Sequence[str] | None = None,
        output_dir: str | os.PathLike = ".",
        output_postfix: str = "seg",
        source_key: str = "image",
        segment_codes: Mapping[str, SegmentCode | Code3] | None = None,
        organs: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
        label_space: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SaveDicomSegd writes one label map, got keys {self.keys}.")
        _import_dicom_libs()  # a missing optional dependency fails when the bundle is parsed, before inference
        if label_space is not None:
            if class_names is not None or organs is not None:
                raise ValueError("SaveDicomSegd takes label_space or class_names/organs, not both (they could disagree).")
            class_names, organs = label_space.class_names, dict(label_space.organ_config) or None
        self.class_names = list(class_names if class_names is not None else DEFAULT_CLASS_NAMES)
        if len(self.class_names) < 2:
            raise ValueError(f"class_names needs the background and at least one organ, got {self.class_names!r}.")
        for n in self.class_names[1:]:
            segment_code_for(n, segment_codes, organs)  # unknown class names fail at construction, before inference
        self.output_dir = output_dir
        self.output_postfix = output_postfix
        self.source_key = source_key
        self.segment_codes = segment_codes
        self.organs = organs
        self.kwargs = kwargs
        #: mirror the source's folders relative to this folder (MONAI's ``data_root_dir``; set by the run's output
        #: plan when inputs come from several folders)
        self.data_root_dir = ""

    def source_of(self, d: Mapping[Hashable, Any]) -> str:
        """The source DICOM path of an item."""
        src = d[self.source_key]
        if not isinstance(src, (str, os.PathLike)):
            src = (getattr(src, "meta", None) or {}).get("filename_or_obj", "")
        if not src:
            raise ValueError(f"item has no source path under {self.source_key!r} for the DICOM SEG output.")
        return os.fspath(src)

    def output_path(self, source: str | os.PathLike) -> str:
        """``<output_dir>/<name>_<postfix>.dcm`` for a source path."""
        from monai.data.folder_layout import FolderLayout

        layout = FolderLayout(self.output_dir, postfix=self.output_postfix, extension=".dcm",
                              makedirs=bool(self.data_root_dir), data_root_dir=self.data_root_dir)
        return str(layout.filename(subject=os.fspath(source)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            src = self.source_of(d)
            check_dicom_seg_input(src)
            write_dicom_seg(d[key], src, self.class_names, self.output_path(src), segment_codes=self.segment_codes,
                            organs=self.organs, **self.kwargs)
        return d
