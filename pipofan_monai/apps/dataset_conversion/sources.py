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

"""Where each public dataset comes from and what a complete copy looks like."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

KITS19_IMAGING_BASE = "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main"
"""Host of the KiTS imaging used by the kits19 repository's ``starter_code/get_imaging_v2.py``."""
KITS19_IMAGING_PATH = "images/case_{case:05d}.nii.gz"
KITS19_LABELS_BASE = "https://raw.githubusercontent.com/neheller/kits19/master"
"""The kits19 git repository (branch master): its ``data/case_XXXXX/segmentation.nii.gz`` are plain git files."""
KITS19_LABELS_PATH = "data/case_{case:05d}/segmentation.nii.gz"
KITS19_LABELED = range(0, 210)
"""KiTS19 cases with a published segmentation (case_00000 .. case_00209)."""
KITS19_TEST = range(210, 300)
"""KiTS19 challenge test cases (imaging only): case_00210 .. case_00299."""

BTCV_TRAIN_IDS: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 41))
"""The 30 labeled BTCV abdomen cases (img0001-0010, img0021-0040)."""
BTCV_TEST_IDS: tuple[int, ...] = tuple(range(61, 81))
"""The 20 unlabeled BTCV test cases (img0061-0080)."""

ENV_BASE_URL = "PIPOFAN_DOWNLOAD_BASE_URL"
ENV_LABELS_BASE_URL = "PIPOFAN_KITS19_LABELS_BASE_URL"


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset comes from and what a complete copy looks like.

    Args:
        name: dataset id (the ``dataset`` key of datalist items and the ``datalist`` command option).
        title: human readable name.
        folder: folder under ``--root`` that holds the native layout (the root passed to ``datalist``).
        public: True when :func:`download_dataset` can fetch it without a login.
        num_train: labeled cases of the published release.
        num_test: unlabeled (challenge test) cases of the published release.
        msd_task: MSD task name (``Task09_Spleen``) for the MSD tasks, else None.
        msd_prefix: file name prefix of the MSD task's cases (``spleen`` for ``spleen_12.nii.gz``).
        homepage: where the data is described / obtained.
        instructions: for login datasets, the steps to get and unpack the data (``{root}`` is filled in).
    """

    name: str
    title: str
    folder: str
    public: bool
    num_train: int
    num_test: int
    msd_task: str | None = None
    msd_prefix: str | None = None
    homepage: str = ""
    instructions: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


_BTCV_INSTRUCTIONS = """\
BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen) needs a free Synapse account:
  1. Register at https://www.synapse.org and sign in.
  2. Open the challenge page https://www.synapse.org/#!Synapse:syn3193805/wiki/89480 , go to Files ->
     Abdomen and download RawData.zip (30 labeled + 20 test CTs).
  3. Unpack it so that this layout exists:
       {folder}/RawData/Training/img/img0001.nii.gz ... img0040.nii.gz   (30 files: 0001-0010, 0021-0040)
       {folder}/RawData/Training/label/label0001.nii.gz ... label0040.nii.gz
       {folder}/RawData/Testing/img/img0061.nii.gz ... img0080.nii.gz    (20 files, no labels)
     e.g.:  mkdir -p {folder_q} && unzip RawData.zip -d {folder_q}
     (the datalist scanner searches below {folder}; images in a folder named "Testing" become test items)
  4. Check it:  python -m pipofan_monai verify --dataset btcv --path {folder_q}
     (or check the archive before unpacking: --path RawData.zip)"""

_LITS_INSTRUCTIONS = """\
LiTS (Liver Tumor Segmentation Challenge 2017) is distributed by its challenge site after registration:
  1. Register for the LiTS challenge on CodaLab, https://competitions.codalab.org/competitions/17094
     (also linked from https://www.lits-challenge.com), accept the terms, and download from its
     "Participate" page the two training batches ("Training Batch 1": volume-0 .. volume-27 with
     segmentation-0 .. segmentation-27; "Training Batch 2": volume-28 .. volume-130 with segmentation-28 ..
     segmentation-130) and, optionally, the test data (test-volume-0 .. test-volume-69, no labels).
  2. Unpack every downloaded archive into {folder} so that this layout exists (sub-folder names are free, the
     datalist scanner searches below {folder}):
       {folder}/Training Batch 1/volume-0.nii, segmentation-0.nii, ...
       {folder}/Training Batch 2/volume-28.nii, segmentation-28.nii, ... volume-130.nii, segmentation-130.nii
       {folder}/<any folder>/test-volume-0.nii ... test-volume-69.nii   (optional)
     e.g.:  mkdir -p {folder_q} && unzip ARCHIVE.zip -d {folder_q}   (once per archive)
  3. Check it:  python -m pipofan_monai verify --dataset lits --path {folder_q}
The same 131 labeled CTs (and the 70 test CTs) are public without a login as the MSD liver task:
  python -m pipofan_monai download --dataset msd_liver --root {root_q}
(files liver_N.nii.gz in the MSD layout; use it as --msd_liver, or as LiTS data, not both)."""

DATASET_SOURCES: dict[str, DatasetSource] = {
    "msd_spleen": DatasetSource("msd_spleen", "MSD Task09 Spleen", "Task09_Spleen", True, 41, 20, "Task09_Spleen",
                                "spleen", "http://medicaldecathlon.com/"),
    "msd_pancreas": DatasetSource("msd_pancreas", "MSD Task07 Pancreas", "Task07_Pancreas", True, 281, 139,
                                  "Task07_Pancreas", "pancreas", "http://medicaldecathlon.com/"),
    "msd_liver": DatasetSource("msd_liver", "MSD Task03 Liver (the LiTS CTs)", "Task03_Liver", True, 131, 70,
                               "Task03_Liver", "liver", "http://medicaldecathlon.com/"),
    "kits19": DatasetSource("kits19", "KiTS19", "KiTS19", True, len(KITS19_LABELED), len(KITS19_TEST),
                            homepage="https://github.com/neheller/kits19"),
    "btcv": DatasetSource("btcv", "BTCV abdomen", "BTCV", False, len(BTCV_TRAIN_IDS), len(BTCV_TEST_IDS),
                          homepage="https://www.synapse.org/#!Synapse:syn3193805/wiki/89480",
                          instructions=_BTCV_INSTRUCTIONS),
    "lits": DatasetSource("lits", "LiTS 2017", "LiTS", False, 131, 70,
                          homepage="https://competitions.codalab.org/competitions/17094",
                          instructions=_LITS_INSTRUCTIONS),
}
"""The six datasets of the ``download`` / ``verify`` commands."""


def _source(name: str) -> DatasetSource:
    key = str(name).lower()
    if key not in DATASET_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_SOURCES)}.")
    return DATASET_SOURCES[key]


def _msd_resource(task: str) -> tuple[str, str]:
    """(URL, MD5) of an MSD task as published by ``monai.apps.DecathlonDataset``."""
    from monai.apps import DecathlonDataset

    return DecathlonDataset.resource[task], DecathlonDataset.md5[task]


def _rebase(url: str, base_url: str | None) -> str:
    """Replace everything before the file name of ``url`` by ``base_url`` (keeps ``url`` when None/empty)."""
    if not base_url:
        return url
    return base_url.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


