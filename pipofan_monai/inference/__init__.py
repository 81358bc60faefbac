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

"""Inference components (core): the sliding-slice 2.5D inferer, the slab-wise streamed inversion, the atomic
output writers and the DICOM SEG writer. The case pipeline and the runner that use them are an application:
:mod:`pipofan_monai.apps.inference`."""

from __future__ import annotations

from .inferers import AutocastInferer, SlidingSliceInferer, amp_dtype_for, cpu_has_native_bf16
from .writers import AtomicNiftiWriter, AtomicSaveImaged, LabelNiftiWriter, output_is_complete

__all__ = [
    "AutocastInferer",
    "amp_dtype_for",
    "cpu_has_native_bf16",
    "SlidingSliceInferer",
    "LabelNiftiWriter",
    "AtomicNiftiWriter",
    "AtomicSaveImaged",
    "output_is_complete",
]
