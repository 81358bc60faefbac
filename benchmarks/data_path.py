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

"""Data-path section: the training data path at real size, the memory-mapped cache against
``CacheDataset(copy_cache=True)``."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from benchmarks.common import _progress, write_synthetic_ct

# ------------------------------------------------------------------------------------ data path at real size
#: slices of the paper's four datasets (LiTS 131 x ~450, KiTS19 210 x ~220, MSD Spleen 41 x ~90, BTCV 30 x ~150)
FOUR_DATASETS_SLICES = 150_000

#: settings of the data section with ``quick``: two small volumes, one worker count; a few seconds
QUICK_DATA_SETTINGS: dict[str, Any] = {"num_volumes": 2, "volume_shape": (64, 64, 40), "spatial_size": 64,
                                       "train_size": 48, "batch": 4, "workers": (1,), "batches": 5,
                                       "baseline_batches": 2, "preprocess_workers": 1}


def _rss_pss_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB from ``/proc/<pid>/smaps_rollup`` (NaN where unavailable)."""
    rss = pss = float("nan")
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``), NaN where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
    except OSError:
        return out
    for k in kids:
        out += [k] + _children(k)
    return out


class _MemoryMonitor:
    """Peak RSS / PSS (MiB) of this process and of its child processes (DataLoader or preprocessing workers),
    polled every ``interval`` s in a thread (reading smaps_rollup stalls the process read: keep it rare); ``with``
    it around the measured code."""

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self.interval = interval
        self.peak = {"main_rss_mb": 0.0, "main_pss_mb": 0.0, "worker_rss_mb": 0.0, "worker_pss_mb": 0.0,
                     "total_pss_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll(self) -> None:
        """Take one sample now (e.g. while short-lived workers are still alive)."""
        self._poll()

    def _poll(self) -> None:
        rss, pss = _rss_pss_mb(os.getpid())
        total = pss
        p = self.peak
        p["main_rss_mb"], p["main_pss_mb"] = max(p["main_rss_mb"], rss), max(p["main_pss_mb"], pss)
        for k in _children(os.getpid()):
            r, s = _rss_pss_mb(k)
            if math.isfinite(r):
                p["worker_rss_mb"], p["worker_pss_mb"] = max(p["worker_rss_mb"], r), max(p["worker_pss_mb"], s)
                total += s
        p["total_pss_mb"] = max(p["total_pss_mb"], total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> "_MemoryMonitor":
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def _loader_rate(dataset: Any, items: Sequence[Mapping], batch: int, batches: int, num_workers: int,
                 seed: int) -> dict:
    """Samples/s of ``dataset`` through a MONAI DataLoader with ``PartialLabelSampler`` (mixed), first batch
    (worker start) not timed, plus peak memory of the main process and the workers during the run."""
    from monai.data import DataLoader

    from pipofan_monai.apps.training import PartialLabelSampler

    sampler = PartialLabelSampler([d.get("dataset") for d in items], mode="mixed", seed=seed,
                                  samples_per_epoch=batch * (batches + 1))
    sampler.set_epoch(1)
    with _MemoryMonitor() as mon:
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=num_workers)
        it = iter(loader)
        first = next(it)
        procs = _children(os.getpid()) if num_workers > 0 else [os.getpid()]
        cpu0 = {p: _cpu_seconds(p) for p in procs}
        t0 = time.perf_counter()
        n = 0
        for _ in range(int(batches)):  # no next() after the last batch: StopIteration would end the workers first
            n += int(next(it)["image"].shape[0])
        elapsed = time.perf_counter() - t0
        deltas = [_cpu_seconds(p) - c for p, c in cpu0.items()]  # read before the workers exit
        cpu = sum(d for d in deltas if math.isfinite(d))
        mon.poll()  # the workers' memory at the end of the run, however short it was
        del it, loader
    rate = n / elapsed if elapsed > 0 else float("nan")
    # samples per CPU-second of the workers: what one worker delivers when it has a core to itself (on a shared
    # machine the wall-clock rate also measures the other jobs)
    per_cpu = n / cpu if cpu > 0 else float("nan")
    return {"num_workers": num_workers, "samples": n, "seconds": elapsed, "samples_per_s": rate,
            "samples_per_s_per_worker": rate / max(1, num_workers), "worker_cpu_s": cpu,
            "samples_per_worker_cpu_s": per_cpu, "sample_shape": list(first["image"].shape[1:]), "memory": mon.peak}


def _first_iteration(make_dataset: Callable[[], Any], items: Sequence[Mapping], batch: int, num_workers: int,
                     seed: int) -> tuple[Any, float, dict]:
    """(dataset, seconds from construction to the first batch, peak memory), as a training run starts."""
    from monai.data import DataLoader

    from pipofan_monai.apps.training import PartialLabelSampler

    with _MemoryMonitor() as mon:
        t0 = time.perf_counter()
        ds = make_dataset()
        sampler = PartialLabelSampler([d.get("dataset") for d in items], mode="mixed", seed=seed,
                                      samples_per_epoch=batch)
        sampler.set_epoch(1)
        next(iter(DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=num_workers)))
        seconds = time.perf_counter() - t0
    return ds, seconds, mon.peak


