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

"""Per-organ connected-component filtering of label maps (the paper's post-processing): keep the largest 3D
component of the liver and of the spleen and the two largest of the kidney class (left and right kidney share one
class); the counts per organ come from the organ table.

MONAI's ``KeepLargestConnectedComponent`` (one per component count) gives the same label maps
(tests/unit/inference/test_ensembling.py) and is as fast here on a 512x512x450 map; it is not used because on the CPU it needs
scikit-image, a dependency the project does not otherwise have (cuCIM on the GPU).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from pipofan_monai.vocabulary.organs import DEFAULT_CLASS_NAMES, num_components_for
from pipofan_monai.vocabulary.label_space import LabelSpace

__all__ = [
    "DEFAULT_NUM_COMPONENTS",
    "keep_largest_components",
    "KeepLargestOrganComponents",
    "KeepLargestOrganComponentsd",
]

#: global class id -> number of components to keep in the default vocabulary: 1 liver, 2 kidney (left + right),
#: 3 spleen -- ``{1: 1, 2: 2, 3: 1}``, from the organ table. Another vocabulary's rules:
#: :py:func:`pipofan_monai.vocabulary.organs.num_components_for`, or a ``LabelSpace``'s ``num_components`` (what
#: inference.json passes: ``label_space=@label_space``).
DEFAULT_NUM_COMPONENTS: dict[int, int] = num_components_for(DEFAULT_CLASS_NAMES)


def _normalise_num_components(num_components: Mapping | None) -> dict[int, int]:
    if num_components is None:
        return dict(DEFAULT_NUM_COMPONENTS)
    if not isinstance(num_components, Mapping):
        raise ValueError(f"num_components must be a mapping {{class id: count}}, got {type(num_components).__name__}.")
    out: dict[int, int] = {}
    for key, value in num_components.items():
        try:
            cls, count = int(key), None if value is None else int(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"num_components entries must be integers, got {key!r}: {value!r}.") from err
        if cls < 1:
            raise ValueError(f"num_components keys must be organ ids >= 1 (0 is background), got {key!r}.")
        if count is None:
            continue  # this class is left untouched
        if count < 1:
            raise ValueError(f"num_components[{cls}] must be >= 1 (or None to keep all), got {value!r}.")
        out[cls] = count
    return out


def keep_largest_components(
    label: NdarrayOrTensor, num_components: Mapping[int, int] | None = None, connectivity: int = 3,
    threads: int | None = None,
) -> NdarrayOrTensor:
    """Keep, for each organ class, its ``N`` largest connected components; other voxels of that class become 0.

    Classes absent from ``label`` and classes not listed in ``num_components`` are left untouched; a class with
    fewer components than requested (e.g. only one kidney found) keeps all of them. Components are labelled
    once per class, on the bounding box of that class. Ties in size are broken by scan order (first found wins).

    The classes are labelled in parallel threads (scipy's ``label`` releases the GIL), into uint16 where the
    components fit; their sizes are counted run by run (``np.bincount`` of a whole int32 label volume first copies
    it to int64: 0.3-2.5 s at 512x512x200, against 0.07-0.12 s; 2-core Xeon, 2026-12-05, load 1-4), the bounding
    box comes from the mask's projections (20 ms, ``find_objects`` 180 ms) and the kept components are compared,
    not looked up. On the CPU benchmark's 512x512x200 label map (3 classes of 3237-5804 components, every bounding
    box nearly the whole volume) this took the filter from 3.9-5.4 s to 1.0 s with 2 threads (1.8 s with 1; load
    0.8-0.9); what is left is mostly scipy's ``label`` (0.64 s for the largest class, 0.3-0.4 s for the others).

    Args:
        label: integer label map ``(H, W, D)`` or ``(1, H, W, D)`` (a 2D ``(H, W)`` map works too),
            numpy array, torch tensor or MetaTensor; usually the argmax of the network output.
        num_components: ``{class id: N}``; default ``{1: 1, 2: 2, 3: 1}`` (liver 1, kidneys 2, spleen 1).
            Keys may be strings (JSON configs); a value of ``None`` leaves that class untouched.
        connectivity: neighbourhood for connectedness, from 1 (faces only: 6 neighbours in 3D) to the number of
            spatial dims (faces, edges and corners: 26 in 3D, the default, as MONAI's
            ``KeepLargestConnectedComponent``).
        threads: classes filtered at the same time (default ``torch.get_num_threads()``; 1: one after the other).
            The result does not depend on it.

    Returns:
        The filtered label map, same shape, dtype and type as ``label`` (MetaTensor metadata preserved); the
        input is not modified.

    Raises:
        ValueError: non-integer labels, a channel dimension other than 1, or invalid options.
    """
    classes = _normalise_num_components(num_components)
    arr = convert_to_numpy(label)
    if arr.dtype.kind == "f":
        if not (np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr))):
            raise ValueError(f"label must hold integer class ids, got dtype {arr.dtype} with non-integer values.")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"label must hold integer class ids, got dtype {arr.dtype}.")
    squeeze = arr.ndim == 4
    if squeeze:
        if arr.shape[0] != 1:
            raise ValueError(f"label must be (H, W, D) or (1, H, W, D) (argmaxed), got shape {arr.shape}.")
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"label must be (H, W, D) or (1, H, W, D), got shape {arr.shape}.")
    if not 1 <= int(connectivity) <= arr.ndim:
        raise ValueError(f"connectivity must be in 1..{arr.ndim}, got {connectivity}.")
    structure = ndimage.generate_binary_structure(arr.ndim, int(connectivity))

    out = arr.copy()
    jobs = list(classes.items())
    workers = max(1, min(len(jobs), int(threads) if threads is not None else torch.get_num_threads()))

    def apply(found: tuple[tuple[slice, ...], np.ndarray] | None) -> None:
        if found is not None:
            bbox, drop = found
            np.copyto(out[bbox], 0, where=drop)

    if workers > 1:  # scipy's label and numpy's reductions release the GIL: the classes run side by side
        with ThreadPoolExecutor(workers, thread_name_prefix="pipofan-components") as pool:
            # the workers only read arr; their results are applied to out here, one class after the other
            for found in pool.map(lambda job: _components_to_drop(arr, job[0], job[1], structure), jobs):
                apply(found)
    else:
        for cls, keep in jobs:
            apply(_components_to_drop(arr, cls, keep, structure))
    if squeeze:
        out = out[None]
    if isinstance(label, torch.Tensor):
        return convert_to_dst_type(out, label, dtype=label.dtype)[0]
    return out.astype(arr.dtype, copy=False)


#: voxels per step when counting component sizes (the temporaries of a step stay in the cache)
_COUNT_CHUNK = 1 << 20
#: at most this many kept components are found by comparisons (one vectorised pass each); more by a lookup table
_COMPARE_KEEP = 4


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the True voxels of ``mask`` (None when there are none), as ``find_objects`` gives it,
    from one projection per axis."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _label(sub: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndimage.label`` into uint16 when the components fit (else int32, as scipy's default): half the bytes to
    write and to read again (label 0.64 s instead of 0.86 s for the largest class of the CPU benchmark's
    512x512x200 map; 2-core Xeon, 2026-12-05, load 1.3). Beyond 65535 provisional labels scipy relabels into int32
    itself, and beyond 65535 components it raises: labelled again into int32 here."""
    try:
        return ndimage.label(sub, structure=structure, output=np.uint16)
    except RuntimeError:
        return ndimage.label(sub, structure=structure)


