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

"""The driver of ``python -m pipofan_monai benchmark``: every section in one run, the report and its table."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Mapping

import torch

from pipofan_monai.plans import resolve_plans
from pipofan_monai.utils import as_bool, atomic_write_json

from benchmarks.common import (BASELINE, ExecutionPath, _device_info, _parse_ints, _progress, accuracy_slabs,
                               accuracy_volume, calibrate_batchnorm, cpu_candidates, default_amp_dtype, make_network,
                               prepare_network, resolve_device)
from benchmarks.data_path import QUICK_DATA_SETTINGS, benchmark_data_path, format_data_report
from benchmarks.end_to_end import benchmark_end_to_end
from benchmarks.memory import QUICK_MEMORY_SETTINGS, benchmark_inference_memory, format_memory_report
from benchmarks.network import benchmark_inference, benchmark_training, label_agreement

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
    if quick:
        size, batch, channels = QUICK_SETTINGS["size"], QUICK_SETTINGS["batch"], QUICK_SETTINGS["channels"]
        volume_shape, train_batch = QUICK_SETTINGS["volume_shape"], QUICK_SETTINGS["train_batch"]
        train_size, iters = QUICK_SETTINGS["train_size"], QUICK_SETTINGS["iters"]
        train_steps = QUICK_SETTINGS["train_steps"]
        accuracy_slices, e2e_spatial_size = QUICK_SETTINGS["accuracy_slices"], QUICK_SETTINGS["e2e_spatial_size"]
    s = _check_settings(size=size, batch=batch, channels=channels, compile=as_bool(compile, "compile"),
                        compile_mode=compile_mode, volume_shape=volume_shape, e2e_spatial_size=e2e_spatial_size,
                        train_batch=train_batch, train_size=train_size, iters=iters, train_steps=train_steps,
                        accuracy_slices=accuracy_slices, quick=quick, ckpt=ckpt, seed=seed, sections=sections)
    if threads is None and quick:
        threads = 1  # a tiny network gains nothing from threads, and a shared CPU makes several threads erratic
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_all = time.perf_counter()
    report: dict[str, Any] = {"device": _device_info(dev), "settings": s}
    _progress(f"benchmark on {report['device']['name']} ({dev}), network channels {s['channels']}")
    base_net, acc_volume = _network_and_phantom(s, ckpt, seed)
    report["network"] = {"parameters": sum(p.numel() for p in base_net.parameters()), "weights": ckpt or "random+bn"}
    candidates = _candidates(dev, s["compile"], compile_mode)
    report["accuracy"] = _accuracy(base_net, candidates, acc_volume, dev, s["batch"])
    _network_sections(report, base_net, candidates, dev, s)
    optimized = next(c for c in [BASELINE] + candidates if c.name == report["optimized_path"]["name"])
    report["end_to_end"] = None
    if "end_to_end" in s["sections"]:  # (c) end to end, (e) pipeline / bare network
        _progress(f"end to end: synthetic CT {tuple(s['volume_shape'])} -> bundle inference ({optimized.name}, "
                  f"spatial_size {s['e2e_spatial_size']}, sw_batch_size {s['batch']})")
        e2e = benchmark_end_to_end(base_net, optimized, dev, s["volume_shape"], s["e2e_spatial_size"], s["batch"],
                                   seed=seed)
        _progress("  " + ", ".join(f"{k} {v:.2f}s" for k, v in e2e["stages"].items())
                  + f"; total {e2e['total_s']:.2f}s, bare network {e2e['bare_network_s']:.2f}s")
        report["end_to_end"] = e2e
    report["data"] = None
    if "data" in s["sections"]:  # (f) the training data path alone, at real size
        dkw = dict(QUICK_DATA_SETTINGS) if quick else _data_settings(
            data_workers, data_volumes, data_volume_shape, s, data_batches, data_preprocess_workers)
        report["data"] = _data_section(dkw, as_bool(data_baseline, "data_baseline"), seed, data_workdir, report)
    report["inference_memory"] = None
    if "inference_memory" in s["sections"]:  # (g) inference memory at real size
        mkw = dict(QUICK_MEMORY_SETTINGS) if quick else _memory_settings(
            memory_depths, memory_floor_batches, memory_floor_depth, s)
        _progress(f"inference memory: 512x512xD int16 CT, D = {list(mkw['depths'])}, whole-volume Invertd vs "
                  f"streamed; floor at sw_batch_size {list(mkw['floor_batches'])}")
        report["inference_memory"] = benchmark_inference_memory(**mkw, threads=threads, seed=seed, log=_progress)
    report["elapsed_s"] = time.perf_counter() - t_all
    report["table"] = format_report(report)
    if output:
        atomic_write_json(output, report, default=str)
        _progress(f"wrote {output}")
    return report


def _check_settings(**kw: Any) -> dict:
    """The settings of a run, checked and normalised (the report's ``settings``).

    Raises:
        ValueError: a setting out of range, naming it.
    """
    channels = _parse_ints(kw["channels"], "channels", 5)
    volume_shape = _parse_ints(kw["volume_shape"], "volume_shape", 3)
    sections = kw["sections"]
    if isinstance(sections, str):
        sections = [s.strip() for s in sections.strip("[]()").replace("'", "").replace('"', "").split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"sections must be among {', '.join(SECTIONS)}, got {bad}.")
    for name in ("size", "train_size"):
        if int(kw[name]) < 16 or int(kw[name]) % 16:
            raise ValueError(f"{name} must be a positive multiple of 16, got {kw[name]}.")
    for name in ("batch", "train_batch", "iters", "train_steps", "accuracy_slices"):
        if int(kw[name]) < 1:
            raise ValueError(f"{name} must be >= 1, got {kw[name]}.")
    size = int(kw["size"])
    return {"size": size, "batch": int(kw["batch"]), "channels": list(channels), "compile": kw["compile"],
            "compile_mode": kw["compile_mode"], "volume_shape": list(volume_shape),
            "e2e_spatial_size": int(kw["e2e_spatial_size"] or size), "train_batch": int(kw["train_batch"]),
            "train_size": int(kw["train_size"]), "iters": int(kw["iters"]), "train_steps": int(kw["train_steps"]),
            "accuracy_slices": int(kw["accuracy_slices"]), "quick": kw["quick"], "ckpt": kw["ckpt"],
            "seed": kw["seed"], "sections": list(sections)}


def _network_and_phantom(s: Mapping[str, Any], ckpt: str | None, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The benchmarked network (random weights with BatchNorm statistics from real-looking slabs, so that its label
    maps are non-trivial, or ``ckpt``'s) and the phantom of the accuracy check."""
    base_net = make_network(None if ckpt else s["channels"], seed, ckpt)
    acc_plans = resolve_plans(ckpt if ckpt else None, spatial_size=None if ckpt else s["size"])
    acc_volume = accuracy_volume(acc_plans["preprocessing"], s["accuracy_slices"], seed)
    if not ckpt:
        calibrate_batchnorm(base_net, accuracy_slabs(None, s["accuracy_slices"], seed, s["size"]))
    return base_net, acc_volume


def _candidates(dev: torch.device, compile: bool, compile_mode: str | None) -> list[ExecutionPath]:
    """The candidates of the optimized path on ``dev``."""
    if dev.type == "cuda":
        name = f"{default_amp_dtype(dev)} autocast channels_last" + (" compile" if compile else "")
        return [ExecutionPath(name, default_amp_dtype(dev), True, compile, compile_mode)]
    candidates = cpu_candidates()
    if compile:
        candidates += [ExecutionPath(c.name + " compile", c.amp_dtype, True, True, compile_mode) for c in candidates]
    return candidates


def _accuracy(base_net: torch.nn.Module, candidates: list[ExecutionPath], volume: torch.Tensor, dev: torch.device,
              batch: int) -> dict:
    """The label-map agreement of every candidate with the fp32 baseline."""
    ref = (prepare_network(base_net, BASELINE, dev), BASELINE)
    accuracy = {}
    for cand in candidates:
        _progress(f"accuracy: label maps of {cand.name!r} vs fp32 on a {tuple(volume.shape[2:])} phantom")
        accuracy[cand.name] = label_agreement(volume, ref, (prepare_network(base_net, cand, dev), cand), dev,
                                              sw_batch_size=batch)
        _progress(f"  min Dice {accuracy[cand.name]['min_dice']:.4f} -> "
                  f"{'ok' if accuracy[cand.name]['passed'] else 'FAIL'}")
    return accuracy


def _timed_section(measure, candidates: list[ExecutionPath], accuracy: Mapping, key: str, keep: bool,
                   title: str) -> tuple[dict, ExecutionPath]:
    """``measure(path)`` for the baseline and every candidate; the section's report and the chosen path."""
    _progress(f"{title}: {BASELINE.name}")
    base = measure(BASELINE)
    _progress(f"  {base[key]:.1f} {key.replace('_per_s', '')}/s")
    measured = {}
    for cand in candidates:
        _progress(f"{title}: {cand.name}")
        measured[cand.name] = measure(cand)
        _progress(f"  {measured[cand.name][key]:.1f} {key.replace('_per_s', '')}/s")
    chosen = _choose(candidates, measured, accuracy, key, base[key], keep=keep)
    opt = measured.get(chosen.name, base)
    return {"baseline": base, "candidates": measured, "optimized": opt, "optimized_path": chosen.name,
            "ratio": opt[key] / base[key]}, chosen


def _network_sections(report: dict, base_net: torch.nn.Module, candidates: list[ExecutionPath], dev: torch.device,
                      s: Mapping[str, Any]) -> None:
    """(a) inference and (b) training, baseline against each candidate; sets ``report["optimized_path"]``."""
    keep, seed = dev.type == "cuda", s["seed"]
    report["inference"] = report["training"] = None
    optimized = candidates[0]
    if "inference" in s["sections"]:
        report["inference"], optimized = _timed_section(
            lambda p: benchmark_inference(base_net, p, dev, s["size"], s["batch"], s["iters"], seed=seed),
            candidates, report["accuracy"], "slices_per_s", keep,
            f"inference (batch {s['batch']} of {s['size']}x{s['size']}, {s['iters']} iterations)")
    elif dev.type != "cuda":  # not measured: the first candidate that passed the accuracy check
        optimized = next((c for c in candidates if report["accuracy"][c.name]["passed"]), BASELINE)
    report["optimized_path"] = asdict(optimized)
    if "training" in s["sections"]:
        report["training"], _ = _timed_section(
            lambda p: benchmark_training(base_net, p, dev, s["train_batch"], s["train_size"], s["train_steps"],
                                         seed=seed),
            candidates, report["accuracy"], "samples_per_s", keep,
            f"training (batch {s['train_batch']} of 3x{s['train_size']}x{s['train_size']}, {s['train_steps']} steps)")


def _data_settings(data_workers: Any, data_volumes: int, data_volume_shape: Any, s: Mapping[str, Any],
                   data_batches: int, data_preprocess_workers: int) -> dict:
    dw = (int(data_workers),) if isinstance(data_workers, int) else _parse_ints(data_workers, "data_workers")
    return {"num_volumes": int(data_volumes), "volume_shape": _parse_ints(data_volume_shape, "data_volume_shape", 3),
            "spatial_size": s["e2e_spatial_size"], "train_size": s["train_size"], "batch": 8, "workers": dw,
            "batches": int(data_batches), "baseline_batches": 3, "preprocess_workers": int(data_preprocess_workers)}


def _data_section(dkw: Mapping[str, Any], baseline: bool, seed: int, workdir: str | None, report: Mapping) -> dict:
    _progress(f"data path: {dkw['num_volumes']} generated {tuple(dkw['volume_shape'])} int16 volumes, memory-mapped "
              f"cache vs CacheDataset(copy_cache=True), workers {list(dkw['workers'])}")
    data = benchmark_data_path(**dkw, baseline=baseline, seed=seed, workdir=workdir, log=_progress)
    if report.get("training"):
        data["over_training_step"] = data["samples_per_s"] / report["training"]["optimized"]["samples_per_s"]
    return data


def _memory_settings(memory_depths: Any, memory_floor_batches: Any, memory_floor_depth: int,
                     s: Mapping[str, Any]) -> dict:
    fb = (int(memory_floor_batches),) if isinstance(memory_floor_batches, int) else _parse_ints(
        memory_floor_batches, "memory_floor_batches")
    depths = (int(memory_depths),) if isinstance(memory_depths, int) else _parse_ints(memory_depths, "memory_depths")
    return {"depths": depths, "floor_batches": fb, "floor_depth": int(memory_floor_depth),
            "floor_channels": tuple(s["channels"]), "spatial_size": s["e2e_spatial_size"], "slope_batch": s["batch"]}


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
