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

"""The paper's experiments as runnable studies, so that a table can be rerun: one command trains every row of a
table with the bundle's training workflow and writes the table as JSON, CSV and a bar chart.

Studies (``python -m pipofan_monai study <name>``):

- ``datasets`` (Table II): train on BTCV only, BTCV + each partial dataset, the three partial datasets only, and
  all four; evaluate on the BTCV validation split (``split="btcv_paper"``).
- ``loss`` (beyond the paper): the target adaptive loss (TAL) vs the naive loss that treats organs a dataset
  does not annotate as background (``partial_labels=False``) vs training on the fully labeled source only.
- ``architecture`` (Tables III / VI / VII): single-scale ResU-Net, PIPO without / with ECD, PIPO-FAN without /
  with ECD and 5 inputs / 3 outputs, each with its parameter count at the study's and at the paper's widths.

Every row's Dice is that of the best validation epoch (the epoch whose weights the workflow keeps as
``model.pt``), per organ and averaged, on the split's validation volumes.

Every row is one :func:`~pipofan_monai.apps.training.run_training` of the bundle's ``train.json`` with overlays: without a
datalist a study runs on a dedicated synthetic demo dataset at demo scale (the overlay
``bundle/configs/studies/demo.json``: small widths, short schedule, CPU); with ``datalist`` it runs the full recipe
of ``train.json`` (GPU). ``quick=True`` adds ``bundle/configs/studies/quick.json`` (tiny widths and schedule, for
tests).
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipofan_monai import bundle_dir
from pipofan_monai.evaluation.tables import write_dice_table
from pipofan_monai.apps.training.workflow import DEFAULT_CONFIG, run_training
from pipofan_monai.utils import atomic_write_json

__all__ = [
    "STUDIES",
    "PAPER_CHANNELS",
    "DEMO_OVERLAY",
    "QUICK_OVERLAY",
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

#: the paper's encoder widths (64, 128, 256, 512, 512), used for the full-width parameter counts.
PAPER_CHANNELS = (64, 128, 256, 512, 512)

ALL_SOURCES = ("btcv", "lits", "kits19", "msd_spleen")

#: demo-scale overlay of train.json (2-core CPU): 96^2 slices, 80^2 crops, widths 16..128, 100 epochs x 32 samples.
DEMO_OVERLAY = str(bundle_dir() / "configs" / "studies" / "demo.json")

#: test-scale overlay, on top of the demo one: a few seconds per row.
QUICK_OVERLAY = str(bundle_dir() / "configs" / "studies" / "quick.json")

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
    from pipofan_monai.apps.dataset_conversion import select_split

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
    """Write ``<output_dir>/<name>.json``, ``.csv`` and ``.png`` (the one Dice-table writer,
    :func:`~pipofan_monai.evaluation.tables.write_dice_table`) and print the table.

    Args:
        name: study name (file stem and title).
        rows: per row ``{"name": label, "dice": {organ or "mean": value or None}, ...}`` (extra keys such as
            ``params_study`` / ``params_paper`` / ``best_epoch`` / ``seconds`` become columns when present).
        output_dir: folder for the files.
        settings: recorded in the JSON (schedule, widths, data, machine).

    Returns:
        the report dict (as written to JSON).
    """
    report = write_dice_table(
        name, rows, output_dir, label="row", extra_columns=("params_study", "params_paper", "best_epoch", "seconds"),
        title=f"{name} study: Dice of the best validation epoch",
        report={"study": name, "settings": dict(settings or {}),
                "metric": "Dice of the best validation epoch (model.pt) on the split's validation volumes"},
    )
    print(f"\nstudy '{name}' -- Dice (%) of the best validation epoch\n{report['table']}\n", flush=True)
    return report


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
            scale (overlay :data:`DEMO_OVERLAY`, data :data:`DEMO_DATA`).
        output_dir: folder for everything (default ``outputs/studies/<name>``).
        max_epochs: override the schedule length (``dps_epochs`` follows at half unless given).
        quick: tiny widths and schedule (overlay :data:`QUICK_OVERLAY`; with the demo data also :data:`QUICK_DATA`) for
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
    from monai.utils import set_determinism

    from pipofan_monai.apps.dataset_conversion import ensure_demo_dataset, load_datalist

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
    if datalist in (None, ""):
        data_cfg = QUICK_DATA if quick else DEMO_DATA
        files.append(DEMO_OVERLAY)
        path = ensure_demo_dataset(demo_dir or out / "data", **data_cfg)
        data_desc = {"kind": "synthetic demo", "path": str(path), **{k: data_cfg[k] for k in data_cfg}}
    else:
        path = Path(datalist)
        data_desc = {"kind": "datalist", "path": str(path)}
    if quick:
        files.append(QUICK_OVERLAY)
    settings: dict[str, Any] = dict(override)
    if max_epochs is not None:
        settings["max_epochs"] = int(max_epochs)
        if "dps_epochs" not in override:
            settings["dps_epochs"] = int(max_epochs) // 2
    settings["split"] = split
    base = load_datalist(path, dataset_dir=dataset_dir)
    results = []
    effective: dict[str, Any] = {}
    for r in spec_rows:
        run_dir = out / _slug(r["name"])
        run_dir.mkdir(parents=True, exist_ok=True)
        dl_path = run_dir / "datalist.json"
        atomic_write_json(dl_path, subset_datalist(base, split, r["sources"]))
        ov = {"cache_dir": str(out / "cache"),  # one preprocessed cache shared by the rows
              **settings, **r["overrides"], "datalist": str(dl_path), "dataset_dir": None, "datasets": None,
              "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir)}
        if (run_dir / "metrics.json").exists():
            (run_dir / "metrics.json").unlink()  # a fresh table, never rows of an earlier run
        logger.info(f"study {name}: row '{r['name']}' (sources {list(r['sources'])}) -> {run_dir}")
        result = run_training(files, record=_RECORDED + ("seed", "network_channels"), **ov)
        set_determinism(seed=None)
        effective = result["settings"]
        row = {"name": r["name"], "sources": list(r["sources"]), "dice": result["dice"],
               "best_epoch": result["best_epoch"], "seconds": result["seconds"],
               "dps_epochs": effective["dps_epochs"], "checkpoint": result["checkpoint"], "run_dir": str(run_dir)}
        if "partial_labels" in r["overrides"]:
            row["partial_labels"] = r["overrides"]["partial_labels"]
        if "arch" in r:
            row["arch"] = r["arch"]
            row["params_study"] = count_parameters(effective["network_channels"], **r["arch"])
            row["params_paper"] = count_parameters(PAPER_CHANNELS, **r["arch"])
        results.append(row)
    settings = {**settings, **effective, "network_channels": list(effective.get("network_channels", [])),
                "data": data_desc, "config_file": files, "machine": _machine()}
    return study_report(name, results, out, settings)
