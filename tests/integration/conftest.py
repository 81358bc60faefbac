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

"""Fixtures shared by the integration tests: the tiny demo dataset of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_utils import make_tiny_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The datalist of the tiny demo dataset (``bundle_utils.make_tiny_demo``), generated once per module; a module
    that trains on another dataset defines its own ``demo``."""
    return make_tiny_demo(tmp_path_factory.mktemp("demo"))
