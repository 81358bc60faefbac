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
import warnings
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from pipofan_monai.inference.dicom_codes import (  # noqa: F401  (used here, and importable from here as before the split)
    _AI_FAMILY,
    SEGMENT_CATEGORY_ALTERED,
    SEGMENT_CATEGORY_ANATOMY,
    Code3,
    SegmentCode,
    rgb_to_dicom_lab,
    segment_code_for,
)
from pipofan_monai.inference.dicom_frames import (  # noqa: F401  (used here, and importable from here as before the split)
    _as_array_and_affine,
    _checked_labels,
    _frames,
    label_map_to_frames,
)
from pipofan_monai.vocabulary.organs import DEFAULT_CLASS_NAMES

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


def _code(hd: Any, c: Code3) -> Any:
    return hd.sr.CodedConcept(value=c[0], scheme_designator=c[1], meaning=c[2])


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


def _series_on_grid(lab: Any, aff: Any, name: str, source: str | os.PathLike,
                    series_instance_uid: str | None) -> tuple[Any, list]:
    """``(frames, ordered source headers)`` of the one series in ``source`` on the label map's grid.

    Raises:
        ValueError: no series on the grid (each series' reason), or several (pass ``series_instance_uid``).
    """
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
    return matches[0][1], matches[0][2]


def _segmentation(hd: Any, src: list, frames: Any, descriptions: list, number: int, series_description: str) -> Any:
    """highdicom's ``Segmentation`` of the frames (BINARY, empty frames omitted), its INFO logging muted."""
    import pipofan_monai

    hd_logger = logging.getLogger("highdicom")
    level = hd_logger.level
    # highdicom logs every copied module at INFO, dozens of lines per SEG under the bundle's INFO logging
    hd_logger.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            # the source's patient name as stored ("single component") is copied as is: not our warning to give
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
            return hd.seg.Segmentation(
                source_images=src,
                pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
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
    frames, ordered = _series_on_grid(lab, aff, name, source, series_instance_uid)
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
    seg = _segmentation(hd, src, frames, _segment_descriptions(hd, names, codes, algorithm, colors), number,
                        series_description)
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
