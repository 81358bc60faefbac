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
2. the in-plane resize is undone slab by slab along the axial (last) axis with MONAI's own
   ``Resize.inverse_transform`` (the resize keeps the slice count, so interpolating a slab is bitwise the same as
   interpolating the volume: the weight of the neighbouring slice is exactly 0), and each slab is argmaxed with
   the config's ``AsDiscrete`` into a ``uint8`` label map on the reoriented grid (1 byte per voxel);
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
from typing import Any, Callable, Mapping, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import Activationsd, AsDiscreted, Compose, InvertibleTransform, Invertd, Resize
from monai.utils import TraceKeys

__all__ = ["SlabInverter", "REORIENTING_OPS", "DEFAULT_STREAM_SLICES", "ACTIVATION_ALIGNMENT"]

#: applied operations that only move voxels (no interpolation): undone on the uint8 label map, exactly
REORIENTING_OPS = ("Orientation",)

#: the activation runs slab by slab when a slice has a multiple of this many pixels: a multiple of every CPU vector
#: width (up to 64 float32 lanes), so that no slab and no volume leaves a scalar tail in the vectorised kernels
ACTIVATION_ALIGNMENT = 64

#: slices per slab: the slab's full-resolution probabilities are ``K x H x W x 4`` bytes per slice (64 MiB for 16
#: slices of 4 classes at 512²), a constant independent of the volume
DEFAULT_STREAM_SLICES = 16


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
        for z0 in range(0, depth, self.slices):
            z1 = min(depth, z0 + self.slices)
            slab: Any = self._activate_slab(p[..., z0:z1]) if activate else p[..., z0:z1]
            if resize_op is not None:
                op = {**resize_op, TraceKeys.ORIG_SIZE: (height, width, z1 - z0)}
                if self.invertd.nearest_interp[0]:  # as Invertd(nearest_interp=True) would resample
                    op[TraceKeys.EXTRA_INFO] = {**op[TraceKeys.EXTRA_INFO], "mode": "nearest", "align_corners":
                                                TraceKeys.NONE}
                slab = Resize(spatial_size=op[TraceKeys.ORIG_SIZE]).inverse_transform(
                    MetaTensor(slab, affine=image.affine), op)
                if z0 == 0:
                    affine = slab.affine  # the reoriented grid's affine (a slab's is the volume's: same z scale)
                slab = slab.as_tensor()
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
