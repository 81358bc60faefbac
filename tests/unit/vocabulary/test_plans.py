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

"""Self-describing checkpoints (pipofan_monai.plans), the one preprocessing definition, the one partial-label
contract, and a trained model used by inference, evaluation and the benchmark with no width or size flags."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import TRAIN
from monai.data import MetaTensor

from pipofan_monai.losses import TargetAdaptiveLoss
from pipofan_monai.networks import PIPOFAN
from pipofan_monai.plans import (
    DEFAULT_PREPROCESSING,
    PlansMismatchError,
    PlansState,
    make_plans,
    network_from_plans,
    read_plans,
    resolve_plans,
)
from pipofan_monai.preprocessing import get_inference_transforms, get_val_transforms
from pipofan_monai.vocabulary.masks import LABELED_MASK_KEY, MissingLabeledMaskError, resolve_labeled_mask

TINY = [8, 16, 32, 64, 64]


def _plans(**prep):
    net = PIPOFAN(channels=TINY)
    return net, make_plans(net, ["background", "liver", "kidney", "spleen"], {**DEFAULT_PREPROCESSING, **prep})


def test_network_config_round_trip_and_plans_content():
    net, plans = _plans(spatial_size=128)
    rebuilt = network_from_plans(plans)
    assert type(rebuilt) is PIPOFAN
    assert rebuilt.get_config() == net.get_config()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in net.parameters()]
    assert plans["network"]["channels"] == TINY and plans["class_names"][1] == "liver"
    assert plans["preprocessing"] == {"spatial_size": 128, "hu_window": [-200.0, 200.0], "intensity": "scale",
                                      "context": 1, "image_mode": "trilinear"}
    assert set(plans["versions"]) == {"pipofan_monai", "monai", "torch"}
    json.dumps(plans)  # plain values only
    with pytest.raises(ValueError, match="3 class_names"):
        make_plans(net, ["background", "liver", "kidney"], DEFAULT_PREPROCESSING)
    with pytest.raises(ValueError, match="multiple of 16"):
        make_plans(net, ["bg", "a", "b", "c"], {"spatial_size": 100})


def test_checkpoint_carries_plans_and_overrides_must_agree(tmp_path):
    net, plans = _plans(spatial_size=128)
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "plans": PlansState(plans).state_dict()}, path)
    got = resolve_plans(path)
    assert got["preprocessing"]["spatial_size"] == 128 and got["network"]["channels"] == TINY
    assert got["source"] == str(path)
    assert read_plans(path)["class_names"] == plans["class_names"]
    # agreeing explicit values are fine; contradicting ones name both values
    assert resolve_plans(path, spatial_size=128, network_channels=TINY)["source"] == str(path)
    with pytest.raises(PlansMismatchError, match=r"spatial_size: checkpoint 128, given 256"):
        resolve_plans(path, spatial_size=256)
    with pytest.raises(PlansMismatchError, match=r"network_channels: checkpoint \[8, 16, 32, 64, 64\]"):
        resolve_plans(path, network_channels=[16, 32, 64, 128, 128])
    # the first existing candidate wins; missing files are skipped
    assert resolve_plans([tmp_path / "missing.pt", path])["source"] == str(path)


def test_class_names_compared_as_organs(tmp_path, caplog):
    """The one class-name check (resolve_plans): names that differ only in case, spacing or alias are the same
    organs (accepted with a warning naming both, the checkpoint's names used); other names, counts or orders are
    refused naming both lists, their K and the file."""
    net, plans = _plans()
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "plans": PlansState(plans).state_dict()}, path)
    with caplog.at_level("WARNING", logger="pipofan_monai.plans"):
        got = resolve_plans(path, class_names=["Background", "Liver", "kidney", "spleen"])
    assert got["class_names"] == ["background", "liver", "kidney", "spleen"]
    assert "only in spelling" in caplog.text and "'Liver'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipofan_monai.plans"):
        resolve_plans(path, class_names=["background", "liver", "kidney", "spleen"])
    assert "only in spelling" not in caplog.text  # identical lists: nothing to say
    six = ["background", "liver", "kidney", "spleen", "pancreas", "stomach", "gallbladder"]
    with pytest.raises(PlansMismatchError) as err:
        resolve_plans(path, class_names=six)
    msg = str(err.value)
    assert str(path) in msg and "pancreas" in msg and "(K=4 vs 7)" in msg
    with pytest.raises(PlansMismatchError, match=r"kidney', 'spleen'\], given .*'spleen', 'kidney'\] \(K=4 vs 4\)"):
        resolve_plans(path, class_names=["background", "liver", "spleen", "kidney"])  # same K, other order


def test_plain_state_dict_uses_explicit_settings(tmp_path):
    net = PIPOFAN(channels=TINY)
    path = tmp_path / "plain.pt"
    torch.save(net.state_dict(), path)
    got = resolve_plans(path, network_channels=TINY, spatial_size=64)
    assert got["source"] == "explicit settings"
    assert got["network"]["channels"] == TINY and got["preprocessing"]["spatial_size"] == 64
    assert resolve_plans(None)["preprocessing"] == DEFAULT_PREPROCESSING
    assert resolve_plans(None, spatial_size=0)["preprocessing"]["spatial_size"] is None  # 0: keep the size


def test_one_preprocessing_definition_for_validation_and_inference(tmp_path):
    """Inference preprocessing == the validation pipeline's image branch, value for value."""
    rng = np.random.default_rng(0)
    img = rng.integers(-1000, 1000, (40, 36, 5)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(img, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    prep = {**DEFAULT_PREPROCESSING, "spatial_size": 32, "hu_window": [-100.0, 300.0]}
    a = get_inference_transforms(prep)({"image": str(path)})["image"]
    b = get_val_transforms(spatial_size=32, hu_window=[-100.0, 300.0], label_key=None)({"image": str(path)})["image"]
    assert tuple(a.shape) == (1, 32, 32, 5)
    torch.testing.assert_close(a.as_tensor(), b.as_tensor(), rtol=0, atol=0)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0  # the training intensities: [-1, 1]


def test_partial_label_contract_one_resolver():
    """A list of K per-class (B,) tensors (collated Python list) means (B, K) for the loss AND the metric."""
    from pipofan_monai.evaluation import partial_dice

    as_list = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])]  # K=3, B=2
    mask = resolve_labeled_mask(as_list, None, 2, 3)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    y = torch.zeros(2, 3, 4, 4)
    y[:, 0] = 1
    y[:, 1, :2] = 1
    y[:, 0, :2] = 0
    dice = partial_dice(y, y, as_list, include_background=False)
    assert torch.isnan(dice[1, 0]) and dice[0, 0] == 1.0  # sample 1 does not label class 1
    # a label without its mask is an error when the mask is required (the bundle's TAL)
    logits = torch.zeros(2, 3, 4, 4)
    target = MetaTensor(torch.zeros(2, 1, 4, 4))
    with pytest.raises(MissingLabeledMaskError, match="naive baseline"):
        TargetAdaptiveLoss(require_labeled_mask=True)(logits, target)
    target.meta[LABELED_MASK_KEY] = torch.ones(2, 3)
    assert torch.isfinite(TargetAdaptiveLoss(require_labeled_mask=True)(logits, target))


def test_bundle_train_json_requires_the_mask():
    cfg = json.loads(open(TRAIN).read())
    assert cfg["loss"]["loss"]["require_labeled_mask"] is True


