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

"""Inference backends: the network as PyTorch runs it, or exported to ONNX and run by ONNX Runtime on the CPU.

:func:`prepare_network` is the one place that chooses (``backend``: ``"auto"`` = ONNX Runtime on a CPU when
``onnxruntime`` and ``onnx`` are installed, PyTorch otherwise or on a GPU; ``"torch"``; ``"onnxruntime"``). The
ONNX Runtime network is a :class:`torch.nn.Module` mapping a ``(N, C, H, W)`` float tensor to ``(N, K, H, W)``
float32 logits, so that :class:`~pipofan_monai.inference.SlidingSliceInferer` calls it unchanged.

The exported model is cached as ``<checkpoint>.<H>x<W>.onnx`` beside the checkpoint (or, where that folder is not
writable or there is no checkpoint, in ``$PIPOFAN_CACHE_DIR`` / ``~/.cache/pipofan_monai/onnx``). Its key, stored
in the model's metadata, is the SHA-256 of the checkpoint file (of the weights without one), the plans and the
input size (the batch axis is dynamic); a file whose key differs (stale) or that ONNX Runtime cannot load
(corrupt) is rebuilt; the cache folder keeps the :data:`CACHE_KEEP` most recently used exports. The file is
written atomically (:func:`~pipofan_monai.utils.atomic_path`) under a kernel file lock, so concurrent processes
export once and never see a partial file. ONNX Runtime's threads follow the CPUs this process may use (affinity
and cgroup quota, :func:`cpu_quota`).

When ONNX Runtime is missing (``backend="onnxruntime"``), the export fails, or the exported model disagrees with
the network, inference goes on with PyTorch after one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from pipofan_monai.utils import atomic_path

__all__ = ["BACKENDS", "OnnxRuntimeNetwork", "prepare_network", "resolve_backend", "cpu_quota", "onnx_cache_dir"]

logger = logging.getLogger("pipofan.inference")

BACKENDS = ("auto", "torch", "onnxruntime")
#: part of every cache key: bump when the export settings change, so that older files are rebuilt
EXPORT_FORMAT = 1
#: metadata entry of the exported model holding its cache key
KEY_PROP = "pipofan_cache_key"
#: exports kept in the cache folder (least recently used ones beyond are removed)
CACHE_KEEP = 8
#: largest |ONNX Runtime - PyTorch| logit difference accepted when a new export is checked
EXPORT_ATOL = 1e-3

#: environment variable that decides what "auto" means ("torch" or "onnxruntime")
BACKEND_ENV = "PIPOFAN_BACKEND"

_WARNED: set[str] = set()
#: networks :func:`prepare_network` decided to run with PyTorch (the inferer does not prepare them again)
PREPARED_TORCH: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        logger.warning(msg)


def cpu_quota(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity (``os.sched_getaffinity``) bounded by the cgroup CPU quota
    (``<cgroup_root>/cpu.max``, or cgroup v1's ``cpu/cpu.cfs_quota_us`` / ``cpu/cpu.cfs_period_us``), rounded up,
    at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    root = Path(cgroup_root)
    quota = None
    try:
        q, period = (root / "cpu.max").read_text().split()[:2]
        if q != "max":
            quota = int(q) / int(period)
    except (OSError, ValueError):
        try:
            q, period = int((root / "cpu" / "cpu.cfs_quota_us").read_text()), int(
                (root / "cpu" / "cpu.cfs_period_us").read_text())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, int(n))


def onnx_cache_dir() -> Path:
    """The cache folder for exports that cannot live beside their checkpoint: ``$PIPOFAN_CACHE_DIR/onnx`` or
    ``$XDG_CACHE_HOME/pipofan_monai/onnx`` (default ``~/.cache/pipofan_monai/onnx``)."""
    if os.environ.get("PIPOFAN_CACHE_DIR"):
        return Path(os.environ["PIPOFAN_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipofan_monai" / "onnx"


def _has_onnxruntime() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_backend(backend: str | None, device: torch.device | str | None = None) -> str:
    """``"torch"`` or ``"onnxruntime"`` for ``backend`` on ``device`` (``"auto"``: ONNX Runtime on the CPU when it
    is installed). An explicit ``"onnxruntime"`` that cannot run (not installed, or a GPU device) gives
    ``"torch"`` with one warning. The environment variable ``PIPOFAN_BACKEND`` (``torch`` or ``onnxruntime``)
    decides what ``"auto"`` means, e.g. to keep PyTorch everywhere without editing configs.

    Raises:
        ValueError: an unknown backend name.
    """
    name = "auto" if backend is None else str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if name == "auto" and os.environ.get(BACKEND_ENV, "").strip().lower() in ("torch", "onnxruntime"):
        name = os.environ[BACKEND_ENV].strip().lower()
    if name == "torch":
        return "torch"
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cpu":
        if name == "onnxruntime":
            _warn_once(f"backend 'onnxruntime' runs on the CPU only; the network runs with PyTorch on {dev}.")
        return "torch"
    try:
        installed = _has_onnxruntime()
    except (ImportError, ValueError):
        installed = False
    if not installed:
        if name == "onnxruntime":
            _warn_once("backend 'onnxruntime' asked but onnxruntime / onnx are not installed (pip install "
                       "'pipofan-monai[export]'): inference runs with PyTorch.")
        return "torch"
    return "onnxruntime"


# ---------------------------------------------------------------------------------------------- cache keys
def _sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _sha256_state(network: torch.nn.Module) -> str:
    """SHA-256 of the network's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for k, v in sorted(network.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _plans_for_key(plans: Mapping[str, Any] | None) -> Any:
    """The plans without the entries that name where they were read from (the same plans, read from a copied
    checkpoint, give the same key)."""
    if plans is None:
        return None
    return {k: v for k, v in plans.items() if k not in ("source", "versions")}


