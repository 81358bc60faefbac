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

"""CPU section (``python -m pipofan_monai benchmark --cpu [--quick]`` or ``python -m benchmarks.cpu``): in one
process and one run, on one synthetic int16 CT (512x512x200 by default):

- the bundle's inference (``inference.json`` through the runner's :class:`~pipofan_monai.apps.inference.CasePipeline`)
  with ``backend="torch"`` (eager, channels_last, what the bundle ran before) and ``backend="onnxruntime"``;
- the bare network of each backend on the same number of slices (forward passes only);
- MONAI's spleen bundle (``spleen_ct_segmentation``) as the peer: its 3D UNet (spatial_dims 3, 1 -> 2 channels,
  channels (16, 32, 64, 128, 256), strides (2, 2, 2, 2), 2 residual units, batch norm; random weights), its own
  preprocessing (RAS, spacing 1.5 x 1.5 x 2.0 mm, HU -57..164 to [0, 1]), a 96³ sliding window (4 windows per pass,
  overlap 0.5), softmax, inversion to the original grid, argmax and a saved NIfTI.

Each row gives slices/s and seconds per CT end to end, the network stage, the bare network, pipeline / bare and
the peak RSS of that run (``VmHWM``, reset before each run); the network stage ratio ONNX Runtime / torch, the ratio
to the peer, the export time (once per checkpoint) and the voxel agreement of the two backends' label maps.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipofan_monai.utils import atomic_write_json

from benchmarks.common import (DEFAULT_CONFIG, ExecutionPath, _device_info, _progress, _reset_peak_rss, _status_mib,
                               calibrate_batchnorm, write_synthetic_ct)
from benchmarks.end_to_end import bare_network_seconds

__all__ = ["CPU_SETTINGS", "CPU_QUICK_SETTINGS", "run_cpu_benchmark", "format_cpu_report", "spleen_unet"]

#: the full CPU section: the users' CT, the bundle's full-width network at 256², 8 slabs per pass
CPU_SETTINGS: dict[str, Any] = {"volume_shape": (512, 512, 200), "spatial_size": 256,
                                "channels": (64, 128, 256, 512, 512), "sw_batch_size": 8, "calibration_slices": 8}
#: ``--quick``: a small CT and a narrow network (seconds; CI)
CPU_QUICK_SETTINGS: dict[str, Any] = {"volume_shape": (96, 96, 12), "spatial_size": 64,
                                      "channels": (8, 16, 32, 64, 64), "sw_batch_size": 4, "calibration_slices": 4}

#: MONAI's spleen_ct_segmentation bundle (configs/inference.json): network, preprocessing and inferer settings
SPLEEN = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "norm": "batch",
          "pixdim": (1.5, 1.5, 2.0), "a_min": -57.0, "a_max": 164.0, "roi_size": (96, 96, 96), "sw_batch_size": 4,
          "overlap": 0.5}


def spleen_unet(seed: int = 0) -> torch.nn.Module:
    """The spleen bundle's 3D UNet with seeded random weights, in eval mode."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=SPLEEN["channels"],
                strides=SPLEEN["strides"], num_res_units=SPLEEN["num_res_units"], norm=SPLEEN["norm"]).eval()


def _checkpoint(path: Path, image: str, s: Mapping[str, Any], seed: int) -> str:
    """A plans-bearing checkpoint of a PIPO-FAN with random weights and BatchNorm statistics calibrated on slabs of
    ``image`` (so that its label maps are not trivial and the backends' agreement means something)."""
    from pipofan_monai.vocabulary.datasets import CLASS_NAMES
    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.plans import PlansState, make_plans
    from pipofan_monai.preprocessing import get_inference_transforms, make_slab_indices

    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=len(CLASS_NAMES), channels=tuple(s["channels"]))
    plans = make_plans(net, CLASS_NAMES, {"spatial_size": int(s["spatial_size"])})
    vol = get_inference_transforms(plans["preprocessing"])({"image": image})["image"].as_tensor()[0]
    d = vol.shape[-1]
    n = min(int(s["calibration_slices"]), d)
    idx = make_slab_indices(0, d, d)[np.linspace(0, d - 1, n).astype(int)]
    slabs = vol[:, :, idx].permute(2, 3, 0, 1).contiguous().float()
    calibrate_batchnorm(net, slabs, batch=4)
    torch.save({"model": net.state_dict(), "plans": PlansState(plans).state_dict()}, path)
    return str(path)


