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

"""The paper's experiments as runnable studies (issue 9): one command trains every row of a table with the
bundle's training workflow and writes the table as JSON, CSV and a bar chart.

Studies (``python -m pipofan_monai study <name>``):

- ``datasets`` (Table II): train on BTCV only, BTCV + each partial dataset, the three partial datasets only, and
  all four; evaluate on the BTCV validation split (``split="btcv_paper"``).
- ``loss`` (beyond the paper): the target adaptive loss (TAL) vs the naive loss that treats organs a dataset
  does not annotate as background (``partial_labels=False``) vs training on the fully labeled source only.
- ``architecture`` (Tables III / VI / VII): single-scale ResU-Net, PIPO without / with ECD, PIPO-FAN without /
  with ECD and 5 inputs / 3 outputs, each with its parameter count at the study's and at the paper's widths.

Every row's Dice is that of the best validation epoch (the epoch whose weights the workflow keeps as
``model.pt``), per organ and averaged, on the split's validation volumes.

Without a datalist a study runs on a dedicated synthetic demo dataset at demo scale (:data:`DEMO_SETTINGS`:
small widths, short schedule, CPU); with ``datalist`` it runs the full recipe of ``bundle/configs/train.json``
(GPU). ``quick=True`` shrinks everything further for tests (:data:`QUICK_SETTINGS`).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipofan_monai.training.crossval import DEFAULT_CONFIG, _cell, best_validation_dice, release_workflow

__all__ = [
    "STUDIES",
    "PAPER_CHANNELS",
    "DEMO_SETTINGS",
    "QUICK_SETTINGS",
    "DEMO_DATA",
    "QUICK_DATA",
    "study_rows",
    "subset_datalist",
    "count_parameters",
    "run_study",
    "study_report",
]

logger = logging.getLogger(__name__)

STUDIES = ("datasets", "loss", "architecture")

#: the paper's encoder widths (PIPOFAN.md §2), used for the full-width parameter counts.
PAPER_CHANNELS = (64, 128, 256, 512, 512)

ALL_SOURCES = ("btcv", "lits", "kits19", "msd_spleen")

#: demo-scale overrides of train.json (2-core CPU): 96^2 slices, 80^2 crops, widths 16..128, 100 epochs x 32 samples.
DEMO_SETTINGS: dict[str, Any] = {
    "max_epochs": 100,
    "dps_epochs": 50,
    "val_interval": 2,
    "samples_per_epoch": 32,
    "batch_size": 8,
    "learning_rate": 0.0005,
    "lr_decay_epochs": 20,
    "sampling": "mixed",
    "spatial_size": 96,
    "roi_size": 80,
    "network_channels": [16, 32, 64, 128, 128],
    "sw_batch_size": 16,
    "num_workers": 0,
    "max_val_volumes": None,
    "progress_bar": False,
    "seed": 0,
}

#: test-scale overrides: a few seconds per row.
QUICK_SETTINGS: dict[str, Any] = {
    **DEMO_SETTINGS,
    "max_epochs": 2,
    "dps_epochs": 1,
    "val_interval": 1,
    "samples_per_epoch": 4,
    "batch_size": 2,
    "spatial_size": 32,
    "roi_size": 32,
    "network_channels": [2, 4, 4, 8, 8],
    "sw_batch_size": 8,
}

#: the study's synthetic dataset: few fully labeled (BTCV-like) volumes, more partially labeled ones, so that
#: the partial sources carry most of the supervision (and, trained naively, most of the false "background").
DEMO_DATA: dict[str, Any] = {
    "num_cases_per_source": {"btcv": 6, "lits": 6, "kits19": 6, "msd_spleen": 6},
    "num_test": 0,
    "shape": (128, 128, 40),
    "seed": 0,
}

QUICK_DATA: dict[str, Any] = {
    "num_cases_per_source": {"btcv": 3, "lits": 1, "kits19": 1, "msd_spleen": 1},
    "num_test": 0,
    "shape": (32, 32, 12),
    "seed": 0,
}

_DATASET_ROWS = (
    ("BTCV", ("btcv",)),
    ("BTCV + LiTS", ("btcv", "lits")),
    ("BTCV + KiTS", ("btcv", "kits19")),
    ("BTCV + Spleen", ("btcv", "msd_spleen")),
    ("LiTS + KiTS + Spleen", ("lits", "kits19", "msd_spleen")),
    ("All datasets", ALL_SOURCES),
)

_ARCH_ROWS = (
    ("ResU-Net (1/1 scales)", {"num_scales_in": 1, "num_scales_out": 1, "ecd": False, "adaptive_fusion": False}),
    ("PIPO w/o ECD", {"num_scales_in": 5, "num_scales_out": 5, "ecd": False, "adaptive_fusion": False}),
    ("PIPO with ECD", {"num_scales_in": 5, "num_scales_out": 5, "ecd": True, "adaptive_fusion": False}),
    ("PIPO-FAN w/o ECD", {"num_scales_in": 5, "num_scales_out": 5, "ecd": False, "adaptive_fusion": True}),
    ("PIPO-FAN with ECD", {"num_scales_in": 5, "num_scales_out": 5, "ecd": True, "adaptive_fusion": True}),
    ("PIPO-FAN 5/3 scales", {"num_scales_in": 5, "num_scales_out": 3, "ecd": True, "adaptive_fusion": True}),
)


_RECORDED = ("max_epochs", "dps_epochs", "val_interval", "samples_per_epoch", "batch_size", "learning_rate",
             "sampling", "spatial_size", "roi_size", "intensity")


def study_rows(name: str) -> list[dict[str, Any]]:
    """The rows of study ``name``: ``[{"name": label, "sources": (...), "overrides": {config id: value}}]``.

    Args:
        name: one of :data:`STUDIES`.

    Raises:
        ValueError: unknown study name.
    """
    if name == "datasets":
        return [{"name": n, "sources": s, "overrides": {}} for n, s in _DATASET_ROWS]
    if name == "loss":
        return [
            {"name": "TAL (partial labels)", "sources": ALL_SOURCES, "overrides": {"partial_labels": True}},
            {"name": "Naive (unlabeled = background)", "sources": ALL_SOURCES, "overrides": {"partial_labels": False}},
            {"name": "Fully labeled only (BTCV)", "sources": ("btcv",), "overrides": {"partial_labels": True}},
        ]
    if name == "architecture":
        return [
            {"name": n, "sources": ALL_SOURCES, "arch": dict(a),
             # without AF there is no fused output: the whole schedule stays in the deep-supervision stage
             "overrides": {**{f"network_def#{k}": v for k, v in a.items()},
                           **({} if a["adaptive_fusion"] else {"dps_epochs": "@max_epochs"})}}
            for n, a in _ARCH_ROWS
        ]
    raise ValueError(f"unknown study {name!r}; available: {list(STUDIES)}.")


def subset_datalist(datalist: Mapping, split: str, sources: Sequence[str]) -> dict:
    """A copy of ``datalist`` whose training items come only from ``sources`` while the validation volumes of the
    named ``split`` are kept (also when the split's own dataset is not a training source, e.g. "LiTS + KiTS +
    Spleen" evaluated on BTCV).

    Args:
        datalist: datalist dict (``training`` items with ``dataset`` keys, ``splits``).
        split: split name, e.g. ``"btcv_paper"``.
        sources: source datasets to train on.

    Raises:
        ValueError: unknown split, or no training item left.
    """
    splits = datalist.get("splits") or {}
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; available: {sorted(splits)}.")
    out = copy.deepcopy(dict(datalist))
    split_ds = splits[split].get("dataset")
    keep = set(sources)
    out["training"] = [it for it in out["training"] if it.get("dataset") in keep or it.get("dataset") == split_ds]
    if split_ds not in keep:
        out["splits"][split] = {**out["splits"][split], "training": []}
    from pipofan_monai.dataset_conversion import select_split

    if not select_split(out, split)[0]:
        raise ValueError(f"no training items from sources {list(sources)} in the datalist.")
    return out


def count_parameters(channels: Sequence[int], **network_args: Any) -> int:
    """Number of trainable parameters of ``PIPOFAN(channels=channels, **network_args)`` (3 input slices, 4
    classes unless given).

    Args:
        channels: the 5 encoder widths.
        network_args: other ``PIPOFAN`` arguments (num_scales_in, num_scales_out, ecd, adaptive_fusion, block).
    """
    from pipofan_monai.networks import PIPOFAN

    args = {"spatial_dims": 2, "in_channels": 3, "out_channels": 4, **network_args}
    net = PIPOFAN(channels=tuple(int(c) for c in channels), **args)
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def _machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": "cuda:0 " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__}


def study_report(
    name: str, rows: Sequence[Mapping], output_dir: str | os.PathLike, settings: Mapping | None = None
) -> dict:
    """Write ``<output_dir>/<name>.json``, ``.csv`` and ``.png`` and log the table.

    Args:
        name: study name (file stem and title).
        rows: per row ``{"name": label, "dice": {organ or "mean": value or None}, ...}`` (extra keys such as
            ``params_study`` / ``params_paper`` / ``best_epoch`` / ``seconds`` become columns when present).
        output_dir: folder for the files.
        settings: recorded in the JSON (schedule, widths, data, machine).

    Returns:
        the report dict (as written to JSON).
    """
    organs = [k for k in (rows[0]["dice"] if rows else {}) if k != "mean"] + ["mean"]
    extra = [k for k in ("params_study", "params_paper", "best_epoch", "seconds") if any(k in r for r in rows)]
    report = {"study": name, "metric": "Dice of the best validation epoch (model.pt) on the split's validation volumes",
              "columns": organs + extra, "rows": [dict(r) for r in rows], "settings": dict(settings or {})}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row"] + [f"dice_{o}" for o in organs] + extra)
        for r in rows:
            w.writerow([r["name"]] + [_cell(r["dice"].get(o)) for o in organs] + [r.get(k, "") for k in extra])
    try:
        _plot(name, rows, organs, out / f"{name}.png")
    except Exception as e:  # the numbers matter more than the picture
        logger.warning(f"could not draw the {name} study plot: {e}")
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'row':<{width}} " + " ".join(f"{o:>8}" for o in organs) + "".join(f" {k:>12}" for k in extra)]
    for r in rows:
        cells = " ".join(f"{_pct(r['dice'].get(o)):>8}" for o in organs)
        lines.append(f"{r['name']:<{width}} {cells}" + "".join(f" {str(r.get(k, '')):>12}" for k in extra))
    table = "\n".join(lines)
    report["table"] = table
    report["files"] = [str(out / f"{name}.{ext}") for ext in ("json", "csv", "png")]
    print(f"\nstudy '{name}' -- Dice (%) of the best validation epoch\n{table}\n", flush=True)
    return report


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _plot(name: str, rows: Sequence[Mapping], organs: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_r, n_o = len(rows), len(organs)
    width = 0.8 / max(n_r, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + n_o * n_r * 0.35), 4.5 + 0.2 * ((n_r + 1) // 2)))
    x = np.arange(n_o)
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        vals = [r["dice"].get(o) for o in organs]
        h = [100 * v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in vals]
        ax.bar(x + (i - (n_r - 1) / 2) * width, h, width, label=r["name"], color=cmap(i % 10))
    ax.set_xticks(x)
    ax.set_xticklabels(organs)
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{name} study: Dice of the best validation epoch")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


def run_study(
    name: str,
    datalist: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    max_epochs: int | None = None,
    quick: bool = False,
    config_file: str | Sequence[str] = DEFAULT_CONFIG,
    dataset_dir: str | os.PathLike | None = None,
    split: str = "btcv_paper",
    demo_dir: str | os.PathLike | None = None,
    rows: Sequence[str] | None = None,
    **override: Any,
) -> dict:
    """Train and evaluate every row of study ``name`` and write its table.

    Each row is one run of the bundle's training workflow (``config_file`` plus the study's overrides) with its
    own checkpoints and metrics in ``<output_dir>/<row>/``; the table goes to ``<output_dir>/<name>.{json,csv,png}``.

    Args:
        name: ``"datasets"``, ``"loss"`` or ``"architecture"``.
        datalist: datalist JSON of the real datasets (full recipe); None runs on the synthetic demo dataset at demo
            scale (:data:`DEMO_SETTINGS`, data :data:`DEMO_DATA`).
        output_dir: folder for everything (default ``outputs/studies/<name>``).
        max_epochs: override the schedule length (``dps_epochs`` follows at half unless given).
        quick: tiny widths and schedule (:data:`QUICK_SETTINGS`; with the demo data also :data:`QUICK_DATA`) for
            tests and smoke runs.
        config_file: training config(s), default ``bundle/configs/train.json``.
        dataset_dir: folder the datalist's relative paths are resolved against.
        split: named validation split, default ``"btcv_paper"``.
        demo_dir: where to generate the demo dataset (default ``<output_dir>/data``).
        rows: run only the rows with these names (default all).
        override: any other top-level config key (learning_rate, network_channels, device, ...).

    Returns:
        the report (see :func:`study_report`).

    Raises:
        ValueError: unknown study or row names.
    """
    from monai.bundle import ConfigWorkflow
    from monai.utils import set_determinism

    from pipofan_monai.dataset_conversion import ensure_demo_dataset, load_datalist

    spec_rows = study_rows(name)
    if rows is not None:
        wanted = [rows] if isinstance(rows, str) else list(rows)
        unknown = sorted(set(wanted) - {r["name"] for r in spec_rows})
        if unknown:
            available = [r["name"] for r in spec_rows]
            raise ValueError(f"unknown rows {unknown} for study {name!r}; available: {available}.")
        spec_rows = [r for r in spec_rows if r["name"] in wanted]
    out = Path(output_dir) if output_dir else Path("outputs") / "studies" / name
    out.mkdir(parents=True, exist_ok=True)
    files = [str(config_file)] if isinstance(config_file, (str, os.PathLike)) else [str(c) for c in config_file]
    settings: dict[str, Any] = {}
    if quick:
        settings.update(QUICK_SETTINGS)
    if datalist in (None, ""):
        data_cfg = QUICK_DATA if quick else DEMO_DATA
        if not quick:
            settings.update(DEMO_SETTINGS)
        path = ensure_demo_dataset(demo_dir or out / "data", **data_cfg)
        data_desc = {"kind": "synthetic demo", "path": str(path), **{k: data_cfg[k] for k in data_cfg}}
    else:
        path = Path(datalist)
        data_desc = {"kind": "datalist", "path": str(path)}
    settings.update(override)
    if max_epochs is not None:
        settings["max_epochs"] = int(max_epochs)
        if "dps_epochs" not in override:
            settings["dps_epochs"] = int(max_epochs) // 2
    settings["split"] = split
    base = load_datalist(path, dataset_dir=dataset_dir)
    seed = int(settings.get("seed", 0))
    channels = settings.get("network_channels")
    results = []
    effective: dict[str, Any] = {}
    for r in spec_rows:
        run_dir = out / _slug(r["name"])
        run_dir.mkdir(parents=True, exist_ok=True)
        dl_path = run_dir / "datalist.json"
        dl_path.write_text(json.dumps(subset_datalist(base, split, r["sources"]), indent=1))
        ov = {"cache_dir": str(out / "cache"),  # one preprocessed cache shared by the rows
              **settings, **r["overrides"], "datalist": str(dl_path), "dataset_dir": None, "datasets": None,
              "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir)}
        if (run_dir / "metrics.json").exists():
            (run_dir / "metrics.json").unlink()  # a fresh table, never rows of an earlier run
        logger.info(f"study {name}: row '{r['name']}' (sources {list(r['sources'])}) -> {run_dir}")
        set_determinism(seed=seed)
        t0 = time.perf_counter()
        wf = ConfigWorkflow(config_file=files, workflow_type="train", **ov)
        wf.initialize()
        class_names = wf.parser.get_parsed_content("class_names")
        used_channels = list(wf.parser.get_parsed_content("network_channels"))
        effective = {k: wf.parser.get_parsed_content(k) for k in _RECORDED}
        wf.run()
        wf.finalize()
        release_workflow(wf)
        del wf
        seconds = round(time.perf_counter() - t0, 1)
        set_determinism(seed=None)
        best_epoch, dice = best_validation_dice(run_dir / "metrics.json", class_names)
        row = {"name": r["name"], "sources": list(r["sources"]), "dice": dice,
               "best_epoch": best_epoch, "seconds": seconds,
               "dps_epochs": effective["dps_epochs"],
               "checkpoint": str(run_dir / "models" / "model.pt"), "run_dir": str(run_dir)}
        if "partial_labels" in r["overrides"]:
            row["partial_labels"] = r["overrides"]["partial_labels"]
        if "arch" in r:
            row["arch"] = r["arch"]
            row["params_study"] = count_parameters(used_channels, **r["arch"])
            row["params_paper"] = count_parameters(PAPER_CHANNELS, **r["arch"])
        results.append(row)
        channels = used_channels
    settings = {**settings, **effective, "network_channels": channels, "data": data_desc, "config_file": files,
                "machine": _machine(), "seed": seed}
    return study_report(name, results, out, settings)
