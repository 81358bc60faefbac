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

"""Training samples per second of each cache mode at real size, in one process, one run.

Usage (heavy: ~3 GB peak, minutes; wrap it in ``flock /tmp/heavy.lock`` on a shared machine)::

    python benchmarks/cache_modes.py [--volumes 2] [--shape 512 512 450] [--samples 40]

Writes ``--volumes`` synthetic int16 CTs (``write_synthetic_ct``), builds the training Dataset of each mode
with the bundle's defaults (256² resize, 224² crops, one worker-less process; ``memory`` with and without
``CacheDataset``'s deep copy per sample) and prints per mode: the build
time, samples/s (mmap and memory over ``--samples`` samples, persistent and none over a few) and the ratio to
``mmap``, plus the process's peak RSS after the mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from monai.data.utils import set_rnd

    from pipofan_monai.benchmark import write_synthetic_ct
    from pipofan_monai.apps.training import get_train_transforms, make_train_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 450))
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--slow_samples", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i, ds in zip(range(args.volumes), ("kits19", "lits", "msd_spleen", "btcv")):
            img, lab = Path(tmp) / f"ct{i}.nii", Path(tmp) / f"seg{i}.nii"
            write_synthetic_ct(img, lab, args.shape, ds, seed=i)
            items.append({"image": str(img), "label": str(lab), "dataset": ds})
        rows = {}
        for name in ("mmap", "memory", "memory_no_copy", "persistent", "none"):
            mode = name.replace("_no_copy", "")
            transform = get_train_transforms(roi_size=224)
            t0 = time.perf_counter()
            data = make_train_dataset(items, mode, Path(tmp) / "cache", progress=False, transform=transform,
                                      copy_cache=name != "memory_no_copy")
            build = time.perf_counter() - t0
            set_rnd(getattr(data, "transform", data), 0)
            n = args.samples if mode in ("mmap", "memory") else args.slow_samples
            data[0]  # first sample: lazy opens (persistent: writes its cache file)
            t0 = time.perf_counter()
            for k in range(n):
                s = data[k % len(items)]
            per_s = n / (time.perf_counter() - t0)
            assert s["image"].shape == (3, 224, 224)
            rows[name] = {"build_s": round(build, 2), "samples_per_s": round(per_s, 2),
                          "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            del data
        for row in rows.values():
            row["vs_mmap"] = round(row["samples_per_s"] / rows["mmap"]["samples_per_s"], 4)
        print(json.dumps({"volumes": args.volumes, "shape": list(args.shape), "modes": rows}, indent=1))


if __name__ == "__main__":
    main()
