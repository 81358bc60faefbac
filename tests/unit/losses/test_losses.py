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

"""Tests of the target adaptive loss (README section "The loss")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, list_data_collate
from monai.losses import DiceLoss

from pipofan_monai.vocabulary.datasets import BUILTIN_DATASETS
from pipofan_monai.losses import TargetAdaptiveLoss

K = 4
LIVER_ONLY = [1, 1, 0, 0]
KIDNEY_ONLY = [1, 0, 1, 0]
SPLEEN_ONLY = [1, 0, 0, 1]
FULL = [1, 1, 1, 1]


def reference_tal(z: torch.Tensor, y: torch.Tensor, mask, weights=None) -> torch.Tensor:
    """Brute force in float64: merge probabilities by summing the softmax, then take the log.

    Returns the per-voxel weighted loss (B, 1, spatial...)."""
    z = z.double()
    p = torch.softmax(z, dim=1)
    y = y.long()
    mask = torch.as_tensor(mask, dtype=torch.float64).expand(z.shape[0], z.shape[1]).clone()
    mask[:, 0] = 1
    out = torch.empty(y.shape, dtype=torch.float64)
    w_out = torch.empty(y.shape, dtype=torch.float64)
    w = torch.ones(z.shape[1], dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    for b in range(z.shape[0]):
        labeled_organs = [k for k in range(1, z.shape[1]) if mask[b, k] == 1]
        merged = [k for k in range(z.shape[1]) if k not in labeled_organs]
        p_merged = p[b, merged].sum(dim=0, keepdim=True)
        is_target = torch.zeros_like(y[b], dtype=torch.bool)
        for c in labeled_organs:
            is_target |= y[b] == c
        p_y = p[b].gather(0, y[b])
        out[b] = torch.where(is_target, -torch.log(p_y), -torch.log(p_merged))
        w_out[b] = torch.where(is_target, w[y[b]], w[0])
    return out * w_out, w_out


# ---------------------------------------------------------------- §2 test vectors
# K = 4, all logits equal; input (1, 4, 1, 1), target (1, 1, 1, 1)
TEST_VECTORS = [
    ("liver voxel, liver-only sample", 1, LIVER_ONLY, math.log(4.0)),
    ("background voxel, liver-only sample", 0, LIVER_ONLY, -math.log(3.0 / 4.0)),
    ("background voxel, fully labeled sample", 0, FULL, math.log(4.0)),
    ("kidney voxel (unlabeled) in liver-only sample is non-target", 2, LIVER_ONLY, -math.log(3.0 / 4.0)),
    ("spleen voxel, spleen-only sample", 3, SPLEEN_ONLY, math.log(4.0)),
]


@pytest.mark.parametrize("name,label,mask,expected", TEST_VECTORS)
def test_spec_vectors(name, label, mask, expected):
    z = torch.full((1, K, 1, 1), 0.7)
    y = torch.full((1, 1, 1, 1), float(label))
    val = TargetAdaptiveLoss()(z, y, torch.tensor([mask]))
    np.testing.assert_allclose(val.item(), expected, rtol=1e-6, err_msg=name)


def test_loss_value_by_hand_on_a_mixed_batch():
    """Logits ln(1, 2, 3, 4) give p = (0.1, 0.2, 0.3, 0.4) at every voxel. Sample 0 labels only the liver: its
    liver voxel costs -ln 0.2, its kidney voxel (not annotated: merged with background and spleen) -ln(0.1 + 0.3 +
    0.4); sample 1 is fully labeled: its spleen voxel costs -ln 0.4, its background voxel -ln 0.1."""
    z = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0])).view(1, K, 1, 1).expand(2, K, 1, 2).contiguous()
    y = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).view(2, 1, 1, 2)
    mask = torch.tensor([LIVER_ONLY, FULL])
    per_voxel = [math.log(5.0), math.log(1.25), math.log(2.5), math.log(10.0)]  # 1.609438 0.223144 0.916291 2.302585
    np.testing.assert_allclose(TargetAdaptiveLoss()(z, y, mask).item(), 1.2628643, rtol=1e-6)
    np.testing.assert_allclose(TargetAdaptiveLoss()(z, y, mask).item(), sum(per_voxel) / 4, rtol=1e-6)
    np.testing.assert_allclose(TargetAdaptiveLoss(reduction="sum")(z, y, mask).item(), 5.0514573, rtol=1e-6)
    np.testing.assert_allclose(TargetAdaptiveLoss(reduction="none")(z, y, mask).flatten().numpy(), per_voxel,
                               rtol=1e-6)
    # class weights: the merged kidney voxel takes the background weight 0.5, not the kidney's 2
    w = [0.5, 1.0, 2.0, 3.0]
    expected = (per_voxel[0] * 1.0 + per_voxel[1] * 0.5 + per_voxel[2] * 3.0 + per_voxel[3] * 0.5) / 5.0
    np.testing.assert_allclose(expected, 1.1242352, rtol=1e-6)
    np.testing.assert_allclose(TargetAdaptiveLoss(class_weights=w)(z, y, mask).item(), expected, rtol=1e-6)


# ---------------------------------------------------------------- brute-force agreement
def _random_batch(seed: int, spatial=(6, 5), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(4, K, *spatial, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, K, (4, 1, *spatial), generator=g)
    mask = torch.tensor([LIVER_ONLY, KIDNEY_ONLY, SPLEEN_ONLY, FULL])
    return z, y, mask


@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)])
@pytest.mark.parametrize("weights", [None, (0.3, 1.0, 2.0, 0.7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_brute_force(spatial, weights, seed):
    z, y, mask = _random_batch(seed, spatial)
    ref, w = reference_tal(z, y, mask, weights)
    none = TargetAdaptiveLoss(class_weights=weights, reduction="none")(z, y.float(), mask)
    assert none.shape == (4, 1, *spatial)
    np.testing.assert_allclose(none.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)
    mean = TargetAdaptiveLoss(class_weights=weights)(z, y, mask)
    np.testing.assert_allclose(mean.item(), (ref.sum() / w.sum()).item(), rtol=1e-10)
    total = TargetAdaptiveLoss(class_weights=weights, reduction="sum")(z, y, mask)
    np.testing.assert_allclose(total.item(), ref.sum().item(), rtol=1e-10)


def test_float32_matches_float64():
    z, y, mask = _random_batch(3)
    ref, _ = reference_tal(z, y, mask)
    val = TargetAdaptiveLoss()(z.float(), y, mask)
    np.testing.assert_allclose(val.item(), ref.mean().item(), rtol=1e-6)


def test_registry_masks():
    """Masks built from the dataset registry plug in directly."""
    z, y, _ = _random_batch(4)
    names = ["lits", "kits19", "msd_spleen", "btcv"]
    mask = np.stack([BUILTIN_DATASETS[n].labeled_mask(K) for n in names])
    ref, _ = reference_tal(z, y, mask)
    np.testing.assert_allclose(TargetAdaptiveLoss()(z, y, mask).item(), ref.mean().item(), rtol=1e-10)


# ---------------------------------------------------------------- fully labeled == cross-entropy
@pytest.mark.parametrize("mask", [None, torch.ones(3, K), torch.ones(K, dtype=torch.bool), [0, 1, 1, 1]])
@pytest.mark.parametrize("spatial", [(7, 6), (3, 4, 5)])
def test_equals_cross_entropy(mask, spatial):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, K, *spatial, generator=g) * 4
    y = torch.randint(0, K, (3, 1, *spatial), generator=g)
    expected = F.cross_entropy(z, y[:, 0])
    val = TargetAdaptiveLoss()(z, y.float(), mask)
    np.testing.assert_allclose(val.item(), expected.item(), rtol=1e-6, atol=1e-6)


def test_equals_cross_entropy_meta_without_mask():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, K, 8, 8, generator=g)
    y = torch.randint(0, K, (2, 1, 8, 8), generator=g)
    label = MetaTensor(y.float(), meta={"some_key": 1})
    np.testing.assert_allclose(
        TargetAdaptiveLoss()(MetaTensor(z), label).item(), F.cross_entropy(z, y[:, 0]).item(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weights", [(0.2, 1.2), (1.0, 3.0)])
def test_binary_weighted_cross_entropy(reduction, weights):
    """K = 2 with C = {1} is the authors' single-organ weighted CE (0.2 background / 1.2 organ)."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 2, 9, 8, generator=g) * 2
    y = torch.randint(0, 2, (3, 1, 9, 8), generator=g)
    expected = F.cross_entropy(z, y[:, 0], weight=torch.tensor(weights), reduction=reduction)
    for mask in (None, [1, 1]):
        val = TargetAdaptiveLoss(class_weights=weights, reduction=reduction)(z, y, mask)
        if reduction == "none":
            assert val.shape == (3, 1, 9, 8)
            val = val[:, 0]
        np.testing.assert_allclose(val.detach().numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_multiclass_weights_fully_labeled():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(2, K, 6, 6, generator=g)
    y = torch.randint(0, K, (2, 1, 6, 6), generator=g)
    w = (0.5, 1.0, 2.0, 3.0)
    np.testing.assert_allclose(
        TargetAdaptiveLoss(class_weights=w)(z, y).item(),
        F.cross_entropy(z, y[:, 0], weight=torch.tensor(w)).item(),
        rtol=1e-6,
    )


# ---------------------------------------------------------------- gradients
def test_gradient_formula():
    """dl/dz_k = p_k - [k == y] at a target voxel; p_k - [k in M] p_k / p_M at a non-target voxel."""
    z, y, mask = _random_batch(9)
    z.requires_grad_(True)
    TargetAdaptiveLoss(reduction="sum")(z, y, mask).backward()
    p = torch.softmax(z.detach(), dim=1)
    expected = p.clone()
    for b in range(4):
        labeled = [k for k in range(1, K) if mask[b, k]]
        merged = [k for k in range(K) if k not in labeled]
        p_m = p[b, merged].sum(0)
        is_target = torch.zeros_like(y[b, 0], dtype=torch.bool)
        for c in labeled:
            is_target |= y[b, 0] == c
        for k in range(K):
            if k in merged:
                non_target = p[b, k] - p[b, k] / p_m
            else:
                non_target = p[b, k]
            target_grad = p[b, k] - (y[b, 0] == k).double()
            expected[b, k] = torch.where(is_target, target_grad, non_target)
    np.testing.assert_allclose(z.grad.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_gradient_unlabeled_organ_values():
    """Liver-only sample, K = 4, all logits equal: at a liver voxel d/dz_kidney = p_kidney = 1/4; at a background
    voxel d/dz_kidney = p_k - p_k / p_M = 1/4 - (1/4)/(3/4) = -1/12, and d/dz_liver = p_liver = 1/4."""
    z = torch.zeros(1, K, 1, 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[[1, 0]]]])
    TargetAdaptiveLoss(reduction="sum")(z, y, [LIVER_ONLY]).backward()
    g = z.grad[0, :, 0]
    np.testing.assert_allclose(g[:, 0].numpy(), [0.25, -0.75, 0.25, 0.25], atol=1e-12)
    np.testing.assert_allclose(g[:, 1].numpy(), [0.25 - 1 / 3, 0.25, 0.25 - 1 / 3, 0.25 - 1 / 3], atol=1e-12)


