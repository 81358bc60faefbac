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

"""Ready-made training and validation pipelines as ``monai.transforms.Compose``.

Training: load -> channel first -> RAS -> image/label grid check -> dataset label mapping + labeled mask ->
HU window -> in-plane resize to ``spatial_size`` (slice count kept) -> 2.5D slab crop -> slices to channels
-> random flips on both in-plane axes. Everything up to the resize is deterministic (cacheable with
``CacheDataset``); the last four transforms are random and cheap.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from monai.transforms import Compose, Orientationd, Resized


from .intensity import HUWindowd
from .io import COMPACT_DTYPE, CheckCTIntensityd, load_ct_transforms
from .labels import MapDatasetLabelsd
from pipofan_monai.vocabulary.label_space import LabelSpace
from .slices import SlicesToChannelsd

__all__ = ["get_preprocessing_transforms", "get_val_transforms", "get_inference_transforms"]


def get_preprocessing_transforms(
    image_key: str = "image",
    label_key: str | None = "label",
    spatial_size: int | None = 256,
    hu_window: Sequence[float] = (-200.0, 200.0),
    intensity: str = "scale",
    num_classes: int | None = None,
    datasets: Mapping[str, Any] | None = None,
    dataset_key: str = "dataset",
    image_mode: str = "trilinear",
    reader: Any = None,
    allow_missing_label: bool = False,
    partial_labels: bool = True,
    class_names: Sequence[str] | None = None,
    organs: Mapping[str, Any] | None = None,
    ct_check: str = "error",
    label_space: LabelSpace | None = None,
    load_dtype: Any = np.float32,
) -> list:
    """Deterministic part shared by training, validation, the preprocessed cache and inference.

    Args:
        image_key: image key (file path in, ``(1, S, S, D)`` float32 out).
        label_key: label key (file path in, ``(1, S, S, D)`` global class ids + ``meta["labeled_mask"]`` out);
            None for image-only pipelines.
        spatial_size: in-plane size after resizing; None keeps the original size. Default 256.
        hu_window: HU clip range. Default (-200, 200).
        intensity: ``"scale"`` (window -> [-1, 1], code) or ``"zscore"`` (paper). Default "scale".
        num_classes: K global classes. Default ``len(class_names)`` (4 without class names).
        datasets: extra dataset table for :class:`MapDatasetLabelsd`.
        dataset_key: item key naming the source dataset. Default "dataset".
        image_mode: interpolation for the image ("trilinear" — equal to 2x2 averaging for 512->256 —, "area",
            "nearest"); labels always use "nearest". Default "trilinear".
        reader: ``LoadImaged`` reader (None: automatic).
        allow_missing_label: accept items without a label (inference).
        partial_labels: attach each dataset's true labeled-class mask (default). False: all-ones masks, the
            naive baseline treating unannotated organs as background; use it for training pipelines only, so
            that validation Dice still skips the organs a volume does not annotate.
        class_names: the global vocabulary, background first (default the paper's four classes); each
            dataset's labels are mapped into it by organ name.
        organs: optional config-level ``organ_table``.
        ct_check: is the image plausibly CT in HU (:class:`~pipofan_monai.preprocessing.CheckCTIntensityd`, on
            the loaded intensities: a label map given as the image, unscaled values)? ``"error"`` (default: a
            ``ValueError`` naming the file, also when training, before the volume is cached), ``"warn"``, ``"off"``.
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace`, instead of ``num_classes``,
            ``datasets``, ``class_names`` and ``organs`` (see :class:`MapDatasetLabelsd`).
        load_dtype: type of the loaded arrays (``LoadCTd``'s ``dtype``; ``"compact"``: an int16 CT stays int16
            until the HU window, which converts it exactly). Default float32.

    Returns:
        list of transforms.
    """
    keys = [image_key] + ([label_key] if label_key else [])
    xforms = load_ct_transforms(keys, reader=reader, allow_missing_keys=allow_missing_label, dtype=load_dtype)
    at = next(i for i, t in enumerate(xforms) if isinstance(t, Orientationd))  # on the loaded intensities
    xforms.insert(at, CheckCTIntensityd(image_key, mode=ct_check))
    if label_key:
        xforms.append(MapDatasetLabelsd(label_key, dataset_key=dataset_key, num_classes=num_classes,
                                        datasets=datasets, allow_missing_keys=allow_missing_label,
                                        partial_labels=partial_labels, class_names=class_names, organs=organs,
                                        label_space=label_space))
    xforms.append(HUWindowd(image_key, window=hu_window, mode=intensity))
    if spatial_size is not None:
        modes = [image_mode] + (["nearest"] if label_key else [])
        xforms.append(Resized(keys, spatial_size=(int(spatial_size), int(spatial_size), -1), mode=modes,
                              allow_missing_keys=allow_missing_label))
    return xforms


def get_val_transforms(
    image_key: str = "image",
    label_key: str | None = "label",
    spatial_size: int | None = 256,
    context: int | None = None,
    allow_missing_label: bool = True,
    preprocessing: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Compose:
    """Validation / inference pipeline on whole volumes: image ``(1, S, S, D)`` (or ``(2*context+1, S, S, D)``
    when ``context`` is given), label ``(1, S, S, D)`` global ids with ``meta["labeled_mask"]``.

    Args:
        image_key, label_key: item keys (``label_key=None``: image only).
        spatial_size: in-plane resize (None: keep). Default 256.
        context: if not None, stack neighbour slices as channels here (otherwise the 2.5D inferer does it).
        allow_missing_label: accept items without a label. Default True.
        preprocessing: the plans' preprocessing dict (the bundle's ``@preprocessing_settings``); its
            ``spatial_size``, ``hu_window``, ``intensity`` and ``image_mode`` replace the arguments' (its
            ``context`` is not used: the 2.5D inferer stacks the slices).
        kwargs: passed to :func:`get_preprocessing_transforms`.
    """
    if preprocessing is not None:
        planned = {k: v for k, v in preprocessing.items() if k != "context"}
        spatial_size = planned.pop("spatial_size", spatial_size)
        kwargs = {**planned, **kwargs}
    xforms = get_preprocessing_transforms(image_key, label_key, spatial_size,
                                          allow_missing_label=allow_missing_label, **kwargs)
    if context is not None:
        xforms.append(SlicesToChannelsd(image_key, context=context))
    return Compose(xforms)


def get_inference_transforms(
    preprocessing: Mapping[str, Any], image_key: str = "image", reader: Any = None, ct_check: str = "error"
) -> Compose:
    """The inference preprocessing of a trained model: the deterministic pipeline of training with its settings,
    image only (load, checks, RAS, HU window, in-plane resize); the 2.5D inferer stacks the neighbour slices.

    Args:
        preprocessing: the ``"preprocessing"`` dict of the model's plans (:mod:`pipofan_monai.plans`):
            ``spatial_size``, ``hu_window``, ``intensity``, ``context`` (used by the inferer), ``image_mode``.
        image_key: image key. Default ``"image"``.
        reader: ``LoadImaged`` reader (None: automatic).
        ct_check: is the input plausibly CT (:class:`~pipofan_monai.preprocessing.CheckCTIntensityd`)?
            ``"error"`` (default), ``"warn"`` or ``"off"``.

    Returns:
        ``Compose`` giving ``image`` ``(1, S, S, D)`` float32 with its applied operations (``Invertd`` undoes the
        resize and the reorientation).
    """
    settings = {k: v for k, v in preprocessing.items() if k in ("spatial_size", "hu_window", "intensity", "image_mode")}
    # the image is loaded in its own integer type (int16: half of float32): the HU window makes the float copy
    return Compose(get_preprocessing_transforms(image_key, None, reader=reader, ct_check=ct_check,
                                                load_dtype=COMPACT_DTYPE, **settings))
