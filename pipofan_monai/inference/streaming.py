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

"""Slab-by-slab inversion and argmax of the network output: the bundle's ``Invertd`` + ``AsDiscreted(argmax)``
without the full-resolution probability volume (inference memory at real size).

The bundle's postprocessing inverts the network output, ``(K, S, S, D)`` probabilities at the network's in-plane
size ``S`` (256), to the original grid with MONAI's ``Invertd`` (undo the in-plane ``Resized``, then the
``Orientationd``) and then takes the argmax. Done on the whole volume, as ``Invertd`` does, this materialises the
``K``-class float32 probabilities at the original size (4 MiB per 512² slice, plus a copy per inverted transform
and the argmax's int64 / float32 label maps: 8.3 MiB per slice measured, docs/results/benchmarks.md).
:class:`SlabInverter` gives the same label map holding only ``K x S x S x 4`` bytes per slice:

1. the activation (``Activationsd``, the transforms before ``Invertd``) runs slab by slab on the low-resolution
   output when a slice has a multiple of :data:`ACTIVATION_ALIGNMENT` pixels (256² does): then neither the whole
   volume nor a slab has a scalar tail in the vectorised kernels, every voxel gets the same instructions and the
   probabilities are bitwise the whole-volume ones (tested); otherwise, or with an ``other`` function, it runs
   on the whole output in one call, as in the bundle (the kernel's tail would fall on other voxels);
2. the in-plane resize is undone slab by slab along the axial (last) axis (the resize keeps the slice count, so
   interpolating a slab is bitwise the same as interpolating the volume: the weight of the neighbouring slice is
   exactly 0), and each slab is argmaxed into a ``uint8`` label map on the reoriented grid (1 byte per voxel).
   The resize is MONAI's own ``Resize.inverse_transform``, or, for the same reason, a 2D bilinear interpolation
   of each slice where that was checked to give bitwise the same (:func:`planar_resize_matches`: half the
   arithmetic of the 3D trilinear one); the argmax is :func:`argmax_uint8` (``torch.argmax``'s labels, first class
   on ties, without its slow reduction over the leading axis and the int64 / float32 copies) on finite slabs, the
   config's ``AsDiscrete`` otherwise. At 512x512x200 from 256² (2-core Xeon, 2 threads, 2026-12-05, load 1-2)
   this stage went from 10.6 s (MONAI's resize 2.7 s, ``torch.argmax`` 9.0 s) to 0.85 s;
3. the remaining operations (the reorientation, a pure permutation / flip of voxels, which commutes with the
   argmax) are undone on that ``uint8`` map by the config's ``Invertd`` (a copy with the resize removed from its
   transform), so geometry and metadata are MONAI's.

The label map equals the whole-volume one voxel for voxel (tests/unit/inference/test_inference_streaming.py). The streaming
applies when the postprocessing is ``[Activationsd ..., Invertd, AsDiscreted(argmax=True), ...]`` and the image's
applied operations are reorientations and at most one trailing in-plane ``Resize``; otherwise
(``save_probabilities``, other transforms) :meth:`SlabInverter.why_not` says why and the pipeline inverts the
whole volume as before.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Compose, InvertibleTransform, Invertd, Resize
from monai.transforms.utils import resolves_modes
from monai.utils import TraceKeys

from pipofan_monai.preprocessing.intensity import all_finite

__all__ = ["SlabInverter", "REORIENTING_OPS", "DEFAULT_STREAM_SLICES", "ACTIVATION_ALIGNMENT", "argmax_uint8",
           "planar_resize_matches"]

#: applied operations that only move voxels (no interpolation): undone on the uint8 label map, exactly
REORIENTING_OPS = ("Orientation",)

#: the activation runs slab by slab when a slice has a multiple of this many pixels: a multiple of every CPU vector
#: width (up to 64 float32 lanes), so that no slab and no volume leaves a scalar tail in the vectorised kernels
ACTIVATION_ALIGNMENT = 64

#: slices per slab: the slab's full-resolution probabilities are ``K x H x W x 4`` bytes per slice (64 MiB for 16
#: slices of 4 classes at 512²), a constant independent of the volume
DEFAULT_STREAM_SLICES = 16

#: slices resized together by the planar path: the resized chunk (``K x H x W x 4`` bytes per slice, 4 MiB at 512²)
#: is argmaxed while it is still in the cache
PLANAR_CHUNK = 2


def argmax_uint8(probabilities: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(probabilities, dim=0)`` of a CPU tensor ``(K, ...)``, written into the ``uint8`` tensor ``out``
    (shape ``probabilities.shape[1:]``, any strides): the first class wins a tie, as in ``torch.argmax``.

    Why not ``torch.argmax``: over the leading (class) axis of a ``(4, 512, 512, 16)`` float32 slab it took
    0.7-1.0 s (torch 2.13, 2 threads, 2-core Xeon, 2026-12-05, load 4.5), and ``AsDiscrete`` then converts its
    int64 result to float32 and the caller to uint8 (two more full-size temporaries); the ``K - 1`` vectorised
    compare / maximum / masked-copy passes here take about 10 ms for the same slab.

    The input must hold no NaN (``torch.argmax`` takes NaN as the maximum, the comparisons here never do): the
    callers check that the low-resolution input is finite (interpolating finite values gives no NaN).
    """
    p = probabilities.detach().numpy()
    o = out.numpy()
    o[...] = 0
    k = p.shape[0]
    if k == 1:
        return out
    best = p[0].copy()
    wins = np.empty(p.shape[1:], dtype=bool)
    for c in range(1, k):
        np.greater(p[c], best, out=wins)  # strictly greater: on a tie the earlier class keeps the voxel
        np.copyto(o, c, where=wins)
        if c < k - 1:
            np.maximum(best, p[c], out=best)
    return out


