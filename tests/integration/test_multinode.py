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

"""Training as it runs on a cluster. Multi-node: two ``torchrun --nnodes 2`` agents that meet through a c10d
rendezvous on 127.0.0.1 (gloo on the CPU) train the DDP overlay, fill one preprocessed cache together through its
locks (each volume built once), and end with the checkpoint one process gives for the same global batch.

Exactness: DDP averages the two ranks' gradients, which equals the gradient of the whole batch when every sample's
forward pass is independent of the others in its batch. BatchNorm is not (each rank normalises over its own half),
so the test uses instance normalisation; and RMSprop's first steps divide the gradient by its own running size,
so a weight whose gradient is near zero moves by +-10 lr on the sign of its float rounding noise: with the bundle's
``eps`` of 1e-8 the two runs part by up to 0.01 per weight within 4 steps (gradients of the first step agree to
1e-6). The test sets ``eps`` to 1, which keeps the steps proportional to the gradients; then the weights agree to
1e-5.

Preemption: the scheduler's SIGTERM keeps the last completed epoch, leaves no lock or temporary file behind, and
``--resume True`` continues."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from bundle_utils import REPO, TRAIN, make_tiny_demo

OVERLAY = REPO / "bundle" / "configs" / "multi_gpu_train.json"
GLOBAL_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(demo: Path, cache: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "--datalist", str(demo), "--max_epochs", "2", "--dps_epochs", "1", "--val_interval", "2",
        "--network_channels", "[4,8,16,32,32]", "--network_def#norm", "instance", "--optimizer#eps", "1.0",
        "--spatial_size", "32", "--roi_size", "32", "--samples_per_epoch", "8", "--batch_size", str(batch_size),
        "--num_workers", "0", "--sw_batch_size", "16", "--progress_bar", "False", "--max_val_volumes", "2",
        "--cache_dir", str(cache), "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "runs"),
        # float32: the comparison of two nodes with one process is about DDP, not bfloat16 rounding (amp is on by
        # default on a CPU with bfloat16 units, and half batches round differently from whole ones there)
        "--amp", "False",
    ]


def _volumes_built(log: str) -> int:
    """Volumes this node's cache fills built themselves: each fill logs ``preprocessing N of M``, and ``built X
    volumes here, Y were built by other processes`` when others took part."""
    built, pending = 0, None
    for line in log.splitlines():
        m = re.search(r"cache: preprocessing (\d+) of \d+ volumes", line)
        if m:
            built += pending or 0
            pending = int(m.group(1))
        m = re.search(r"cache: built (\d+) volumes here", line)
        if m:
            pending = int(m.group(1))
    return built + (pending or 0)


@pytest.mark.slow
def test_two_nodes_c10d_share_the_cache_and_match_one_process(tmp_path):
    demo = make_tiny_demo(tmp_path / "demo")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    rendezvous = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                  "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "--rdzv_id", uuid.uuid4().hex[:12],
                  "--local_addr", "127.0.0.1", "--max_restarts", "0"]
    bundle = ["-m", "monai.bundle", "run", "training", "--config_file"]
    overlay = f"['{TRAIN}','{OVERLAY}']"
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rendezvous, *bundle, overlay,
                          *_settings(demo, cache, tmp_path / "multi", GLOBAL_BATCH // 2)],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        logs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, log in zip(nodes, logs):
        assert node.returncode == 0, log[-6000:]
    # one cache, each of its 16 training + 2 validation volumes built once, by one node or the other
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 18
    assert sum(_volumes_built(log) for log in logs) == 18, [_volumes_built(log) for log in logs]

    single = subprocess.run([sys.executable, *bundle, TRAIN,
                             *_settings(demo, cache, tmp_path / "single", GLOBAL_BATCH)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-6000:]

    multi_last = torch.load(tmp_path / "multi" / "runs" / "last.pt", map_location="cpu", weights_only=False)
    single_last = torch.load(tmp_path / "single" / "runs" / "last.pt", map_location="cpu", weights_only=False)
    assert multi_last["engine"] == single_last["engine"] == {"epoch": 2, "iteration": 4}
    assert set(multi_last["model"]) == set(single_last["model"])  # saved without DDP's "module." prefix
    for key, value in single_last["model"].items():
        torch.testing.assert_close(multi_last["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    multi_best = torch.load(tmp_path / "multi" / "models" / "model.pt", map_location="cpu", weights_only=True)
    single_best = torch.load(tmp_path / "single" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert multi_best["epoch"] == single_best["epoch"] == 2
    for key, value in single_best["model"].items():
        torch.testing.assert_close(multi_best["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def _epoch_of(last: Path) -> int:
    try:
        return int(torch.load(last, map_location="cpu", weights_only=False)["engine"]["epoch"])
    except (OSError, EOFError, RuntimeError, KeyError):
        return 0


def test_sigterm_keeps_the_last_epoch_releases_the_lock_and_resume_continues(tmp_path):
    """A scheduler's preemption: SIGTERM mid-training ends the run with status 143, last.pt holds the last completed
    epoch, no temporary file and no lock is left (a requeued job may start rank 0 on another host), and
    ``--resume True`` continues from that epoch."""
    demo = make_tiny_demo(tmp_path / "demo")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN,
            *_settings(demo, tmp_path / "cache", out, GLOBAL_BATCH)]
    args[args.index("--max_epochs") + 1] = "100"
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = out / "runs" / "last.pt"
    try:
        deadline = time.monotonic() + 180
        while _epoch_of(last) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, log[-4000:]
    kept = _epoch_of(last)
    assert 1 <= kept < 100
    assert not (out / "runs" / ".training.lock").exists()
    assert not [p.name for p in out.rglob("*") if ".tmp" in p.name]
    args[args.index("--max_epochs") + 1] = str(kept + 1)
    resumed = subprocess.run(args + ["--resume", "True"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resumed from {last} at epoch {kept}" in resumed.stdout + resumed.stderr
    assert _epoch_of(last) == kept + 1
