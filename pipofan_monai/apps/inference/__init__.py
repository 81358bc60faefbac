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

"""The inference application: input resolution (files, DICOM folders, datalists, the demo), the case pipeline
(load, infer, ensemble, invert, post-process, save), the run's output plan (names, overwrite / skip, claims) and
reporter (log, failures, report.json, pictures), and the runner that drives them over a list of cases."""

from .inputs import resolve_inputs
from .outputs import OutputPlan
from .pipeline import STAGES, CasePipeline, StageTimer
from .report import RunReporter
from .runner import InferenceError, SegmentationRunner

__all__ = ["resolve_inputs", "OutputPlan", "RunReporter", "STAGES", "CasePipeline", "StageTimer", "InferenceError",
           "SegmentationRunner"]
