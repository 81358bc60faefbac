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

"""Training on a CPU: torch's threads and the DataLoader workers share the cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipofan_monai.training import threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores,workers,want", [(2, 2, 1), (2, 0, 2), (2, 4, 1), (16, 4, 12), (1, 0, 1)])
def test_workers_take_their_cores_from_torch(monkeypatch, restore_threads, cores, workers, want):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    assert threads.share_cpu_cores(torch.device("cpu"), workers) == want
    assert torch.get_num_threads() == want


def test_gpu_device_and_user_choice_are_left_alone(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    torch.set_num_threads(3)
    assert threads.share_cpu_cores("cuda:0", 2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.share_cpu_cores("cpu", 2) == 3 and torch.get_num_threads() == 3


def test_train_json_shares_the_cores_before_training():
    steps = json.loads((REPO / "bundle" / "configs" / "train.json").read_text())["initialize"]
    assert any("share_cpu_cores(@device, @num_workers)" in s for s in steps)