def _bundle_run(ckpt: str, image: str, out: Path, backend: str, s: Mapping[str, Any], amp: bool = False) -> dict:
    """The bundle's inference of ``image`` with ``backend`` (``amp``: the bundle's ``--amp True``, PyTorch in
    bfloat16 on a CPU with bfloat16 units): preparation (export or cache) timed apart, then one case through the
    runner's pipeline with a stage timer, and the bare network over the same slice count before and after it."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    from pipofan_monai.apps.inference import StageTimer

    parser = ConfigParser()
    parser.read_config(str(DEFAULT_CONFIG))
    parser.update({"ckpt_path": ckpt, "fold_ckpt_paths": [], "output_dir": str(out), "backend": backend,
                   "device": "$torch.device('cpu')", "amp": bool(amp), "sw_batch_size": int(s["sw_batch_size"]),
                   "save_overlay": False, "overwrite": True})
    runner = parser.get_parsed_content("runner")
    t0 = time.perf_counter()
    nets = runner._networks(ckpt)
    prepare_s = time.perf_counter() - t0
    kind = type(nets[0]).__name__
    depth, size, batch = int(s["volume_shape"][2]), int(s["spatial_size"]), int(s["sw_batch_size"])
    path = None
    if kind != "OnnxRuntimeNetwork":
        path = (ExecutionPath("bf16 autocast channels_last", "bfloat16", True) if amp
                else ExecutionPath("fp32 channels_last", None, True))
    bare_before = bare_network_seconds(nets[0], depth, size, batch, torch.device("cpu"), path=path)  # + warm-up
    _reset_peak_rss()
    rss_before = _status_mib("VmRSS")
    timer = StageTimer(torch.device("cpu"))
    t0 = time.perf_counter()
    runner.pipeline(image, nets, timer)
    wall = time.perf_counter() - t0
    peak = max(_status_mib("VmHWM"), _status_mib("VmRSS"))
    # the bare network again after the pipeline: on a shared machine the load drifts during a run; the faster of
    # the two (the less disturbed) is the reference of pipeline / bare
    bare_after = bare_network_seconds(nets[0], depth, size, batch, torch.device("cpu"), path=path)
    bare = min(bare_before, bare_after)
    labels = np.asarray(nib.load(str(next(out.glob("*_seg.nii.gz")))).dataobj)
    return {"backend": backend, "network": kind, "prepare_s": prepare_s, "stages": dict(timer.seconds),
            "total_s": timer.total, "wall_s": wall, "network_s": timer.seconds["network"], "bare_network_s": bare,
            "bare_network_before_after_s": [bare_before, bare_after],
            "bare_slices_per_s": depth / bare, "slices_per_s": depth / timer.total,
            "pipeline_over_bare": timer.total / bare, "peak_rss_mib": peak, "rss_before_mib": rss_before,
            "labels": labels}


def _peer_run(image: str, out: Path, depth: int, seed: int) -> dict:
    """MONAI's spleen bundle inference of ``image`` (its own transforms, inferer and postprocessing)."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (Activationsd, AsDiscreted, Compose, EnsureChannelFirstd, EnsureTyped, Invertd,
                                  LoadImaged, Orientationd, SaveImaged, ScaleIntensityRanged, Spacingd)

    net = spleen_unet(seed)
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                   Spacingd("image", pixdim=SPLEEN["pixdim"], mode="bilinear"),
                   ScaleIntensityRanged("image", a_min=SPLEEN["a_min"], a_max=SPLEEN["a_max"], b_min=0.0, b_max=1.0,
                                        clip=True), EnsureTyped("image")])
    post = Compose([Activationsd("pred", softmax=True),
                    Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                    AsDiscreted("pred", argmax=True),
                    SaveImaged("pred", output_dir=str(out), output_postfix="seg", output_dtype=np.uint8,
                               separate_folder=False, print_log=False)])
    inferer = SlidingWindowInferer(roi_size=SPLEEN["roi_size"], sw_batch_size=SPLEEN["sw_batch_size"],
                                   overlap=SPLEEN["overlap"])
    with torch.inference_mode():
        inferer(torch.zeros(1, 1, *SPLEEN["roi_size"]), net)  # warm-up, as the PIPO-FAN rows are warm
    _reset_peak_rss()
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    d = pre({"image": image})
    stages["load+preprocess"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.inference_mode():
        d["pred"] = inferer(d["image"][None], net)[0]
    stages["network"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    post(d)
    stages["invert+postprocess+save"] = time.perf_counter() - t1
    total = time.perf_counter() - t0
    return {"stages": stages, "total_s": total, "network_s": stages["network"], "slices_per_s": depth / total,
            "resampled_shape": list(d["image"].shape[1:]), "peak_rss_mib": max(_status_mib("VmHWM"),
                                                                                _status_mib("VmRSS"))}


def run_cpu_benchmark(quick: Any = False, threads: int | None = None, depth: int | None = None,
                      output: str | None = None, seed: int = 0, workdir: str | os.PathLike | None = None,
                      **_: Any) -> dict:
    """Run the CPU section and return (and optionally write as JSON) its report, with ``report["table"]``.

    Args:
        quick: :data:`CPU_QUICK_SETTINGS` instead of :data:`CPU_SETTINGS` (seconds).
        threads: ``torch.set_num_threads`` (default 2; 1 with ``quick``, where a tiny network only loses to thread
            hand-offs on a shared CPU). ONNX Runtime's threads follow the CPUs this process may use.
        depth: slices of the CT (default 200; 12 with ``quick``).
        output: JSON file to write (None: don't).
        seed: weights and CT seed.
        workdir: parent of the temporary folder (CT, checkpoint, export, outputs).
    """
    from pipofan_monai.inference import cpu_has_native_bf16
    from pipofan_monai.inference.backends import cpu_quota
    from pipofan_monai.utils import as_bool

    s = dict(CPU_QUICK_SETTINGS if as_bool(quick, "quick") else CPU_SETTINGS)
    if depth is not None:
        if int(depth) < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        s["volume_shape"] = (*s["volume_shape"][:2], int(depth))
    torch.set_num_threads(int(threads or (1 if as_bool(quick, "quick") else 2)))
    report: dict[str, Any] = {"device": _device_info(torch.device("cpu")), "settings": {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}, "quick": as_bool(quick, "quick"),
        "torch_threads": torch.get_num_threads(), "onnxruntime_threads": cpu_quota(), "load_average": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="pipofan_bench_cpu_", dir=workdir) as tmp:
        root = Path(tmp)
        image = str(root / "ct.nii.gz")
        write_synthetic_ct(image, root / "seg.nii.gz", s["volume_shape"], "btcv", seed)
        ckpt = _checkpoint(root / "model.pt", image, s, seed)
        rows = {}
        runs = [("torch", "torch", False), ("onnxruntime", "onnxruntime", False)]
        if cpu_has_native_bf16():  # the bundle's --amp True on this CPU
            runs.append(("torch_bf16", "auto", True))
        for key, backend, amp in runs:
            _progress(f"cpu: bundle inference of a {tuple(s['volume_shape'])} int16 CT, {key}")
            rows[key] = _bundle_run(ckpt, image, root / key, backend, s, amp=amp)
            _progress(f"  {rows[key]['total_s']:.1f} s ({rows[key]['network']}), bare network "
                      f"{rows[key]['bare_network_s']:.1f} s, prepared in {rows[key]['prepare_s']:.1f} s")
        _progress("cpu: MONAI spleen bundle 3D UNet (peer)")
        peer = _peer_run(image, root / "peer", int(s["volume_shape"][2]), seed)
        _progress(f"  {peer['total_s']:.1f} s")
    t, o = rows["torch"], rows["onnxruntime"]
    report["agreement"] = {"voxels_equal": float((t["labels"] == o["labels"]).mean())}
    if "torch_bf16" in rows:
        b = rows["torch_bf16"]
        report["agreement"]["bf16_voxels_equal"] = float((t["labels"] == b["labels"]).mean())
        report["bf16_network_stage_speedup"] = t["network_s"] / b["network_s"]
    for row in rows.values():
        row.pop("labels")
    report["rows"] = rows
    report["peer"] = peer
    report["network_speedup"] = t["bare_network_s"] / o["bare_network_s"]
    report["network_stage_speedup"] = t["network_s"] / o["network_s"]
    report["over_peer"] = {k: r["slices_per_s"] / peer["slices_per_s"] for k, r in rows.items()}
    report["load_average_after"] = os.getloadavg()
    report["table"] = format_cpu_report(report)
    if output:
        atomic_write_json(output, report, default=str)
        _progress(f"wrote {output}")
    return report


def format_cpu_report(r: Mapping[str, Any]) -> str:
    """The CPU section's table (plain text, Markdown-compatible)."""
    s = r["settings"]
    shape = "x".join(map(str, s["volume_shape"]))
    lines = [f"CPU inference of a {shape} int16 CT on {r['device']['name']}: {s['torch_threads']} torch threads, "
             f"{s['onnxruntime_threads']} ONNX Runtime threads, load {s['load_average'][0]:.1f} before / "
             f"{r['load_average_after'][0]:.1f} after",
             "| path | slices/s | s per CT | network stage s | bare network s (slices/s) | pipeline / bare "
             "| peak RSS MiB | x peer |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"torch": f"PIPO-FAN bundle, torch eager channels_last ({s['spatial_size']}², b{s['sw_batch_size']})",
             "onnxruntime": f"PIPO-FAN bundle, ONNX Runtime ({s['spatial_size']}², b{s['sw_batch_size']})",
             "torch_bf16": f"PIPO-FAN bundle, --amp True: torch bfloat16 channels_last ({s['spatial_size']}², "
                           f"b{s['sw_batch_size']})"}
    for k, row in r["rows"].items():
        lines.append(f"| {names[k]} | {row['slices_per_s']:.2f} | {row['total_s']:.1f} | {row['network_s']:.1f} | "
                     f"{row['bare_network_s']:.1f} ({row['bare_slices_per_s']:.2f}) | {row['pipeline_over_bare']:.2f} "
                     f"| {row['peak_rss_mib']:.0f} | {r['over_peer'][k]:.2f} |")
    p = r["peer"]
    lines.append(f"| MONAI spleen bundle 3D UNet (peer; 1.5x1.5x2 mm, 96³ window) | {p['slices_per_s']:.2f} | "
                 f"{p['total_s']:.1f} | {p['network_s']:.1f} | - | - | {p['peak_rss_mib']:.0f} | 1.00 |")
    o = r["rows"]["onnxruntime"]
    lines += [f"network: ONNX Runtime / torch channels_last = {r['network_speedup']:.2f}x bare, "
              f"{r['network_stage_speedup']:.2f}x in the pipeline; export {o['prepare_s']:.1f} s (once per "
              f"checkpoint); label maps equal in {100 * r['agreement']['voxels_equal']:.4f} % of voxels"]
    if "torch_bf16" in r["rows"]:
        lines.append(f"network stage: torch bfloat16 / torch float32 channels_last = "
                     f"{r['bf16_network_stage_speedup']:.2f}x; label maps equal to float32's in "
                     f"{100 * r['agreement']['bf16_voxels_equal']:.4f} % of voxels")
    lines += [
              "stages (s): " + "; ".join(f"{k}: " + ", ".join(f"{n} {v:.1f}" for n, v in row["stages"].items() if v)
                                         for k, row in r["rows"].items())
              + "; peer: " + ", ".join(f"{n} {v:.1f}" for n, v in p["stages"].items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.cpu [--quick] [--threads N] [--depth D] [--output FILE]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--output", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    print(run_cpu_benchmark(quick=a.quick, threads=a.threads, depth=a.depth, output=a.output)["table"])


if __name__ == "__main__":
    main()
