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

"""Preprocessing stage (deterministic, shared by training, validation, inference and MONAI Label): CT loading and
checks, dataset label mapping with labeled-class masks, HU windowing, in-plane resizing and 2.5D slice stacking."""

from __future__ import annotations

from .cache import CacheEntry, PreprocessedCache
from .intensity import CheckFinited, HUWindowd, check_finite
from .io import CheckAffined, CheckCTIntensityd, CheckSameGridd, CheckVolumed, LoadCTd, check_dicom_folder, load_ct_transforms
from .labels import MapDatasetLabelsd, map_dataset_labels
from .pipelines import get_inference_transforms, get_preprocessing_transforms, get_val_transforms
from .slices import SlicesToChannelsd, make_slab_indices, stack_neighbour_slices

__all__ = [
    "CacheEntry",
    "PreprocessedCache",
    "CheckFinited",
    "HUWindowd",
    "check_finite",
    "CheckAffined",
    "CheckCTIntensityd",
    "CheckSameGridd",
    "CheckVolumed",
    "check_dicom_folder",
    "LoadCTd",
    "load_ct_transforms",
    "MapDatasetLabelsd",
    "map_dataset_labels",
    "get_inference_transforms",
    "get_preprocessing_transforms",
    "get_val_transforms",
    "SlicesToChannelsd",
    "make_slab_indices",
    "stack_neighbour_slices",
]
