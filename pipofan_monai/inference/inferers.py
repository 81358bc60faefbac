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

"""2.5D sliding-slice inference: every axial slice of a volume is segmented by a 2D network that sees the
slice and its neighbours stacked as channels (``2 * context + 1`` slices; context 1 in the paper)."""

from __future__ import annotations

import logging
import math
import weakref
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from pipofan_monai.preprocessing.intensity import all_finite
from pipofan_monai.preprocessing.slices import make_slab_indices
from monai.utils import BlendMode, PytorchPadMode, convert_to_dst_type, look_up_option, optional_import

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["SlidingSliceInferer", "AutocastInferer", "auto_sw_batch_size", "available_memory", "first_conv_channels",
           "cpu_has_native_bf16", "amp_dtype_for"]

logger = logging.getLogger(__name__)

#: most slabs per forward pass that ``sw_batch_size="auto"`` chooses (the bundle's fixed default before "auto")
AUTO_SW_BATCH_CAP = 32
#: peak bytes per slab in a forward pass, per input pixel and per channel of the network's first convolution:
#: measured for PIPOFAN (fp32, no grad, CPU) with the benchmark's inference_memory section: the full network
#: (first width 64) at 256² rises 4.5 GiB at 32 slabs, 1.3 GiB at 8, 0.23 GiB at 1, i.e. about 143 MB per slab
#: = 34 bytes per pixel and channel; 36 leaves a margin.
SLAB_BYTES_PER_PIXEL_CHANNEL = 36.0
#: share of the available memory that "auto" lets the forward passes use (the volume, its preprocessing and the
#: output need the rest)
AUTO_MEMORY_FRACTION = 0.5


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products in hardware (Intel AMX tiles or AVX512-BF16).

    Why it matters: oneDNN runs convolutions under ``torch.autocast("cpu", dtype=torch.bfloat16)`` on those units.
    On the project's 2-core Xeon with AMX (2026-12-05, load 0.5, 2 torch threads), channels_last PIPOFAN: a
    quick-start training iteration (widths 16..128, 8 x 112²) 0.18 s in bfloat16 against 0.29 s in float32, a
    full-width forward pass of 8 x 256² 1.03 s against 3.14 s. Without these units bfloat16 is emulated and
    slower than float32, hence the check (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True on any
    AVX-512 CPU, emulated or not). Reads torch's CPU feature probes, else ``/proc/cpuinfo``'s flags."""
    import torch.cpu as torch_cpu

    probes = [getattr(torch_cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(p) for p in probes):
        try:
            return bool(torch.backends.mkldnn.is_available() and any(p() for p in probes))
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return torch.backends.mkldnn.is_available() and bool({"amx_bf16", "avx512_bf16"} & set(flags))


def amp_dtype_for(device: torch.device | str, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype of mixed precision on ``device``: None when ``amp`` is off or the device has no fast
    half-precision path (a CPU without :func:`cpu_has_native_bf16`); bfloat16 on such a CPU and on a GPU that
    supports it, float16 on other GPUs. One rule for training, validation and inference (the bundle's ``amp``)."""
    device = torch.device(device)
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` on the inputs' device, every output returned as float32.

    MONAI's ``SupervisedTrainer(amp=True)`` autocasts on CUDA only (``torch.autocast("cuda")``); this inferer
    gives a trainer mixed precision on a CPU with bfloat16 units (see :func:`cpu_has_native_bf16`), with the
    trainer's own ``amp`` left off there (its GradScaler is for float16 on CUDA; bfloat16 needs none). The
    outputs leave in float32 so that the loss (softmax, log) runs in full precision, as under CUDA autocast.

    Args:
        dtype: autocast dtype (``torch.bfloat16`` or its name), or None to run the network as it is.

    Shapes: whatever the network returns; a tensor or a list / tuple of tensors (the pyramid outputs of
    :class:`~pipofan_monai.networks.PIPOFAN` in training mode).
    """

    def __init__(self, dtype: torch.dtype | str | None = torch.bfloat16) -> None:
        super().__init__()
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype must be a torch dtype name such as 'bfloat16', got {dtype!r}.")
            dtype = getattr(torch, dtype)
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() if isinstance(o, torch.Tensor) else o for o in out)
        return out


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory (``torch.cuda.mem_get_info``) or, on the
    CPU, ``MemAvailable`` of ``/proc/meminfo`` bounded by the cgroup's memory limit (what a cluster scheduler or a
    container allows). None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


def first_conv_channels(network: Callable, default: int = 64) -> int:
    """Output channels of the first 2D convolution of ``network`` (its widest full-resolution activations), or
    ``default`` for a callable that is not a module with one."""
    if isinstance(network, torch.nn.Module):
        for m in network.modules():
            if isinstance(m, torch.nn.Conv2d):
                return int(m.out_channels)
    return int(default)


def auto_sw_batch_size(network: Callable, height: int, width: int, device: torch.device | str,
                       cap: int = AUTO_SW_BATCH_CAP, available: int | None = None) -> int:
    """Slabs per forward pass that fit in memory: ``AUTO_MEMORY_FRACTION`` of the available memory on ``device``
    divided by the estimated peak of one slab (``SLAB_BYTES_PER_PIXEL_CHANNEL x height x width x`` the first
    convolution's channels), between 1 and ``cap``; ``cap`` where the memory cannot be told.

    Args:
        network: the network (its first convolution's width scales the estimate).
        height, width: in-plane size of the network input.
        device: where the network runs.
        cap: the most slabs per pass. Default :data:`AUTO_SW_BATCH_CAP`.
        available: bytes available (None: :func:`available_memory` of ``device``).
    """
    if available is None:
        available = available_memory(device)
    if available is None:
        return int(cap)
    per_slab = SLAB_BYTES_PER_PIXEL_CHANNEL * int(height) * int(width) * first_conv_channels(network)
    return int(max(1, min(int(cap), int(AUTO_MEMORY_FRACTION * available // per_slab))))


class SlidingSliceInferer(Inferer):
    """2.5D inference over a volume with a 2D network taking ``2 * context + 1`` adjacent slices as channels.

    The axial (slice) axis is the LAST spatial axis, as after ``Orientationd(axcodes="RAS")``. For every slice
    ``z`` the network receives slices ``z - context .. z + context`` stacked as channels (edges replicated, so
    every slice, including the first and the last, is segmented, even when the volume has 1 or 2 slices) and its
    output for that slab becomes slice ``z`` of the result. ``sw_batch_size`` slabs go through the network in one
    forward pass; slabs are built chunk by chunk from the volume, so at most ``sw_batch_size`` slabs exist at a
    time on ``sw_device`` (memory stays bounded for volumes with 1000 slices); only the output volume is
    accumulated, on ``device``.

    In-plane, the network sees either the whole slice (``roi_size=None``, the default) or overlapping
    windows blended by :py:func:`monai.inferers.sliding_window_inference` (``roi_size=(224, 224)``,
    ``overlap=0.5``, ``mode="constant"`` is the authors' choice: 224² windows with stride 112 whose
    probabilities are averaged -- note that averaging happens on the network output, i.e. on logits unless
    ``output_activation="softmax"``, which then averages probabilities as the authors did).

    Whole-slice mode and size constraints: the network needs ``H`` and ``W`` divisible by ``pad_divisor``
    (16 for PIPO-FAN). Slices that are not are padded at the high end (bottom/right) to the next multiple with
    ``padding_mode`` (``"replicate"`` by default, or ``"constant"`` with ``cval``, ``"reflect"``, ...) and the
    output is cropped back to ``H x W``, so the output always has the input's in-plane size. In window mode the
    windows (``roi_size``) must themselves be divisible by ``pad_divisor``; slices smaller than a window are
    padded by ``sliding_window_inference`` (``padding_mode``/``cval``) and cropped back.

    Devices follow :py:class:`monai.inferers.SlidingWindowInferer`: ``sw_device`` is where the slabs are built
    and the network runs, ``device`` is where the output volume is stored. For example ``sw_device="cuda"``,
    ``device="cpu"`` computes on the GPU and keeps a long volume's output in host memory. ``sw_device=None``
    uses the device of the network's first parameter (or the input's device for a parameter-free callable);
    ``device=None`` uses the input's device.

    Args:
        context: neighbours on each side of the centre slice (1 -> 3 channels, the PIPO-FAN default).
        sw_batch_size: number of slabs (whole-slice mode) or windows (window mode) per forward pass; also
            the number of slices built per chunk. ``"auto"``: as many as fit in half the memory available on
            ``sw_device`` at the time of the call, at most 32 (:func:`auto_sw_batch_size`; the bundle's default).
            Default 64.
        roi_size: ``None`` for whole slices, or the in-plane window size ``(h, w)`` (an int means square).
        overlap: window overlap in ``[0, 1)`` (window mode only). Default 0.5.
        mode: window blending, ``"constant"`` or ``"gaussian"`` (window mode only). Default ``"constant"``.
        sigma_scale: gaussian blending sigma (window mode with ``mode="gaussian"``).
        padding_mode: how slices are padded (whole-slice mode: to a multiple of ``pad_divisor``; window mode: up
            to ``roi_size``): one of ``"replicate"``, ``"constant"``, ``"reflect"``, ``"circular"``.
        cval: fill value for ``padding_mode="constant"``.
        pad_divisor: required divisor of the network's in-plane input size (16 for PIPO-FAN; 1 disables).
        output_activation: ``None`` (return the network's logits) or ``"softmax"`` (softmax over channels,
            computed in float32 before blending/storing).
        sw_device: device for the slabs and the network (see above).
        device: device for the output volume (see above).
        amp: run the network under ``torch.autocast``. On CUDA the dtype is ``amp_dtype`` or, when ``None``,
            bfloat16 where the GPU supports it else float16. On the CPU autocast is only used when ``amp_dtype`` is
            given explicitly (otherwise ``amp`` is a no-op there). Outputs are stored as float32.
        amp_dtype: autocast dtype (``torch.bfloat16``, ``torch.float16``, or their names).
        channels_last: give the network its input in ``torch.channels_last`` memory format (convert the network
            too, ``network.to(memory_format=torch.channels_last)``, to benefit).
        progress: show a tqdm progress bar over chunks (needs ``tqdm``).
        backend: ``"torch"`` (default), ``"onnxruntime"`` or ``"auto"`` (ONNX Runtime on a CPU where installed): a
            PyTorch network given to the call runs through
            :func:`~pipofan_monai.inference.backends.prepare_network` (exported once, as long as its weights do
            not change); a network prepared by the caller runs as given.
        argmax: return the class index per voxel instead of the ``K`` outputs: ``(B, 1, H, W, D)`` ``uint8``
            (``K <= 256``), the argmax over the classes taken chunk by chunk as the chunks are computed, so the
            ``K``-channel float32 volume never exists (validation: 1 byte per voxel instead of ``4 K``); bitwise
            the argmax of the full output (the same forward passes; the first maximal class on ties).

    Example::

        inferer = SlidingSliceInferer(sw_batch_size=32, sw_device="cuda", device="cpu", amp=True)
        with torch.no_grad():
            logits = inferer(volume, net.eval())  # (B, 1, H, W, D) -> (B, K, H, W, D)
    """

    def __init__(
        self,
        context: int = 1,
        sw_batch_size: int | str = 64,
        roi_size: Sequence[int] | int | None = None,
        overlap: float = 0.5,
        mode: BlendMode | str = BlendMode.CONSTANT,
        sigma_scale: float = 0.125,
        padding_mode: PytorchPadMode | str = PytorchPadMode.REPLICATE,
        cval: float = 0.0,
        pad_divisor: int = 16,
        output_activation: str | None = None,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
        progress: bool = False,
        backend: str = "torch",
        argmax: bool = False,
    ) -> None:
        super().__init__()
        self.argmax = bool(argmax)
        from pipofan_monai.inference.backends import BACKENDS

        if str(backend).strip().lower() not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
        #: how the network runs (:func:`~pipofan_monai.inference.backends.prepare_network`)
        self.backend = str(backend).strip().lower()
        self._prepared: tuple | None = None  # (weakref to the network, weights fingerprint, prepared network)
        if int(context) < 0:
            raise ValueError(f"context must be >= 0, got {context}.")
        self.auto_batch = isinstance(sw_batch_size, str) and sw_batch_size.strip().lower() == "auto"
        if not self.auto_batch:
            try:
                sw_batch_size = int(sw_batch_size)
            except (TypeError, ValueError):
                raise ValueError(f"sw_batch_size must be an integer >= 1 or 'auto', got {sw_batch_size!r}.") from None
            if sw_batch_size < 1:
                raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if int(pad_divisor) < 1:
            raise ValueError(f"pad_divisor must be >= 1, got {pad_divisor}.")
        self.context = int(context)
        #: slabs per forward pass; with "auto", the number chosen for the last call
        self.sw_batch_size = AUTO_SW_BATCH_CAP if self.auto_batch else int(sw_batch_size)
        self._logged_batch: int | None = None  # "auto": the last number logged (logged again when it changes)
        self.pad_divisor = int(pad_divisor)
        if roi_size is not None:
            if isinstance(roi_size, (int, float)):
                roi = (int(roi_size), int(roi_size))
            else:
                roi = tuple(int(r) for r in roi_size)
            if len(roi) != 2 or any(r < 1 for r in roi):
                raise ValueError(f"roi_size must be None or two positive in-plane sizes, got {roi_size}.")
            if any(r % self.pad_divisor for r in roi):
                raise ValueError(f"roi_size {roi} must be divisible by pad_divisor={self.pad_divisor}.")
            roi_size = roi
        self.roi_size = roi_size
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        self.overlap = float(overlap)
        self.mode = look_up_option(mode, BlendMode)
        self.sigma_scale = sigma_scale
        self.padding_mode = look_up_option(padding_mode, PytorchPadMode)
        self.cval = float(cval)
        if output_activation is not None and str(output_activation).lower() not in ("softmax", "none"):
            raise ValueError(f"output_activation must be None or 'softmax', got {output_activation!r}.")
        no_act = output_activation is None or str(output_activation).lower() == "none"
        self.output_activation = None if no_act else "softmax"
        self.sw_device = sw_device
        self.device = device
        self.amp = bool(amp)
        if isinstance(amp_dtype, str):
            if not hasattr(torch, amp_dtype) or not isinstance(getattr(torch, amp_dtype), torch.dtype):
                raise ValueError(f"amp_dtype must be a torch dtype name such as 'bfloat16', got {amp_dtype!r}.")
            amp_dtype = getattr(torch, amp_dtype)
        self.amp_dtype = amp_dtype
        if self.backend == "auto" and self.amp and self.amp_dtype is not None:
            # mixed precision runs in PyTorch (the ONNX export is float32): "auto" means PyTorch on a GPU anyway,
            # and on a CPU with bfloat16 units PyTorch in bfloat16 is the fastest path (full network, 8 x 256²,
            # 2 threads, 2026-12-05: 1.03 s against 3.14 s in float32; ONNX Runtime float32 about 2.1x faster
            # than PyTorch float32)
            self.backend = "torch"
        self.channels_last = bool(channels_last)
        self.progress = bool(progress)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_inputs(inputs: torch.Tensor) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise ValueError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}.")
        if inputs.ndim != 5:
            raise ValueError(
                f"inputs must be a 5D volume (B, 1, H, W, D) with the axial axis last, got shape {tuple(inputs.shape)}."
            )
        if inputs.shape[1] != 1:
            raise ValueError(f"inputs must have 1 channel (B, 1, H, W, D), got {inputs.shape[1]} channels.")
        if min(inputs.shape) < 1:
            raise ValueError(f"inputs has an empty dimension: shape {tuple(inputs.shape)}.")
        if not all_finite(inputs):
            n_nan = int(torch.isnan(inputs).sum())
            raise ValueError(f"inputs contains non-finite values ({n_nan} NaN, the rest +-inf): clean the image first.")

    def _resolve_sw_device(self, inputs: torch.Tensor, network: Callable) -> torch.device:
        if self.sw_device is not None:
            return torch.device(self.sw_device)
        if isinstance(network, torch.nn.Module):
            param = next(iter(network.parameters()), None)
            if param is not None:
                return param.device
        return inputs.device

    def _backend_network(self, network: Callable, device: torch.device) -> Callable:
        """``network`` as :attr:`backend` runs it; the prepared network is kept while the same network object with
        the same weights (parameter storage and version counters) comes back, as MONAI Label calls it."""
        if self.backend == "torch" or not isinstance(network, torch.nn.Module):
            return network
        from pipofan_monai.inference.backends import PREPARED_TORCH, OnnxRuntimeNetwork, prepare_network

        if isinstance(network, OnnxRuntimeNetwork) or network in PREPARED_TORCH:  # prepared by the caller
            return network
        fingerprint = tuple((p.data_ptr(), p._version) for p in network.parameters())
        if self._prepared is None or self._prepared[0]() is not network or self._prepared[1] != fingerprint:
            self._prepared = (weakref.ref(network), fingerprint, prepare_network(network, backend=self.backend,
                                                                                 device=device))
        return self._prepared[2]

    def _autocast(self, device: torch.device):
        if not self.amp:
            return nullcontext()
        if device.type == "cuda":
            dtype = self.amp_dtype
            if dtype is None:
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        if self.amp_dtype is not None:
            return torch.autocast(device.type, dtype=self.amp_dtype)
        return nullcontext()

    def _pad_amount(self, size: int) -> int:
        return (-size) % self.pad_divisor

    def _run_network(self, slabs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """(n, C, h, w) slabs -> (n, K, h, w) float32 output (activation applied)."""
        if self.channels_last:
            slabs = slabs.contiguous(memory_format=torch.channels_last)
        with self._autocast(slabs.device):
            out = network(slabs, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"the network must return ONE tensor (N, K, H, W), got {type(out).__name__}: put a deep-supervision "
                "network in eval mode (network.eval()) before inference."
            )
        if out.ndim != 4 or out.shape[0] != slabs.shape[0] or tuple(out.shape[2:]) != tuple(slabs.shape[2:]):
            raise ValueError(
                f"the network mapped slabs of shape {tuple(slabs.shape)} to {tuple(out.shape)}; expected "
                f"({slabs.shape[0]}, K, {slabs.shape[2]}, {slabs.shape[3]})."
            )
        out = out.float()
        if self.output_activation == "softmax":
            out = torch.softmax(out, dim=1)
        return out

    def _segment_slabs(self, slabs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """(n, C, H, W) slabs on sw_device -> (n, K, H, W) float32 on sw_device."""
        h, w = slabs.shape[-2:]
        if self.roi_size is not None:
            out = sliding_window_inference(
                slabs,
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=lambda x: self._run_network(x, network, *args, **kwargs),
                overlap=self.overlap,
                mode=self.mode,
                sigma_scale=self.sigma_scale,
                padding_mode=self.padding_mode,
                cval=self.cval,
                sw_device=slabs.device,
                device=slabs.device,
            )
            return torch.as_tensor(out)
        ph, pw = self._pad_amount(h), self._pad_amount(w)
        if ph or pw:
            pad_mode = "constant" if self.padding_mode == PytorchPadMode.CONSTANT else str(self.padding_mode.value)
            if pad_mode == "reflect" and (ph >= h or pw >= w):
                raise ValueError(f"padding_mode='reflect' cannot pad a {h}x{w} slice by ({ph}, {pw}); use 'replicate'.")
            value = self.cval if pad_mode == "constant" else None
            slabs = F.pad(slabs, (0, pw, 0, ph), mode=pad_mode, value=value)
        out = self._run_network(slabs, network, *args, **kwargs)
        return out[..., :h, :w]

    def _choose_batch(self, network: Callable, height: int, width: int, device: torch.device) -> None:
        h, w = self.roi_size if self.roi_size is not None else (height + self._pad_amount(height),
                                                                 width + self._pad_amount(width))
        available = available_memory(device)
        chosen = auto_sw_batch_size(network, h, w, device, available=available)
        if chosen != self._logged_batch:
            self._logged_batch = chosen
            free = "unknown" if available is None else f"{available / 2**30:.1f} GiB"
            logger.info(f"sw_batch_size auto: {chosen} slabs per forward pass ({free} available on {device}, "
                        f"{h}x{w} input)")
        self.sw_batch_size = chosen

    # ------------------------------------------------------------------ main
    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """Segment every axial slice of ``inputs``.

        Args:
            inputs: ``(B, 1, H, W, D)`` volume (tensor or MetaTensor), axial axis last, ``D >= 1``; finite values.
            network: callable mapping ``(N, 2 * context + 1, h, w)`` to ``(N, K, h, w)`` (one tensor; ``h``, ``w``
                are multiples of ``pad_divisor`` in whole-slice mode, ``roi_size`` in window mode).
            args: extra positional arguments passed to ``network``.
            kwargs: extra keyword arguments passed to ``network``.

        Returns:
            ``(B, K, H, W, D)`` float32 logits (or probabilities with ``output_activation="softmax"``) on ``device``
            (``argmax=True``: ``(B, 1, H, W, D)`` uint8 class indices); a MetaTensor carrying the input's metadata
            when ``inputs`` is a MetaTensor.

        Raises:
            ValueError: wrong input shape (not 5D, channel count != 1), non-finite values, or a network output of
                the wrong type or shape.
        """
        self._check_inputs(inputs)
        temp_meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        volume = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        batch, _, height, width, depth = volume.shape
        sw_device = self._resolve_sw_device(volume, network)
        network = self._backend_network(network, sw_device)
        out_device = torch.device(self.device) if self.device is not None else volume.device
        if self.auto_batch:
            self._choose_batch(network, height, width, sw_device)

        n_chunks = math.ceil(depth / self.sw_batch_size)
        bar = None
        if self.progress and has_tqdm:
            bar = tqdm(total=batch * n_chunks, desc="slices", unit="chunk")
        output: torch.Tensor | None = None
        for b in range(batch):
            vol_b = volume[b, 0]  # (H, W, D), stays on its device
            for start in range(0, depth, self.sw_batch_size):
                stop = min(start + self.sw_batch_size, depth)
                idx = make_slab_indices(start, stop, depth, self.context, device=vol_b.device)
                # (H, W, n, C) -> (n, C, H, W); only this chunk is materialised
                slabs = vol_b[:, :, idx].permute(2, 3, 0, 1).to(device=sw_device, dtype=torch.float32)
                seg = self._segment_slabs(slabs, network, *args, **kwargs)
                if self.argmax:
                    if seg.shape[1] > 256:
                        raise ValueError(f"argmax=True stores uint8 class indices: {seg.shape[1]} classes > 256.")
                    seg = seg.argmax(dim=1, keepdim=True).to(torch.uint8)
                if output is None:
                    output = torch.empty(
                        (batch, seg.shape[1], height, width, depth), dtype=seg.dtype, device=out_device
                    )
                output[b, :, :, :, start:stop] = seg.permute(1, 2, 3, 0).to(out_device)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        if temp_meta is not None:
            return convert_to_dst_type(output, temp_meta, dtype=output.dtype, device=out_device)[0]
        return output
