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

"""Helpers shared by the preprocessed-cache tests: the demo volumes' shape, the dataset settings and entry files."""

from __future__ import annotations

import os

from pipofan_monai.preprocessing.cache import CacheEntry

# the demo volumes of the ``items`` fixture (tests/conftest.py) and the dataset settings the cache tests train with
SHAPE = (48, 48, 20)
KW = {"spatial_size": 40, "roi_size": 32}


def entry_files(entry: CacheEntry) -> dict:
    """The inode of each file of a cache entry: equal inodes mean the entry was reused, not rewritten."""
    return {n: os.stat(entry.path / n).st_ino for n in ("image.npy", "label.npy", "meta.json")}
