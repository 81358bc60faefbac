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

"""Inference stage: the sliding-slice 2.5D inferer, the case pipeline (load, infer, ensemble, invert, post-process,
save), the run's output plan and reporter, the runner that drives them, and the atomic output writers."""

from __future__ import annotations

from .inferers import SlidingSliceInferer
from .inputs import resolve_inputs
from .outputs import OutputPlan
from .pipeline import STAGES, CasePipeline, StageTimer
from .report import RunReporter
from .runner import InferenceError, SegmentationRunner
from .writers import AtomicNiftiWriter, AtomicSaveImaged, LabelNiftiWriter, output_is_complete

__all__ = [
    "SlidingSliceInferer",
    "InferenceError",
    "SegmentationRunner",
    "resolve_inputs",
    "OutputPlan",
    "RunReporter",
    "STAGES",
    "CasePipeline",
    "StageTimer",
    "LabelNiftiWriter",
    "AtomicNiftiWriter",
    "AtomicSaveImaged",
    "output_is_complete",
]
