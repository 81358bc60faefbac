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

"""Throughput benchmark of PIPO-FAN: network inference, training steps, end-to-end bundle inference of a
synthetic CT volume with a per-stage breakdown, peak memory, and the label-map agreement of the optimized path
with the fp32 eager baseline (``python -m pipofan_monai benchmark``).

Two execution paths of the same network (same weights) are compared:

- ``baseline``: fp32, contiguous (NCHW) memory, eager.
- ``optimized``: on CUDA, autocast in bfloat16 (float16 with gradient scaling on GPUs without bf16),
  ``channels_last``, optionally ``torch.compile``; inputs are copied from pinned host memory with
  ``non_blocking=True``. On the CPU, the candidates ``fp32 + channels_last`` and (where the CPU has native bf16)
  ``bf16 autocast + channels_last`` are measured, and the fastest one whose label maps agree with the baseline's
  (Dice >= 0.99 per organ) is used; if none beats the baseline, the optimized path IS the baseline (reported).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pipofan_monai import bundle_dir
from pipofan_monai.plans import load_network_weights, network_from_plans, resolve_plans

from pipofan_monai.vocabulary.datasets import BUILTIN_DATASETS, CLASS_NAMES
from pipofan_monai.utils import as_bool, atomic_write_json

__all__ = [
    "ExecutionPath",
    "BASELINE",
    "resolve_device",
    "default_amp_dtype",
    "cpu_candidates",
    "prepare_network",
    "make_network",
    "calibrate_batchnorm",
    "peak_memory",
    "reset_peak_memory",
    "benchmark_inference",
    "benchmark_training",
    "label_agreement",
    "benchmark_end_to_end",
    "run_benchmark",
    "format_report",
    "QUICK_SETTINGS",
    "SECTIONS",
    "benchmark_data_path",
    "format_data_report",
    "write_synthetic_ct",
    "FOUR_DATASETS_SLICES",
    "QUICK_DATA_SETTINGS",
    "benchmark_inference_memory",
    "format_memory_report",
    "QUICK_MEMORY_SETTINGS",
    "MEMORY_SLOPE_CHANNELS",
]

logger = logging.getLogger("pipofan.benchmark")

DEFAULT_CONFIG = bundle_dir() / "configs" / "inference.json"

#: settings of ``--quick``: a tiny network and volume, finishing in well under a minute on 2 CPU cores.
QUICK_SETTINGS: dict[str, Any] = {
    "size": 64,
    "batch": 8,
    "channels": (8, 16, 32, 64, 64),
    "volume_shape": (96, 96, 12),
    "train_batch": 4,
    "train_size": 48,
    "iters": 2,
    "train_steps": 2,
    "accuracy_slices": 8,
    "e2e_spatial_size": 64,
}

SECTIONS = ("inference", "training", "end_to_end", "data", "inference_memory")

# ---------------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class ExecutionPath:
    """How the network is executed.

    Args:
        name: label used in the report.
        amp_dtype: autocast dtype name (``"bfloat16"``, ``"float16"``) or ``None`` for fp32.
        channels_last: network weights and inputs in ``torch.channels_last``.
        compile: wrap the network with ``torch.compile``.
        compile_mode: ``torch.compile`` mode (``None`` = PyTorch's default).
    """

    name: str
    amp_dtype: str | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        return None if self.amp_dtype is None else getattr(torch, self.amp_dtype)

    def autocast(self, device: torch.device):
        """``torch.autocast`` context for this path on ``device`` (a null context for fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def inferer_kwargs(self) -> dict:
        """The :class:`~pipofan_monai.inference.SlidingSliceInferer` options of this path."""
        return {"amp": self.amp_dtype is not None, "amp_dtype": self.dtype, "channels_last": self.channels_last}


BASELINE = ExecutionPath("fp32 eager")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` when available else ``cpu``; ``"cuda"`` without a GPU falls back to the CPU
    with a warning (the benchmark degrades gracefully).

    Raises:
        ValueError: an unknown device string.
    """
    if device is None or str(device).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %r asked but no CUDA GPU is available: benchmarking on the CPU.", str(device))
        return torch.device("cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}.")
    return dev


def default_amp_dtype(device: torch.device) -> str | None:
    """bfloat16 on GPUs that support it, float16 on older GPUs, ``None`` on the CPU (measured separately)."""
    if device.type != "cuda":
        return None
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def _cpu_has_bf16() -> bool:
    fn = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool((fn is not None and fn()) or (amx is not None and amx()))
    except Exception:  # pragma: no cover - private API differences across versions
        return False


def cpu_candidates() -> list[ExecutionPath]:
    """Optimized-path candidates measured on the CPU: fp32 channels_last, plus bf16 where the CPU has native bf16."""
    cands = [ExecutionPath("fp32 channels_last", None, True)]
    if _cpu_has_bf16():
        cands.append(ExecutionPath("bf16 autocast channels_last", "bfloat16", True))
    return cands


def make_network(channels: Sequence[int] | None, seed: int = 0, ckpt: str | None = None) -> torch.nn.Module:
    """The bundle's PIPO-FAN: with ``ckpt``, the network its plans describe with its weights (``channels`` must
    agree or be None); otherwise 3 input slices, 4 classes, ``channels`` widths and seeded random weights."""
    torch.manual_seed(int(seed))
    plans = resolve_plans(ckpt if ckpt else None, network_channels=channels)
    net = network_from_plans(plans)
    if ckpt:
        load_network_weights(net, ckpt)
    return net


def accuracy_volume(preprocessing: Mapping[str, Any], num_slices: int, seed: int = 0,
                    workdir: str | os.PathLike | None = None) -> torch.Tensor:
    """A synthetic CT (twice ``spatial_size`` in-plane, ``num_slices`` slices) run through the model's own
    inference preprocessing (:func:`~pipofan_monai.preprocessing.get_inference_transforms`), so that a trained
    model sees the intensities it was trained on. Returns ``(1, 1, S, S, num_slices)``."""
    import nibabel as nib

    from pipofan_monai.preprocessing import get_inference_transforms

    size = int(preprocessing.get("spatial_size") or 256)
    img, affine = _phantom((2 * size, 2 * size, int(num_slices)), seed)
    with tempfile.TemporaryDirectory(prefix="pipofan_bench_", dir=workdir) as tmp:
        path = os.path.join(tmp, "accuracy_ct.nii.gz")
        nib.save(nib.Nifti1Image(img, affine), path)
        vol = get_inference_transforms(preprocessing)({"image": path})["image"]
    return vol.as_tensor()[None].float()


def accuracy_slabs(ckpt: str | None, num_slices: int = 8, seed: int = 0, size: int = 256) -> torch.Tensor:
    """The 3-slice slabs ``(D, 2 * context + 1, S, S)`` of :func:`accuracy_volume` for the plans of ``ckpt``
    (or the defaults with ``spatial_size=size`` without a checkpoint)."""
    from pipofan_monai.preprocessing import make_slab_indices

    plans = resolve_plans(ckpt if ckpt else None, spatial_size=None if ckpt else size)
    vol = accuracy_volume(plans["preprocessing"], num_slices, seed)
    d, k = vol.shape[-1], plans["preprocessing"]["context"]
    return vol[0, 0][:, :, make_slab_indices(0, d, d, k)].permute(2, 3, 0, 1).contiguous()


def prepare_network(network: torch.nn.Module, path: ExecutionPath, device: torch.device, train: bool = False):
    """A copy of ``network`` on ``device`` in the memory format of ``path`` (compiled when asked), in eval mode
    unless ``train``. The original is not modified."""
    net = copy.deepcopy(network).to(device)
    if path.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train(train)
    if path.compile:
        kw = {} if path.compile_mode in (None, "", "default") else {"mode": path.compile_mode}
        net = torch.compile(net, dynamic=False, **kw)
    return net


def calibrate_batchnorm(network: torch.nn.Module, slabs: torch.Tensor, batch: int = 8) -> torch.nn.Module:
    """Set the BatchNorm running statistics of an untrained network from ``slabs`` ``(N, 3, H, W)`` (cumulative
    averages over batches of ``batch``), so that its random-weight label maps are non-trivial. Returns the
    network in eval mode."""
    bns = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    network.train()
    with torch.no_grad():
        for s in range(0, slabs.shape[0], batch):
            network(slabs[s : s + batch])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return network.eval()


# ---------------------------------------------------------------------------------------------- memory / timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Reset the peak counter: CUDA allocator peak, or the process's peak RSS (Linux ``clear_refs``, best effort)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> dict:
    """``{"kind", "peak_mb"}``: ``torch.cuda.max_memory_allocated`` on CUDA, else the peak RSS of the process."""
    if device.type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return {"kind": "rss_peak", "peak_mb": int(line.split()[1]) / 1024}
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "rss_peak_process_lifetime", "peak_mb": kb / 1024}


def _host_batch(shape: Sequence[int], device: torch.device, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(*shape, generator=generator)
    return x.pin_memory() if device.type == "cuda" else x


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


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


def _phantom(shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic abdominal CT (int16 HU, RAS affine) of ``shape``; the demo phantom generator."""
    from pipofan_monai.apps.dataset_conversion.demo import synthesize_case

    shape = [int(s) for s in shape]
    img, _, affine = synthesize_case(seed, shape=tuple(max(s, 8) for s in shape))  # the generator needs >= 8
    return np.ascontiguousarray(img[: shape[0], : shape[1], : shape[2]]), affine


# ---------------------------------------------------------------------------------------------- (c) end to end
def _parse_inference_config(config_file: str | os.PathLike, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(dict(overrides))
    return {k: parser.get_parsed_content(k) for k in ("plans", "preprocessing", "inferer", "postprocessing")}


def benchmark_end_to_end(
    network: torch.nn.Module, path: ExecutionPath, device: torch.device, volume_shape: Sequence[int] = (512, 512, 200),
    spatial_size: int = 256, sw_batch_size: int = 32, config_file: str | os.PathLike = DEFAULT_CONFIG,
    workdir: str | os.PathLike | None = None, postprocess: bool = True, gpu_resample: bool | None = None,
    seed: int = 0,
) -> dict:
    """End-to-end inference of a synthetic CT NIfTI with the bundle's components and a per-stage breakdown.

    The components (``preprocessing``, ``inferer``, ``postprocessing``) are parsed from ``config_file`` (the
    bundle's ``inference.json``) with overrides (``spatial_size``, ``sw_batch_size``, output folder, device); the
    inferer gets the path's autocast/channels_last options. The case is then processed by the runner's own
    :class:`~pipofan_monai.apps.inference.CasePipeline` with a :class:`~pipofan_monai.apps.inference.StageTimer`:
    load (read + checks) -> preprocess (orientation, HU window, in-plane resample) -> network (sliding-slice
    inference) -> postprocess (softmax) -> invert (resample back to the original grid) -> postprocess (argmax,
    connected components) -> save (uint8 NIfTI). With ``gpu_resample`` (default: True on CUDA, False on the CPU)
    the image is moved to ``device`` before the resample and the network output, its inversion and the argmax
    stay there.
    The bare network forward passes over the same slices (``D`` slabs of ``spatial_size``², in chunks of
    ``sw_batch_size``, same path, tensors already on the device) are timed in the same call.

    Returns:
        ``{"volume_shape", "spatial_size", "sw_batch_size", "stages": {stage: s}, "transforms": [[name, stage, s]],
        "total_s", "wall_s", "bare_network_s", "pipeline_over_bare", "memory", "output_file", "output_shape"}``.
    """
    from monai.transforms import EnsureTyped, Invertd, Resized

    from pipofan_monai.apps.inference import CasePipeline, StageTimer

    vs = [int(v) for v in volume_shape]
    if len(vs) != 3 or min(vs) < 1:
        raise ValueError(f"volume_shape must be 3 positive sizes, got {volume_shape}.")
    tmp = tempfile.TemporaryDirectory(prefix="pipofan_bench_", dir=workdir)
    root = Path(tmp.name)
    try:
        import nibabel as nib

        img, affine = _phantom(vs, seed)
        image_path = root / "bench_ct.nii.gz"
        nib.save(nib.Nifti1Image(img, affine), str(image_path))
        on_gpu = device.type == "cuda" if gpu_resample is None else bool(gpu_resample)
        comps = _parse_inference_config(config_file, {
            "spatial_size": int(spatial_size),
            "sw_batch_size": int(sw_batch_size),
            "output_dir": str(root / "out"),
            "ckpt_path": str(root / "no_checkpoint.pt"),  # the benchmark's network is given, not loaded
            "fold_ckpt_paths": [],
            "device": f"$torch.device('{device}')",
            "amp": path.amp_dtype is not None,
            "postprocess": bool(postprocess),
        })
        pipeline = CasePipeline(comps["preprocessing"], comps["inferer"], comps["postprocessing"],
                                num_classes=len(comps["plans"]["class_names"]))
        inferer = pipeline.inferer
        for k, v in path.inferer_kwargs().items():
            setattr(inferer, k, v)
        inferer.sw_device = device
        if on_gpu:  # resample on the device: move the image there before the resize, keep outputs there
            at = next((i for i, t in enumerate(pipeline.pre) if isinstance(t, Resized)), len(pipeline.pre))
            pipeline.pre.insert(at, EnsureTyped("image", device=device, track_meta=True))
            inferer.device = device
            for t in pipeline.post:
                if isinstance(t, Invertd):  # per-key devices, as Invertd's constructor stores them
                    t.device = (device,) * len(t.keys)
        net = prepare_network(network, path, device)

        # bare forward passes over the same slices (also the warm-up of the network, compile included)
        depth = vs[2]
        gen = torch.Generator().manual_seed(seed)
        chunks = [_to_device(torch.rand(min(sw_batch_size, depth - s), 3, spatial_size, spatial_size, generator=gen),
                             device, path.channels_last) for s in range(0, depth, sw_batch_size)]
        with torch.inference_mode():
            for c in {c.shape[0]: c for c in chunks}.values():
                with path.autocast(device):
                    net(c)
            _sync(device)
            t0 = time.perf_counter()
            for c in chunks:
                with path.autocast(device):
                    net(c)
            _sync(device)
            bare = time.perf_counter() - t0
        del chunks

        reset_peak_memory(device)
        timer = StageTimer(device)
        t_start = time.perf_counter()
        pipeline(str(image_path), [net], timer)
        wall = time.perf_counter() - t_start
        stages = dict(timer.seconds)
        timings = timer.transforms
        total = timer.total
        outputs = sorted((root / "out").glob("*_seg.nii.gz"))
        out_shape = list(nib.load(str(outputs[0])).shape) if outputs else None
        return {
            "volume_shape": vs, "spatial_size": int(spatial_size), "sw_batch_size": int(sw_batch_size),
            "path": asdict(path), "gpu_resample": on_gpu, "stages": stages, "transforms": timings, "total_s": total,
            "wall_s": wall, "bare_network_s": bare, "pipeline_over_bare": total / bare if bare > 0 else math.inf,
            "memory": peak_memory(device), "output_file": outputs[0].name if outputs else None,
            "output_shape": out_shape,
        }
    finally:
        tmp.cleanup()


# ------------------------------------------------------------------------------ inference memory at real size
#: encoder widths of the narrow network of the memory section: the per-slice slope is the data path (load,
#: resample, inversion, argmax, filtering, saving), not the network, so a narrow network measures it fast
MEMORY_SLOPE_CHANNELS = (8, 16, 32, 64, 64)

#: settings of the memory section with ``quick``: short 512x512 volumes, a 64² network input, all cases in one
#: worker process (a smoke run: freed memory the allocator keeps between cases makes its slopes indicative only)
QUICK_MEMORY_SETTINGS: dict[str, Any] = {"depths": (8, 16), "floor_depth": 8, "floor_batches": (8,),
                                         "floor_channels": MEMORY_SLOPE_CHANNELS, "in_plane": 512, "spatial_size": 64,
                                         "slope_batch": 8, "one_process": True}


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (MiB) of this process from ``/proc/self/status`` (NaN where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs``); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _StagePeakRSS:
    """A stage "timer" for :class:`~pipofan_monai.apps.inference.CasePipeline` that records, per stage, the peak RSS
    reached inside it (MiB) and its rise over the RSS at its start, and the seconds (``VmHWM`` reset at each
    stage entry, so each stage sees its own peak)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, name: str | None = None):
        before = _status_mib("VmRSS")
        _reset_peak_rss()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            peak = max(_status_mib("VmHWM"), _status_mib("VmRSS"))
            rec = self.stages.setdefault(stage, {"peak_mib": 0.0, "rise_mib": 0.0, "seconds": 0.0})
            rec["peak_mib"] = max(rec["peak_mib"], peak)
            rec["rise_mib"] = max(rec["rise_mib"], peak - before)
            rec["seconds"] += time.perf_counter() - t0


def _inference_memory_cases(spec: Mapping[str, Any]) -> list[dict]:
    """Run in a fresh process: segment each case of ``spec["cases"]`` (``{"image", "ckpt", "overrides"}``) with the
    bundle's runner (``inference.json`` + overrides) and return its peak RSS (whole run and per stage)."""
    from monai.bundle import ConfigParser

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    results = []
    for case in spec["cases"]:
        gc.collect()
        parser = ConfigParser()
        parser.read_config(str(spec.get("config_file") or DEFAULT_CONFIG))
        parser.update(dict(case["overrides"]))
        runner = parser.get_parsed_content("runner")
        nets = runner._networks(case["ckpt"])
        stages = _StagePeakRSS()
        runner.timer = stages
        gc.collect()
        rss_before = _status_mib("VmRSS")
        resettable = _reset_peak_rss()
        t0 = time.perf_counter()
        out = runner.pipeline(case["image"], nets, stages)
        seconds = time.perf_counter() - t0
        peak_end = _status_mib("VmHWM")
        stage_peak = max((s["peak_mib"] for s in stages.stages.values()), default=float("nan"))
        peak = max(peak_end, stage_peak) if resettable else float(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
        results.append({"label": case.get("label"), "rss_before_mib": rss_before, "peak_mib": peak,
                        "rise_mib": peak - rss_before, "seconds": seconds, "stages": stages.stages,
                        "output_shape": list(out[runner.pred_key].shape[1:]), "per_stage_peaks": resettable})
        del out, nets, runner, parser
    return results


def _run_memory_worker(cases: Sequence[Mapping[str, Any]], threads: int | None, timeout: float = 3600) -> list[dict]:
    """:func:`_inference_memory_cases` in a fresh Python process (its peak RSS is its own)."""
    import subprocess

    spec = json.dumps({"cases": list(cases), "threads": threads})
    code = ("import json, sys; from pipofan_monai.benchmark import _inference_memory_cases as f; "
            "print('PIPOFAN_MEMORY_RESULT ' + json.dumps(f(json.loads(sys.stdin.read()))))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[1]),
                                                                  os.environ.get("PYTHONPATH", "")] if p))
    proc = subprocess.run([sys.executable, "-c", code], input=spec, capture_output=True, text=True, env=env,
                          timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PIPOFAN_MEMORY_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"inference memory worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``ys`` on ``xs`` (one point: slope NaN)."""
    if len(xs) < 2:
        return float("nan"), float(ys[0]) if ys else float("nan")
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def _memory_checkpoint(path: Path, channels: Sequence[int], spatial_size: int, seed: int) -> str:
    """A plans-bearing checkpoint of a randomly initialised PIPO-FAN (as training writes them)."""
    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.plans import PlansState, make_plans

    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=len(CLASS_NAMES), channels=tuple(channels))
    plans = make_plans(net, CLASS_NAMES, {"spatial_size": int(spatial_size)})
    torch.save({"model": net.state_dict(), "plans": PlansState(plans).state_dict()}, path)
    return str(path)


def benchmark_inference_memory(
    depths: Sequence[int] = (100, 200, 450),
    in_plane: int = 512,
    spatial_size: int = 256,
    slope_channels: Sequence[int] = MEMORY_SLOPE_CHANNELS,
    slope_batch: int = 32,
    floor_channels: Sequence[int] = (64, 128, 256, 512, 512),
    floor_batches: Sequence[int] = (32, 8, 1),
    floor_depth: int = 32,
    paths: Sequence[str] = ("plain", "streamed"),
    threads: int | None = None,
    one_process: bool = False,
    workdir: str | os.PathLike | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Peak RSS of the shipped bundle inference (``inference.json`` through the runner's
    :class:`~pipofan_monai.apps.inference.CasePipeline`) on generated ``in_plane x in_plane x D`` int16 CT NIfTI files:
    the growth per slice (MiB/slice, least-squares slope over ``depths``) and the fixed floor.

    The slope is measured with a narrow network (``slope_channels``: the data path, not the network, grows with
    the slices) for each path: ``"plain"`` (``stream_slices=0``: the network output inverted with ``Invertd`` on
    the whole volume, MONAI's way) and ``"streamed"`` (the default: inversion and argmax slab by slab). The floor is
    measured with the full network (``floor_channels``) on ``floor_depth`` slices for each ``floor_batches``
    (``sw_batch_size``), streamed path: the floor is that peak minus the streamed slope times ``floor_depth``.
    Each case runs in a fresh process (``one_process=True``: all cases in one process, the peak reset between
    them with ``clear_refs``; for quick runs) so that its peak RSS is its own.

    Returns:
        ``{"settings", "target_mib_per_slice", "paths": {path: {"cases": [...], "mib_per_slice",
        "intercept_mib", "rise_mib_per_slice"}}, "floor": {sw_batch_size: {...}}}``.
    """
    log = log or _progress
    depths = [int(d) for d in depths]
    h = int(in_plane)
    num_classes = len(CLASS_NAMES)
    target = h * h * num_classes * 4 / 2**20
    out: dict[str, Any] = {
        "settings": {"depths": depths, "in_plane": h, "spatial_size": int(spatial_size),
                     "slope_channels": list(slope_channels), "slope_batch": int(slope_batch),
                     "floor_channels": list(floor_channels), "floor_batches": [int(b) for b in floor_batches],
                     "floor_depth": int(floor_depth), "threads": threads or torch.get_num_threads(),
                     "cpu_count": os.cpu_count(), "one_process": bool(one_process)},
        "target_mib_per_slice": target, "paths": {}, "floor": {}}
    with tempfile.TemporaryDirectory(prefix="pipofan_bench_mem_", dir=workdir) as tmp:
        root = Path(tmp)
        images = {}
        t0 = time.perf_counter()
        for d in sorted(set(depths + ([int(floor_depth)] if floor_batches else []))):
            images[d] = str(root / f"ct_{d}.nii.gz")
            write_synthetic_ct(images[d], root / f"seg_{d}.nii.gz", (h, h, d), "btcv", seed)
        log(f"  wrote {len(images)} {h}x{h}xD int16 volumes (D = {sorted(images)}) in {time.perf_counter() - t0:.1f} s")
        slope_ckpt = _memory_checkpoint(root / "narrow.pt", slope_channels, spatial_size, seed)
        floor_ckpt = _memory_checkpoint(root / "full.pt", floor_channels, spatial_size, seed) if floor_batches else None

        def case(d: int, ckpt: str, batch: int, path: str, label: str) -> dict:
            return {"image": images[d], "ckpt": ckpt, "label": label, "overrides": {
                "ckpt_path": ckpt, "fold_ckpt_paths": [], "output_dir": str(root / "out"), "overwrite": True,
                "device": "$torch.device('cpu')", "amp": False, "sw_batch_size": int(batch), "save_overlay": False,
                **({"stream_slices": 0} if path == "plain" else {})}}

        todo = [case(d, slope_ckpt, slope_batch, p, f"{p} D={d}") for p in paths for d in depths]
        todo += [case(int(floor_depth), floor_ckpt, b, "streamed", f"floor b={b}") for b in floor_batches]
        results: list[dict] = []
        if one_process:
            log(f"  {len(todo)} cases in one process")
            results = _run_memory_worker(todo, threads)
        else:
            for c in todo:
                r = _run_memory_worker([c], threads)[0]
                log(f"  {c['label']}: peak RSS {r['peak_mib']:.0f} MiB (+{r['rise_mib']:.0f} over "
                    f"{r['rss_before_mib']:.0f} MiB at the start), {r['seconds']:.1f} s")
                results.append(r)
        by_label = {r["label"]: r for r in results}
        for p in paths:
            cases = [dict(by_label[f"{p} D={d}"], depth=d) for d in depths]
            slope, intercept = _fit_line(depths, [c["peak_mib"] for c in cases])
            rise_slope, _ = _fit_line(depths, [c["rise_mib"] for c in cases])
            peak_stage = [max(c["stages"], key=lambda s: c["stages"][s]["peak_mib"]) if c["stages"] else None
                          for c in cases]
            # the stage holding the peak changes with D (the network's fixed workspace at small D, the data at large
            # D): the slope of each stage's own peak gives the growth at any D, the largest of them the asymptote
            stage_slopes = {st: _fit_line(depths, [c["stages"][st]["peak_mib"] for c in cases])[0]
                            for st in cases[0]["stages"] if all(st in c["stages"] for c in cases)}
            out["paths"][p] = {"cases": cases, "mib_per_slice": slope, "intercept_mib": intercept,
                               "rise_mib_per_slice": rise_slope, "peak_stage": peak_stage,
                               "stage_mib_per_slice": stage_slopes,
                               "max_stage_mib_per_slice": max(stage_slopes.values(), default=float("nan"))}
        streamed_slope = out["paths"].get("streamed", next(iter(out["paths"].values()), {})).get("mib_per_slice", 0.0)
        for b in floor_batches:
            r = by_label[f"floor b={b}"]
            net_stage = r["stages"].get("network", {})
            out["floor"][str(int(b))] = {
                "peak_mib": r["peak_mib"], "floor_mib": r["peak_mib"] - streamed_slope * int(floor_depth),
                "rss_before_mib": r["rss_before_mib"], "network_rise_mib": net_stage.get("rise_mib", float("nan")),
                "seconds": r["seconds"]}
    return out


def format_memory_report(mem: Mapping[str, Any]) -> list[str]:
    """Lines of the inference-memory table of a :func:`benchmark_inference_memory` result."""
    s = mem["settings"]
    lines = [f"inference memory: {s['in_plane']}x{s['in_plane']}xD int16 CT, bundle inference (spatial_size "
             f"{s['spatial_size']}, narrow network {s['slope_channels']}, sw_batch_size {s['slope_batch']}), "
             f"{s['threads']} threads / {s['cpu_count']} CPUs; peak RSS MiB",
             f"  {'path':<10}" + "".join(f"{'D=' + str(d):>9}" for d in s["depths"])
             + f"{'MiB/slice':>11}{'at D=0':>9}{'worst stage MiB/slice':>23}  peak stage (largest D)"]
    for p, r in mem["paths"].items():
        worst = max(r["stage_mib_per_slice"], key=r["stage_mib_per_slice"].get) if r["stage_mib_per_slice"] else "-"
        lines.append(f"  {p:<10}" + "".join(f"{c['peak_mib']:>9.0f}" for c in r["cases"])
                     + f"{r['mib_per_slice']:>11.2f}{r['intercept_mib']:>9.0f}"
                     + f"{r['max_stage_mib_per_slice']:>10.2f} ({worst:<11})  {r['peak_stage'][-1]}")
    lines.append(f"  target: <= {mem['target_mib_per_slice']:.1f} MiB/slice (the {len(CLASS_NAMES)}-class float32 "
                 f"probabilities of one {s['in_plane']}² slice)")
    if mem.get("floor"):
        lines.append(f"  floor, network {s['floor_channels']} on {s['floor_depth']} slices (streamed): "
                     + ", ".join(f"sw_batch_size {b}: {f['floor_mib']:.0f} MiB (network +{f['network_rise_mib']:.0f})"
                                 for b, f in mem["floor"].items()))
    return lines


# ---------------------------------------------------------------------------------------------- driver
def _parse_ints(value: Any, name: str, n: int | None = None) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{name} must be a list of integers such as [64,128,256,512,512], got {value!r}.") from e
    if isinstance(value, (int, float)):
        value = [value]
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a list of integers, got {value!r}.") from e
    if (n is not None and len(out) != n) or any(v < 1 for v in out):
        raise ValueError(f"{name} must be {n or 'some'} positive integers, got {value!r}.")
    return out


# ------------------------------------------------------------------------------------ data path at real size
#: slices of the paper's four datasets (LiTS 131 x ~450, KiTS19 210 x ~220, MSD Spleen 41 x ~90, BTCV 30 x ~150)
FOUR_DATASETS_SLICES = 150_000

#: settings of the data section with ``quick``: two small volumes, one worker count; a few seconds
QUICK_DATA_SETTINGS: dict[str, Any] = {"num_volumes": 2, "volume_shape": (64, 64, 40), "spatial_size": 64,
                                       "train_size": 48, "batch": 4, "workers": (1,), "batches": 5,
                                       "baseline_batches": 2, "preprocess_workers": 1}


def write_synthetic_ct(image_path: str | os.PathLike, label_path: str | os.PathLike,
                       shape: Sequence[int] = (512, 512, 450), dataset: str = "btcv", seed: int = 0) -> None:
    """Write a real-size synthetic CT (int16 HU NIfTI: air, a body, liver / kidney / spleen blocks over slice
    ranges, noise) and its label in ``dataset``'s own label convention (uint8), as the users' data look to the
    pipeline. ``.nii`` or ``.nii.gz`` by the file name."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    h, w, d = (int(s) for s in shape)
    x = (np.arange(h) - h / 2)[:, None] / (h / 2)
    y = (np.arange(w) - w / 2)[None, :] / (w / 2)
    img = np.full((h, w, d), -1000, dtype=np.int16)
    img[(x / 0.85) ** 2 + (y / 0.7) ** 2 < 1] = 40
    lab = np.zeros((h, w, d), dtype=np.uint8)
    jitter = rng.uniform(-0.05, 0.05, size=6)
    organs = {1: (-0.3, 0.2, 0.25, 0.3, 0.2, 0.7), 2: (0.35, -0.25, 0.1, 0.12, 0.45, 0.75),
              3: (0.35, 0.35, 0.12, 0.1, 0.25, 0.45)}
    for c, (cx, cy, rx, ry, z0, z1) in organs.items():
        m = ((x - cx - jitter[c]) / rx) ** 2 + ((y - cy - jitter[c + 2]) / ry) ** 2 < 1
        zs = slice(int(z0 * d), max(int(z0 * d) + 1, int(z1 * d)))
        lab[m, zs] = c
        img[m, zs] = 60 + 30 * c
    img += rng.integers(-20, 21, size=img.shape, dtype=np.int16)
    raw_of_global = {"lits": {1: 1}, "kits19": {2: 1}, "msd_spleen": {3: 1}, "btcv": {1: 6, 2: 2, 3: 1}}[dataset]
    raw = np.zeros_like(lab)
    for g, r in raw_of_global.items():
        raw[lab == g] = r
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img, affine), os.fspath(image_path))
    nib.save(nib.Nifti1Image(raw, affine), os.fspath(label_path))


def _rss_pss_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB from ``/proc/<pid>/smaps_rollup`` (NaN where unavailable)."""
    rss = pss = float("nan")
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``), NaN where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
    except OSError:
        return out
    for k in kids:
        out += [k] + _children(k)
    return out


class _MemoryMonitor:
    """Peak RSS / PSS (MiB) of this process and of its child processes (DataLoader or preprocessing workers),
    polled every ``interval`` s in a thread (reading smaps_rollup stalls the process read: keep it rare); ``with``
    it around the measured code."""

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self.interval = interval
        self.peak = {"main_rss_mb": 0.0, "main_pss_mb": 0.0, "worker_rss_mb": 0.0, "worker_pss_mb": 0.0,
                     "total_pss_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        """Take one sample now (e.g. while short-lived workers are still alive)."""
        self._poll()

    def _poll(self) -> None:
        rss, pss = _rss_pss_mb(os.getpid())
        total = pss
        p = self.peak
        p["main_rss_mb"], p["main_pss_mb"] = max(p["main_rss_mb"], rss), max(p["main_pss_mb"], pss)
        for k in _children(os.getpid()):
            r, s = _rss_pss_mb(k)
            if math.isfinite(r):
                p["worker_rss_mb"], p["worker_pss_mb"] = max(p["worker_rss_mb"], r), max(p["worker_pss_mb"], s)
                total += s
        p["total_pss_mb"] = max(p["total_pss_mb"], total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> "_MemoryMonitor":
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def _loader_rate(dataset: Any, items: Sequence[Mapping], batch: int, batches: int, num_workers: int,
                 seed: int) -> dict:
    """Samples/s of ``dataset`` through a MONAI DataLoader with ``PartialLabelSampler`` (mixed), first batch
    (worker start) not timed, plus peak memory of the main process and the workers during the run."""
    from monai.data import DataLoader

    from pipofan_monai.apps.training import PartialLabelSampler

    sampler = PartialLabelSampler([d.get("dataset") for d in items], mode="mixed", seed=seed,
                                  samples_per_epoch=batch * (batches + 1))
    sampler.set_epoch(1)
    with _MemoryMonitor() as mon:
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=num_workers)
        it = iter(loader)
        first = next(it)
        procs = _children(os.getpid()) if num_workers > 0 else [os.getpid()]
        cpu0 = {p: _cpu_seconds(p) for p in procs}
        t0 = time.perf_counter()
        n = 0
        for _ in range(int(batches)):  # no next() after the last batch: StopIteration would end the workers first
            n += int(next(it)["image"].shape[0])
        elapsed = time.perf_counter() - t0
        deltas = [_cpu_seconds(p) - c for p, c in cpu0.items()]  # read before the workers exit
        cpu = sum(d for d in deltas if math.isfinite(d))
        mon.poll()  # the workers' memory at the end of the run, however short it was
        del it, loader
    rate = n / elapsed if elapsed > 0 else float("nan")
    # samples per CPU-second of the workers: what one worker delivers when it has a core to itself (on a shared
    # machine the wall-clock rate also measures the other jobs)
    per_cpu = n / cpu if cpu > 0 else float("nan")
    return {"num_workers": num_workers, "samples": n, "seconds": elapsed, "samples_per_s": rate,
            "samples_per_s_per_worker": rate / max(1, num_workers), "worker_cpu_s": cpu,
            "samples_per_worker_cpu_s": per_cpu, "sample_shape": list(first["image"].shape[1:]), "memory": mon.peak}


def _first_iteration(make_dataset: Callable[[], Any], items: Sequence[Mapping], batch: int, num_workers: int,
                     seed: int) -> tuple[Any, float, dict]:
    """(dataset, seconds from construction to the first batch, peak memory), as a training run starts."""
    from monai.data import DataLoader

    from pipofan_monai.apps.training import PartialLabelSampler

    with _MemoryMonitor() as mon:
        t0 = time.perf_counter()
        ds = make_dataset()
        sampler = PartialLabelSampler([d.get("dataset") for d in items], mode="mixed", seed=seed,
                                      samples_per_epoch=batch)
        sampler.set_epoch(1)
        next(iter(DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=num_workers)))
        seconds = time.perf_counter() - t0
    return ds, seconds, mon.peak


def benchmark_data_path(
    num_volumes: int = 6,
    volume_shape: Sequence[int] = (512, 512, 450),
    spatial_size: int = 256,
    train_size: int = 224,
    batch: int = 8,
    workers: Sequence[int] = (1, 2),
    batches: int = 50,
    baseline_batches: int = 3,
    preprocess_workers: int = 2,
    baseline: bool = True,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The training data path at real size: the memory-mapped cache (``cache="mmap"``) against MONAI's
    ``CacheDataset(copy_cache=True)`` (the old path), both in this run, on generated int16 NIfTI volumes.

    Reports bytes per cached slice and in total, the extrapolation to the four datasets
    (:data:`FOUR_DATASETS_SLICES` slices), samples/s (and per worker) for each worker count, peak RSS / PSS of
    the main process and the workers, first-run time to the first batch (preprocessing with
    ``preprocess_workers`` processes included) and second-run time (cache found), and the ratio to the baseline
    at the same worker count.

    Args:
        num_volumes: generated volumes (datasets cycle LiTS, KiTS19, MSD Spleen, BTCV).
        volume_shape: ``(H, W, D)`` of each volume. Default the users' typical 512x512x450.
        spatial_size, train_size: in-plane resize and crop of the bundle.
        batch: DataLoader batch size.
        workers: DataLoader worker counts measured.
        batches: timed batches per worker count (mmap path).
        baseline_batches: timed batches of the baseline (slow at real size).
        preprocess_workers: processes filling the cache (threads for ``CacheDataset``).
        baseline: also measure ``CacheDataset(copy_cache=True)``.
        seed: data and sampling seed.
        workdir: parent of the temporary folder (volumes + cache; about 0.4 GB per 512x512x450 volume).
        log: progress messages.
    """
    from monai.data import CacheDataset

    from pipofan_monai.apps.training.cached_data import CachedSliceDataset
    from pipofan_monai.apps.training import get_train_transforms

    log = log or _progress
    shape = tuple(int(s) for s in volume_shape)
    workers = [int(w) for w in (workers if isinstance(workers, (list, tuple)) else [workers])]
    sources = ("lits", "kits19", "msd_spleen", "btcv")
    out: dict[str, Any] = {"num_volumes": int(num_volumes), "volume_shape": list(shape), "spatial_size": spatial_size,
                           "train_size": train_size, "batch": batch, "preprocess_workers": preprocess_workers,
                           "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="pipofan_bench_cache_", dir=workdir) as tmp:
        t0 = time.perf_counter()
        items = []
        for i in range(int(num_volumes)):
            ds_name = sources[i % len(sources)]
            img, lab = Path(tmp) / f"ct_{i}.nii", Path(tmp) / f"seg_{i}.nii"
            write_synthetic_ct(img, lab, shape, ds_name, seed + i)
            items.append({"image": str(img), "label": str(lab), "dataset": ds_name})
        out["write_s"] = time.perf_counter() - t0
        log(f"  wrote {num_volumes} x {shape} int16 volumes in {out['write_s']:.1f} s")
        cache_dir = Path(tmp) / "cache"
        kw = {"spatial_size": spatial_size, "roi_size": train_size}

        def make_mmap() -> Any:
            return CachedSliceDataset(items, cache_dir, num_workers=preprocess_workers, progress=False, **kw)

        w_first = workers[-1]
        ds, first_s, first_mem = _first_iteration(make_mmap, items, batch, w_first, seed)
        log(f"  mmap first run (preprocessing {num_volumes} volumes, {preprocess_workers} processes): first batch "
            f"after {first_s:.1f} s")
        _, second_s, _ = _first_iteration(make_mmap, items, batch, w_first, seed)
        log(f"  mmap second run: first batch after {second_s:.2f} s")
        nbytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        nslices = sum(e.shape[0] for e in ds.entries)
        per_slice = nbytes / nslices
        mmap: dict[str, Any] = {
            "first_run_s": first_s, "second_run_s": second_s, "first_run_memory": first_mem,
            "preprocess_s_per_volume": first_s * preprocess_workers / max(1, int(num_volumes)),
            "cache_bytes": nbytes, "cached_slices": nslices, "bytes_per_slice": per_slice,
            "four_datasets_gb": per_slice * FOUR_DATASETS_SLICES / 1e9, "runs": {}}
        for w in workers:
            r = _loader_rate(ds, items, batch, int(batches), w, seed)
            mmap["runs"][str(w)] = r
            log(f"  mmap, {w} workers: {r['samples_per_s']:.1f} samples/s ({r['samples_per_s_per_worker']:.1f} per "
                f"worker), peak RSS main {r['memory']['main_rss_mb']:.0f} MiB / worker {r['memory']['worker_rss_mb']:.0f}"
                f" MiB, PSS worker {r['memory']['worker_pss_mb']:.0f} MiB")
        out["mmap"] = mmap
        del ds
        out["baseline"] = None
        if baseline:
            def make_cached() -> Any:
                return CacheDataset(items, get_train_transforms(**kw), cache_rate=1.0, copy_cache=True,
                                    num_workers=max(1, preprocess_workers), progress=False)

            bds, b_first, b_mem = _first_iteration(make_cached, items, batch, workers[0], seed)
            log(f"  CacheDataset(copy_cache=True): first batch after {b_first:.1f} s")
            # float32 image + float32 label per voxel, as cached in RAM by the old path
            b_per_slice = spatial_size * spatial_size * 8
            br = _loader_rate(bds, items, batch, int(baseline_batches), workers[0], seed)
            log(f"  CacheDataset(copy_cache=True), {workers[0]} workers: {br['samples_per_s']:.2f} samples/s, "
                f"peak RSS main {br['memory']['main_rss_mb']:.0f} MiB")
            out["baseline"] = {"first_run_s": b_first, "first_run_memory": b_mem, "bytes_per_slice_ram": b_per_slice,
                               "four_datasets_ram_gb": b_per_slice * FOUR_DATASETS_SLICES / 1e9,
                               "runs": {str(workers[0]): br}}
            out["ratio"] = mmap["runs"][str(workers[0])]["samples_per_s"] / br["samples_per_s"]
            del bds
    first = out["mmap"]["runs"][str(workers[0])]
    out["samples_per_s"], out["num_workers"], out["sample_shape"] = (first["samples_per_s"], first["num_workers"],
                                                                    first["sample_shape"])
    out["samples"] = first["samples"]
    return out


def format_data_report(data: Mapping[str, Any]) -> list[str]:
    """Lines of the data-path table of a :func:`benchmark_data_path` result."""
    m = data["mmap"]
    lines = [f"data path: {data['num_volumes']} x {'x'.join(map(str, data['volume_shape']))} int16 volumes, "
             f"spatial_size {data['spatial_size']}, crops {data['train_size']}², batch {data['batch']}, "
             f"{data['cpu_count']} CPUs",
             f"  cache on disk: {m['bytes_per_slice'] / 1024:.0f} KiB per slice, {m['cache_bytes'] / 1e9:.2f} GB here, "
             f"{m['four_datasets_gb']:.1f} GB for the four datasets ({FOUR_DATASETS_SLICES:,} slices)",
             f"  first run (preprocess, {data['preprocess_workers']} processes) to first batch {m['first_run_s']:.1f} s "
             f"(~{m['preprocess_s_per_volume']:.0f} s per volume per process), second run {m['second_run_s']:.2f} s",
             f"  {'path':<30}{'workers':>8}{'samples/s':>11}{'/worker':>9}{'/wrk-CPU-s':>11}{'RSS main':>10}"
             f"{'PSS main':>10}{'RSS wrk':>9}{'PSS wrk':>9}  (peak MiB)"]
    rows = [("mmap cache", r) for r in m["runs"].values()]
    if data.get("baseline"):
        rows += [("CacheDataset(copy_cache=True)", r) for r in data["baseline"]["runs"].values()]
    for name, r in rows:
        mem = r["memory"]
        lines.append(f"  {name:<30}{r['num_workers']:>8}{r['samples_per_s']:>11.1f}{r['samples_per_s_per_worker']:>9.1f}"
                     f"{r['samples_per_worker_cpu_s']:>11.1f}{mem['main_rss_mb']:>10.0f}{mem['main_pss_mb']:>10.0f}{mem['worker_rss_mb']:>9.0f}"
                     f"{mem['worker_pss_mb']:>9.0f}")
    if data.get("baseline"):
        b = data["baseline"]
        lines.append(f"  baseline first batch after {b['first_run_s']:.1f} s; holds {b['bytes_per_slice_ram'] / 1024:.0f} "
                     f"KiB per slice in RAM ({b['four_datasets_ram_gb']:.0f} GB for the four datasets); "
                     f"mmap / baseline samples/s {data['ratio']:.1f}x")
    return lines


def run_benchmark(
    device: str = "auto", size: int = 256, batch: int = 32, channels: Any = (64, 128, 256, 512, 512),
    compile: Any = False, compile_mode: str | None = None, volume_shape: Any = (512, 512, 200),
    e2e_spatial_size: int | None = None, train_batch: int = 32, train_size: int = 224, iters: int = 10,
    train_steps: int = 5, accuracy_slices: int = 16, ckpt: str | None = None, output: str | None = None,
    quick: Any = False, sections: Any = SECTIONS, threads: int | None = None, seed: int = 0,
    data_volume_shape: Any = (512, 512, 450), data_volumes: int = 6, data_workers: Any = (1, 2), data_batches: int = 50,
    data_baseline: Any = True, data_preprocess_workers: int = 2, data_workdir: str | None = None,
    memory_depths: Any = (100, 200, 450), memory_floor_batches: Any = (32, 8, 1), memory_floor_depth: int = 32,
) -> dict:
    """Run every section and return (and optionally write) the report.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
        size: in-plane size of the inference benchmark (multiple of 16).
        batch: slices per forward pass (inference and end-to-end ``sw_batch_size``).
        channels: the five encoder widths of PIPO-FAN (bundle default ``[64,128,256,512,512]``).
        compile: also ``torch.compile`` the optimized path (CUDA; on the CPU it is measured if asked too).
        compile_mode: ``torch.compile`` mode, e.g. ``"max-autotune"`` (default: PyTorch's default).
        volume_shape: ``(H, W, D)`` of the synthetic CT of the end-to-end section.
        e2e_spatial_size: the bundle's in-plane ``spatial_size`` for the end-to-end section (default ``size``).
        train_batch: training batch size.
        train_size: training crop size (multiple of 16).
        iters: timed inference batches per path.
        train_steps: timed training steps per path.
        accuracy_slices: slices of the phantom used for the label-map agreement check.
        ckpt: optional checkpoint (``network_channels`` must match); default: seeded random weights with BatchNorm
            statistics calibrated on the phantom.
        output: JSON file to write (``None``: don't write).
        quick: use :data:`QUICK_SETTINGS` (tiny network and volume; < 60 s on 2 CPU cores).
        sections: subset of ``("inference", "training", "end_to_end", "data")``.
        data_volume_shape: ``(H, W, D)`` of the generated int16 volumes of the data-path section (512x512x450).
        data_volumes: number of those volumes (6).
        data_workers: DataLoader worker counts of the data-path section (``[1, 2]``).
        data_batches: timed batches (of 8) per worker count of the memory-mapped path (50).
        data_baseline: also measure ``CacheDataset(copy_cache=True)`` in the same run (True).
        data_preprocess_workers: processes filling the cache (2).
        data_workdir: parent folder of the data section's volumes and cache (default: the system temp folder).
        memory_depths: slice counts of the 512x512 int16 volumes of the inference-memory section (one fresh process
            per volume and path: whole-volume ``Invertd`` vs streamed), narrow network, network input ``size``.
        memory_floor_batches: ``sw_batch_size`` values at which the inference-memory section measures the floor of
            the full network (``channels``) on ``memory_floor_depth`` slices.
        threads: ``torch.set_num_threads`` (CPU).
        seed: seed of weights and data.

    Returns:
        The report dict (see :func:`format_report`).
    """
    quick = as_bool(quick, "quick")
    compile = as_bool(compile, "compile")
    if quick:
        size, batch, channels = QUICK_SETTINGS["size"], QUICK_SETTINGS["batch"], QUICK_SETTINGS["channels"]
        volume_shape, train_batch = QUICK_SETTINGS["volume_shape"], QUICK_SETTINGS["train_batch"]
        train_size, iters = QUICK_SETTINGS["train_size"], QUICK_SETTINGS["iters"]
        train_steps = QUICK_SETTINGS["train_steps"]
        accuracy_slices, e2e_spatial_size = QUICK_SETTINGS["accuracy_slices"], QUICK_SETTINGS["e2e_spatial_size"]
    channels = _parse_ints(channels, "channels", 5)
    volume_shape = _parse_ints(volume_shape, "volume_shape", 3)
    if isinstance(sections, str):
        sections = [s.strip() for s in sections.strip("[]()").replace("'", "").replace('"', "").split(",") if s.strip()]
    sections = tuple(sections)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"sections must be among {', '.join(SECTIONS)}, got {bad}.")
    for name, v in (("size", size), ("train_size", train_size)):
        if int(v) < 16 or int(v) % 16:
            raise ValueError(f"{name} must be a positive multiple of 16, got {v}.")
    for name, v in (("batch", batch), ("train_batch", train_batch), ("iters", iters), ("train_steps", train_steps),
                    ("accuracy_slices", accuracy_slices)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}.")
    size, batch, e2e_size = int(size), int(batch), int(e2e_spatial_size or size)
    if threads is None and quick:
        threads = 1  # a tiny network gains nothing from threads, and a shared CPU makes several threads erratic
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_all = time.perf_counter()
    report: dict[str, Any] = {
        "device": _device_info(dev), "settings": {
            "size": size, "batch": batch, "channels": list(channels), "compile": compile, "compile_mode": compile_mode,
            "volume_shape": list(volume_shape), "e2e_spatial_size": e2e_size, "train_batch": int(train_batch),
            "train_size": int(train_size), "iters": int(iters), "train_steps": int(train_steps), "quick": quick,
            "ckpt": ckpt, "seed": seed, "sections": list(sections)},
    }
    log = _progress
    log(f"benchmark on {report['device']['name']} ({dev}), network channels {list(channels)}")
    base_net = make_network(None if ckpt else channels, seed, ckpt)
    acc_plans = resolve_plans(ckpt if ckpt else None, spatial_size=None if ckpt else size)
    acc_volume = accuracy_volume(acc_plans["preprocessing"], int(accuracy_slices), seed)
    if not ckpt:  # random weights: BatchNorm statistics from real-looking slabs -> non-trivial label maps
        calibrate_batchnorm(base_net, accuracy_slabs(None, int(accuracy_slices), seed, size))
    report["network"] = {"parameters": sum(p.numel() for p in base_net.parameters()), "weights": ckpt or "random+bn"}

    # candidates of the optimized path
    if dev.type == "cuda":
        name = f"{default_amp_dtype(dev)} autocast channels_last" + (" compile" if compile else "")
        candidates = [ExecutionPath(name, default_amp_dtype(dev), True, compile, compile_mode)]
    else:
        candidates = cpu_candidates()
        if compile:
            candidates += [ExecutionPath(c.name + " compile", c.amp_dtype, True, True, compile_mode)
                           for c in candidates]

    # accuracy of every candidate against the fp32 baseline
    ref = (prepare_network(base_net, BASELINE, dev), BASELINE)
    accuracy = {}
    for cand in candidates:
        log(f"accuracy: label maps of {cand.name!r} vs fp32 on a {tuple(acc_volume.shape[2:])} phantom")
        accuracy[cand.name] = label_agreement(acc_volume, ref, (prepare_network(base_net, cand, dev), cand), dev,
                                              sw_batch_size=batch)
        log(f"  min Dice {accuracy[cand.name]['min_dice']:.4f} -> {'ok' if accuracy[cand.name]['passed'] else 'FAIL'}")
    report["accuracy"] = accuracy
    del ref

    # (a) inference
    report["inference"] = None
    optimized = candidates[0]
    if "inference" in sections:
        log(f"inference: {BASELINE.name}, batch {batch} of {size}x{size}, {iters} iterations")
        base = benchmark_inference(base_net, BASELINE, dev, size, batch, iters, seed=seed)
        log(f"  {base['slices_per_s']:.1f} slices/s")
        measured = {}
        for cand in candidates:
            log(f"inference: {cand.name}")
            measured[cand.name] = benchmark_inference(base_net, cand, dev, size, batch, iters, seed=seed)
            log(f"  {measured[cand.name]['slices_per_s']:.1f} slices/s")
        optimized = _choose(candidates, measured, accuracy, "slices_per_s", base["slices_per_s"],
                            keep=dev.type == "cuda")
        opt = measured.get(optimized.name, base)
        report["inference"] = {"baseline": base, "candidates": measured, "optimized": opt,
                               "optimized_path": optimized.name, "ratio": opt["slices_per_s"] / base["slices_per_s"]}
    elif dev.type != "cuda":  # not measured: the first candidate that passed the accuracy check
        optimized = next((c for c in candidates if accuracy[c.name]["passed"]), BASELINE)
    report["optimized_path"] = asdict(optimized)

    # (b) training
    report["training"] = None
    if "training" in sections:
        log(f"training: {BASELINE.name}, batch {train_batch} of 3x{train_size}x{train_size}, {train_steps} steps")
        tbase = benchmark_training(base_net, BASELINE, dev, int(train_batch), int(train_size), int(train_steps),
                                   seed=seed)
        log(f"  {tbase['samples_per_s']:.1f} samples/s")
        tmeasured = {}
        for cand in candidates:
            log(f"training: {cand.name}")
            tmeasured[cand.name] = benchmark_training(base_net, cand, dev, int(train_batch), int(train_size),
                                                      int(train_steps), seed=seed)
            log(f"  {tmeasured[cand.name]['samples_per_s']:.1f} samples/s")
        tpath = _choose(candidates, tmeasured, accuracy, "samples_per_s", tbase["samples_per_s"],
                        keep=dev.type == "cuda")
        topt = tmeasured.get(tpath.name, tbase)
        report["training"] = {"baseline": tbase, "candidates": tmeasured, "optimized": topt,
                              "optimized_path": tpath.name, "ratio": topt["samples_per_s"] / tbase["samples_per_s"]}

    # (c) end to end, (e) pipeline / bare network
    report["end_to_end"] = None
    if "end_to_end" in sections:
        log(f"end to end: synthetic CT {tuple(volume_shape)} -> bundle inference ({optimized.name}, spatial_size "
            f"{e2e_size}, sw_batch_size {batch})")
        e2e = benchmark_end_to_end(base_net, optimized, dev, volume_shape, e2e_size, batch, seed=seed)
        log("  " + ", ".join(f"{k} {v:.2f}s" for k, v in e2e["stages"].items())
            + f"; total {e2e['total_s']:.2f}s, bare network {e2e['bare_network_s']:.2f}s")
        report["end_to_end"] = e2e

    # (f) the training data path alone, at real size: memory-mapped cache vs CacheDataset(copy_cache=True)
    report["data"] = None
    if "data" in sections:
        if quick:
            dkw = dict(QUICK_DATA_SETTINGS)
        else:
            dw = (int(data_workers),) if isinstance(data_workers, int) else _parse_ints(data_workers, "data_workers")
            dkw = {"num_volumes": int(data_volumes), "volume_shape": _parse_ints(data_volume_shape, "data_volume_shape", 3),
                   "spatial_size": e2e_size, "train_size": int(train_size), "batch": 8, "workers": dw,
                   "batches": int(data_batches), "baseline_batches": 3,
                   "preprocess_workers": int(data_preprocess_workers)}
        log(f"data path: {dkw['num_volumes']} generated {tuple(dkw['volume_shape'])} int16 volumes, memory-mapped "
            f"cache vs CacheDataset(copy_cache=True), workers {list(dkw['workers'])}")
        data = benchmark_data_path(**dkw, baseline=as_bool(data_baseline, "data_baseline"), seed=seed,
                                   workdir=data_workdir, log=log)
        if report.get("training"):
            data["over_training_step"] = data["samples_per_s"] / report["training"]["optimized"]["samples_per_s"]
        report["data"] = data

    # (g) inference memory at real size: MiB per slice and the floor, whole-volume inversion vs streamed
    report["inference_memory"] = None
    if "inference_memory" in sections:
        if quick:
            mkw = dict(QUICK_MEMORY_SETTINGS)
        else:
            fb = (int(memory_floor_batches),) if isinstance(memory_floor_batches, int) else _parse_ints(
                memory_floor_batches, "memory_floor_batches")
            mkw = {"depths": (int(memory_depths),) if isinstance(memory_depths, int) else _parse_ints(
                memory_depths, "memory_depths"), "floor_batches": fb, "floor_depth": int(memory_floor_depth),
                "floor_channels": channels, "spatial_size": e2e_size, "slope_batch": batch}
        log(f"inference memory: 512x512xD int16 CT, D = {list(mkw['depths'])}, whole-volume Invertd vs streamed; "
            f"floor at sw_batch_size {list(mkw['floor_batches'])}")
        report["inference_memory"] = benchmark_inference_memory(**mkw, threads=threads, seed=seed, log=log)
    report["elapsed_s"] = time.perf_counter() - t_all
    report["table"] = format_report(report)
    if output:
        atomic_write_json(output, report, default=str)
        log(f"wrote {output}")
    return report


def _choose(candidates, measured, accuracy, key, base_value, keep: bool = False) -> ExecutionPath:
    """The fastest measured candidate, preferring those that passed the accuracy check (a failing one is chosen only
    when none passes, and is flagged in the report); the baseline when the chosen one does not beat it on the CPU
    (with ``keep``, as on CUDA, the optimized path is always reported)."""
    pool = [c for c in candidates if c.name in measured]
    passing = [c for c in pool if accuracy[c.name]["passed"]]
    if not pool:
        return BASELINE
    best = max(passing or pool, key=lambda c: measured[c.name][key])
    return best if keep or measured[best.name][key] > base_value else BASELINE


def _device_info(dev: torch.device) -> dict:
    info = {"type": dev.type, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu_bf16": _cpu_has_bf16()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, memory_gb=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        info["name"] = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                info["name"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return info


def _progress(msg: str) -> None:
    logger.info(msg)
    if not logging.getLogger().handlers:
        print(msg, file=sys.stderr, flush=True)


def _section_rows(section: Mapping[str, Any], title: str, rate: str, memory_note: str = "") -> list[str]:
    """Table rows of one timed section: baseline vs optimized ``rate``, each candidate, peak memory."""
    base = section["baseline"]
    rows = [f"{title:<34}{base[rate]:>24.1f}{section['optimized'][rate]:>16.1f}{section['ratio']:>8.2f}  "
            f"{section['optimized_path']}"]
    rows += [f"{'  candidate ' + name:<58}{m[rate]:>16.1f}{m[rate] / base[rate]:>8.2f}"
             for name, m in section["candidates"].items()]
    rows.append(f"{'  peak memory MB':<34}{base['memory']['peak_mb']:>24.0f}"
                f"{section['optimized']['memory']['peak_mb']:>16.0f}{memory_note}")
    return rows


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of a :func:`run_benchmark` report."""
    dev = report["device"]
    s = report["settings"]
    lines = [f"PIPO-FAN benchmark on {dev['name']} ({dev['type']}, {dev['threads']} threads, torch {dev['torch']}); "
             f"channels {s['channels']}, {report['network']['parameters']:,} parameters",
             f"{'section':<34}{'baseline (fp32 eager)':>24}{'optimized':>16}{'ratio':>8}  optimized path"]
    inf = report.get("inference")
    if inf:
        lines += _section_rows(inf, f"inference slices/s @{s['size']}², b{s['batch']}", "slices_per_s",
                               f"  ({inf['baseline']['memory']['kind']})")
    tr = report.get("training")
    if tr:
        lines += _section_rows(tr, f"training samples/s @{s['train_size']}², b{s['train_batch']}", "samples_per_s")
    for name, acc in (report.get("accuracy") or {}).items():
        lines.append(f"accuracy {name}: Dice vs fp32 " + ", ".join(f"{k} {v:.4f}" for k, v in acc["dice"].items())
                     + f" -> {'pass' if acc['passed'] else 'FAIL'} (>= {acc['threshold']})")
    if report.get("accuracy") and report["network"]["weights"] == "random+bn":
        lines.append("  (random weights have small logit margins: pass --ckpt with a trained model for a meaningful check)")
    data = report.get("data")
    if data:
        lines.append(f"{'data path samples/s, b' + str(data['batch']) + ', ' + str(data['num_workers']) + ' workers':<34}"
                     f"{data['samples_per_s']:>24.1f}"
                     + (f"  ({data['over_training_step']:.2f}x the optimized training step)"
                        if "over_training_step" in data else ""))
        lines += format_data_report(data)
    if report.get("inference_memory"):
        lines += format_memory_report(report["inference_memory"])
    e2e = report.get("end_to_end")
    if e2e:
        lines.append(f"end to end {'x'.join(map(str, e2e['volume_shape']))} (spatial_size {e2e['spatial_size']}, "
                     f"{e2e['path']['name']}): total {e2e['total_s']:.2f} s, peak memory "
                     f"{e2e['memory']['peak_mb']:.0f} MB")
        lines.append("  " + " | ".join(f"{k} {v:.2f} s" for k, v in e2e["stages"].items()))
        lines.append(f"  pipeline / bare network forward ({e2e['volume_shape'][2]} slices): "
                     f"{e2e['total_s']:.2f} / {e2e['bare_network_s']:.2f} s = {e2e['pipeline_over_bare']:.2f}")
    return "\n".join(lines)
