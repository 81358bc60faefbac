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

"""The benchmark's CPU section with ``--quick`` through the CLI: bundle inference with torch and ONNX Runtime, the
bare network, MONAI's spleen 3D UNet as the peer, in one run; and the peer network's spleen-bundle parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

import benchmarks as bm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_quick_cpu_section_cli(tmp_path):
    out = tmp_path / "cpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("PIPOFAN_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "pipofan_monai", "benchmark", "--cpu", "--quick", "--output", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    q = bm.CPU_QUICK_SETTINGS
    assert r["settings"]["volume_shape"] == list(q["volume_shape"]) and r["settings"]["quick"] is True
    t, o, p = r["rows"]["torch"], r["rows"]["onnxruntime"], r["peer"]
    assert t["network"] == "PIPOFAN" and o["network"] == "OnnxRuntimeNetwork"  # each backend really ran
    depth = q["volume_shape"][2]
    for row in (t, o):
        assert row["slices_per_s"] == pytest.approx(depth / row["total_s"])
        assert row["pipeline_over_bare"] == pytest.approx(row["total_s"] / row["bare_network_s"])
        assert row["total_s"] == pytest.approx(sum(row["stages"].values())) and row["network_s"] > 0
        assert row["peak_rss_mib"] > 100
    assert r["network_speedup"] == pytest.approx(t["bare_network_s"] / o["bare_network_s"])
    assert r["over_peer"]["onnxruntime"] == pytest.approx(o["slices_per_s"] / p["slices_per_s"])
    # the peer resampled the 0.7 x 0.7 x 1.0 mm CT to 1.5 x 1.5 x 2.0 mm before its 96³ window
    h, w, d = q["volume_shape"]
    assert p["resampled_shape"] == [round(h * 0.7 / 1.5), round(w * 0.7 / 1.5), round(d / 2.0)]
    assert p["network_s"] > 0 and p["slices_per_s"] == pytest.approx(depth / p["total_s"])
    assert r["agreement"]["voxels_equal"] > 0.999  # the two backends segment alike
    assert "ONNX Runtime / torch channels_last" in proc.stdout and "MONAI spleen bundle 3D UNet" in proc.stdout
    from pipofan_monai.inference import cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()  # the bundle's --amp True runs as a third row where the CPU has bfloat16 units
    assert proc.stdout.count("| PIPO-FAN bundle") == 2 + bf16
    if bf16:
        b = r["rows"]["torch_bf16"]
        assert b["network"] == "PIPOFAN" and b["network_s"] > 0  # PyTorch ran it, not ONNX Runtime
        assert r["bf16_network_stage_speedup"] == pytest.approx(t["network_s"] / b["network_s"])
        # random weights have tiny logit margins, so bfloat16 rounding flips some voxels (97.7 % equal here, 96.0 %
        # in the full-size run; 99.98 % with the trained quick-start model on real CT): same segmentation, not noise
        assert 0.9 < r["agreement"]["bf16_voxels_equal"] < 1.0
    else:
        assert set(r["rows"]) == {"torch", "onnxruntime"}


def test_spleen_peer_network():
    net = bm.spleen_unet()
    assert sum(p.numel() for p in net.parameters()) == 4_808_917  # the spleen bundle's UNet
    assert not net.training
