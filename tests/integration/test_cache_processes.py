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

"""The preprocessed cache with several processes and at real size: concurrent fills, waiting for another builder, a killed builder, the preprocess command, a 512x512 volume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cache_utils import KW, entry_files
from monai.data.utils import set_rnd

from pipofan_monai.apps.training.cached_data import (
    CachedSliceDataset,
)
from pipofan_monai.preprocessing.cache import PreprocessedCache

REPO = Path(__file__).resolve().parents[2]


_FILL = """
import json, os, sys, time
from pipofan_monai.apps.dataset_conversion import load_datalist
from pipofan_monai.preprocessing.cache import PreprocessedCache
items = load_datalist(sys.argv[1])["training"]
cache = PreprocessedCache(sys.argv[2], spatial_size=40)
print("ready", flush=True)
while not os.path.exists(sys.argv[4]):  # both processes start filling together, after their imports
    time.sleep(0.01)
entries = cache.fill(items, num_workers=int(sys.argv[3]), progress=False)
print(json.dumps({"entries": len(entries), **cache.last_fill}))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


_HOLD = """
import sys, time
from pipofan_monai.apps.dataset_conversion import load_datalist
from pipofan_monai.preprocessing.cache import PreprocessedCache
items = load_datalist(sys.argv[1])["training"]
cache = PreprocessedCache(sys.argv[2], spatial_size=40)
lock = cache.entry_lock(items[0])
lock.acquire()
print("locked", flush=True)
while not all(cache.lookup(it)[0] is not None for it in items[1:]):
    time.sleep(0.05)
if sys.argv[3] == "build":
    cache.build(items[0])
    lock.release()
    print("built", flush=True)
else:
    time.sleep(600)
"""


def _holder(items, cache_dir, mode):
    datalist = Path(items[0]["image"]).parents[1] / "datalist.json"
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(datalist), str(cache_dir), mode], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked", p.stderr.read()
    return p


@pytest.mark.slow
def test_real_size_volume(tmp_path):
    """One 512x512x450 int16 NIfTI: cached as (450, 256, 256) float16 + uint8 (~28 MiB + 28 MiB on disk), samples
    read 3 slices; memory stays far below CI's 24 GB (one volume's preprocessing peaks at ~3 GB)."""
    from benchmarks import write_synthetic_ct

    img, lab = tmp_path / "ct.nii", tmp_path / "seg.nii"
    write_synthetic_ct(img, lab, (512, 512, 450), "kits19", seed=1)
    item = [{"image": str(img), "label": str(lab), "dataset": "kits19"}]
    ds = CachedSliceDataset(item, tmp_path / "cache", progress=False)
    e = ds.entries[0]
    assert e.shape == (450, 256, 256)
    assert os.path.getsize(e.path / "image.npy") == 128 + 450 * 256 * 256 * 2
    assert os.path.getsize(e.path / "label.npy") == 128 + 450 * 256 * 256
    assert e.organ_slices([2]).tolist() == list(range(int(0.45 * 450), int(0.75 * 450)))  # kidney block slices
    set_rnd(ds, 0)
    for _ in range(50):
        s = ds[0]
        assert s["image"].shape == (3, 224, 224) and s["label"].shape == (1, 224, 224)
        assert (s["label"] == 2).any()  # organ-centred, KiTS19 annotates the kidney only
    assert CachedSliceDataset(item, tmp_path / "cache", progress=False).entries[0].path == e.path


def test_concurrent_fill_by_two_processes(items, tmp_path):
    datalist = Path(items[0]["image"]).parents[1] / "datalist.json"
    cache_dir = tmp_path / "cache"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _FILL, str(datalist), str(cache_dir), str(w), str(go)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in (1, 2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()  # both find every volume missing at once: without the locks each would build all of them
    outs = [p.communicate(timeout=300) for p in procs]
    reports = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
        assert reports[-1]["entries"] == len(items)
    # the two processes shared the work: every volume was preprocessed exactly once, by one of them
    assert sum(r["built"] for r in reports) == len(items), reports
    cache = PreprocessedCache(cache_dir, spatial_size=40)
    names = sorted(p.name for p in cache_dir.iterdir() if p.name != ".locks")
    assert names == sorted(cache.entry_path(it).name for it in items)  # one entry each, no temp folder left
    ref = PreprocessedCache(tmp_path / "ref", spatial_size=40).fill(items, progress=False)
    for it, r in zip(items, ref):
        e, reason = cache.lookup(it)
        assert e is not None, reason
        np.testing.assert_array_equal(np.asarray(e.image), np.asarray(r.image))
        np.testing.assert_array_equal(np.asarray(e.label), np.asarray(r.label))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_entry_being_built_elsewhere_is_waited_for_not_rebuilt(items, tmp_path, num_workers):
    cache_dir = tmp_path / "cache"
    holder = _holder(items, cache_dir, "build")
    try:
        cache = PreprocessedCache(cache_dir, spatial_size=40)
        entries = cache.fill(items, num_workers=num_workers, progress=False)
        assert holder.wait(timeout=120) == 0 and holder.stdout.read().strip() == "built"
    finally:
        holder.kill()
    assert cache.last_fill == {"built": 3, "by_others": 1}
    assert [e.path for e in entries] == [cache.entry_path(it) for it in items]
    ref = PreprocessedCache(tmp_path / "ref", spatial_size=40).fill(items[:1], progress=False)[0]
    np.testing.assert_array_equal(np.asarray(entries[0].image), np.asarray(ref.image))


def test_preprocess_command_fills_what_training_reads(items, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    helped = subprocess.run([sys.executable, "-m", "pipofan_monai", "preprocess", "--help"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    text = helped.stdout + helped.stderr
    assert helped.returncode == 0 and "--num_workers" in text and "preprocess" in text
    assert "ready in" not in text  # printed the help, did not run
    datalist = Path(items[0]["image"]).parents[1] / "datalist.json"
    cache_dir = tmp_path / "pre"
    run = subprocess.run([sys.executable, "-m", "pipofan_monai", "preprocess", "--datalist", str(datalist),
                          "--cache_dir", str(cache_dir), "--num_workers", "2", "--spatial_size", "48"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"{len(items)} volumes" in run.stdout
    files = [entry_files(e) for e in PreprocessedCache(cache_dir, spatial_size=48).fill(items, progress=False)]
    # bundle defaults + spatial_size (the plans' check wants a multiple of 16): same keys
    ds = CachedSliceDataset(items, cache_dir, progress=False, **{**KW, "spatial_size": 48})
    assert [entry_files(e) for e in ds.entries] == files


def test_a_killed_builder_leaves_no_claim_behind(items, tmp_path):
    """The lock of a process killed while building (SIGKILL: no cleanup runs) is free at once: the waiting fill
    builds that entry itself instead of waiting for a stale claim."""
    cache_dir = tmp_path / "cache"
    holder = _holder(items, cache_dir, "hold")
    result = {}
    filler = PreprocessedCache(cache_dir, spatial_size=40)
    thread = threading.Thread(target=lambda: result.update(entries=filler.fill(items, progress=False)))
    try:
        thread.start()
        cache = PreprocessedCache(cache_dir, spatial_size=40)
        deadline = time.monotonic() + 120
        while not all(cache.lookup(it)[0] is not None for it in items[1:]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive()  # waiting for the holder
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        thread.join(timeout=120)
    finally:
        holder.kill()
    assert not thread.is_alive()
    assert len(result["entries"]) == len(items) and filler.last_fill == {"built": 4, "by_others": 0}
    assert cache.lookup(items[0])[0] is not None
