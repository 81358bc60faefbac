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

"""Loading CT volumes and labels (NIfTI, NRRD, DICOM series folders incl. JPEG-2000) with errors that name the
file, plus an image/label grid check.

Readers: MONAI's ``LoadImaged`` picks ``NibabelReader`` for NIfTI and ``ITKReader`` for DICOM folders, NRRD
and other ITK formats; both return RAS affines (ITK's LPS is converted), so a DICOM image and a NIfTI label
line up after ``Orientationd(axcodes="RAS")``.

A DICOM series folder is checked before it is read (:func:`check_dicom_folder`, called by :class:`LoadCTd`): a
series with uneven slice positions (a missing slice), duplicate positions, mixed orientations or a gantry tilt
raises ``ValueError`` naming the folder, the files and the gap, instead of being stacked on a uniform wrong grid.

Checks right after loading, each raising ``ValueError`` naming the file: :class:`CheckAffined` (a NaN or
singular voxel-to-world matrix, e.g. a zero slice spacing, would otherwise give an output with a wrong or
identity affine) and :class:`CheckCTIntensityd` (a label map, a segmentation or raw unscaled values given as
the CT image).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, Orientationd

from pipofan_monai.utils import filename_of

__all__ = [
    "LoadCTd",
    "CheckVolumed",
    "CheckAffined",
    "CheckCTIntensityd",
    "affine_problem",
    "ct_intensity_problem",
    "CheckSameGridd",
    "check_dicom_folder",
    "load_ct_transforms",
]

logger = logging.getLogger(__name__)

#: ``LoadCTd(dtype=COMPACT_DTYPE)``: integer files of up to 2 bytes per voxel keep their type, others become float32
COMPACT_DTYPE = "compact"


class LoadCTd(LoadImaged):
    """``monai.transforms.LoadImaged`` whose read errors always name the key and the file.

    Missing files raise ``FileNotFoundError``; unreadable, truncated or corrupt files raise ``RuntimeError``
    ``"could not read <key> file <path>: <reader error>"`` (MONAI/nibabel messages do not always name the file,
    e.g. a truncated ``.nii.gz`` fails with a bare ``EOFError``). All arguments are those of ``LoadImaged``;
    defaults here: ``image_only=True``, ``ensure_channel_first=True``.

    ``dtype="compact"``: keep the file's own integer type when it has at most 2 bytes per voxel (a CT's int16:
    half the memory of float32; the HU window converts it exactly), else float32 as ``LoadImaged``'s default.
    """

    def __init__(self, keys: KeysCollection, *args: Any, image_only: bool = True, ensure_channel_first: bool = True,
                 **kwargs: Any) -> None:
        if not image_only:
            raise ValueError("LoadCTd supports image_only=True only (metadata travel in the MetaTensor).")
        self.compact = isinstance(kwargs.get("dtype"), str) and kwargs["dtype"] == COMPACT_DTYPE
        if self.compact:
            kwargs["dtype"] = None
        super().__init__(keys, *args, image_only=image_only, ensure_channel_first=ensure_channel_first, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(os.path.expanduser(os.fspath(path))):
                raise FileNotFoundError(f"{key} file not found: {os.fspath(path)!r}.")
            if isinstance(path, (str, os.PathLike)) and os.path.isdir(os.path.expanduser(os.fspath(path))):
                check_dicom_folder(os.path.expanduser(os.fspath(path)))  # a series ITK would stack on a wrong grid
            try:
                out = self._loader(path, reader)
            except Exception as e:  # re-raised with the key and file name, original error chained
                raise RuntimeError(f"could not read {key} file {path!r}: {type(e).__name__}: {e}") from e
            # MONAI Label sets ``image_only = False`` on every LoadImaged: keep the MetaTensor, drop the meta dict
            img = out[0] if isinstance(out, tuple) else out
            if self.compact and isinstance(img, torch.Tensor) and not (
                    img.dtype in (torch.int8, torch.uint8, torch.int16) or str(img.dtype) == "torch.uint16"):
                img = img.to(torch.float32)
            d[key] = img
        return d


def affine_problem(affine: Any) -> str | None:
    """What is wrong with a voxel-to-world affine, or None when it is usable.

    Args:
        affine: ``(4, 4)`` (or ``(3, 3)`` spatial block first) matrix, numpy or torch.

    Returns:
        None, or a description: non-finite values, a zero voxel spacing along an axis (a zero column, e.g. NRRD
        ``space directions`` or a DICOM slice spacing of 0), or parallel axes (a singular direction matrix).
    """
    a = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 3 or a.shape[1] < 3:
        return f"affine of shape {a.shape} is not a 3D voxel-to-world matrix"
    if not np.isfinite(a).all():
        return f"affine holds NaN or infinite values:\n{a}"
    r = a[:3, :3]
    spacing = np.linalg.norm(r, axis=0)
    zero = [i for i, s in enumerate(spacing) if s < 1e-6]
    if zero:
        return (f"voxel spacing along axis {zero[0]} is 0 (spacing {tuple(round(float(v), 6) for v in spacing)}): the "
                "file's voxel size / slice spacing is broken")
    if abs(float(np.linalg.det(r / spacing))) < 1e-6:
        return f"the voxel axes are parallel (singular direction matrix):\n{a}"
    return None


def _nifti_affines(path: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(declared affine, qform or None)`` from a NIfTI header (no voxel data read), None for other files.

    The declared affine is nibabel's: the sform when its code is set, else the qform when its code is set,
    else the pixdim-scaled base affine. The qform is returned only when its code is set.
    """
    import nibabel as nib

    try:
        img = nib.load(path)
        header = img.header
        q, qcode = header.get_qform(coded=True)
    except Exception:  # unreadable header: LoadCTd already reported it, or not a NIfTI file
        return None
    declared = np.asarray(img.affine, dtype=np.float64)
    return declared, (np.asarray(q, dtype=np.float64) if q is not None and qcode else None)