def _reference_resize(slab: torch.Tensor, op: Mapping, affine: Any = None) -> MetaTensor:
    """MONAI's own inverse of the in-plane ``Resize`` (``op``) on a slab ``(K, h, w, n)``: the definition the planar
    path must equal."""
    size = tuple(int(s) for s in op[TraceKeys.ORIG_SIZE])
    return Resize(spatial_size=size).inverse_transform(MetaTensor(slab, affine=affine), op)


def _planar_mode(op: Mapping) -> str | None:
    """The 2D mode whose per-slice interpolation is the inverse resize's 3D one with the slice count unchanged
    (trilinear: the weights along the slice axis are exactly 1 and 0), or None where there is none (nearest,
    area, bicubic, ...: those slabs take MONAI's path)."""
    info = op[TraceKeys.EXTRA_INFO]
    if info.get("dtype") != "float32" or info.get("new_dim"):
        return None
    _, mode, _, _ = resolves_modes(info["mode"], torch_interpolate_spatial_nd=3)
    return "bilinear" if str(mode) == "trilinear" else None


def _planar_chunks(slab: torch.Tensor, op: Mapping, chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(z, resized)`` for the slices ``z .. z + n`` of a float32 slab ``(K, h, w, D)``: ``resized`` is
    ``(n, K, H, W)``, each slice interpolated in 2D (``op``: the in-plane ``Resize`` to undo)."""
    info = op[TraceKeys.EXTRA_INFO]
    size = tuple(int(s) for s in op[TraceKeys.ORIG_SIZE][:2])
    align = None if info["align_corners"] == TraceKeys.NONE else info["align_corners"]
    mode = _planar_mode(op)
    slices = slab.permute(3, 0, 1, 2).contiguous()  # (D, K, h, w): a batch of 2D slices, the kernels' usual layout
    chunk = int(chunk or PLANAR_CHUNK)
    for z in range(0, slices.shape[0], chunk):
        yield z, torch.nn.functional.interpolate(slices[z:z + chunk], size=size, mode=mode, align_corners=align)


#: answers of :func:`planar_resize_matches` in this process, by shape, resize and thread count
_PLANAR_CHECKED: dict[tuple, bool] = {}


def _planar_check(shape: tuple[int, ...], op_key: tuple, threads: int) -> bool:
    k, h, w, n = shape
    size, mode, align = op_key
    op = {TraceKeys.ORIG_SIZE: (*size, n), TraceKeys.EXTRA_INFO: {"mode": mode, "align_corners": align,
                                                                  "dtype": "float32", "new_dim": 0}}
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(k, h, w, n, generator=g) * 4, 0)
    ref = _reference_resize(probs, op).as_tensor()
    for z, resized in _planar_chunks(probs, op):
        if not torch.equal(resized.permute(1, 2, 3, 0), ref[..., z:z + resized.shape[0]]):
            return False
    return True


def planar_resize_matches(shape: Sequence[int], op: Mapping, check: bool = True) -> bool:
    """Whether the planar path (:func:`_planar_chunks`: a 2D bilinear interpolation of each slice) gives bitwise
    MONAI's inverse of the in-plane resize ``op`` (a 3D trilinear interpolation) for float32 slabs of ``shape``
    ``(K, h, w, n)``.

    Why: the 3D kernel computes 8 taps per voxel, the 2D one 4; with the slice count unchanged PyTorch gives the
    slice axis the weights 1 and 0, so the two are the same sums of the same products -- as long as both run
    PyTorch's generic interpolation kernel with the same arithmetic, which depends on the sizes (small outputs
    take a vectorised kernel) and on the build. So this is checked, not assumed: once per process and shape, on
    seeded random probabilities of exactly that shape, against MONAI's ``Resize.inverse_transform``. Measured at
    512² (16 slices of 4 classes from 256²; torch 2.13, 2 threads, 2-core Xeon, 2026-12-05, load 4.5): 3D 174 ms,
    planar 75 ms per slab; the check costs one of each, once.

    ``check=False``: the answer of an earlier check of this shape, else False without checking (for a volume's
    last, shorter slab: MONAI's path costs less than checking a shape seen once).
    """
    if _planar_mode(op) is None or len(shape) != 4:
        return False
    info = op[TraceKeys.EXTRA_INFO]
    size = tuple(int(s) for s in op[TraceKeys.ORIG_SIZE][:2])
    # the thread count is part of the key: it decides how the kernels split the work
    key = (tuple(int(s) for s in shape), (size, info["mode"], info["align_corners"]), torch.get_num_threads())
    if not check:
        return _PLANAR_CHECKED.get(key, False)
    if key not in _PLANAR_CHECKED:
        if len(_PLANAR_CHECKED) >= 64:
            _PLANAR_CHECKED.clear()
        _PLANAR_CHECKED[key] = _planar_check(*key)
    return _PLANAR_CHECKED[key]


def _inner_invertibles(transform: Any) -> set[int]:
    """ids of the array transforms held by a dictionary transform (``Orientationd.ornt_transform``, ...) and its
    own id: the ``id`` an applied operation records is one of them."""
    ids = {id(transform)}
    for value in vars(transform).values():
        if isinstance(value, InvertibleTransform):
            ids.add(id(value))
    return ids


class SlabInverter:
    """The bundle's activation -> ``Invertd`` -> argmax, with the inversion and the argmax done slab by slab.

    Args:
        activation: the transforms before ``Invertd`` (``Activationsd``: voxel-wise over the classes), applied to the
            whole network output as in the bundle.
        invertd: the bundle's ``Invertd`` (its ``transform`` is the preprocessing ``Compose``).
        argmax: the bundle's ``AsDiscreted(argmax=True)``.
        slices: slices per slab (>= 1). Default :data:`DEFAULT_STREAM_SLICES`.
        num_classes: K (the label map is ``uint8``: K <= 256).
        pred_key, image_key: keys of the prediction and the preprocessed image.
    """

    def __init__(self, activation: Sequence[Callable], invertd: Invertd, argmax: AsDiscreted,
                 slices: int = DEFAULT_STREAM_SLICES, num_classes: int = 4, pred_key: str = "pred",
                 image_key: str = "image") -> None:
        if int(slices) < 1:
            raise ValueError(f"slices must be >= 1, got {slices}.")
        self.activation = list(activation)
        self.invertd = invertd
        self.argmax = argmax
        self.slices = int(slices)
        self.num_classes = int(num_classes)
        self.pred_key = pred_key
        self.image_key = image_key

    # ------------------------------------------------------------------ when it applies
    @classmethod
    def from_postprocessing(cls, head: Sequence[Callable], argmax: Any, slices: int, num_classes: int,
                            pred_key: str = "pred", image_key: str = "image") -> tuple[SlabInverter | None, str | None]:
        """``(inverter, None)`` when ``head`` (the postprocessing before its first ``AsDiscreted``) is
        ``[Activationsd ..., Invertd]`` on ``pred_key`` (inverting ``image_key``) and ``argmax`` is a plain
        ``AsDiscreted(argmax=True)``; else ``(None, reason)``."""
        if not head or not isinstance(head[-1], Invertd):
            return None, "the postprocessing does not end its part before the argmax with Invertd"
        inv = head[-1]
        if tuple(inv.keys) != (pred_key,) or tuple(inv.orig_keys) != (image_key,):
            return None, f"Invertd inverts {tuple(inv.keys)} from {tuple(inv.orig_keys)}, not {pred_key!r}"
        if any(callable(f) for f in inv.post_func):
            return None, "Invertd has a post_func"
        for t in head[:-1]:
            if not isinstance(t, Activationsd) or tuple(t.keys) != (pred_key,):
                return None, f"{type(t).__name__} before Invertd (only Activationsd is voxel-wise for sure)"
        if not isinstance(argmax, AsDiscreted) or tuple(argmax.keys) != (pred_key,):
            return None, "no AsDiscreted on the prediction"
        kw = argmax.converter.kwargs
        if not (argmax.argmax[0] and argmax.to_onehot[0] is None and argmax.threshold[0] is None
                and argmax.rounding[0] is None and kw.get("dim", 0) == 0 and kw.get("keepdim", True)):
            return None, "AsDiscreted does more than an argmax over the classes"
        if not 1 <= int(num_classes) <= 256:
            return None, f"{num_classes} classes do not fit a uint8 label map"
        return cls(head[:-1], inv, argmax, slices, num_classes, pred_key, image_key), None

    def _plan(self, image: Any) -> tuple[dict | None, list, str | None]:
        """``(resize operation or None, transforms left for Invertd, reason it does not apply or None)``."""
        if not isinstance(image, MetaTensor):
            return None, [], "the preprocessed image carries no applied operations"
        ops = list(image.applied_operations)
        resize_op = None
        if ops and ops[-1].get(TraceKeys.CLASS_NAME) == "Resize":
            resize_op = ops.pop()
            orig = tuple(int(s) for s in resize_op[TraceKeys.ORIG_SIZE])
            if len(orig) != 3 or orig[-1] != int(image.shape[-1]) or resize_op[TraceKeys.EXTRA_INFO].get("new_dim"):
                return None, [], (f"the resize changed the slice count or dimensions ({orig} -> "
                                  f"{tuple(image.shape[1:])})")
        for op in ops:
            if op.get(TraceKeys.CLASS_NAME) not in REORIENTING_OPS or op.get(TraceKeys.LAZY):
                return None, [], f"applied operation {op.get(TraceKeys.CLASS_NAME)} is not a reorientation"
        transforms = list(self.invertd.transform.flatten().transforms) if isinstance(
            self.invertd.transform, Compose) else [self.invertd.transform]
        keep = []
        for t in transforms:
            if resize_op is not None and resize_op.get(TraceKeys.ID) in _inner_invertibles(t):
                continue  # undone slab by slab
            keep.append(t)
        invertibles = [t for t in keep if isinstance(t, InvertibleTransform)]
        if len(invertibles) != len(ops) or any(op.get(TraceKeys.ID) not in _inner_invertibles(t)
                                               for t, op in zip(invertibles, ops)):
            return None, [], "the preprocessing's invertible transforms do not match the image's applied operations"
        if resize_op is not None and len(keep) == len(transforms):
            return None, [], "the resize was not applied by Invertd's transform"
        return resize_op, keep, None

    def why_not(self, image: Any) -> str | None:
        """None when this image can be streamed, else the reason (the pipeline then inverts the whole volume)."""
        return self._plan(image)[2]

    # ------------------------------------------------------------------ steps
    def activate(self, d: Mapping) -> dict:
        """The activation transforms on the whole network output ``d[pred_key]`` ``(K, h, w, D)`` (as in the
        bundle: one call, bitwise the bundle's probabilities)."""
        out = dict(d)
        for t in self.activation:
            out = t(out)
        return out

    def activates_slabs(self, shape: Sequence[int]) -> bool:
        """Whether the activation of an output of ``shape`` ``(K, h, w, D)`` runs slab by slab in :meth:`labels`
        (bitwise the whole-volume one): ``h * w`` is a multiple of :data:`ACTIVATION_ALIGNMENT` and every
        activation is ``Activationsd``'s softmax / sigmoid (no ``other`` function)."""
        h, w = int(shape[-3]), int(shape[-2])
        return (h * w) % ACTIVATION_ALIGNMENT == 0 and all(
            isinstance(t, Activationsd) and all(o is None for o in t.other) for t in self.activation)

    def _activate_slab(self, slab: torch.Tensor) -> torch.Tensor:
        out: Any = {self.pred_key: slab.contiguous()}
        for t in self.activation:
            out = t(out)
        return torch.as_tensor(out[self.pred_key])

    def labels(self, d: Mapping, probabilities: torch.Tensor | None = None, activate: bool = False) -> dict:
        """Invert and argmax ``d[pred_key]`` (or ``probabilities``), ``(K, h, w, D)`` on the preprocessed grid, slab by
        slab: ``d`` with ``pred_key`` the ``uint8`` label map ``(1, H0, W0, D0)`` on the original grid (metadata and
        affine as ``Invertd`` gives them).

        Args:
            d: the data dict (``image_key``: the preprocessed image with its applied operations).
            probabilities: the activated output (default ``d[pred_key]``).
            activate: ``d[pred_key]`` holds the network output before the activation; the activation runs slab by
                slab here (check :meth:`activates_slabs` first), so the activated volume never exists.

        Raises:
            ValueError: the image cannot be streamed (check :meth:`why_not` first), or ``activate`` for an output
                whose activation cannot be split.
        """
        image = d[self.image_key]
        resize_op, keep, reason = self._plan(image)
        if reason is not None:
            raise ValueError(f"cannot stream the inversion: {reason}.")
        probs = d[self.pred_key] if probabilities is None else probabilities
        p = probs.as_tensor() if isinstance(probs, MetaTensor) else torch.as_tensor(probs)
        k, h, w, depth = p.shape
        if activate and not self.activates_slabs(p.shape):
            raise ValueError(f"the activation of a {tuple(p.shape)} output cannot run slab by slab bitwise; "
                             "activate the whole output first (activate()).")
        if resize_op is not None:
            height, width = (int(s) for s in resize_op[TraceKeys.ORIG_SIZE][:2])
        else:
            height, width = h, w
        labels = torch.empty((1, height, width, depth), dtype=torch.uint8, device=p.device)
        affine = image.affine
        if resize_op is not None:
            base_op = dict(resize_op)
            if self.invertd.nearest_interp[0]:  # as Invertd(nearest_interp=True) would resample
                base_op[TraceKeys.EXTRA_INFO] = {**base_op[TraceKeys.EXTRA_INFO], "mode": "nearest",
                                                 "align_corners": TraceKeys.NONE}
            # the reoriented grid's affine, from MONAI's inverse of a one-channel dummy: the slice axis keeps its
            # size, so any slab gives the volume's scale along it, except that MONAI scales an axis of one slice
            # by 0 with align_corners=True (a one-slice volume gets that from Invertd too): two slices, or one
            nz = min(depth, 2)
            affine = _reference_resize(torch.zeros(1, h, w, nz), {**base_op, TraceKeys.ORIG_SIZE: (
                height, width, nz)}, image.affine).affine
        cpu = p.device.type == "cpu"
        for z0 in range(0, depth, self.slices):
            z1 = min(depth, z0 + self.slices)
            slab: Any = self._activate_slab(p[..., z0:z1]) if activate else p[..., z0:z1]
            if isinstance(slab, MetaTensor):
                slab = slab.as_tensor()  # plain tensor ops: no metadata copied per operation
            fast = cpu and all_finite(slab)  # argmax_uint8 assumes no NaN; interpolating finite values gives none
            if resize_op is not None:
                op = {**base_op, TraceKeys.ORIG_SIZE: (height, width, z1 - z0)}
                if fast and slab.dtype == torch.float32 and planar_resize_matches(slab.shape, op,
                                                                                 check=z1 - z0 == self.slices):
                    self._planar_labels(slab, op, labels[0, :, :, z0:z1])
                    del slab
                    continue
                slab = _reference_resize(slab, op, image.affine).as_tensor()
            if fast:
                argmax_uint8(slab, labels[0, :, :, z0:z1])
            else:
                labels[..., z0:z1] = torch.as_tensor(self.argmax.converter(slab, argmax=True)).to(torch.uint8)
            del slab
        meta = dict(image.meta)
        meta["affine"] = affine
        lab = MetaTensor(labels, meta=meta, applied_operations=[o for o in image.applied_operations
                                                                if o is not resize_op])
        inv = copy.copy(self.invertd)
        inv.transform = Compose(keep)
        out = inv({**d, self.image_key: lab, self.pred_key: lab})
        out[self.image_key] = image
        return out

    @staticmethod
    def _planar_labels(slab: torch.Tensor, op: Mapping, out: torch.Tensor) -> None:
        """The labels of a slab ``(K, h, w, n)`` through the planar resize (checked by
        :func:`planar_resize_matches`), chunk by chunk, into ``out`` ``(H, W, n)``."""
        buf = torch.empty((slab.shape[-1], *out.shape[:2]), dtype=torch.uint8)  # (n, H, W): the chunks' layout
        for z, resized in _planar_chunks(slab, op):
            argmax_uint8(resized.transpose(0, 1), buf[z:z + resized.shape[0]])
        out.copy_(buf.permute(1, 2, 0))
