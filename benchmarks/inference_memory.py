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

"""Peak memory of the bundle's inference at real size, stage by stage, and the cost of validation.

Inference (``--section inference``): generated ``512 x 512 x D`` int16 CT NIfTI files (D = 200, 450, 1000 by
default) are segmented by the bundle's runner (``bundle/configs/inference.json``: load, checks, RAS, HU window,
resize to the network's size, 2.5D inference, softmax, streamed inversion + argmax, connected components, NIfTI
writer, overview PNG), each in a fresh Python process so that its peak RSS (``VmHWM``) is its own. Per transform
the peak RSS inside it is recorded (``/proc/self/clear_refs`` resets the high-water mark at each entry), so the
table names the stage holding the peak. ``--channels`` picks the network (the paper's full width by default; the
narrow ``[8,16,32,64,64]`` measures the data path fast).

Validation (``--section validation``): one ``512 x 512 x D`` volume validated as training does it (the validation
dataset of ``train.json``'s pipeline, the sliding-slice inferer, the Dice metrics), streamed (the bundle's) and
one-hot (the validation before it): time per volume, the network's forward passes inside that run, their ratio,
the peak RSS and the Dice values, each size and path in a fresh process.

Run from the repository root, one heavy job at a time on a shared machine::

    flock /tmp/heavy.lock python benchmarks/inference_memory.py --section inference --depths 200,450,1000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import _reset_peak_rss, _status_mib, rss_window  # noqa: E402  (the RSS helpers of every section)

CLASS_NAMES = ("background", "liver", "kidney", "spleen")
FULL_CHANNELS = (64, 128, 256, 512, 512)
NARROW_CHANNELS = (8, 16, 32, 64, 64)
#: the bundle's validation postprocessing before the streamed validation (``train.json`` up to 0.2.0)
ONE_HOT_POSTPROCESSING = {"_target_": "Compose", "transforms": [
    {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": "@num_classes"}]}

#: global class id -> BTCV label number of the generated label maps
BTCV_OF_GLOBAL = {1: 6, 2: 2, 3: 1}


class TransformPeaks:
    """A stage timer for :class:`~pipofan_monai.apps.inference.CasePipeline` recording, per transform (in order), the
    RSS at its start, the peak inside it and the seconds. The process's overall peak is kept in ``overall``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.overall = 0.0
        self.current = "before the first step"
        #: the largest RSS a sampling thread saw (every 20 ms) and the step running then ("after X": between steps)
        self.sampled = (0.0, "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _status_mib("VmRSS")
            if rss > self.sampled[0]:
                self.sampled = (rss, self.current)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def __call__(self, stage: str, name: str | None = None) -> Iterator[None]:
        self.overall = max(self.overall, _status_mib("VmHWM"))
        self.current = name or stage
        window: dict = {}
        try:
            with rss_window() as window:
                yield
        finally:
            self.overall = max(self.overall, window["peak_mib"])
            self.rows.append({"stage": stage, "name": name or stage, **window})
            self.current = f"after {name or stage}"
            _reset_peak_rss()


# ------------------------------------------------------------------------------------------------ inputs
def write_ct(path: str | os.PathLike, shape: Sequence[int], seed: int = 0, label_path: str | None = None) -> None:
    """A synthetic int16 CT (air, an elliptic body, liver / kidney / spleen blocks, noise) in HU, RAS, 0.7 x 0.7 x
    1 mm, as ``.nii.gz``; with ``label_path`` its label map (uint8, BTCV's label numbers)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    h, w, d = (int(s) for s in shape)
    x = (np.arange(h) - h / 2)[:, None] / (h / 2)
    y = (np.arange(w) - w / 2)[None, :] / (w / 2)
    img = np.full((h, w, d), -1000, dtype=np.int16)
    img[(x / 0.85) ** 2 + (y / 0.7) ** 2 < 1] = 40
    lab = np.zeros((h, w, d), dtype=np.uint8)
    organs = {1: (-0.3, 0.2, 0.25, 0.3, 0.2, 0.7), 2: (0.35, -0.25, 0.1, 0.12, 0.45, 0.75),
              3: (0.35, 0.35, 0.12, 0.1, 0.25, 0.45)}
    for c, (cx, cy, rx, ry, z0, z1) in organs.items():
        m = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        zs = slice(int(z0 * d), max(int(z0 * d) + 1, int(z1 * d)))
        lab[m, zs] = c
        img[m, zs] = 60 + 30 * c
    for z in range(0, d, 64):  # noise slab by slab (a whole-volume int64 draw would need 8 bytes per voxel)
        img[..., z:z + 64] += rng.integers(-20, 21, size=img[..., z:z + 64].shape, dtype=np.int16)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(img, affine), os.fspath(path))
    if label_path is not None:  # in BTCV's own label numbers (liver 6, right kidney 2, spleen 1)
        raw = np.zeros_like(lab)
        for g, r in BTCV_OF_GLOBAL.items():
            raw[lab == g] = r
        nib.save(nib.Nifti1Image(raw, affine), os.fspath(label_path))


def write_checkpoint(path: str | os.PathLike, channels: Sequence[int], spatial_size: int = 256, seed: int = 0) -> str:
    """A plans-bearing checkpoint of a randomly initialised PIPO-FAN (as training writes them)."""
    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.plans import PlansState, make_plans

    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=len(CLASS_NAMES), channels=tuple(channels))
    plans = make_plans(net, CLASS_NAMES, {"spatial_size": int(spatial_size)})
    torch.save({"model": net.state_dict(), "plans": PlansState(plans).state_dict()}, path)
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------ workers
def inference_worker(spec: Mapping[str, Any]) -> dict:
    """In a fresh process: segment ``spec["image"]`` with the bundle's runner (``inference.json`` + overrides) and
    return the peak RSS (whole case and per transform)."""
    from monai.bundle import ConfigParser

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "inference.json"))
    parser.update(dict(spec["overrides"]))
    runner = parser.get_parsed_content("runner")
    peaks = TransformPeaks()
    runner.timer = peaks
    report = runner._report_case  # the overview PNG (and the evaluation), after the pipeline

    def timed_report(*args: Any, **kwargs: Any) -> Any:
        with peaks("report", "overview PNG"):
            return report(*args, **kwargs)

    runner._report_case = timed_report
    gc.collect()
    start = _status_mib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    summary = runner.run([spec["image"]], spec["ckpt"])
    seconds = time.perf_counter() - t0
    if summary["num_ok"] != 1:
        raise RuntimeError(f"inference failed: {summary['cases']}")
    peak = max(_status_mib("VmHWM"), peaks.overall)
    peaks.stop()
    return {"start_mib": start, "peak_mib": peak, "seconds": seconds, "transforms": peaks.rows,
            "sampled_peak_mib": peaks.sampled[0], "sampled_peak_in": peaks.sampled[1]}


def validation_worker(spec: Mapping[str, Any]) -> dict:
    """In a fresh process: validate one volume as training does (``train.json``'s ``validate#evaluator`` with its
    dataset, inferer, postprocessing and Dice metrics; no handlers): its time, the time of the network's forward
    passes inside it (hooks: the same run under the same load, so their ratio is robust on a shared machine) and
    its peak RSS (the cache is filled before it); also the bare inferer on the same volume, run before."""
    from monai.bundle import ConfigParser

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "train.json"))
    parser.update({"network_channels": list(spec["channels"]), "device": "$torch.device('cpu')", "amp": False,
                   "output_dir": spec["workdir"], "cache_dir": spec["cache_dir"], "num_workers": 0,
                   "progress_bar": False, "validate#handlers": [],
                   "validate#dataset#data": [{"image": spec["image"], "label": spec["label"], "dataset": "btcv"}]})
    if spec.get("one_hot"):  # the validation before the streamed one: K-channel logits, one-hot pred and label
        parser.update({"validate#inferer#argmax": False, "validate#postprocessing": ONE_HOT_POSTPROCESSING})
    dataset = parser.get_parsed_content("validate#dataset")  # fills the cache (not timed)
    evaluator = parser.get_parsed_content("validate#evaluator")
    inferer = parser.get_parsed_content("validate#inferer")
    network = parser.get_parsed_content("network").eval()
    item = dataset[0]
    image = item["image"][None]
    del item
    gc.collect()
    with torch.no_grad():  # warm-up on a few slices, then the network alone on the volume
        inferer(image[..., :8], network)
        t0 = time.perf_counter()
        out = inferer(image, network)
        network_s = time.perf_counter() - t0
    del out, image
    gc.collect()
    inside = {"s": 0.0, "t0": 0.0}  # the forward passes' time inside the validation run (same run, same load)

    def before(*_: Any) -> None:
        inside["t0"] = time.perf_counter()

    def after(*_: Any) -> None:
        inside["s"] += time.perf_counter() - inside["t0"]

    hooks = [network.register_forward_pre_hook(before), network.register_forward_hook(after)]
    start = _status_mib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    evaluator.run()
    seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    for h in hooks:
        h.remove()
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items()}
    return {"seconds": seconds, "forward_s": inside["s"], "ratio": seconds / inside["s"], "network_s": network_s,
            "start_mib": start, "peak_mib": peak, "rise_mib": peak - start, "metrics": metrics}


def run_worker(kind: str, spec: Mapping[str, Any], timeout: float = 7200) -> dict:
    """``kind``'s worker in a fresh Python process (its peak RSS is its own)."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.inference_memory import "
            f"{kind}_worker as f; print('RESULT ' + json.dumps(f(json.loads(sys.stdin.read()))))")
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), capture_output=True, text=True,
                          cwd=str(ROOT), timeout=timeout)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(line.split(" ", 1)[1])


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------------ sections
def inference_section(depths: Sequence[int], channels: Sequence[int], sw_batch_size: Any, workdir: str,
                      threads: int | None, save_overlay: bool, log: Callable[[str], None] = print) -> list[dict]:
    """Peak RSS of the bundle's inference at each depth, one fresh process per depth."""
    root = Path(workdir)
    ckpt = write_checkpoint(root / f"net_{'_'.join(map(str, channels))}.pt", channels)
    rows = []
    for d in depths:
        image = root / f"ct_512x512x{d}.nii.gz"
        if not image.exists():
            t0 = time.perf_counter()
            write_ct(image, (512, 512, d))
            log(f"wrote {image.name} in {time.perf_counter() - t0:.0f} s")
        spec = {"image": str(image), "ckpt": ckpt, "threads": threads, "overrides": {
            "ckpt_path": ckpt, "fold_ckpt_paths": [], "output_dir": str(root / "out"), "overwrite": True,
            "device": "$torch.device('cpu')", "amp": False, "sw_batch_size": sw_batch_size,
            "save_overlay": bool(save_overlay)}}
        load = load_average()
        r = run_worker("inference", spec)
        r.update(depth=d, load=load)
        top = max(r["transforms"], key=lambda t: t["peak_mib"])
        log(f"D={d}: peak RSS {r['peak_mib']:.0f} MiB ({r['peak_mib'] / 1024:.2f} GiB), {r['seconds']:.0f} s, "
            f"peak in {top['name']} ({top['stage']}); largest RSS sampled every 20 ms {r['sampled_peak_mib']:.0f} MiB "
            f"({r['sampled_peak_in']}); load {load}")
        for t in r["transforms"]:
            log(f"    {t['stage']:<12}{t['name']:<34}before {t['before_mib']:>7.0f}  peak {t['peak_mib']:>7.0f}  "
                f"after {t['after_mib']:>7.0f} MiB  {t['seconds']:>7.1f} s")
        rows.append(r)
    return rows


