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
dependencies, see the module docstrings), and the bundle's vote and mean ensembles give the label maps known from
per-voxel probabilities of models that disagree voxel by voxel."""

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


# ---------------------------------------------------------------------------------------------- bundle ensembles
class TableNet(torch.nn.Module):
    """A "network" whose logits are a fixed table ``(4, 32, 32)`` (the same for every slice): the log of known
    per-voxel class probabilities, so softmax gives them back."""

    def __init__(self) -> None:
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.zeros(4, 32, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_probs.expand(x.shape[0], -1, -1, -1) + 0 * x[:, :1]


def _tables(seed: int = 3) -> np.ndarray:
    """Probabilities ``(3 models, 4 classes, 32, 32)``: model ``m`` puts a confidence drawn in [0.35, 0.95] on a
    class drawn per voxel (the rest shared equally), so the models disagree voxel by voxel and the vote and the
    mean differ where one confident model outweighs two hesitant ones."""
    rng = np.random.default_rng(seed)
    winner = rng.integers(0, 4, (3, 32, 32))
    conf = rng.uniform(0.35, 0.95, (3, 32, 32))
    while True:
        p = np.broadcast_to(((1.0 - conf) / 3.0)[:, None], (3, 4, 32, 32)).copy()
        np.put_along_axis(p, winner[:, None], conf[:, None], axis=1)
        top2 = np.sort(p.mean(0), axis=0)[-2:]
        near_tie = (top2[1] - top2[0]) < 1e-3  # redraw there: the mean's argmax must not hinge on rounding
        if not near_tie.any():
            return p
        conf[:, near_tie] = rng.uniform(0.35, 0.95, (3, int(near_tie.sum())))


@pytest.mark.parametrize("stream_slices", [16, 0])
def test_bundle_vote_and_mean_ensembles_give_the_known_label_maps(tmp_path, stream_slices):
    """Three models with known per-voxel probabilities through the bundle's ensemble run (no resize, RAS input):
    the vote is the per-voxel majority of the models' argmax (a three-way split goes to the lowest class id), the
    mean is the argmax of the mean probabilities, both computed here with numpy (slab by slab, the bundle's default, and on the
    whole volume); the two maps are non-trivial
    (every class) and differ from each other and from every single model."""
    from pathlib import Path

    import nibabel as nib
    from monai.bundle import ConfigParser

    repo = Path(__file__).resolve().parents[3]
    p = _tables()
    ckpts = []
    for m in range(3):
        net = TableNet()
        with torch.no_grad():
            net.log_probs.copy_(torch.from_numpy(np.log(p[m])).float())
        ckpts.append(str(tmp_path / f"fold{m}.pt"))
        torch.save(net.state_dict(), ckpts[-1])
    src = tmp_path / "v.nii.gz"
    hu = np.random.default_rng(0).uniform(-300, 300, (32, 32, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0])), str(src))

    singles = p.argmax(1)  # (3, 32, 32)
    counts = np.stack([(singles == k).sum(0) for k in range(4)])  # (4, 32, 32)
    vote = counts.argmax(0)  # the first (lowest) class among equal counts
    mean_p = p.mean(0)
    mean = mean_p.argmax(0)
    top2 = np.sort(mean_p, axis=0)[-2:]
    assert (top2[1] - top2[0]).min() >= 1e-3  # no near ties in the mean: exact labels expected
    assert set(np.unique(vote).tolist()) == set(np.unique(mean).tolist()) == {0, 1, 2, 3}
    assert int((counts.max(0) == 1).sum()) >= 50  # three-way splits: the tie rule is exercised
    assert int((vote != mean).sum()) >= 50
    assert all(int((vote != s).sum()) >= 50 and int((mean != s).sum()) >= 50 for s in singles)

    def ensemble(mode: str) -> np.ndarray:
        parser = ConfigParser()
        parser.read_config(str(repo / "bundle" / "configs" / "inference.json"))
        out = tmp_path / mode
        parser.update({"bundle_root": str(repo / "bundle"), "ckpt_path": ckpts[0], "fold_ckpt_paths": ckpts,
                       "network_def": TableNet(), "spatial_size": 0, "device": "cpu", "amp": False,
                       "channels_last": False, "output_dir": str(out), "save_overlay": False, "postprocess": False,
                       "ct_check": "off", "ensemble_mode": mode, "input_files": [str(src)],
                       "stream_slices": stream_slices})
        parser.get_parsed_content("ensemble")
        seg = nib.load(str(out / "v_seg.nii.gz"))
        assert seg.shape == (32, 32, 3)
        return np.asarray(seg.dataobj)

    for mode, expected in (("vote", vote), ("mean", mean)):
        got = ensemble(mode)
        for z in range(3):  # the same table in every slice
            wrong = int((got[..., z] != expected).sum())
            assert wrong == 0, f"{mode}: {wrong} of {expected.size} voxels differ from the reference in slice {z}"
