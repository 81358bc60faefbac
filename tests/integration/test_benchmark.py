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

"""Tests of the throughput benchmark (CPU): the ``--quick`` CLI run, the label-map agreement check and flags."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks as bm
from pipofan_monai.apps.inference import STAGES
from pipofan_monai.utils import as_bool

REPO = Path(__file__).resolve().parents[2]
TINY = (8, 16, 32, 64, 64)


def _volume(size: int = 64, depth: int = 6) -> torch.Tensor:
    from pipofan_monai.plans import DEFAULT_PREPROCESSING

    # (1, 1, size, size, depth): the model's own inference preprocessing, intensities in [-1, 1]
    return bm.accuracy_volume({**DEFAULT_PREPROCESSING, "spatial_size": size}, depth, seed=1)


def _calibrated_net(volume: torch.Tensor) -> torch.nn.Module:
    from pipofan_monai.preprocessing import make_slab_indices

    net = bm.make_network(TINY, seed=0)
    d = volume.shape[-1]
    slabs = volume[0, 0][:, :, make_slab_indices(0, d, d)].permute(2, 3, 0, 1).contiguous()
    return bm.calibrate_batchnorm(net, slabs)


def test_quick_cli_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "pipofan_monai", "benchmark", "--quick", "--device", "cpu", "--output", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "inference slices/s" in proc.stdout and "pipeline / bare network" in proc.stdout
    assert "accuracy: label maps" in proc.stdout + proc.stderr  # progress messages
    r = json.loads(out.read_text())
    assert r["device"]["type"] == "cpu" and r["settings"]["quick"] is True
    assert r["settings"]["channels"] == list(bm.QUICK_SETTINGS["channels"])
    for section, key in (("inference", "slices_per_s"), ("training", "samples_per_s")):
        s = r[section]
        assert s["baseline"][key] > 0 and s["optimized"][key] > 0
        assert s["ratio"] == pytest.approx(s["optimized"][key] / s["baseline"][key])
        assert s["baseline"]["memory"]["peak_mb"] > 0
        assert s["baseline"]["path"]["amp_dtype"] is None and s["baseline"]["path"]["channels_last"] is False
    assert r["training"]["baseline"]["final_loss"] > 0
    e2e = r["end_to_end"]
    assert set(e2e["stages"]) == set(STAGES)
    assert all(v > 0 for k, v in e2e["stages"].items() if k != "ensemble") and e2e["stages"]["ensemble"] == 0
    assert e2e["total_s"] == pytest.approx(sum(e2e["stages"].values()))
    assert e2e["bare_network_s"] > 0
    assert e2e["pipeline_over_bare"] == pytest.approx(e2e["total_s"] / e2e["bare_network_s"])
    assert e2e["output_shape"] == list(bm.QUICK_SETTINGS["volume_shape"])  # label map on the original grid
    assert e2e["output_file"] == "bench_ct_seg.nii.gz" and e2e["memory"]["peak_mb"] > 0
    names = [t[0] for t in e2e["transforms"]]
    assert names[0] == "LoadCTd" and "SlidingSliceInferer" in names and "Invertd" in names and names[-1] == "AtomicSaveImaged"
    data, q = r["data"], bm.QUICK_DATA_SETTINGS
    assert data["samples_per_s"] > 0 and data["samples"] == q["batches"] * q["batch"]
    assert data["sample_shape"] == [3, q["train_size"], q["train_size"]]
    assert data["over_training_step"] == pytest.approx(data["samples_per_s"] / r["training"]["optimized"]["samples_per_s"])
    m = data["mmap"]  # memory-mapped cache vs CacheDataset(copy_cache=True), both measured in this run
    h, w, d = q["volume_shape"]
    assert m["cached_slices"] == q["num_volumes"] * d
    assert m["bytes_per_slice"] > q["spatial_size"] ** 2 * 3  # float16 image + uint8 label (+ headers, meta.json)
    assert m["four_datasets_gb"] == pytest.approx(m["bytes_per_slice"] * bm.FOUR_DATASETS_SLICES / 1e9)
    assert m["first_run_s"] > 0 and m["second_run_s"] > 0
    run = m["runs"]["1"]
    assert run["memory"]["main_rss_mb"] > 0 and run["memory"]["worker_pss_mb"] > 0
    assert data["ratio"] == pytest.approx(run["samples_per_s"] / data["baseline"]["runs"]["1"]["samples_per_s"])
    assert "data path samples/s" in proc.stdout and "CacheDataset(copy_cache=True)" in proc.stdout
    acc = r["accuracy"]["fp32 channels_last"]
    assert acc["passed"] and acc["min_dice"] >= 0.99
    # the optimized path is an accuracy-checked candidate or the baseline itself
    chosen = r["inference"]["optimized_path"]
    assert chosen == bm.BASELINE.name or r["accuracy"][chosen]["passed"]
    assert "pipeline / bare network" in r["table"]
    mem, qm = r["inference_memory"], bm.QUICK_MEMORY_SETTINGS  # both inversion paths measured in this run
    assert set(mem["paths"]) == {"plain", "streamed"} and mem["target_mib_per_slice"] == 4.0
    for p in mem["paths"].values():
        assert [c["depth"] for c in p["cases"]] == list(qm["depths"]) and math.isfinite(p["mib_per_slice"])
        assert all(c["output_shape"] == [512, 512, c["depth"]] and c["peak_mib"] > c["rss_before_mib"] > 0
                   for c in p["cases"])
    assert mem["floor"]["8"]["peak_mib"] > 0
    assert "inference memory: 512x512xD" in proc.stdout and "MiB/slice" in proc.stdout


def test_label_agreement_channels_last_matches_fp32():
    vol = _volume()
    net = _calibrated_net(vol)
    dev = torch.device("cpu")
    cl = bm.ExecutionPath("fp32 channels_last", None, True)
    res = bm.label_agreement(vol, (bm.prepare_network(net, bm.BASELINE, dev), bm.BASELINE),
                             (bm.prepare_network(net, cl, dev), cl), dev, sw_batch_size=4)
    assert res["passed"] and res["min_dice"] >= 0.99 and res["voxel_agreement"] >= 0.999
    assert set(res["dice"]) == {"liver", "kidney", "spleen"}
    # the random-weight network with calibrated BatchNorm gives a non-trivial label map
    assert sum(v > 0 for v in res["reference_voxels"].values()) >= 2
    if bm._cpu_has_bf16():  # bf16 on the CPU: reported, never silently accepted
        bf = bm.ExecutionPath("bf16", "bfloat16", True)
        r2 = bm.label_agreement(vol, (net, bm.BASELINE), (bm.prepare_network(net, bf, dev), bf), dev, sw_batch_size=4)
        assert r2["passed"] == (r2["min_dice"] >= 0.99)


def test_label_agreement_detects_a_different_network():
    vol = _volume()
    net = _calibrated_net(vol)
    other = bm.make_network(TINY, seed=5)  # other weights: other label maps
    other.load_state_dict({k: v for k, v in net.state_dict().items() if "running" in k}, strict=False)
    other.eval()
    res = bm.label_agreement(vol, (net, bm.BASELINE), (other, bm.BASELINE), torch.device("cpu"), sw_batch_size=6)
    assert not res["passed"] and res["min_dice"] < 0.99


def test_end_to_end_keeps_data_on_device(tmp_path):
    """The GPU data path (image moved before the resample, output and inversion on the device) on the CPU device."""
    net = bm.make_network(TINY, seed=0).eval()
    r = bm.benchmark_end_to_end(net, bm.BASELINE, torch.device("cpu"), (40, 36, 9), spatial_size=32, sw_batch_size=4,
                                workdir=tmp_path, gpu_resample=True)
    names = [t[0] for t in r["transforms"]]
    assert r["gpu_resample"] is True and names.index("EnsureTyped") == names.index("Resized") - 1
    assert r["output_shape"] == [40, 36, 9] and r["sw_batch_size"] == 4
    assert list(tmp_path.iterdir()) == []  # temporary files removed


def test_dice_and_choice():
    a = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    assert bm._dice(a, a) == 1.0
    assert bm._dice(a, torch.tensor([1, 0, 0, 0], dtype=torch.bool)) == pytest.approx(2 / 3)
    assert bm._dice(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    fast, slow = bm.ExecutionPath("fast", "bfloat16", True), bm.ExecutionPath("slow", None, True)
    meas = {"fast": {"v": 10.0}, "slow": {"v": 6.0}}
    ok = {"fast": {"passed": True}, "slow": {"passed": True}}
    assert bm._choose([slow, fast], meas, ok, "v", 5.0) == fast
    assert bm._choose([slow, fast], meas, {**ok, "fast": {"passed": False}}, "v", 5.0) == slow
    assert bm._choose([slow, fast], meas, ok, "v", 20.0) == bm.BASELINE  # nothing beats the baseline
    assert bm._choose([slow, fast], meas, ok, "v", 20.0, keep=True) == fast  # CUDA: always reported


def test_cli_flags_are_parsed(monkeypatch):
    import fire

    from pipofan_monai import __main__ as cli

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return {"table": "ok"}

    monkeypatch.setattr(bm, "run_benchmark", fake)
    fire.Fire({"benchmark": cli.benchmark}, command=[
        "benchmark", "--device", "cpu", "--size", "128", "--batch", "16", "--channels", "[16,32,64,128,128]",
        "--compile", "False", "--volume_shape", "[512,512,40]", "--output", "x.json", "--iters", "3"])
    assert seen["device"] == "cpu" and seen["size"] == 128 and seen["batch"] == 16 and seen["compile"] is False
    assert bm._parse_ints(seen["channels"], "channels", 5) == (16, 32, 64, 128, 128)
    assert bm._parse_ints(seen["volume_shape"], "volume_shape", 3) == (512, 512, 40)
    assert seen["output"] == "x.json" and seen["iters"] == 3 and seen["quick"] is False
    assert bm._parse_ints("[64,128,256,512,512]", "channels", 5) == (64, 128, 256, 512, 512)
    assert as_bool("True", "compile") is True and as_bool(False, "compile") is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 40}, "size must be a positive multiple of 16, got 40"),
        ({"channels": "[8,16,32]"}, "channels must be 5 positive integers"),
        ({"volume_shape": "[64,64]"}, "volume_shape must be 3 positive integers"),
        ({"sections": "[inference,foo]"}, r"sections must be among .* got \['foo'\]"),
        ({"compile": "maybe"}, "compile must be True or False, got 'maybe'"),
        ({"batch": 0}, "batch must be >= 1, got 0"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bm.run_benchmark(device="cpu", **kwargs)


def test_devices():
    assert bm.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        bm.resolve_device("tpu")
    if not torch.cuda.is_available():
        assert bm.resolve_device("cuda") == torch.device("cpu")  # degrades gracefully
        assert bm.resolve_device("auto") == torch.device("cpu")
        assert bm.default_amp_dtype(torch.device("cpu")) is None
    assert bm.cpu_candidates()[0] == bm.ExecutionPath("fp32 channels_last", None, True)
    bl = bm.BASELINE.inferer_kwargs()
    assert bl == {"amp": False, "amp_dtype": None, "channels_last": False}


def test_format_report_rows():
    """The table: per section baseline vs optimized rate and ratio, each candidate against the baseline, memory."""
    def sec(rate):
        return {"baseline": {rate: 10.0, "memory": {"peak_mb": 500.0, "kind": "rss"}},
                "optimized": {rate: 20.0, "memory": {"peak_mb": 400.0}}, "ratio": 2.0,
                "optimized_path": "fp32 channels_last", "candidates": {"bf16": {rate: 15.0}}}

    report = {"device": {"name": "cpu", "type": "cpu", "threads": 2, "torch": "2"}, "network": {"parameters": 1234},
              "settings": {"channels": [8], "size": 256, "batch": 4, "train_size": 224, "train_batch": 2},
              "inference": sec("slices_per_s"), "training": sec("samples_per_s")}
    lines = [" ".join(line.split()) for line in bm.format_report(report).splitlines()]
    assert lines[2:] == [
        "inference slices/s @256², b4 10.0 20.0 2.00 fp32 channels_last", "candidate bf16 15.0 1.50",
        "peak memory MB 500 400 (rss)",
        "training samples/s @224², b2 10.0 20.0 2.00 fp32 channels_last", "candidate bf16 15.0 1.50",
        "peak memory MB 500 400",
    ]