def test_gradient_exactly_zero():
    """Nothing is supervised where every class merges (no labeled organ), nor where the class weight is 0."""
    g = torch.Generator().manual_seed(10)
    z = (torch.randn(2, K, 5, 5, generator=g) * 5).requires_grad_(True)
    y = torch.randint(0, K, (2, 1, 5, 5), generator=g)
    with pytest.warns(UserWarning, match="no labeled organ"):
        loss = TargetAdaptiveLoss()(z, y, [[1, 0, 0, 0], FULL])
    loss.backward()
    assert torch.all(z.grad[0] == 0)
    assert torch.all(z.grad[1].abs().sum(0) > 0)

    z2 = z.detach().clone().requires_grad_(True)
    TargetAdaptiveLoss(class_weights=(0.0, 1.0, 1.0, 1.0), reduction="sum")(z2, y, [LIVER_ONLY, FULL]).backward()
    w0 = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    w0[0] = y[0] != 1  # non-target voxels of the liver-only sample are reduced to background (weight 0)
    w0[1] = y[1] == 0
    assert torch.all(z2.grad.abs().sum(1, keepdim=True)[w0] == 0)
    assert torch.all(z2.grad.abs().sum(1, keepdim=True)[~w0] > 0)


@pytest.mark.parametrize("mask", [[LIVER_ONLY, KIDNEY_ONLY], [FULL, SPLEEN_ONLY]])
def test_extreme_logits(mask):
    g = torch.Generator().manual_seed(11)
    z = (torch.sign(torch.randn(2, K, 6, 6, generator=g)) * 1e4).requires_grad_(True)
    y = torch.randint(0, K, (2, 1, 6, 6), generator=g)
    for kw in ({}, {"dice_weight": 1.0, "exclusion_weight": 1.0}, {"class_weights": (0.2, 1, 1, 1)}):
        z.grad = None
        loss = TargetAdaptiveLoss(**kw)(z, y, mask)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_extreme_logits_values():
    """Liver-only sample, background voxel: all mass on the unlabeled spleen -> loss 0; all mass on liver ->
    1e4 - ln 3 (the merged class holds background, kidney and spleen, each with logit 0)."""
    z = torch.zeros(1, K, 1, 2)
    z[0, 3, 0, 0] = 1e4
    z[0, 1, 0, 1] = 1e4
    y = torch.zeros(1, 1, 1, 2)
    val = TargetAdaptiveLoss(reduction="none")(z, y, LIVER_ONLY)
    np.testing.assert_allclose(val[0, 0, 0].numpy(), [0.0, 1e4 - math.log(3.0)], rtol=1e-7, atol=1e-6)


