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

"""Validation without K-channel volumes: the inferer's chunk-by-chunk argmax is bitwise the argmax of the full
output, the Dice counted on label maps equals the one-hot Dice exactly, and the bundle's validation (train.json)
gives exactly the metrics of the one-hot validation it replaces."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.networks.utils import one_hot

from pipofan_monai.evaluation import PartialDiceMetric
from pipofan_monai.evaluation.metrics import label_map_counts, partial_dice
from pipofan_monai.inference import SlidingSliceInferer
from pipofan_monai.networks import PIPOFAN

REPO = Path(__file__).resolve().parents[3]
TINY = [8, 16, 32, 64, 64]


@pytest.mark.parametrize("batch", [3, 16])
def test_inferer_argmax_is_bitwise_the_full_outputs_argmax(batch):
    torch.manual_seed(0)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY).eval()
    vol = MetaTensor(torch.randn(1, 1, 32, 32, 11), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    with torch.no_grad():
        full = SlidingSliceInferer(sw_batch_size=batch)(vol, net)
        labels = SlidingSliceInferer(sw_batch_size=batch, argmax=True)(vol, net)
    assert labels.shape == (1, 1, 32, 32, 11) and labels.dtype == torch.uint8
    assert isinstance(labels, MetaTensor) and torch.equal(labels.affine, vol.affine)
    assert torch.equal(labels.as_tensor().long(), full.as_tensor().argmax(1, keepdim=True))
    assert len(torch.unique(labels)) >= 2


def _label_maps(seed: int, shape=(2, 1, 24, 20, 9), k: int = 4):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, k, shape, generator=g)
    pred = torch.where(torch.rand(shape, generator=g) < 0.7, truth, torch.randint(0, k, shape, generator=g))
    return pred, truth


@pytest.mark.parametrize("chunk", [7, 1 << 22])
def test_label_map_dice_equals_the_one_hot_dice(chunk, monkeypatch):
    import pipofan_monai.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "COUNT_CHUNK", chunk)
    pred, truth = _label_maps(1)
    truth[1][truth[1] == 3] = 0  # class 3 empty in the second sample: NaN with ignore_empty
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1]])  # class 2 not labeled in the second sample
    for ignore_empty in (True, False):
        for include_background in (True, False):
            ref = partial_dice(one_hot(pred, 4, dim=1), one_hot(truth, 4, dim=1), mask, include_background,
                               ignore_empty)
            got = partial_dice(pred.float(), truth.float(), mask, include_background, ignore_empty, num_classes=4)
            assert got.dtype == ref.dtype == torch.float32
            torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    got = partial_dice(pred, truth, mask, num_classes=4)  # without background, empty ground truth excluded
    assert torch.isnan(got[1, 1]) and torch.isnan(got[1, 2]) and not torch.isnan(got[0]).any()


def test_label_map_counts_and_errors():
    pred = torch.tensor([[[0, 1, 1, 2]]])
    truth = torch.tensor([[[0, 1, 2, 2]]])
    counts = label_map_counts(pred, truth, 3)
    assert counts.tolist() == [[[1, 0, 0], [0, 1, 0], [0, 1, 1]]]
    with pytest.raises(ValueError, match="y must hold class indices 0..2"):
        label_map_counts(pred, truth + 1, 3)
    with pytest.raises(ValueError, match="not all integers"):
        label_map_counts(pred.float() + 0.5, truth, 3)


def test_metric_with_label_maps_as_the_one_hot_metric():
    pred, truth = _label_maps(2)
    lab = MetaTensor(truth.float(), meta={"labeled_mask": torch.tensor([1, 1, 0, 1])})
    a, b = PartialDiceMetric(), PartialDiceMetric()
    a(y_pred=one_hot(pred, 4, dim=1), y=MetaTensor(one_hot(truth, 4, dim=1), meta=dict(lab.meta)))
    b(y_pred=pred.to(torch.uint8), y=lab)
    torch.testing.assert_close(b.aggregate(per_class=True), a.aggregate(per_class=True), rtol=0, atol=0,
                               equal_nan=True)
    assert torch.isnan(b.aggregate(per_class=True)[1])


def _case(root: Path) -> dict:
    shape = (48, 44, 14)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    img = np.full(shape, -1000, np.int16)
    body = grids[0] ** 2 + grids[1] ** 2 < 0.8
    img[body] = 40
    lab = np.zeros(shape, np.uint8)
    liver = ((grids[0] + 0.3) ** 2 + grids[1] ** 2 < 0.15) & (np.abs(grids[2]) < 0.7)
    spleen = ((grids[0] - 0.4) ** 2 + (grids[1] - 0.3) ** 2 < 0.04) & (np.abs(grids[2]) < 0.5)
    img[liver], lab[liver] = 120, 6  # BTCV numbers: liver 6, spleen 1
    img[spleen], lab[spleen] = 90, 1
    img = img + np.random.default_rng(0).integers(-20, 21, shape).astype(np.int16)
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    nib.save(nib.Nifti1Image(img, affine), str(root / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(root / "seg.nii.gz"))
    return {"image": str(root / "ct.nii.gz"), "label": str(root / "seg.nii.gz"), "dataset": "btcv"}


def _validate(root: Path, item: dict, one_hot_path: bool) -> dict:
    torch.manual_seed(9)  # a random network that predicts some liver and spleen
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))
    parser.update({"bundle_root": str(REPO / "bundle"), "network_channels": TINY, "spatial_size": 32,
                   "device": "$torch.device('cpu')", "amp": False, "output_dir": str(root / "run"),
                   "cache_dir": str(root / "cache"), "num_workers": 0, "progress_bar": False, "sw_batch_size": 4,
                   "validate#handlers": [], "validate#dataset#data": [item]})
    if one_hot_path:  # the validation before: K-channel logits, one-hot prediction and label
        parser.update({"validate#inferer#argmax": False, "validate#postprocessing": {
            "_target_": "Compose", "transforms": [{"_target_": "AsDiscreted", "keys": ["pred", "label"],
                                                   "argmax": [True, False], "to_onehot": "$@label_space.num_classes"}]}})
    net = parser.get_parsed_content("network")
    sd = net.state_dict()
    for k in sd:  # strong heads: the random network predicts several organs
        if k.endswith("head.conv.weight"):
            sd[k].mul_(20)
    net.load_state_dict(sd)
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    return dict(evaluator.state.metrics), evaluator.state.output


def test_bundle_validation_metrics_equal_the_one_hot_validation(tmp_path):
    item = _case(tmp_path)
    streamed, out = _validate(tmp_path / "s", item, one_hot_path=False)
    reference, ref_out = _validate(tmp_path / "o", item, one_hot_path=True)
    assert set(streamed) == set(reference) == {"val_mean_dice", "val_dice_liver", "val_dice_kidney",
                                               "val_dice_spleen"}
    for k in reference:
        a, b = streamed[k], reference[k]
        assert (np.isnan(a) and np.isnan(b)) or a == b, (k, a, b)
    assert np.isnan(reference["val_dice_kidney"])  # BTCV labels no kidney here: not counted as 0
    assert 0 < reference["val_dice_liver"] < 1 and 0 < reference["val_dice_spleen"] < 1  # real, non-trivial
    pred = out[0]["pred"]
    assert pred.shape == (1, 32, 32, 14) and pred.dtype == torch.uint8  # label map, no K channels
    assert ref_out[0]["pred"].shape == (4, 32, 32, 14)
