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

"""Tests of deep pyramid supervision and the two training stages (README section "The loss")."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.losses import DiceCELoss

from pipofan_monai.losses import DeepPyramidSupervisionLoss, TargetAdaptiveLoss

K = 4
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])


def _outputs(n: int, seed: int = 0, size=(8, 8)):
    g = torch.Generator().manual_seed(seed)
    outs = [(torch.randn(2, K, *size, generator=g) * 2).requires_grad_(True) for _ in range(n)]
    y = torch.randint(0, K, (2, 1, *size), generator=g).float()
    return outs, y


@pytest.mark.parametrize("weights", [None, (1.0, 0.5, 0.25, 0.125, 0.0625), (2.0, 1.0, 1.0, 1.0, 1.0, 9.0)])
@pytest.mark.parametrize("scale_reduction", ["sum", "mean"])
def test_dps_is_weighted_sum_of_base_losses(weights, scale_reduction):
    outs, y = _outputs(6)  # [fused, f_1..f_5]
    base = TargetAdaptiveLoss()
    loss = DeepPyramidSupervisionLoss(base, weights=weights, scale_reduction=scale_reduction)
    w = [1.0] * 5 if weights is None else list(weights)[:5]
    expected = sum(wl * base(o, y, MASK) for wl, o in zip(w, outs[1:]))
    if scale_reduction == "mean":
        expected = expected / sum(w)
    val = loss(outs, y, MASK)
    np.testing.assert_allclose(val.item(), expected.item(), rtol=1e-6)
    val.backward()
    assert outs[0].grad is None or torch.all(outs[0].grad == 0)  # the fused output is not supervised in stage 1
    for o in outs[1:]:
        assert o.grad is not None and o.grad.abs().sum() > 0


def test_dps_mean_without_weights_is_eq1_mean():
    outs, y = _outputs(6, seed=1)
    base = TargetAdaptiveLoss()
    mean = DeepPyramidSupervisionLoss(scale_reduction="mean")(outs, y, MASK)
    total = DeepPyramidSupervisionLoss(scale_reduction="sum")(outs, y, MASK)
    np.testing.assert_allclose(mean.item(), total.item() / 5, rtol=1e-6)
    np.testing.assert_allclose(
        mean.item(), torch.stack([base(o, y, MASK) for o in outs[1:]]).mean().item(), rtol=1e-6
    )


def test_fused_stage_uses_output_zero_only():
    outs, y = _outputs(6, seed=2)
    loss = DeepPyramidSupervisionLoss(stage="fused")
    val = loss(outs, y, MASK)
    np.testing.assert_allclose(val.item(), TargetAdaptiveLoss()(outs[0], y, MASK).item(), rtol=1e-7)
    val.backward()
    assert outs[0].grad.abs().sum() > 0
    for o in outs[1:]:
        assert o.grad is None or torch.all(o.grad == 0)


def test_switch_stage_changes_value_and_logs(caplog):
    outs, y = _outputs(6, seed=3)
    loss = DeepPyramidSupervisionLoss()
    assert loss.stage == "dps"
    v_dps = loss(outs, y, MASK).item()
    with caplog.at_level(logging.INFO, logger="pipofan_monai.losses.deep_supervision"):
        loss.set_stage("fused")
    assert "'dps' to 'fused'" in caplog.text
    assert loss.stage == "fused"
    v_fused = loss(outs, y, MASK).item()
    assert abs(v_dps - v_fused) > 1e-3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipofan_monai.losses.deep_supervision"):
        loss.stage = "dps"  # the attribute setter switches (and logs) too
    assert "'fused' to 'dps'" in caplog.text
    np.testing.assert_allclose(loss(outs, y, MASK).item(), v_dps, rtol=1e-7)


def test_tensor_input_applies_base_loss():
    outs, y = _outputs(1, seed=4)
    for stage in ("dps", "fused"):
        val = DeepPyramidSupervisionLoss(stage=stage)(outs[0], y, MASK)
        np.testing.assert_allclose(val.item(), TargetAdaptiveLoss()(outs[0], y, MASK).item(), rtol=1e-7)


def test_has_fused_false():
    outs, y = _outputs(3, seed=5)  # [f_1, f_2, f_3]
    base = TargetAdaptiveLoss()
    val = DeepPyramidSupervisionLoss(has_fused=False, weights=(1.0, 2.0, 3.0))(outs, y, MASK)
    expected = sum(w * base(o, y, MASK) for w, o in zip((1.0, 2.0, 3.0), outs))
    np.testing.assert_allclose(val.item(), expected.item(), rtol=1e-6)
    with pytest.raises(ValueError, match="has_fused=False"):
        DeepPyramidSupervisionLoss(has_fused=False, stage="fused")
    with pytest.raises(ValueError, match="has_fused=False"):
        DeepPyramidSupervisionLoss(has_fused=False).set_stage("fused")


def test_mask_from_meta_reaches_every_scale():
    outs, y = _outputs(4, seed=6)
    label = MetaTensor(y, meta={"labeled_mask": MASK.float()})
    for mode in ("upsample", "pool"):
        loss = DeepPyramidSupervisionLoss(label_mode=mode)
        np.testing.assert_allclose(loss(outs, label).item(), loss(outs, y, MASK).item(), rtol=1e-7)
        assert abs(loss(outs, label).item() - loss(outs, y).item()) > 1e-4  # the mask matters


def test_pool_mode_shapes_and_values():
    outs, y = _outputs(4, seed=7, size=(16, 12))  # [fused, f_1, f_2, f_3]
    seen = []

    class Recorder(TargetAdaptiveLoss):
        def forward(self, input, target, labeled_mask=None):
            seen.append((tuple(input.shape), tuple(target.shape)))
            return super().forward(input, target, labeled_mask)

    val = DeepPyramidSupervisionLoss(Recorder(), label_mode="pool")(outs, y, MASK)
    assert seen == [((2, K, 16, 12), (2, 1, 16, 12)), ((2, K, 8, 6), (2, 1, 8, 6)), ((2, K, 4, 3), (2, 1, 4, 3))]
    base = TargetAdaptiveLoss()
    expected = base(outs[1], y, MASK)
    for level, f in ((1, 2), (2, 4)):
        expected = expected + base(F.avg_pool2d(outs[level + 1], f), y[..., ::f, ::f], MASK)
    np.testing.assert_allclose(val.item(), expected.item(), rtol=1e-6)


def test_pool_mode_non_divisible_size():
    outs, y = _outputs(4, seed=8, size=(10, 10))
    seen = []

    class Recorder(TargetAdaptiveLoss):
        def forward(self, input, target, labeled_mask=None):
            seen.append(tuple(input.shape[2:]) + tuple(target.shape[2:]))
            return super().forward(input, target, labeled_mask)

    val = DeepPyramidSupervisionLoss(Recorder(), label_mode="pool")(outs, y)
    assert seen == [(10, 10, 10, 10), (5, 5, 5, 5), (3, 3, 3, 3)]
    assert torch.isfinite(val)


def test_zero_weight_level_is_skipped():
    outs, y = _outputs(4, seed=9)
    val = DeepPyramidSupervisionLoss(weights=(1.0, 0.0, 1.0))(outs, y, MASK)
    val.backward()
    assert outs[2].grad is None
    assert outs[1].grad.abs().sum() > 0 and outs[3].grad.abs().sum() > 0


def test_base_loss_without_mask():
    outs, y = _outputs(3, seed=10)
    base = DiceCELoss(to_onehot_y=True, softmax=True)
    val = DeepPyramidSupervisionLoss(base)(outs, y)
    np.testing.assert_allclose(val.item(), (base(outs[1], y) + base(outs[2], y)).item(), rtol=1e-6)
    with pytest.raises(ValueError, match="does not accept"):
        DeepPyramidSupervisionLoss(base)(outs, y, MASK)


def test_errors():
    outs, y = _outputs(2, seed=11)
    with pytest.raises(ValueError, match="stage must be one of"):
        DeepPyramidSupervisionLoss(stage="stage2")
    with pytest.raises(ValueError, match="stage must be one of"):
        DeepPyramidSupervisionLoss().set_stage("both")
    with pytest.raises(ValueError):
        DeepPyramidSupervisionLoss(label_mode="downsample")
    with pytest.raises(ValueError):
        DeepPyramidSupervisionLoss(scale_reduction="max")
    with pytest.raises(ValueError, match="non-negative"):
        DeepPyramidSupervisionLoss(weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="only 1 weights"):
        DeepPyramidSupervisionLoss(weights=(1.0,))(outs + outs, y)
    with pytest.raises(ValueError, match="None"):
        DeepPyramidSupervisionLoss()(None, y)
    with pytest.raises(ValueError, match="empty"):
        DeepPyramidSupervisionLoss()([], y)
    with pytest.raises(ValueError, match="pyramid outputs"):
        DeepPyramidSupervisionLoss()(outs[:1], y)