def validation_section(depths: Sequence[int], channels: Sequence[int], workdir: str, threads: int | None,
                       paths: Sequence[str] = ("one-hot", "streamed"), log: Callable[[str], None] = print) -> list[dict]:
    """Time and peak RSS of validating one ``512 x 512 x D`` volume, per depth and path (``"streamed"``: the
    bundle's; ``"one-hot"``: the validation before it), one fresh process each."""
    root = Path(workdir)
    rows = []
    for d in depths:
        image, label = root / f"val_ct_{d}.nii.gz", root / f"val_seg_{d}.nii.gz"
        if not image.exists() or not label.exists():
            write_ct(image, (512, 512, d), label_path=str(label))
        for path in paths:
            spec = {"image": str(image), "label": str(label), "channels": list(channels), "threads": threads,
                    "workdir": str(root / f"val_run_{d}"), "cache_dir": str(root / f"val_cache_{d}"),
                    "one_hot": path == "one-hot"}
            load = load_average()
            r = run_worker("validation", spec)
            r.update(depth=d, load=load, path=path)
            log(f"validation {path:<9} D={d}: {r['seconds']:.1f} s per volume, of which the network's forward passes "
                f"{r['forward_s']:.1f} s: ratio {r['ratio']:.2f} (the bare inferer alone before it: "
                f"{r['network_s']:.1f} s), peak RSS {r['peak_mib']:.0f} MiB (+{r['rise_mib']:.0f} over "
                f"{r['start_mib']:.0f}); Dice {json.dumps({k: round(v, 6) for k, v in r['metrics'].items()})}; "
                f"load {load}")
            rows.append(r)
    for path in paths:
        mine = [r for r in rows if r["path"] == path]
        if len(mine) >= 2:
            slope = (mine[-1]["peak_mib"] - mine[0]["peak_mib"]) / (mine[-1]["depth"] - mine[0]["depth"])
            log(f"validation {path}: peak RSS grows {slope:.2f} MiB per slice (D={mine[0]['depth']} -> "
                f"{mine[-1]['depth']})")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=("inference", "validation", "all"), default="all")
    p.add_argument("--depths", default="200,450,1000", help="slice counts of the inference section")
    p.add_argument("--channels", default=",".join(map(str, FULL_CHANNELS)), help="network widths (inference)")
    p.add_argument("--sw_batch_size", default="auto")
    p.add_argument("--val_depths", default="200,450", help="slice counts of the validation section")
    p.add_argument("--val_paths", default="one-hot,streamed", help="validation paths: one-hot (before), streamed")
    p.add_argument("--val_channels", default=",".join(map(str, NARROW_CHANNELS)), help="network (validation)")
    p.add_argument("--save_overlay", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", default=None, help="folder for the generated volumes (kept between runs)")
    args = p.parse_args(argv)
    depths = [int(v) for v in args.depths.split(",")]
    channels = [int(v) for v in args.channels.split(",")]
    batch: Any = args.sw_batch_size if args.sw_batch_size == "auto" else int(args.sw_batch_size)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="pipofan_mem_"))
        os.makedirs(workdir, exist_ok=True)
        print(f"load average {load_average()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
        if args.section in ("inference", "all"):
            inference_section(depths, channels, batch, workdir, args.threads, bool(args.save_overlay))
        if args.section in ("validation", "all"):
            validation_section([int(v) for v in args.val_depths.split(",")],
                               [int(v) for v in args.val_channels.split(",")], workdir, args.threads,
                               paths=args.val_paths.split(","))


if __name__ == "__main__":
    main()
