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

from __future__ import annotations

from .crossval import run_crossval
from .inference import (
    InferenceError,
    SegmentationRunner,
    load_network_weights,
    majority_vote,
    mean_probabilities,
    resolve_inputs,
)
from .sampler import PartialLabelSampler
from .run_dir import prepare_training_run, refuse_help, release_training_run
from .workflow import AuthorsLRLambda, SeededItemDataset, TrainingProgressBar, default_device, load_training_data, split_training_data

__all__ = [
    "InferenceError",
    "SegmentationRunner",
    "load_network_weights",
    "majority_vote",
    "mean_probabilities",
    "resolve_inputs",
    "run_crossval",
    "PartialLabelSampler",
    "AuthorsLRLambda",
    "SeededItemDataset",
    "prepare_training_run",
    "refuse_help",
    "release_training_run",
    "TrainingProgressBar",
    "default_device",
    "load_training_data",
    "split_training_data",
]
