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

"""Our ensembling and connected-component filtering give exactly MONAI's results (they are kept for memory and
dependencies, see the module docstrings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import KeepLargestConnectedComponent, MeanEnsemble, VoteEnsemble

from pipofan_monai.ensembling import majority_vote, mean_probabilities
from pipofan_monai.postprocessing import keep_largest_components


def test_majority_vote_equals_monai_vote_ensemble():
    rng = np.random.default_rng(0)
    maps = [torch.from_numpy(rng.integers(0, 4, (1, 24, 20, 7))) for _ in range(5)]  # many ties
    ours = majority_vote(maps, 4)
    theirs = VoteEnsemble(num_classes=4)(maps)
    assert torch.equal(ours.long(), torch.as_tensor(theirs).long())


def test_mean_probabilities_equals_monai_mean_ensemble():
    rng = np.random.default_rng(1)
    probs = [torch.from_numpy(rng.random((4, 12, 10, 5)).astype(np.float32)) for _ in range(3)]
    torch.testing.assert_close(mean_probabilities(iter(probs)), torch.as_tensor(MeanEnsemble()(probs)), rtol=0,
                               atol=1e-6)


def test_components_equal_monai_keep_largest_connected_component():
    """Two KeepLargestConnectedComponent (1 component for liver and spleen, 2 for the kidneys) == ours, on a map
    with organs, a second kidney and specks (no equal-size components, where the tie rules could differ)."""
    pytest.importorskip("skimage", reason="MONAI's KeepLargestConnectedComponent needs scikit-image on the CPU")
    lab = np.zeros((1, 64, 60, 30), np.uint8)
    lab[0, 5:30, 5:30, 3:20] = 1
    lab[0, 40:50, 5:12, 5:15] = 2
    lab[0, 40:49, 30:36, 5:14] = 2
    lab[0, 52:60, 40:55, 8:18] = 3
    rng = np.random.default_rng(2)
    idx = rng.integers(0, [64, 60, 30], size=(200, 3))
    lab[0, idx[:, 0], idx[:, 1], idx[:, 2]] = rng.integers(1, 4, 200)
    t = torch.from_numpy(lab)
    ours = keep_largest_components(t, {1: 1, 2: 2, 3: 1})
    one = KeepLargestConnectedComponent(applied_labels=[1, 3], is_onehot=False, independent=True, connectivity=3,
                                        num_components=1)
    two = KeepLargestConnectedComponent(applied_labels=[2], is_onehot=False, independent=True, connectivity=3,
                                        num_components=2)
    assert not torch.equal(torch.as_tensor(ours), t)  # specks were removed
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(two(one(t))))