def test_all_background_and_empty_organs():
    z = torch.randn(2, K, 8, 8, requires_grad=True)
    y = torch.zeros(2, 1, 8, 8)
    for kw in ({}, {"dice_weight": 1.0, "exclusion_weight": 0.5}, {"class_weights": (0.2, 1.2, 1.2, 1.2)}):
        z.grad = None
        loss = TargetAdaptiveLoss(**kw)(z, y, [LIVER_ONLY, FULL])
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_zero_total_weight_gives_zero():
    z = torch.randn(1, K, 4, 4, requires_grad=True)
    loss = TargetAdaptiveLoss(class_weights=(0, 1, 1, 1))(z, torch.zeros(1, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(z.grad == 0)


# ---------------------------------------------------------------- mask from MetaTensor meta
@pytest.mark.parametrize("meta_mask", [np.array(LIVER_ONLY, np.float32), torch.tensor([LIVER_ONLY, LIVER_ONLY])])
def test_mask_from_meta(meta_mask):
    z, y, _ = _random_batch(12)
    z, y = z[:2], y[:2]
    label = MetaTensor(y.float(), meta={"labeled_mask": meta_mask})
    ref, _ = reference_tal(z, y, [LIVER_ONLY, LIVER_ONLY])
    np.testing.assert_allclose(TargetAdaptiveLoss()(z, label).item(), ref.mean().item(), rtol=1e-10)
    # an explicit mask overrides the meta
    np.testing.assert_allclose(
        TargetAdaptiveLoss()(z, label, FULL).item(), F.cross_entropy(z, y[:, 0]).item(), rtol=1e-10
    )


def test_mask_through_collate():
    g = torch.Generator().manual_seed(13)
    labels = [
        MetaTensor(torch.randint(0, K, (1, 6, 6), generator=g).float(), meta={"labeled_mask": np.array(m, np.float32)})
        for m in (LIVER_ONLY, KIDNEY_ONLY)
    ]
    batch = list_data_collate([{"label": lab} for lab in labels])
    label = batch["label"]
    assert label.shape == (2, 1, 6, 6)
    assert tuple(label.meta["labeled_mask"].shape) == (2, K)
    z = torch.randn(2, K, 6, 6, dtype=torch.float64, generator=g)
    ref, _ = reference_tal(z, label.as_tensor(), [LIVER_ONLY, KIDNEY_ONLY])
    np.testing.assert_allclose(TargetAdaptiveLoss()(z, label).item(), ref.mean().item(), rtol=1e-10)


def test_mask_list_of_per_class_tensors():
    """Collating a Python list gives K tensors of shape (B,): accepted as a (B, K) mask."""
    z, y, _ = _random_batch(14)
    per_class = [torch.tensor(c, dtype=torch.float32) for c in ([1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1])]
    ref, _ = reference_tal(z, y, [LIVER_ONLY, KIDNEY_ONLY, SPLEEN_ONLY, FULL])
    np.testing.assert_allclose(TargetAdaptiveLoss()(z, y, per_class).item(), ref.mean().item(), rtol=1e-10)


# ---------------------------------------------------------------- optional terms (extensions)
def test_marginal_dice_matches_monai_on_merged_probabilities():
    z, y, mask = _random_batch(15, (8, 8))
    tal = TargetAdaptiveLoss(dice_weight=1.0)
    ce = TargetAdaptiveLoss()(z, y, mask)
    dice_term = (tal(z, y, mask) - ce).item()
    p = torch.softmax(z, 1)
    per_sample = []
    for b in range(4):
        labeled = [k for k in range(1, K) if mask[b, k]]
        unl = [k for k in range(1, K) if not mask[b, k]]
        pm = torch.cat([p[b : b + 1, :1] + p[b : b + 1, unl].sum(1, keepdim=True), p[b : b + 1, labeled]], 1)
        yr = torch.zeros_like(y[b : b + 1])
        for i, c in enumerate(labeled):
            yr[y[b : b + 1] == c] = i + 1
        per_sample.append(DiceLoss(to_onehot_y=True)(pm, yr).item())
    np.testing.assert_allclose(dice_term, np.mean(per_sample), rtol=1e-8)


def test_marginal_dice_ignores_unlabeled_organs():
    """A liver-only sample whose background is predicted as kidney has (almost) zero marginal Dice loss."""
    y = torch.zeros(1, 1, 4, 4)
    y[..., :2, :] = 1
    z = torch.zeros(1, K, 4, 4)
    z[0, 1, :2] = 30.0
    z[0, 2, 2:] = 30.0  # kidney (unlabeled) where the label is background
    d = TargetAdaptiveLoss(dice_weight=1.0)(z, y, LIVER_ONLY) - TargetAdaptiveLoss()(z, y, LIVER_ONLY)
    assert abs(d.item()) < 1e-6
    d_full = TargetAdaptiveLoss(dice_weight=1.0)(z, y) - TargetAdaptiveLoss()(z, y)
    assert d_full.item() > 0.3


def test_exclusion_term():
    """Mean over labeled-organ voxels of the unlabeled organs' probability."""
    z = torch.zeros(1, K, 1, 3)
    z[0, 2, 0, 0] = math.log(2.0)  # p = (1, 1, 2, 1) / 5 at voxel 0
    y = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    d = TargetAdaptiveLoss(exclusion_weight=2.0)(z, y, LIVER_ONLY) - TargetAdaptiveLoss()(z, y, LIVER_ONLY)
    expected = 2.0 * ((2 / 5 + 1 / 5) + (1 / 4 + 1 / 4)) / 2
    np.testing.assert_allclose(d.item(), expected, rtol=1e-6)
    # no unlabeled organ -> no exclusion penalty
    d0 = TargetAdaptiveLoss(exclusion_weight=2.0)(z, y) - TargetAdaptiveLoss()(z, y)
    assert abs(d0.item()) < 1e-7


# ---------------------------------------------------------------- errors and warnings
Z = torch.zeros(2, K, 4, 4)
Y = torch.zeros(2, 1, 4, 4)


@pytest.mark.parametrize(
    "z,y,mask,match",
    [
        (Z, torch.full((2, 1, 4, 4), 4.0), None, "0..3"),
        (Z, torch.full((2, 1, 4, 4), -1.0), None, "min -1"),
        (Z, torch.full((2, 1, 4, 4), 0.5), None, "integer"),
        (Z, torch.zeros(2, 1, 4, 5), None, r"does not match input"),
        (Z, torch.zeros(3, 1, 4, 4), None, r"does not match input"),
        (Z, torch.zeros(2, 2, 4, 4), None, r"\(B, 1, spatial"),
        (Z, torch.zeros(2, 4, 4), None, r"\(B, 1, spatial"),
        (Z, Y, torch.ones(3, K), r"labeled_mask must have shape"),
        (Z, Y, torch.ones(K + 1), r"labeled_mask must have shape"),
        (Z, Y, torch.full((K,), 2.0), "0 or 1"),
        (torch.zeros(2, 1, 4, 4), Y, None, "at least 2 classes"),
        (torch.zeros(2, 4), Y, None, r"\(B, K, spatial"),
        (torch.full((2, K, 4, 4), float("nan")), Y, None, "NaN"),
        (torch.full((2, K, 4, 4), float("inf")), Y, None, "infinite"),
    ],
)
def test_forward_errors(z, y, mask, match):
    with pytest.raises(ValueError, match=match):
        TargetAdaptiveLoss()(z, y, mask)


def test_option_errors():
    with pytest.raises(ValueError, match="non-negative"):
        TargetAdaptiveLoss(class_weights=(1.0, -0.5))
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        TargetAdaptiveLoss(class_weights=(0.2, 1.2))(Z, Y)
    with pytest.raises(ValueError, match="dice_weight"):
        TargetAdaptiveLoss(dice_weight=-1.0)
    with pytest.raises(ValueError, match="reduction='none'"):
        TargetAdaptiveLoss(reduction="none", dice_weight=1.0)
    with pytest.raises(ValueError):
        TargetAdaptiveLoss(reduction="median")


def test_int_target_and_module_device_move():
    loss = TargetAdaptiveLoss(class_weights=(0.2, 1.2))
    loss = loss.to(torch.float64)  # a buffer is non-persistent and moves with the module
    z = torch.randn(2, 2, 4, 4)
    y = torch.randint(0, 2, (2, 1, 4, 4), dtype=torch.uint8)
    np.testing.assert_allclose(
        loss(z, y).item(), F.cross_entropy(z, y[:, 0].long(), weight=torch.tensor([0.2, 1.2])).item(), rtol=1e-6
    )
    assert "class_weights" not in loss.state_dict()


def test_bfloat16_logits_are_upcast():
    g = torch.Generator().manual_seed(16)
    z = torch.randn(2, K, 6, 6, generator=g)
    y = torch.randint(0, K, (2, 1, 6, 6), generator=g)
    val = TargetAdaptiveLoss()(z.bfloat16(), y, [LIVER_ONLY, FULL])
    assert val.dtype == torch.float32
    ref, _ = reference_tal(z.bfloat16().double(), y, [LIVER_ONLY, FULL])
    np.testing.assert_allclose(val.item(), ref.mean().item(), rtol=1e-6)