class CheckAffined(MapTransform):
    """Check that loaded images have a usable voxel-to-world affine (finite, non-singular).

    Place right after loading (before ``Orientationd``, which cannot orient a singular affine and whose error,
    "Unable to find out axis ... in start_ornt", names neither the file nor the problem). For NIfTI files the
    header's own affine is checked: MONAI's ``NibabelReader`` silently replaces an sform that disagrees with the
    voxel sizes (a NaN or a zero column) by the qform, which for a qform code of 0 is the unit matrix scaled by
    the voxel sizes, so the output would be written with an identity-like affine.

    When a NIfTI file's sform is unusable but its qform is valid (qform code > 0), the qform is used (the
    image's ``affine`` and ``original_affine`` are set to it, so the outputs are written with it) and a warning
    names the file; ``qform_fallback=False`` refuses such files too. Any other unusable affine is an error.

    Args:
        keys: keys to check. Default ``"image"``.
        qform_fallback: use a valid NIfTI qform when the sform is unusable. Default True.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: ``"<key> <file>: unusable affine: <problem> ..."`` (see :func:`affine_problem`).
    """

    def __init__(self, keys: KeysCollection = "image", qform_fallback: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.qform_fallback = bool(qform_fallback)

    def _refuse(self, key: Hashable, name: str, problem: str) -> ValueError:
        return ValueError(
            f"{key} {name}: unusable affine: {problem}. Fix the file's geometry (voxel spacing and orientation) "
            "before segmenting it; a result on a wrong grid would be silently misplaced."
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor):
                continue
            name = filename_of(img)
            header = _nifti_affines(name) if name.lower().endswith((".nii", ".nii.gz")) else None
            if header is not None:
                declared, qform = header
                problem = affine_problem(declared)
                if problem is not None:
                    if not (self.qform_fallback and qform is not None and affine_problem(qform) is None):
                        raise self._refuse(key, name, problem)
                    msg = (f"{key} {name}: unusable sform ({problem.splitlines()[0]}); using the file's valid qform "
                           "instead, the outputs are written with it.")
                    warnings.warn(msg, stacklevel=2)
                    logger.warning(msg)
                    img.affine = torch.as_tensor(qform, dtype=torch.float64)
                    img.meta["original_affine"] = qform.copy()
            problem = affine_problem(img.affine)
            if problem is not None:
                raise self._refuse(key, name, problem)
        return d


def ct_intensity_problem(
    img: Any, max_label_values: int = 64, min_hu: float = -100.0, max_samples: int = 2_000_000
) -> str | None:
    """Why ``img`` does not look like a CT in Hounsfield units, or None when it does (the rule of
    :class:`CheckCTIntensityd`).

    Args:
        img: the loaded image, any shape, raw intensities (before windowing).
        max_label_values: at most this many distinct integer values >= 0 make a label map.
        min_hu: a CT in HU has voxels at or below this value (fat is about -100 HU, air -1000 HU).
        max_samples: distinct values are counted on an evenly strided sample of at most this many voxels.

    Returns:
        None or a one-line description of the problem.
    """
    t = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img).detach().reshape(-1)
    if t.numel() == 0:
        return None
    lo_t, hi_t = torch.aminmax(t if t.dtype != torch.bool else t.to(torch.uint8))
    lo, hi = float(lo_t), float(hi_t)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        t = t[torch.isfinite(t)] if t.is_floating_point() else t
        if t.numel() == 0:
            return None  # all NaN/inf: left to the finite-value check, which names the counts
        lo, hi = float(t.min()), float(t.max())
    step = max(1, -(-t.numel() // int(max_samples)))
    sample = t[::step]
    if lo >= 0 and (not sample.is_floating_point() or bool((sample == sample.round()).all())):
        values = torch.unique(sample)
        if values.numel() <= max_label_values:
            shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if values.numel() > 8 else "")
            return (f"it looks like a label map or segmentation, not a CT: only {values.numel()} distinct integer "
                    f"values ({shown})")
    if lo > min_hu:
        return (f"its intensities ({lo:g} .. {hi:g}) never reach {min_hu:g}: not Hounsfield units (air is -1000 HU, "
                "fat about -100 HU), e.g. stored values without the rescale slope/intercept, a normalised image or "
                "not a CT")
    return None


class CheckCTIntensityd(MapTransform):
    """Refuse (or warn about) images that are not plausibly CT in Hounsfield units.

    PIPO-FAN windows its input to [-200, 200] HU; anything else is "segmented" into garbage with exit code 0.
    The rule (on the raw loaded intensities, before windowing; NaN/inf are left to the finite-value check):

    1. **label map**: the minimum is >= 0 and the volume holds at most ``max_label_values`` (64) distinct
       values, all integers (counted on an evenly strided sample of at most 2,000,000 voxels; min and max
       use every voxel). This catches label maps, segmentation NRRDs and DICOM SEGs read as images.
    2. **not HU**: no voxel is at or below ``min_hu`` (-100 HU, fat). Every abdominal CT holds air (outside
       the body, bowel gas: -1000 HU) or at least fat; raw unsigned values without the rescale (uint8/uint16,
       air near 0), a normalised [0, 1] image or an MR volume never reach it.

    Args:
        keys: image key(s). Default ``"image"``.
        mode: ``"error"`` (default: ``ValueError`` naming the file and the problem), ``"warn"`` (a warning,
            the image passes) or ``"off"``.
        max_label_values: see rule 1. Default 64.
        min_hu: see rule 2. Default -100.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: (``mode="error"``) the image breaks a rule; the message names the file, the rule and how to
            disable the check.
    """

    def __init__(self, keys: KeysCollection = "image", mode: str = "error", max_label_values: int = 64,
                 min_hu: float = -100.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("error", "warn", "off"):
            raise ValueError(f"mode must be 'error', 'warn' or 'off', got {mode!r}.")
        self.mode = mode
        self.max_label_values = int(max_label_values)
        self.min_hu = float(min_hu)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mode == "off":
            return d
        for key in self.key_iterator(d):
            problem = ct_intensity_problem(d[key], self.max_label_values, self.min_hu)
            if problem is None:
                continue
            msg = f"{key} {filename_of(d[key])} is not plausibly a CT in Hounsfield units: {problem}."
            if self.mode == "error":
                raise ValueError(msg + " Give the CT image itself (if this really is a CT in HU, disable the check: "
                                 "--ct_check warn or off).")
            warnings.warn(msg, stacklevel=2)
            logger.warning(msg + " Segmenting it anyway (ct_check='warn'); expect a meaningless result.")
        return d


class CheckSameGridd(MapTransform):
    """Check that keys (e.g. image and label) share the same spatial shape and affine.

    Place after ``Orientationd`` so that differently stored but equivalent files compare equal.

    Args:
        keys: keys to compare, first is the reference. Default ``("image", "label")``.
        atol: absolute tolerance on the 4x4 affines (mm). Default 1e-2 x the largest voxel size of the reference
            plus 1e-4.
        check_affine: also compare the affines. Default True.
        allow_missing_keys: don't raise if a key is absent (e.g. inference without label).

    Raises:
        ValueError: naming both files and their shapes / affines.
    """

    def __init__(self, keys: KeysCollection = ("image", "label"), atol: float | None = None, check_affine: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.atol = atol
        self.check_affine = check_affine

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if len(keys) < 2:
            return d
        ref = d[keys[0]]
        ref_shape = tuple(ref.shape[1:])
        for key in keys[1:]:
            other = d[key]
            if tuple(other.shape[1:]) != ref_shape:
                raise ValueError(
                    f"{key} {filename_of(other)} has spatial shape {tuple(other.shape[1:])}, but {keys[0]} "
                    f"{filename_of(ref)} has {ref_shape}."
                )
            if self.check_affine and isinstance(ref, MetaTensor) and isinstance(other, MetaTensor):
                a = np.asarray(ref.affine, dtype=np.float64)
                b = np.asarray(other.affine, dtype=np.float64)
                if a.shape != b.shape:
                    raise ValueError(f"{key} {filename_of(other)} affine shape {b.shape} differs from {a.shape}.")
                tol = self.atol if self.atol is not None else 1e-2 * float(np.abs(a[:-1, :-1]).max()) + 1e-4
                if not np.allclose(a, b, atol=tol, rtol=0):
                    raise ValueError(
                        f"{key} {filename_of(other)} and {keys[0]} {filename_of(ref)} are on different grids "
                        f"(affines differ by up to {np.abs(a - b).max():.4g} > {tol:.4g}):\n{b}\nvs\n{a}"
                    )
        return d


def load_ct_transforms(
    keys: KeysCollection = ("image", "label"),
    reader: Any = None,
    axcodes: str = "RAS",
    check_grid: bool = True,
    allow_missing_keys: bool = False,
    dtype: Any = np.float32,
) -> list:
    """The loading stage of the pipelines: read, add a channel axis, reorient, check the image/label grid.

    Args:
        keys: keys holding file paths (a NIfTI/NRRD file or a DICOM series folder). Default ``("image", "label")``.
        reader: reader passed to ``LoadImaged`` (None: MONAI picks nibabel for NIfTI, ITK for the rest).
        axcodes: target orientation; ``"RAS"`` puts the axial axis last (needed by the 2.5D transforms).
        check_grid: append :class:`CheckSameGridd` on ``keys``. Default True.
        allow_missing_keys: allow items without some keys (e.g. no label at inference).
        dtype: the loaded arrays' type (``LoadCTd``'s ``dtype``: float32 by default, ``"compact"`` for int16 CTs).

    Returns:
        list of transforms ``[LoadCTd, CheckVolumed, CheckAffined, Orientationd, (CheckSameGridd)]``; each item ends
        up ``(1, H, W, D)``.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    out = [
        LoadCTd(keys, reader=reader, allow_missing_keys=allow_missing_keys, dtype=dtype),
        CheckVolumed(keys[0]),  # the image: one 3D volume, checked before anything else touches it
        CheckAffined(keys, allow_missing_keys=True),
        Orientationd(keys, axcodes=axcodes, labels=None, allow_missing_keys=allow_missing_keys),
    ]
    if check_grid:
        out.append(CheckSameGridd(keys, allow_missing_keys=True))
    return out


class CheckVolumed(MapTransform):
    """Check that loaded images are single 3D volumes ``(1, H, W, D)`` (``D >= 1`` slices).

    Place right after loading (channel first). A 2D image (``(1, H, W)``), a multi-channel or 4D series with
    more than one volume (``(T, H, W, D)``, e.g. a 4D NIfTI), empty images and images whose two largest axes
    have fewer than ``min_inplane_size`` voxels (e.g. a 1x1x1 volume: not a CT slice stack) are rejected with a
    ``ValueError`` naming the file and its shape. A 4D file with a single volume (``T == 1``) is accepted.

    Args:
        keys: image key(s). Default ``"image"``.
        min_inplane_size: the fewest voxels along each of the two largest axes (the slice plane). Default 8.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection = "image", min_inplane_size: int = 8,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_inplane_size = int(min_inplane_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            shape = tuple(img.shape)
            name = filename_of(img)
            if len(shape) < 4:
                raise ValueError(
                    f"{key} {name} is a {len(shape) - 1}D image (channel-first shape {shape}); PIPO-FAN segments 3D "
                    "CT volumes (H, W, D) with D >= 1 axial slices."
                )
            if len(shape) > 4:
                raise ValueError(
                    f"{key} {name} has {len(shape) - 1} spatial dimensions (channel-first shape {shape}); expected "
                    "one 3D CT volume."
                )
            if shape[0] != 1:
                raise ValueError(
                    f"{key} {name} holds {shape[0]} volumes or channels (channel-first shape {shape}, e.g. a 4D "
                    "series); expected one 3D CT volume: split the series and segment each volume."
                )
            if min(shape[1:]) < 1:
                raise ValueError(f"{key} {name} is empty (shape {shape}).")
            if sorted(shape[1:])[1] < self.min_inplane_size:
                raise ValueError(
                    f"{key} {name} is too small to be a CT volume (spatial shape {shape[1:]}): its slices need at "
                    f"least {self.min_inplane_size}x{self.min_inplane_size} voxels."
                )
        return d


def check_dicom_folder(path: str | os.PathLike, check_geometry: bool = True) -> list[str]:
    """Series UIDs of the DICOM series in a folder (as MONAI's ``ITKReader`` groups them), after checking that the
    series ``ITKReader`` reads has a regular slice geometry. :class:`LoadCTd` calls it for every folder it loads,
    so inference and training data are checked alike.

    Args:
        path: a folder.
        check_geometry: check the slice positions and orientations of the series that is read
            (:func:`~pipofan_monai.preprocessing.dicom_geometry.dicom_geometry_problem`, headers only).

    Returns:
        the series UIDs; ``ITKReader`` reads the first one (a warning is logged when there are several).

    Raises:
        ValueError: the folder holds no DICOM series (message names the folder and what it contains), or its
            series has a missing slice (uneven positions), duplicate positions, mixed orientations or a gantry
            tilt (message names the folder, the files, their positions and the expected spacing).
    """
    import itk

    folder = os.fspath(path)
    gen = itk.GDCMSeriesFileNames.New()
    gen.SetUseSeriesDetails(True)
    gen.AddSeriesRestriction("0008|0021")  # series date, as MONAI's ITKReader
    gen.SetGlobalWarningDisplay(False)
    gen.SetDirectory(folder)
    uids = [str(u) for u in gen.GetSeriesUIDs()]
    if not uids:
        entries = sorted(os.listdir(folder))
        hint = f"{len(entries)} entries, e.g. {entries[:3]}" if entries else "it is empty"
        raise ValueError(f"folder {folder} contains no DICOM series ({hint}).")
    if len(uids) > 1:
        logger.warning(
            f"folder {folder} contains {len(uids)} DICOM series; reading the first one ({uids[0]}). Put each series "
            "in its own folder to segment the others."
        )
    if check_geometry:
        from pipofan_monai.preprocessing.dicom_geometry import dicom_geometry_problem, read_slice_headers

        try:
            headers = read_slice_headers([str(f) for f in gen.GetFileNames(uids[0])])
        except RuntimeError as e:  # an unreadable header: the reader reports it with the file name
            logger.debug(f"folder {folder}: slice geometry not checked ({e})")
            headers = []
        problem = dicom_geometry_problem(folder, headers)
        if problem is not None:
            raise ValueError(problem)
    return uids
