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

"""Building blocks of PIPO-FAN: the convolution blocks of the main path and of the pyramid branches, and the
adaptive fusion of the pyramid outputs.

All blocks are written for ``spatial_dims`` 2 (the paper) or 3, with MONAI's ``act``/``norm`` factories.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer

__all__ = [
    "PreActDoubleConv",
    "PreActProjection",
    "ResBlock",
    "Stem",
    "SegHead",
    "AdaptiveFusion",
    "make_block",
    "upsample2x",
]


def upsample2x(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Apply bilinear (trilinear in 3D) x2 upsampling with ``align_corners=True`` ``times`` times.

    Repeated x2 steps are what the authors do; a single x2^k interpolation is NOT equivalent.
    """
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    for _ in range(times):
        x = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=True)
    return x


class PreActDoubleConv(nn.Module):
    """Pre-activation double convolution P(a->b): norm(a) -> act -> conv3(a->b) -> norm(b) -> act -> conv3(b->b).

    Args:
        spatial_dims: 2 or 3.
        in_channels: a.
        out_channels: b.
        act: activation type and arguments (MONAI factory form).
        norm: normalization type and arguments (MONAI factory form).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.norm1 = get_norm_layer(norm, spatial_dims, in_channels)
        self.act1 = get_act_layer(act)
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.norm2 = get_norm_layer(norm, spatial_dims, out_channels)
        self.act2 = get_act_layer(act)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.act1(self.norm1(x)))
        return self.conv2(self.act2(self.norm2(x)))


class PreActProjection(nn.Module):
    """Projection shortcut Q(a->b): norm(a) -> act -> conv1x1(a->b).

    Args:
        spatial_dims: 2 or 3.
        in_channels: a.
        out_channels: b.
        act: activation type and arguments.
        norm: normalization type and arguments.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple):
        super().__init__()
        self.norm = get_norm_layer(norm, spatial_dims, in_channels)
        self.act = get_act_layer(act)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class ResBlock(nn.Module):
    """Pre-activation residual block R(a->b): ``P(x) + x`` if a == b else ``P(x) + Q(x)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: a.
        out_channels: b.
        act: activation type and arguments.
        norm: normalization type and arguments.
        legacy_projection: also build Q when a == b, as the authors' code does. That Q is never used in the
            forward pass (the identity shortcut is); it exists only so the authors' checkpoints load strictly.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        act: str | tuple,
        norm: str | tuple,
        legacy_projection: bool = False,
    ):
        super().__init__()
        self.conv = PreActDoubleConv(spatial_dims, in_channels, out_channels, act, norm)
        self.use_projection = in_channels != out_channels
        self.proj: Optional[nn.Module] = None
        if self.use_projection or legacy_projection:
            self.proj = PreActProjection(spatial_dims, in_channels, out_channels, act, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        proj = self.proj
        if self.use_projection and proj is not None:
            return out + proj(x)
        return out + x


def make_block(
    block: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    act: str | tuple,
    norm: str | tuple,
    legacy_projection: bool = False,
) -> nn.Module:
    """The network's block B: a :class:`ResBlock` (``block="res"``) or a plain :class:`PreActDoubleConv`
    (``block="conv"``, the paper's KiTS variant)."""
    if block == "res":
        return ResBlock(spatial_dims, in_channels, out_channels, act, norm, legacy_projection)
    if block == "conv":
        return PreActDoubleConv(spatial_dims, in_channels, out_channels, act, norm)
    raise ValueError(f"block must be 'res' or 'conv', got {block!r}.")


class Stem(nn.Module):
    """Input stem T: conv3(C_in->c) -> norm -> act -> conv3(c->c). One instance is shared by all input scales.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (3 adjacent slices for 2.5D).
        out_channels: c (64 by default).
        act: activation type and arguments.
        norm: normalization type and arguments.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, act: str | tuple, norm: str | tuple):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.norm = get_norm_layer(norm, spatial_dims, out_channels)
        self.act = get_act_layer(act)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.norm(self.conv1(x))))


class SegHead(PreActProjection):
    """Segmentation head G: norm(c) -> act -> conv1x1(c->K), producing logits (same layers as a projection)."""


class AdaptiveFusion(nn.Module):
    """Adaptive fusion A (the paper's attention module that weighs the pyramid outputs), shared by all scales.

    A = norm(K) -> act -> conv1x1(K->1) -> norm(1) -> act -> conv3(1->1). For each output f_l the score is
    ``mean(A(f_l)) + max(A(f_l))`` over ALL spatial positions (truly global at every input size); the scores
    are soft-maxed over scales per sample and the outputs are summed with those weights.

    Args:
        spatial_dims: 2 or 3.
        num_classes: K, the channels of each output.
        act: activation type and arguments.
        norm: normalization type and arguments.
    """

    def __init__(self, spatial_dims: int, num_classes: int, act: str | tuple, norm: str | tuple):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.norm1 = get_norm_layer(norm, spatial_dims, num_classes)
        self.act1 = get_act_layer(act)
        self.conv1 = conv(num_classes, 1, kernel_size=1, bias=True)
        self.norm2 = get_norm_layer(norm, spatial_dims, 1)
        self.act2 = get_act_layer(act)
        self.conv2 = conv(1, 1, kernel_size=3, padding=1, bias=True)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Scale score sigma, shape (B,), for one output x of shape (B, K, *spatial)."""
        a = self.conv2(self.act2(self.norm2(self.conv1(self.act1(self.norm1(x))))))
        a = a.flatten(1)
        return a.mean(dim=1) + a.amax(dim=1)

    def weights(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Fusion weights omega, shape (B, S): softmax over the S scales of the per-sample scores."""
        scores = [self.score(o) for o in outputs]
        return torch.softmax(torch.stack(scores, dim=1), dim=1)

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Fuse S outputs, each (B, K, *spatial), into (B, K, *spatial)."""
        w = self.weights(outputs)
        fused = outputs[0] * w[:, 0].reshape([-1] + [1] * (outputs[0].dim() - 1))
        for i in range(1, len(outputs)):
            fused = fused + outputs[i] * w[:, i].reshape([-1] + [1] * (outputs[i].dim() - 1))
        return fused
