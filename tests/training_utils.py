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

"""Helpers shared by the in-process training tests: tiny settings and the bundle's training workflow built from them."""

from __future__ import annotations

from pathlib import Path

from bundle_utils import TRAIN

# a tiny network on the tiny demo dataset: an epoch of 2 iterations and 1 validation volume
TINY_WORKFLOW = {
    "network_channels": [4, 8, 16, 32, 32],
    "spatial_size": 32,
    "roi_size": 32,
    "samples_per_epoch": 4,
    "batch_size": 2,
    "num_workers": 0,
    "sw_batch_size": 16,
    "progress_bar": False,
    "max_val_volumes": 1,
    "val_interval": 1,
    "dps_epochs": 1,  # the stage switch happens at the start of epoch 2
}


def workflow_settings(run: Path, demo: Path, settings: dict = TINY_WORKFLOW, **over) -> dict:
    """``settings`` with the datalist ``demo`` and the run's folders (``run/models``, ``run/runs``), then ``over``."""
    return {**settings, "datalist": str(demo), "ckpt_dir": str(run / "models"), "output_dir": str(run / "runs"),
            **over}


def tiny_workflow(run: Path, demo: Path, settings: dict = TINY_WORKFLOW, **over):
    """The bundle's training workflow of :func:`workflow_settings`, initialized, in this process."""
    from monai.bundle import ConfigWorkflow

    # logging_file=False: keep pytest's log capture (the bundle's logging.conf replaces the root handlers)
    wf = ConfigWorkflow(config_file=TRAIN, workflow_type="train", logging_file=False,
                        **workflow_settings(run, demo, settings, **over))
    wf.initialize()
    return wf
