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

"""PIPO-FAN: pyramid input, pyramid output, adaptive fusion (Fang & Yan, IEEE TMI 2020)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import look_up_option

from .blocks import AdaptiveFusion, SegHead, Stem, make_block, upsample2x

__all__ = ["PIPOFAN", "PipoFan", "EncoderLevel", "DecoderLevel", "OutputBranch"]


def _avg_pool2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2) if x.dim() == 4 else F.avg_pool3d(x, 2)


def _max_pool2x(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2) if x.dim() == 4 else F.max_pool3d(x, 2)


class EncoderLevel(nn.Module):
    """Encoder level l >= 2: max-pooled main path, optionally joined by the pyramid branch of input scale l.

    Args:
        block: the level's block B (main path, or pooled main path + pyramid branch).
        ecd: the pyramid branch's equal-convolutional-depth blocks (an empty ``nn.Sequential`` when none).
        has_pyramid: whether this level receives an input scale.
        fuse_mode: "concat" (authors' code) or "sum" (paper Table I) to join main path and pyramid branch.
    """

    def __init__(self, block: nn.Module, ecd: nn.Sequential, has_pyramid: bool, fuse_mode: str):
        super().__init__()
        self.block = block
        self.ecd = ecd
        self.has_pyramid = has_pyramid
        self.concat = fuse_mode == "concat"

    def forward(self, pooled: torch.Tensor, pyramid: Optional[torch.Tensor]) -> torch.Tensor:
        if self.has_pyramid and pyramid is not None:
            z = self.ecd(pyramid)
            pooled = torch.cat([pooled, z], dim=1) if self.concat else pooled + z
        return self.block(pooled)


class DecoderLevel(nn.Module):
    """Decoder level l: ``g_l = B(concat[e_l, U(g_{l+1})])`` (skip first).

    Args:
        block: the level's block B.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, skip: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, upsample2x(coarser)], dim=1))


class OutputBranch(nn.Module):
    """Pyramid output of level l: ECD chain of l-1 blocks, head G_l, then l-1 bilinear x2 upsamplings.

    Args:
        chain: the blocks narrowing the decoder features (empty at level 1 or without ECD).
        head: the segmentation head G_l.
        upsample_steps: l - 1.
    """

    def __init__(self, chain: nn.Sequential, head: nn.Module, upsample_steps: int):
        super().__init__()
        self.chain = chain
        self.head = head
        self.upsample_steps = upsample_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(self.head(self.chain(x)), self.upsample_steps)


class PIPOFAN(nn.Module):
    """PIPO-FAN, the pyramid-input pyramid-output network with adaptive fusion, for (2.5D) CT segmentation.

    Reference: X. Fang and P. Yan, "Multi-Organ Segmentation Over Partially Labeled Datasets With Multi-Scale
    Feature Abstraction", IEEE Transactions on Medical Imaging 39(11), 2020. https://arxiv.org/abs/2001.00208

    The encoder receives the input at ``num_scales_in`` scales (cascaded 2x2 average pooling). Each scale
    passes through one shared stem and, with equal convolutional depth (ECD), as many blocks as the main path
    has above that level, and is concatenated with the max-pooled main path. The decoder is a U-Net decoder.
    The ``num_scales_out`` finest decoder levels each give an output (with ECD, every output is four blocks
    below the bottleneck), upsampled to the input size; adaptive fusion (AF) weighs them per sample with
    softmax-normalised global scores and sums them.

    Defaults follow the authors' code, which produced the published numbers; the paper's variants are options
    (``fuse_mode``, ``block``; every difference is listed in docs/explanation/differences-from-paper.md).

    Args:
        spatial_dims: number of spatial dimensions: 2 (default, the paper: 3 adjacent slices as channels) or 3.
        in_channels: input channels, default 3 (slices z-1, z, z+1).
        out_channels: number of classes K including background, default 4 (background, liver, kidney, spleen).
        channels: encoder widths of the 5 levels, default ``(64, 128, 256, 512, 512)``. The stem width is
            ``channels[0]``; decoder widths are ``(channels[0], channels[0], channels[1], channels[2],
            channels[4])`` = (64, 64, 128, 256, 512).
        num_scales_in: input scales S_in, 1..5 (1 = no input pyramid). Default 5.
        num_scales_out: output scales S_out, 1..5 (1 = only the finest output). Default 5.
        block: "res" (pre-activation residual blocks, default) or "conv" (plain pre-activation double conv).
        ecd: equal convolutional depth for the pyramid input and output branches (default True). Without ECD
            (paper Table VI, not defined in the authors' code; this is our interpretation) the pyramid branch
            is the shared stem only and the heads sit directly on the decoder levels.
        adaptive_fusion: fuse the pyramid outputs with AF (default True). Without it the network is "PIPO" and
            its eval-mode output is the finest output f_1.
        fuse_mode: how a pyramid branch joins the main path: "concat" (authors' code, default) or "sum" (the
            paper's Table I; requires ``ecd=True`` so that widths match).
        legacy_projections: also build the 1x1 projections of residual blocks whose input and output widths are
            equal, which the authors' code constructs but never uses (363,904 dead parameters at the default
            widths). Only needed to load the authors' checkpoints strictly (see :func:`convert_original_state_dict`).
            The forward pass is identical either way.
        act: activation type and arguments, default ``("relu", {"inplace": True})``.
        norm: normalization type and arguments, default ``"batch"``.

    Input and output (``forward``):
        - input: ``(Batch, in_channels, H, W)`` (or ``(Batch, in_channels, H, W, D)`` in 3D); every spatial
          size must be divisible by 16 (``2 ** 4``, the four poolings), e.g. 224, 256, 512 or 256x240. The dtype
          must be the weights' (float32 by default; CUDA autocast handles float16): the input is not cast, as in
          MONAI's networks, and an integer or float64 input raises ``TypeError`` saying so.
        - eval mode: ONE tensor ``(Batch, out_channels, H, W)``: fused logits F (or f_1 without AF).
        - train mode: a list of logits, all at input size, ordered fine to coarse after the fused output:
          ``[F, f_1, f_2, ..., f_S]`` with AF, ``[f_1, ..., f_S]`` without AF (f_1 is the finest output; the
          authors' code returns them coarse to fine). :class:`pipofan_monai.losses.DeepPyramidSupervisionLoss`
          consumes this list.
        Outputs are logits (the authors return softmax probabilities); apply softmax in the loss/post-processing.

    Examples::

        # PIPO-FAN for liver, kidney and spleen (27,907,757 parameters)
        net = PIPOFAN(in_channels=3, out_channels=4)
        net.eval()
        logits = net(torch.randn(2, 3, 256, 256))  # (2, 4, 256, 256)

        # single-scale ResU-Net baseline of the paper
        unet = PIPOFAN(out_channels=2, num_scales_in=1, num_scales_out=1, adaptive_fusion=False)
    """

    num_levels = 5
    __jit_ignored_attributes__ = ["_init_config"]

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 4,
        channels: Sequence[int] = (64, 128, 256, 512, 512),
        num_scales_in: int = 5,
        num_scales_out: int = 5,
        block: str = "res",
        ecd: bool = True,
        adaptive_fusion: bool = True,
        fuse_mode: str = "concat",
        legacy_projections: bool = False,
        act: Union[str, tuple] = ("relu", {"inplace": True}),
        norm: Union[str, tuple] = "batch",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) != self.num_levels or min(channels) < 1:
            raise ValueError(f"channels must be 5 positive widths, got {channels}.")
        if not 1 <= num_scales_in <= self.num_levels:
            raise ValueError(f"num_scales_in must be in 1..5, got {num_scales_in}.")
        if not 1 <= num_scales_out <= self.num_levels:
            raise ValueError(f"num_scales_out must be in 1..5, got {num_scales_out}.")
        block = look_up_option(block, ("res", "conv"))
        fuse_mode = look_up_option(fuse_mode, ("concat", "sum"))
        if fuse_mode == "sum" and not ecd and num_scales_in > 1:
            raise ValueError("fuse_mode='sum' needs ecd=True: without ECD the pyramid branch width differs.")
        if adaptive_fusion and num_scales_out < 2:
            raise ValueError("adaptive_fusion=True needs num_scales_out >= 2 (there is nothing to fuse).")

        # constructor arguments, for self-describing checkpoints (pipofan_monai.plans)
        self._init_config = {
            "spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
            "channels": list(channels), "num_scales_in": num_scales_in, "num_scales_out": num_scales_out,
            "block": block, "ecd": bool(ecd), "adaptive_fusion": bool(adaptive_fusion), "fuse_mode": fuse_mode,
            "legacy_projections": bool(legacy_projections),
            "act": list(act) if isinstance(act, tuple) else act, "norm": list(norm) if isinstance(norm, tuple) else norm,
        }
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.num_scales_in = num_scales_in
        self.num_scales_out = num_scales_out
        self.use_adaptive_fusion = adaptive_fusion
        c = channels
        dec = (c[0], c[0], c[1], c[2], c[4])  # decoder widths d_1..d_5

        def blk(a: int, b: int) -> nn.Module:
            return make_block(block, spatial_dims, a, b, act, norm, legacy_projections)

        self.stem = Stem(spatial_dims, in_channels, c[0], act, norm)

        # encoder levels 2..5 (index 0 = level 2)
        encoder = []
        for level in range(2, self.num_levels + 1):
            has_pyramid = level <= num_scales_in
            if has_pyramid and ecd:
                widths = [c[0]] + [c[i] for i in range(1, level - 1)]  # 64 -> 128 -> ... -> c_{l-1}
                ecd_blocks = nn.Sequential(*[blk(widths[i], widths[i + 1]) for i in range(len(widths) - 1)])
                pyr_width = widths[-1]
            else:
                ecd_blocks = nn.Sequential()
                pyr_width = c[0]
            in_width = c[level - 2]
            if has_pyramid:
                in_width = in_width + pyr_width if fuse_mode == "concat" else in_width
            encoder.append(EncoderLevel(blk(in_width, c[level - 1]), ecd_blocks, has_pyramid, fuse_mode))
        self.encoder = nn.ModuleList(encoder)

        # decoder levels 4..1 (index 0 = level 4)
        self.decoder = nn.ModuleList(
            [DecoderLevel(blk(c[level - 1] + dec[level], dec[level - 1])) for level in range(self.num_levels - 1, 0, -1)]
        )

        # pyramid outputs, levels 1..S_out (index 0 = finest)
        outputs = []
        for level in range(1, num_scales_out + 1):
            if ecd:
                widths = [dec[i] for i in range(level - 1, -1, -1)]  # d_l -> d_{l-1} -> ... -> d_1
                chain = nn.Sequential(*[blk(widths[i], widths[i + 1]) for i in range(len(widths) - 1)])
                head_width = dec[0]
            else:
                chain = nn.Sequential()
                head_width = dec[level - 1]
            head = SegHead(spatial_dims, head_width, out_channels, act, norm)
            outputs.append(OutputBranch(chain, head, level - 1))
        self.outputs = nn.ModuleList(outputs)

        self.fusion: Optional[AdaptiveFusion] = (
            AdaptiveFusion(spatial_dims, out_channels, act, norm) if adaptive_fusion else None
        )

    @torch.jit.unused
    def get_config(self) -> dict:
        """The constructor arguments (a copy), so that ``PIPOFAN(**net.get_config())`` builds the same network."""
        import copy

        return copy.deepcopy(self._init_config)

    def check_input_shape(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless x is ``(B, in_channels, *spatial)`` with every spatial size divisible by 16,
        and ``TypeError`` for an integer input or a float64 input to a network whose weights are not float64.

        Like MONAI's networks, PIPOFAN does not cast its input: convert it with ``x.float()`` (the bundle's
        transforms give float32), or the network with ``net.double()`` for float64 computations. The check only
        replaces torch's ``"Input type (double) and bias type (float) should be the same"`` with a message that
        says what to do; other mismatches (e.g. float16 without autocast) are left to torch.
        """
        weight_dtype = self.stem.conv1.weight.dtype
        if not x.is_floating_point():
            raise TypeError(
                "PIPOFAN expects a floating-point input (float32), got dtype " + str(x.dtype) + "; convert it with "
                "x.float() (CT intensities are windowed and scaled by the preprocessing)."
            )
        if x.dtype == torch.float64 and weight_dtype != torch.float64:
            raise TypeError(
                "PIPOFAN got a float64 input but its weights are not float64 (float32 unless converted); convert "
                "the input with x.float() (or the network with net.double())."
            )
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "PIPOFAN expects input of shape (Batch, in_channels, *spatial) with "
                + str(self.spatial_dims)
                + " spatial dims, got shape "
                + str(list(x.shape))
                + "."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                "PIPOFAN expects " + str(self.in_channels) + " input channels, got shape " + str(list(x.shape)) + "."
            )
        for s in x.shape[2:]:
            if s % 16 != 0 or s == 0:
                raise ValueError(
                    "PIPOFAN needs every spatial size divisible by 16 (four 2x2 poolings), got spatial size "
                    + str(list(x.shape[2:]))
                    + "; pad or resize the input (e.g. to 224 or 256)."
                )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            x: ``(Batch, in_channels, H, W)`` with H and W divisible by 16.

        Returns:
            eval mode: fused logits ``(Batch, out_channels, H, W)`` (f_1 without AF);
            train mode: ``[F, f_1, ..., f_S]`` (``[f_1, ..., f_S]`` without AF), each ``(Batch, out_channels, H, W)``.
        """
        self.check_input_shape(x)

        # input pyramid: the shared stem is applied to every scale when it is used
        pyramid: List[torch.Tensor] = []
        scaled = x
        for s in range(1, self.num_scales_in):
            scaled = _avg_pool2x(scaled)
            pyramid.append(self.stem(scaled))

        e = self.stem(x)
        skips: List[torch.Tensor] = [e]
        for i, level in enumerate(self.encoder):
            z: Optional[torch.Tensor] = pyramid[i] if i < len(pyramid) else None
            e = level(_max_pool2x(e), z)
            skips.append(e)

        g = skips[-1]
        decoded: List[torch.Tensor] = [g]  # coarse to fine: g_5, g_4, ..., g_1
        for i, level in enumerate(self.decoder):
            g = level(skips[len(skips) - 2 - i], g)
            decoded.append(g)

        outs: List[torch.Tensor] = []
        for i, branch in enumerate(self.outputs):
            outs.append(branch(decoded[len(decoded) - 1 - i]))

        fusion = self.fusion
        if fusion is not None:
            fused = fusion(outs)
            if self.training:
                return [fused] + outs
            return fused
        if self.training:
            return outs
        return outs[0]


PipoFan = PIPOFAN