def cache_key(weights_sha256: str, plans: Mapping[str, Any] | None, input_shape: Sequence[int],
              network: torch.nn.Module | None = None) -> str:
    """SHA-256 of the export format, the weights' SHA-256, the plans and the ``(C, H, W)`` input size."""
    desc = {"format": EXPORT_FORMAT, "weights": weights_sha256, "plans": _plans_for_key(plans),
            "input": [int(s) for s in input_shape], "network": type(network).__name__ if network is not None else None}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def export_path(ckpt_path: str | os.PathLike | None, key: str, input_shape: Sequence[int]) -> Path:
    """Where the export of ``ckpt_path`` for ``input_shape`` ``(C, H, W)`` lives: beside the checkpoint
    (``<ckpt>.<H>x<W>.onnx``) when its folder is writable, else in :func:`onnx_cache_dir` (``<key>.onnx``)."""
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).resolve()
        if _writable(ckpt.parent):
            return ckpt.parent / f"{ckpt.name}.{input_shape[-2]}x{input_shape[-1]}.onnx"
    return onnx_cache_dir() / f"{key[:40]}.onnx"


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 1800.0) -> Iterator[None]:
    """A kernel file lock ``<path>.lock`` (as the preprocessed cache uses); without file locks on this file
    system, a warning and no lock (the atomic write still keeps the file whole)."""
    from filelock import FileLock

    lock = FileLock(str(path) + ".lock", timeout=timeout)
    try:
        lock.acquire()
    except (NotImplementedError, OSError) as e:
        _warn_once(f"ONNX export: no file lock in {path.parent} ({type(e).__name__}: {e}); exporting without one "
                   "(concurrent processes may export twice, the file is still written atomically).")
        yield
        return
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------- export / load
def _export_bytes(network: torch.nn.Module, input_shape: Sequence[int]) -> bytes:
    """The ONNX model of ``network`` (eval mode) for inputs ``(N, *input_shape)`` with a dynamic batch axis. The
    TorchScript-based exporter (what MONAI's ``convert_to_onnx`` uses; fast) where this PyTorch has it, else
    ``torch.export``'s (``dynamo=True``)."""
    example = torch.zeros(2, *[int(s) for s in input_shape])
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
            buf = io.BytesIO()
            try:
                torch.onnx.export(network, (example,), buf, input_names=["image"], output_names=["pred"],
                                  dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}, opset_version=17,
                                  do_constant_folding=True, dynamo=False)
                return buf.getvalue()
            except TypeError:  # a PyTorch without the dynamo flag or without the TorchScript exporter
                prog = torch.onnx.export(network, (example,), None, input_names=["image"], output_names=["pred"],
                                         dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                         verbose=False)
                return prog.model_proto.SerializeToString()
    finally:
        network.train(was_training)


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _load_valid(path: Path, key: str, threads: int) -> tuple[Any, str]:
    """``(session, "")`` for a cached export with ``key``, else ``(None, why)``: "missing", "stale", "corrupt"."""
    if not path.is_file():
        return None, "missing"
    try:
        sess = _session(path, threads)
    except Exception as e:  # ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
        return None, f"corrupt ({type(e).__name__})"
    if sess.get_modelmeta().custom_metadata_map.get(KEY_PROP) != key:
        return None, "stale"
    return sess, ""