def _baseline_rates(items: Sequence[Mapping], kw: Mapping[str, Any], batch: int, baseline_batches: int,
                    num_workers: int, preprocess_workers: int, spatial_size: int, seed: int,
                    log: Callable[[str], None]) -> dict:
    """The old path, MONAI's ``CacheDataset(copy_cache=True)`` of the training transforms: first batch, samples/s."""
    from monai.data import CacheDataset

    from pipofan_monai.apps.training import get_train_transforms

    def make_cached() -> Any:
        return CacheDataset(items, get_train_transforms(**kw), cache_rate=1.0, copy_cache=True,
                            num_workers=max(1, preprocess_workers), progress=False)

    bds, b_first, b_mem = _first_iteration(make_cached, items, batch, num_workers, seed)
    log(f"  CacheDataset(copy_cache=True): first batch after {b_first:.1f} s")
    # float32 image + float32 label per voxel, as cached in RAM by the old path
    b_per_slice = spatial_size * spatial_size * 8
    br = _loader_rate(bds, items, batch, int(baseline_batches), num_workers, seed)
    log(f"  CacheDataset(copy_cache=True), {num_workers} workers: {br['samples_per_s']:.2f} samples/s, "
        f"peak RSS main {br['memory']['main_rss_mb']:.0f} MiB")
    return {"first_run_s": b_first, "first_run_memory": b_mem, "bytes_per_slice_ram": b_per_slice,
            "four_datasets_ram_gb": b_per_slice * FOUR_DATASETS_SLICES / 1e9, "runs": {str(num_workers): br}}


