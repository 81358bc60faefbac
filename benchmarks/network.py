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

"""Network sections: inference and training throughput of one execution path, and the label-map agreement of two
paths on one volume."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch

from pipofan_monai.vocabulary.datasets import BUILTIN_DATASETS, CLASS_NAMES

from benchmarks.common import (ExecutionPath, _host_batch, _sync, _to_device, peak_memory, prepare_network,
                               reset_peak_memory)

# ---------------------------------------------------------------------------------------------- (a) inference
def benchmark_inference(
    network: torch.nn.Module, path: ExecutionPath, device: torch.device, size: int = 256, batch: int = 32,
    iters: int = 10, warmup: int = 2, seed: int = 0,
) -> dict:
    """Network inference throughput on whole ``size x size`` slices, ``batch`` slabs per forward pass.

    Each iteration copies a pinned host batch ``(batch, 3, size, size)`` to the device (``non_blocking``) and runs
    the eval-mode network under ``torch.inference_mode`` (and the path's autocast).

    Returns:
        ``{"path", "slices_per_s", "seconds_per_batch", "warmup_s", "iters", "batch", "size", "memory"}``.
    """
    if size % 16 or size < 16:
        raise ValueError(f"size must be a positive multiple of 16, got {size}.")
    net = prepare_network(network, path, device)
    gen = torch.Generator().manual_seed(seed)
    host = _host_batch((batch, 3, size, size), device, gen)
    reset_peak_memory(device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(max(1, warmup)):
            with path.autocast(device):
                net(_to_device(host, device, path.channels_last))
        _sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(iters):
            with path.autocast(device):
                out = net(_to_device(host, device, path.channels_last))
        _sync(device)
        dt = time.perf_counter() - t0
    del out
    return {
        "path": asdict(path), "slices_per_s": iters * batch / dt, "seconds_per_batch": dt / iters,
        "warmup_s": warm, "iters": iters, "batch": batch, "size": size, "memory": peak_memory(device),
    }


# ---------------------------------------------------------------------------------------------- (b) training
def benchmark_training(
    network: torch.nn.Module, path: ExecutionPath, device: torch.device, batch: int = 32, size: int = 224,
    steps: int = 5, warmup: int = 2, seed: int = 0, learning_rate: float = 2e-4,
) -> dict:
    """Training throughput: forward + ``DeepPyramidSupervisionLoss(TargetAdaptiveLoss())`` (stage "dps") + backward
    + RMSprop step (the bundle's optimizer settings) on batches of 3-slice ``size x size`` crops with random labels
    and a mix of partial-label masks (LiTS, KiTS19, MSD Spleen, BTCV). Float16 autocast uses a ``GradScaler``.

    Returns:
        ``{"path", "samples_per_s", "seconds_per_step", "warmup_s", "steps", "batch", "size", "final_loss",
        "memory"}``.
    """
    from pipofan_monai.losses import DeepPyramidSupervisionLoss, TargetAdaptiveLoss

    if size % 16 or size < 16:
        raise ValueError(f"size must be a positive multiple of 16, got {size}.")
    net = prepare_network(network, path, device, train=True)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(params, lr=learning_rate, alpha=0.99, eps=1e-8, momentum=0.9, weight_decay=0)
    loss_fn = DeepPyramidSupervisionLoss(TargetAdaptiveLoss(), stage="dps")
    scaler = torch.amp.GradScaler(device.type, enabled=path.amp_dtype == "float16" and device.type == "cuda")
    gen = torch.Generator().manual_seed(seed)
    host_x = _host_batch((batch, 3, size, size), device, gen)
    host_y = torch.randint(0, len(CLASS_NAMES), (batch, 1, size, size), generator=gen).float()
    paper_mix = ("lits", "kits19", "msd_spleen", "btcv")
    masks = [BUILTIN_DATASETS[n].labeled_mask(len(CLASS_NAMES)) for n in paper_mix]
    host_m = torch.as_tensor(np.stack([masks[i % len(masks)] for i in range(batch)]))
    if device.type == "cuda":
        host_y, host_m = host_y.pin_memory(), host_m.pin_memory()

    def step() -> torch.Tensor:
        x = _to_device(host_x, device, path.channels_last)
        y = host_y.to(device, non_blocking=True)
        m = host_m.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with path.autocast(device):
            outs = net(x)
        loss = loss_fn([o.float() for o in outs], y, labeled_mask=m)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    reset_peak_memory(device)
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        step()
    _sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    dt = time.perf_counter() - t0
    return {
        "path": asdict(path), "samples_per_s": steps * batch / dt, "seconds_per_step": dt / steps, "warmup_s": warm,
        "steps": steps, "batch": batch, "size": size, "final_loss": float(loss), "memory": peak_memory(device),
    }


# ---------------------------------------------------------------------------------------------- accuracy
def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    inter = float((a & b).sum())
    total = float(a.sum()) + float(b.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def label_agreement(
    volume: torch.Tensor, reference: tuple[torch.nn.Module, ExecutionPath],
    candidate: tuple[torch.nn.Module, ExecutionPath], device: torch.device, sw_batch_size: int = 32,
    threshold: float = 0.99, class_names: Sequence[str] = CLASS_NAMES,
) -> dict:
    """Per-organ Dice between the label maps (argmax over classes) of two execution paths on one volume.

    Args:
        volume: ``(1, 1, H, W, D)`` preprocessed intensities (H, W multiples of 16 avoid padding).
        reference: ``(network, path)`` of the reference (e.g. the fp32 eager baseline), networks prepared with
            :func:`prepare_network`.
        candidate: ``(network, path)`` of the path under test.
        device: where the networks run.
        sw_batch_size: slabs per forward pass.
        threshold: the minimum Dice per organ for ``passed``.
        class_names: class names (index = class id); background (0) is not scored.

    Returns:
        ``{"dice": {organ: Dice}, "reference_voxels": {organ: count}, "min_dice", "threshold", "passed",
        "voxel_agreement"}``; an organ absent from both maps has Dice 1.0.
    """
    from pipofan_monai.inference import SlidingSliceInferer

    if volume.ndim != 5 or volume.shape[:2] != (1, 1):
        raise ValueError(f"volume must have shape (1, 1, H, W, D), got {tuple(volume.shape)}.")
    labels = []
    for net, path in (reference, candidate):
        inferer = SlidingSliceInferer(sw_batch_size=sw_batch_size, sw_device=device, device="cpu",
                                      **path.inferer_kwargs())
        with torch.inference_mode():
            labels.append(inferer(volume, net).argmax(1)[0])
    ref, cand = labels
    dice = {name: _dice(ref == c, cand == c) for c, name in enumerate(class_names) if c > 0}
    counts = {name: int((ref == c).sum()) for c, name in enumerate(class_names) if c > 0}
    min_dice = min(dice.values()) if dice else 1.0
    return {"dice": dice, "reference_voxels": counts, "min_dice": min_dice, "threshold": threshold,
            "passed": bool(min_dice >= threshold), "voxel_agreement": float((ref == cand).float().mean())}


