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

"""End-to-end section: the bundle's inference of a synthetic CT with a per-stage breakdown, against the bare
network's forward passes over the same slices."""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from benchmarks.common import (DEFAULT_CONFIG, ExecutionPath, _phantom, _sync, _to_device, peak_memory,
                               prepare_network, reset_peak_memory)

# ---------------------------------------------------------------------------------------------- (c) end to end
def _parse_inference_config(config_file: str | os.PathLike, overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update(dict(overrides))
    return {k: parser.get_parsed_content(k) for k in ("plans", "preprocessing", "inferer", "postprocessing")}


def bundle_pipeline(config_file: str | os.PathLike, path: ExecutionPath, device: torch.device,
                    output_dir: str | os.PathLike, spatial_size: int, sw_batch_size: int, postprocess: bool = True,
                    on_gpu: bool = False, overrides: Mapping[str, Any] | None = None):
    """The runner's :class:`~pipofan_monai.apps.inference.CasePipeline` built from ``config_file``'s components with the
    benchmark's overrides; the inferer gets ``path``'s options and runs on ``device`` (with ``on_gpu``, the image
    moves to ``device`` before the resample and the outputs stay there)."""
    from monai.transforms import EnsureTyped, Invertd, Resized

    from pipofan_monai.apps.inference import CasePipeline

    comps = _parse_inference_config(config_file, {
        "spatial_size": int(spatial_size),
        "sw_batch_size": int(sw_batch_size),
        "output_dir": str(output_dir),
        "ckpt_path": str(Path(output_dir).parent / "no_checkpoint.pt"),  # the benchmark's network is given
        "fold_ckpt_paths": [],
        "device": f"$torch.device('{device}')",
        "amp": path.amp_dtype is not None,
        "postprocess": bool(postprocess),
        "backend": "torch",  # the execution path under test runs as given (the CPU section compares backends)
        **dict(overrides or {}),
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
    return pipeline


def bare_network_seconds(net: Any, depth: int, spatial_size: int, sw_batch_size: int, device: torch.device,
                         seed: int = 0, path: ExecutionPath | None = None) -> float:
    """Seconds of the bare forward passes of ``net`` over ``depth`` random slabs ``(3, spatial_size, spatial_size)``
    in chunks of ``sw_batch_size`` (tensors made on the device beforehand), after one warm-up pass per chunk size."""
    gen = torch.Generator().manual_seed(seed)
    channels_last = path is not None and path.channels_last
    autocast = path.autocast if path is not None else (lambda d: nullcontext())
    chunks = [_to_device(torch.rand(min(sw_batch_size, depth - s), 3, spatial_size, spatial_size, generator=gen),
                         device, channels_last) for s in range(0, depth, sw_batch_size)]
    with torch.inference_mode():
        for c in {c.shape[0]: c for c in chunks}.values():
            with autocast(device):
                net(c)
        _sync(device)
        t0 = time.perf_counter()
        for c in chunks:
            with autocast(device):
                net(c)
        _sync(device)
        return time.perf_counter() - t0


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
    from pipofan_monai.apps.inference import StageTimer

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
        pipeline = bundle_pipeline(config_file, path, device, root / "out", spatial_size, sw_batch_size, postprocess,
                                   on_gpu)
        net = prepare_network(network, path, device)
        # bare forward passes over the same slices (also the warm-up of the network, compile included)
        bare = bare_network_seconds(net, vs[2], spatial_size, sw_batch_size, device, seed, path)
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