def benchmark_data_path(
    num_volumes: int = 6,
    volume_shape: Sequence[int] = (512, 512, 450),
    spatial_size: int = 256,
    train_size: int = 224,
    batch: int = 8,
    workers: Sequence[int] = (1, 2),
    batches: int = 50,
    baseline_batches: int = 3,
    preprocess_workers: int = 2,
    baseline: bool = True,
    seed: int = 0,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The training data path at real size: the memory-mapped cache (``cache="mmap"``) against MONAI's
    ``CacheDataset(copy_cache=True)`` (the old path), both in this run, on generated int16 NIfTI volumes.

    Reports bytes per cached slice and in total, the extrapolation to the four datasets
    (:data:`FOUR_DATASETS_SLICES` slices), samples/s (and per worker) for each worker count, peak RSS / PSS of
    the main process and the workers, first-run time to the first batch (preprocessing with
    ``preprocess_workers`` processes included) and second-run time (cache found), and the ratio to the baseline
    at the same worker count.

    Args:
        num_volumes: generated volumes (datasets cycle LiTS, KiTS19, MSD Spleen, BTCV).
        volume_shape: ``(H, W, D)`` of each volume. Default the users' typical 512x512x450.
        spatial_size, train_size: in-plane resize and crop of the bundle.
        batch: DataLoader batch size.
        workers: DataLoader worker counts measured.
        batches: timed batches per worker count (mmap path).
        baseline_batches: timed batches of the baseline (slow at real size).
        preprocess_workers: processes filling the cache (threads for ``CacheDataset``).
        baseline: also measure ``CacheDataset(copy_cache=True)``.
        seed: data and sampling seed.
        workdir: parent of the temporary folder (volumes + cache; about 0.4 GB per 512x512x450 volume).
        log: progress messages.
    """
    from pipofan_monai.apps.training.cached_data import CachedSliceDataset

    log = log or _progress
    shape = tuple(int(s) for s in volume_shape)
    workers = [int(w) for w in (workers if isinstance(workers, (list, tuple)) else [workers])]
    sources = ("lits", "kits19", "msd_spleen", "btcv")
    out: dict[str, Any] = {"num_volumes": int(num_volumes), "volume_shape": list(shape), "spatial_size": spatial_size,
                           "train_size": train_size, "batch": batch, "preprocess_workers": preprocess_workers,
                           "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="pipofan_bench_cache_", dir=workdir) as tmp:
        t0 = time.perf_counter()
        items = []
        for i in range(int(num_volumes)):
            ds_name = sources[i % len(sources)]
            img, lab = Path(tmp) / f"ct_{i}.nii", Path(tmp) / f"seg_{i}.nii"
            write_synthetic_ct(img, lab, shape, ds_name, seed + i)
            items.append({"image": str(img), "label": str(lab), "dataset": ds_name})
        out["write_s"] = time.perf_counter() - t0
        log(f"  wrote {num_volumes} x {shape} int16 volumes in {out['write_s']:.1f} s")
        cache_dir = Path(tmp) / "cache"
        kw = {"spatial_size": spatial_size, "roi_size": train_size}

        def make_mmap() -> Any:
            return CachedSliceDataset(items, cache_dir, num_workers=preprocess_workers, progress=False, **kw)

        w_first = workers[-1]
        ds, first_s, first_mem = _first_iteration(make_mmap, items, batch, w_first, seed)
        log(f"  mmap first run (preprocessing {num_volumes} volumes, {preprocess_workers} processes): first batch "
            f"after {first_s:.1f} s")
        _, second_s, _ = _first_iteration(make_mmap, items, batch, w_first, seed)
        log(f"  mmap second run: first batch after {second_s:.2f} s")
        nbytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        nslices = sum(e.shape[0] for e in ds.entries)
        per_slice = nbytes / nslices
        mmap: dict[str, Any] = {
            "first_run_s": first_s, "second_run_s": second_s, "first_run_memory": first_mem,
            "preprocess_s_per_volume": first_s * preprocess_workers / max(1, int(num_volumes)),
            "cache_bytes": nbytes, "cached_slices": nslices, "bytes_per_slice": per_slice,
            "four_datasets_gb": per_slice * FOUR_DATASETS_SLICES / 1e9, "runs": {}}
        for w in workers:
            r = _loader_rate(ds, items, batch, int(batches), w, seed)
            mmap["runs"][str(w)] = r
            log(f"  mmap, {w} workers: {r['samples_per_s']:.1f} samples/s ({r['samples_per_s_per_worker']:.1f} per "
                f"worker), peak RSS main {r['memory']['main_rss_mb']:.0f} MiB / worker {r['memory']['worker_rss_mb']:.0f}"
                f" MiB, PSS worker {r['memory']['worker_pss_mb']:.0f} MiB")
        out["mmap"] = mmap
        del ds
        out["baseline"] = None
        if baseline:
            out["baseline"] = _baseline_rates(items, kw, batch, baseline_batches, workers[0], preprocess_workers,
                                              spatial_size, seed, log)
            out["ratio"] = (mmap["runs"][str(workers[0])]["samples_per_s"]
                            / out["baseline"]["runs"][str(workers[0])]["samples_per_s"])
    first = out["mmap"]["runs"][str(workers[0])]
    out["samples_per_s"], out["num_workers"], out["sample_shape"] = (first["samples_per_s"], first["num_workers"],
                                                                    first["sample_shape"])
    out["samples"] = first["samples"]
    return out


def format_data_report(data: Mapping[str, Any]) -> list[str]:
    """Lines of the data-path table of a :func:`benchmark_data_path` result."""
    m = data["mmap"]
    lines = [f"data path: {data['num_volumes']} x {'x'.join(map(str, data['volume_shape']))} int16 volumes, "
             f"spatial_size {data['spatial_size']}, crops {data['train_size']}², batch {data['batch']}, "
             f"{data['cpu_count']} CPUs",
             f"  cache on disk: {m['bytes_per_slice'] / 1024:.0f} KiB per slice, {m['cache_bytes'] / 1e9:.2f} GB here, "
             f"{m['four_datasets_gb']:.1f} GB for the four datasets ({FOUR_DATASETS_SLICES:,} slices)",
             f"  first run (preprocess, {data['preprocess_workers']} processes) to first batch {m['first_run_s']:.1f} s "
             f"(~{m['preprocess_s_per_volume']:.0f} s per volume per process), second run {m['second_run_s']:.2f} s",
             f"  {'path':<30}{'workers':>8}{'samples/s':>11}{'/worker':>9}{'/wrk-CPU-s':>11}{'RSS main':>10}"
             f"{'PSS main':>10}{'RSS wrk':>9}{'PSS wrk':>9}  (peak MiB)"]
    rows = [("mmap cache", r) for r in m["runs"].values()]
    if data.get("baseline"):
        rows += [("CacheDataset(copy_cache=True)", r) for r in data["baseline"]["runs"].values()]
    for name, r in rows:
        mem = r["memory"]
        lines.append(f"  {name:<30}{r['num_workers']:>8}{r['samples_per_s']:>11.1f}{r['samples_per_s_per_worker']:>9.1f}"
                     f"{r['samples_per_worker_cpu_s']:>11.1f}{mem['main_rss_mb']:>10.0f}{mem['main_pss_mb']:>10.0f}{mem['worker_rss_mb']:>9.0f}"
                     f"{mem['worker_pss_mb']:>9.0f}")
    if data.get("baseline"):
        b = data["baseline"]
        lines.append(f"  baseline first batch after {b['first_run_s']:.1f} s; holds {b['bytes_per_slice_ram'] / 1024:.0f} "
                     f"KiB per slice in RAM ({b['four_datasets_ram_gb']:.0f} GB for the four datasets); "
                     f"mmap / baseline samples/s {data['ratio']:.1f}x")
    return lines