def _component_sizes(comp: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(comp.ravel(), minlength=n + 1)``, counted run by run: a component's voxels come in runs along
    the scan, so counting the run lengths (2.9 M runs for the 52 M voxels of the CPU benchmark's largest class)
    costs less than counting voxels, and ``np.bincount`` of a whole label volume would first copy it to int64
    (0.3-2.5 s at 512x512x200). Chunk by chunk (:data:`_COUNT_CHUNK`): a chunk boundary only splits a run."""
    flat = comp.reshape(-1)
    sizes = np.zeros(n + 1, dtype=np.float64)  # run-length sums: exact integers up to 2**53
    for start in range(0, flat.size, _COUNT_CHUNK):
        chunk = flat[start:start + _COUNT_CHUNK]
        starts = np.flatnonzero(chunk[1:] != chunk[:-1])
        starts += 1
        starts = np.concatenate(([0], starts))
        lengths = np.diff(starts, append=chunk.size)
        sizes += np.bincount(chunk[starts], weights=lengths, minlength=n + 1)
    return sizes.astype(np.intp)


def _components_to_drop(arr: np.ndarray, cls: int, keep: int,
                        structure: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """``(bounding box, voxels of class cls in it to set to 0)``, or None when nothing is dropped. Reads ``arr``
    only (it runs in a worker thread)."""
    mask = arr == cls
    bbox = _bounding_box(mask)
    if bbox is None:
        return None
    sub = mask[bbox]
    comp, n = _label(sub, structure)
    if n <= keep:
        return None
    sizes = _component_sizes(comp, n)[1:]
    order = np.argsort(-sizes, kind="stable")  # largest first, ties in scan order
    kept_ids = order[:keep] + 1
    if keep <= _COMPARE_KEEP:
        drop = comp == kept_ids[0]
        for i in kept_ids[1:]:
            drop |= comp == i
    else:
        lut = np.zeros(n + 1, dtype=bool)
        lut[kept_ids] = True
        drop = lut[comp]
    del comp
    np.logical_not(drop, out=drop)  # in place: one byte per voxel of the box
    drop &= sub
    return bbox, drop


class KeepLargestOrganComponents(Transform):
    """Array transform wrapping :py:func:`keep_largest_components`.

    Args:
        num_components: ``{class id: N}``; default ``{1: 1, 2: 2, 3: 1}``.
        connectivity: 1 (faces) .. number of spatial dims (full, the default 3).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_components: Mapping[int, int] | None = None, connectivity: int = 3) -> None:
        self.num_components = _normalise_num_components(num_components)
        self.connectivity = int(connectivity)

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: label: ``(1, H, W, D)`` or ``(H, W, D)`` integer label map. Returns the filtered map."""
        return keep_largest_components(label, self.num_components, self.connectivity)


class KeepLargestOrganComponentsd(MapTransform):
    """Dictionary version of :py:class:`KeepLargestOrganComponents`, for argmaxed label maps ``(1, H, W, D)``.

    Args:
        keys: keys of the label maps to filter.
        num_components: ``{class id: N}``; default ``{1: 1, 2: 2, 3: 1}`` (liver 1, kidneys 2, spleen 1).
        connectivity: 1 (faces) .. 3 (full, the default).
        allow_missing_keys: do not raise when a key is missing.
        label_space: take the rules from a :class:`~pipofan_monai.vocabulary.LabelSpace` (its organs'
            ``num_components``) instead of ``num_components``.

    Example::

        KeepLargestOrganComponentsd(keys="pred", num_components={"1": 1, "2": 2, "3": 1})
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_components: Mapping[int, int] | None = None,
        connectivity: int = 3,
        allow_missing_keys: bool = False,
        label_space: LabelSpace | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if label_space is not None:
            if num_components is not None:
                raise ValueError("KeepLargestOrganComponentsd takes num_components or label_space, not both.")
            num_components = label_space.num_components
        self.converter = KeepLargestOrganComponents(num_components, connectivity)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Filter every key; other entries are returned unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
