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
"""

from __future__ import annotations

import os
from typing import Any, Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, Orientationd

from pipofan_monai.utils import filename_of

__all__ = ["LoadCTd", "CheckSameGridd", "load_ct_transforms"]


class LoadCTd(LoadImaged):
    """``monai.transforms.LoadImaged`` whose read errors always name the key and the file.

    Missing files raise ``FileNotFoundError``; unreadable, truncated or corrupt files raise ``RuntimeError``
    ``"could not read <key> file <path>: <reader error>"`` (MONAI/nibabel messages do not always name the file,
    e.g. a truncated ``.nii.gz`` fails with a bare ``EOFError``). All arguments are those of ``LoadImaged``;
    defaults here: ``image_only=True``, ``ensure_channel_first=True``.
    """

    def __init__(self, keys: KeysCollection, *args: Any, image_only: bool = True, ensure_channel_first: bool = True,
                 **kwargs: Any) -> None:
        if not image_only:
            raise ValueError("LoadCTd supports image_only=True only (metadata travel in the MetaTensor).")
        super().__init__(keys, *args, image_only=image_only, ensure_channel_first=ensure_channel_first, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(os.path.expanduser(os.fspath(path))):
                raise FileNotFoundError(f"{key} file not found: {os.fspath(path)!r}.")
            try:
                out = self._loader(path, reader)
            except Exception as e:  # re-raised with the key and file name, original error chained
                raise RuntimeError(f"could not read {key} file {path!r}: {type(e).__name__}: {e}") from e
            # MONAI Label sets ``image_only = False`` on every LoadImaged: keep the MetaTensor, drop the meta dict
            d[key] = out[0] if isinstance(out, tuple) else out
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
) -> list:
    """The loading stage of the pipelines: read, add a channel axis, reorient, check the image/label grid.

    Args:
        keys: keys holding file paths (a NIfTI/NRRD file or a DICOM series folder). Default ``("image", "label")``.
        reader: reader passed to ``LoadImaged`` (None: MONAI picks nibabel for NIfTI, ITK for the rest).
        axcodes: target orientation; ``"RAS"`` puts the axial axis last (needed by the 2.5D transforms).
        check_grid: append :class:`CheckSameGridd` on ``keys``. Default True.
        allow_missing_keys: allow items without some keys (e.g. no label at inference).

    Returns:
        list of transforms ``[LoadCTd, Orientationd, (CheckSameGridd)]``; each item ends up ``(1, H, W, D)``.
    """
    out = [
        LoadCTd(keys, reader=reader, allow_missing_keys=allow_missing_keys),
        Orientationd(keys, axcodes=axcodes, labels=None, allow_missing_keys=allow_missing_keys),
    ]
    if check_grid:
        out.append(CheckSameGridd(keys, allow_missing_keys=True))
    return out
