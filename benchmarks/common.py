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

"""Shared parts of the benchmarks: execution paths, devices, the benchmark's networks and synthetic CTs, peak
memory and progress messages."""

from __future__ import annotations

import ast
import copy
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipofan_monai import bundle_dir
from pipofan_monai.plans import load_network_weights, network_from_plans, resolve_plans

logger = logging.getLogger("pipofan.benchmark")

#: the bundle's inference config, whose components the end-to-end sections run
DEFAULT_CONFIG = bundle_dir() / "configs" / "inference.json"

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
    """The library's check (:func:`pipofan_monai.inference.cpu_has_native_bf16`), the one rule of when bfloat16 is
    worth it on a CPU."""
    from pipofan_monai.inference import cpu_has_native_bf16

    return cpu_has_native_bf16()


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


def _phantom(shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic abdominal CT (int16 HU, RAS affine) of ``shape``; the demo phantom generator."""
    from pipofan_monai.apps.dataset_conversion.demo import synthesize_case

    shape = [int(s) for s in shape]
    img, _, affine = synthesize_case(seed, shape=tuple(max(s, 8) for s in shape))  # the generator needs >= 8
    return np.ascontiguousarray(img[: shape[0], : shape[1], : shape[2]]), affine


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


@contextmanager
def rss_window() -> Any:
    """Memory and time of a block: yields a dict that holds ``before_mib`` (RSS on entry) and, on exit (also after
    an exception), ``peak_mib`` (the high-water mark, reset on entry), ``after_mib`` and ``seconds``. The one
    measurement behind every section's per-stage peaks."""
    rec: dict[str, float] = {"before_mib": _status_mib("VmRSS")}
    _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        yield rec
    finally:
        rec["peak_mib"] = max(_status_mib("VmHWM"), _status_mib("VmRSS"))
        rec["after_mib"] = _status_mib("VmRSS")
        rec["seconds"] = time.perf_counter() - t0


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


