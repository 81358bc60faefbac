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

"""The training application: the data split and datasets, the handlers of the bundle's training workflow,
the run folder, cross-validation and the studies. The components it assembles (the 2.5D sampling transforms, the
partial-label sampler, the learning-rate schedule) are core and re-exported here for the bundle configs."""

from __future__ import annotations

from .cached_data import CachedSliceDataset, CachedVolumeDataset, make_train_dataset, make_val_dataset
from .crossval import run_crossval, run_crossval_workflow
from .data import SeededItemDataset, load_training_data, split_training_data
from .handlers import (
    BestModelCheckpoint,
    DivergenceGuard,
    EpochProgressLogger,
    EpochSeedHandler,
    MetricsFileWriter,
    ResumableCheckpoint,
    StageSwitchHandler,
    TrainingDivergedError,
    TrainingProgressBar,
    stage_for_epoch,
)
from pipofan_monai.data.sampler import PartialLabelSampler
from pipofan_monai.optimizers.lr_scheduler import AuthorsLRLambda
from pipofan_monai.preprocessing.train_transforms import (
    RandSlabCropd,
    RandSlabFlipd,
    SlabToChannelsd,
    get_train_random_transforms,
    get_train_transforms,
)

from .pretrained import PretrainedWeights, start_plans, training_network
from .run_dir import prepare_training_run, release_training_run
from .workflow import log_trained_model, run_training

__all__ = [
    "CachedSliceDataset",
    "CachedVolumeDataset",
    "make_train_dataset",
    "make_val_dataset",
    "SeededItemDataset",
    "load_training_data",
    "split_training_data",
    "BestModelCheckpoint",
    "DivergenceGuard",
    "EpochProgressLogger",
    "EpochSeedHandler",
    "MetricsFileWriter",
    "ResumableCheckpoint",
    "StageSwitchHandler",
    "TrainingDivergedError",
    "TrainingProgressBar",
    "stage_for_epoch",
    "AuthorsLRLambda",
    "PartialLabelSampler",
    "prepare_training_run",
    "release_training_run",
    "RandSlabCropd",
    "SlabToChannelsd",
    "RandSlabFlipd",
    "get_train_random_transforms",
    "get_train_transforms",
    "run_crossval",
    "run_crossval_workflow",
    "run_training",
    "log_trained_model",
    "PretrainedWeights",
    "start_plans",
    "training_network",
]