def _prune(folder: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently used exports of the cache folder (exports keyed by weights that
    changed, e.g. a model retrained in MONAI Label, are never asked for again). A process still using a removed
    file is not affected: ONNX Runtime read it at load time."""
    files = sorted(folder.glob("*.onnx"), key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files[keep:]:
        with contextlib.suppress(OSError):
            f.unlink()
            logger.info(f"ONNX cache: removed the least recently used export {f}")


def _write_export(network: torch.nn.Module, path: Path, key: str, input_shape: Sequence[int]) -> None:
    import onnx

    model = onnx.load_from_string(_export_bytes(network, input_shape))
    entry = model.metadata_props.add()
    entry.key, entry.value = KEY_PROP, key
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)


def _check_export(sess: Any, network: torch.nn.Module, input_shape: Sequence[int], path: Path) -> None:
    """The new export against PyTorch on one random batch.

    Raises:
        ValueError: the largest logit difference exceeds :data:`EXPORT_ATOL`.
    """
    x = torch.rand(2, *[int(s) for s in input_shape], generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        ref = network(x.to(next(network.parameters()).device)).float().cpu()
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    diff = float((got - ref).abs().max())
    if not diff <= EXPORT_ATOL:
        raise ValueError(f"the exported model {path} differs from the network by {diff:.3g} (> {EXPORT_ATOL})")


def load_or_export(network: torch.nn.Module, input_shape: Sequence[int], ckpt_path: str | os.PathLike | None = None,
                   plans: Mapping[str, Any] | None = None, threads: int | None = None) -> Any:
    """The ONNX Runtime session of ``network`` for inputs ``(N, *input_shape)``: from the cache when its key
    matches, else exported once (checked against the network, written atomically under a file lock).

    Raises:
        Exception: whatever the export, the check or ONNX Runtime raised (the caller falls back to PyTorch).
    """
    threads = int(threads or cpu_quota())
    weights = _sha256_file(ckpt_path) if ckpt_path is not None else _sha256_state(network)
    key = cache_key(weights, plans, input_shape, network)
    path = export_path(ckpt_path, key, input_shape)
    sess, why = _load_valid(path, key, threads)
    if sess is not None:
        logger.info(f"ONNX Runtime: {path} ({threads} threads)")
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept by the cache folder's pruning
        return sess
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        sess, why = _load_valid(path, key, threads)  # another process may have exported it meanwhile
        if sess is not None:
            return sess
        t0 = time.perf_counter()
        _write_export(network, path, key, input_shape)
        sess, _ = _load_valid(path, key, threads)
        if sess is None:
            raise RuntimeError(f"the exported model {path} cannot be loaded")
        _check_export(sess, network, input_shape, path)
    if path.parent == onnx_cache_dir():
        _prune(path.parent, keep=CACHE_KEEP)
    what = f"checkpoint {os.fspath(ckpt_path)}" if ckpt_path is not None else "the network's weights"
    logger.info(f"exported {what} to ONNX for inputs (N, {', '.join(map(str, input_shape))}) in "
                f"{time.perf_counter() - t0:.1f} s ({why} before; done once, reused while the weights, plans and "
                f"input size stay the same): {path}")
    return sess


# ---------------------------------------------------------------------------------------------- the network
class OnnxRuntimeNetwork(torch.nn.Module):
    """``network`` run by ONNX Runtime on the CPU: ``(N, C, H, W)`` float tensor -> ``(N, K, H, W)`` float32 logits
    (a CPU tensor). One exported model per input size (the batch axis is dynamic), built on first use
    (:func:`load_or_export`); where that fails, the PyTorch ``network`` runs instead after one warning.

    The PyTorch network stays a submodule (its first convolution sizes ``sw_batch_size="auto"``, its device is the
    inferer's default device, and it is the fallback).

    Args:
        network: the PyTorch network with its weights, in eval mode.
        ckpt_path: the checkpoint the weights came from (cache key and location; None: hash of the weights).
        plans: the plans the network was built from (part of the cache key).
        threads: ONNX Runtime intra-op threads (default :func:`cpu_quota`).
    """

    def __init__(self, network: torch.nn.Module, ckpt_path: str | os.PathLike | None = None,
                 plans: Mapping[str, Any] | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.network = network
        self.ckpt_path = None if ckpt_path is None else os.fspath(ckpt_path)
        self.plans = None if plans is None else dict(plans)
        self.threads = int(threads or cpu_quota())
        self._sessions: dict[tuple[int, ...], Any] = {}
        self._failed: set[tuple[int, ...]] = set()

    def session(self, input_shape: Sequence[int]) -> Any | None:
        """The session for ``(C, H, W)`` inputs (built on first use), or None where the export failed."""
        shape = tuple(int(s) for s in input_shape)
        if shape in self._sessions:
            return self._sessions[shape]
        if shape in self._failed:
            return None
        try:
            self._sessions[shape] = load_or_export(self.network, shape, self.ckpt_path, self.plans, self.threads)
        except Exception as e:  # any failure of export or runtime: PyTorch runs instead
            self._failed.add(shape)
            _warn_once(f"ONNX Runtime backend unavailable for inputs (N, {', '.join(map(str, shape))}) "
                       f"({type(e).__name__}: {e}); inference runs with PyTorch.")
            return None
        return self._sessions[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"the network takes (N, C, H, W) slabs, got shape {tuple(x.shape)}.")
        sess = self.session(x.shape[1:])
        if sess is None:
            return self.network(x)
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: arr})[0])


def _device_of(network: torch.nn.Module) -> torch.device:
    p = next(iter(network.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def prepare_network(network: torch.nn.Module, plans: Mapping[str, Any] | None = None,
                    ckpt_path: str | os.PathLike | None = None, backend: str | None = "auto",
                    device: torch.device | str | None = None, input_size: Sequence[int] | None = None,
                    threads: int | None = None) -> torch.nn.Module:
    """The network that inference calls: ``network`` itself (PyTorch) or an :class:`OnnxRuntimeNetwork` of it.

    Args:
        network: the PyTorch network with its weights loaded (put in eval mode).
        plans: the plans it was built from (cache key; ``plans["preprocessing"]["spatial_size"]`` is the default
            ``input_size``).
        ckpt_path: the checkpoint its weights came from (cache key and location).
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"`` (:func:`resolve_backend`).
        device: where inference runs (default: the network's device).
        input_size: ``(H, W)`` of the slabs, exported now (default from the plans; other sizes are exported on
            first use).
        threads: ONNX Runtime intra-op threads (default :func:`cpu_quota`).

    Returns:
        a module mapping ``(N, C, H, W)`` to ``(N, K, H, W)`` logits; never raises for a missing ONNX Runtime or
        a failed export (PyTorch after one warning).
    """
    network.eval()
    if isinstance(network, OnnxRuntimeNetwork):
        return network
    if resolve_backend(backend, device if device is not None else _device_of(network)) == "torch":
        PREPARED_TORCH.add(network)
        return network
    net = OnnxRuntimeNetwork(network, ckpt_path, plans, threads)
    if input_size is None and plans is not None:
        s = (plans.get("preprocessing") or {}).get("spatial_size")
        input_size = None if s is None else (int(s), int(s))
    in_channels = getattr(network, "in_channels", None)
    if input_size is not None and in_channels is None and plans is not None:
        in_channels = (plans.get("network") or {}).get("in_channels")
    if input_size is not None and in_channels is not None:
        if net.session((int(in_channels), *[int(s) for s in input_size])) is None:
            PREPARED_TORCH.add(network)
            return network
    return net
