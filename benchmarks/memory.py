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

"""Inference-memory section: peak RSS of the shipped bundle inference on 512x512xD int16 CTs, per slice and the
floor, whole-volume inversion against the streamed one."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pipofan_monai.vocabulary.datasets import CLASS_NAMES

from benchmarks.common import DEFAULT_CONFIG, _progress, _reset_peak_rss, _status_mib, rss_window, write_synthetic_ct

# ------------------------------------------------------------------------------ inference memory at real size
#: encoder widths of the narrow network of the memory section: the per-slice slope is the data path (load,
#: resample, inversion, argmax, filtering, saving), not the network, so a narrow network measures it fast
MEMORY_SLOPE_CHANNELS = (8, 16, 32, 64, 64)

#: settings of the memory section with ``quick``: short 512x512 volumes, a 64² network input, all cases in one
#: worker process (a smoke run: freed memory the allocator keeps between cases makes its slopes indicative only)
QUICK_MEMORY_SETTINGS: dict[str, Any] = {"depths": (8, 16), "floor_depth": 8, "floor_batches": (8,),
                                         "floor_channels": MEMORY_SLOPE_CHANNELS, "in_plane": 512, "spatial_size": 64,
                                         "slope_batch": 8, "one_process": True}


class _StagePeakRSS:
    """A stage "timer" for :class:`~pipofan_monai.apps.inference.CasePipeline` that records, per stage, the peak RSS
    reached inside it (MiB) and its rise over the RSS at its start, and the seconds (``VmHWM`` reset at each
    stage entry, so each stage sees its own peak)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, name: str | None = None):
        window: dict = {}
        try:
            with rss_window() as window:
                yield
        finally:
            rec = self.stages.setdefault(stage, {"peak_mib": 0.0, "rise_mib": 0.0, "seconds": 0.0})
            rec["peak_mib"] = max(rec["peak_mib"], window["peak_mib"])
            rec["rise_mib"] = max(rec["rise_mib"], window["peak_mib"] - window["before_mib"])
            rec["seconds"] += window["seconds"]


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
    code = ("import json, sys; from benchmarks.memory import _inference_memory_cases as f; "
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


