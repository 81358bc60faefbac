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

"""Five-fold cross-validation: one training workflow per fold, then a report in the form of the paper's
Table V (per organ, per fold, mean +- std of Dice)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from pipofan_monai import bundle_dir
from pipofan_monai.evaluation.metrics import mean_std
from pipofan_monai.organs import DEFAULT_CLASS_NAMES, metric_name

__all__ = ["run_crossval", "crossval_report", "best_epoch_row", "best_validation_dice", "release_workflow"]

logger = logging.getLogger(__name__)

#: the bundle's training config (found through the package, so an installed wheel works too)
DEFAULT_CONFIG = (str(bundle_dir() / "configs" / "train.json"),)


def best_epoch_row(rows: Sequence[dict], key: str = "val_mean_dice") -> dict | None:
    """The epoch row with the highest finite ``key`` (the checkpoint kept as model.pt), or None."""
    scored = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return max(scored, key=lambda r: r[key]) if scored else None


def best_validation_dice(metrics_path: str | os.PathLike, class_names: Sequence[str]) -> tuple[int | None, dict]:
    """(best epoch, \`\`{organ: Dice, ..., "mean": Dice}\`\`) of the epoch with the best \`\`val_mean_dice\`\` in a
    training run's \`\`metrics.json\`\` (values None when the file or a validation is missing)."""
    path = Path(metrics_path)
    best = best_epoch_row(json.loads(path.read_text()) if path.exists() else [])
    dice = {o: (best.get(metric_name(o)) if best else None) for o in class_names[1:]}
    dice["mean"] = best.get("val_mean_dice") if best else None
    return (best.get("epoch") if best else None), dice


def release_workflow(workflow: Any, ids: Sequence[str] = ("train#dataloader", "validate#dataloader")) -> int:
    """Stop the DataLoader worker processes of a finished bundle workflow and drop its parsed objects, so that
    the next fold (or study row) starts from the same memory. Returns how many loaders had workers running.

    ``persistent_workers=True`` keeps each loader's workers (and what they hold) alive as long as the loader
    object lives, and a ``ConfigWorkflow`` keeps its loaders alive: without this, every finished fold leaves its
    workers behind. PyTorch has no public call to stop persistent workers; ``_shutdown_workers`` is what the
    iterator's own ``__del__`` runs.
    """
    parser = getattr(workflow, "parser", None)
    stopped = 0
    if parser is None:
        return 0
    for key in ids:
        if key not in parser:
            continue
        try:
            loader = parser.get_parsed_content(key)  # already instantiated: the cached object
        except Exception as e:  # a loader that never got built has no workers
            logger.debug(f"release_workflow: {key} not available ({e})")
            continue
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
            stopped += int(getattr(it, "_num_workers", 0) > 0)
        if hasattr(loader, "_iterator"):
            loader._iterator = None
    parser.ref_resolver.reset()  # drop the instantiated components (datasets, networks) with their memory
    import gc

    gc.collect()
    return stopped


def crossval_report(fold_results: Sequence[dict], class_names: Sequence[str], output_dir: str | os.PathLike) -> dict:
    """Write ``crossval.json``, ``crossval.csv`` and ``crossval.png`` and return the report.

    Args:
        fold_results: per fold ``{"fold": k, "best_epoch": e, "dice": {organ: value or None}}``.
        class_names: class names; background (index 0) is not reported.
        output_dir: folder for the files.
    """
    organs = list(class_names[1:])
    summary: dict[str, Any] = {}
    for organ in organs + ["mean"]:
        values = [f["dice"].get(organ) for f in fold_results]
        values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        mean, std = mean_std(values)
        summary[organ] = {"mean": mean, "std": std, "num_folds": len(values)}
    report = {"folds": list(fold_results), "summary": summary, "metric": "hard Dice of the best validation epoch"}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(report, indent=1))
    with open(out / "crossval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "best_epoch"] + organs + ["mean"])
        for r in fold_results:
            w.writerow([r["fold"], r.get("best_epoch")] + [_cell(r["dice"].get(o)) for o in organs + ["mean"]])
        w.writerow(["mean", ""] + [_cell(summary[o]["mean"]) for o in organs + ["mean"]])
        w.writerow(["std", ""] + [_cell(summary[o]["std"]) for o in organs + ["mean"]])
    try:
        from pipofan_monai.visualize import plot_crossval

        plot_crossval(report, out / "crossval.png")
    except Exception as e:  # the numbers matter more than the picture
        logger.warning(f"could not draw the cross-validation plot: {e}")
    lines = [f"{'fold':>6} " + " ".join(f"{o:>10}" for o in organs + ["mean"])]
    for r in fold_results:
        lines.append(f"{r['fold']:>6} " + " ".join(f"{_cell(r['dice'].get(o)):>10}" for o in organs + ["mean"]))
    lines.append(
        f"{'mean':>6} "
        + " ".join(
            f"{(_cell(summary[o]['mean']) + ' +- ' + _cell(summary[o]['std'])) if summary[o]['mean'] is not None else 'n/a':>10}"
            for o in organs + ["mean"]
        )
    )
    logger.info("cross-validation Dice (best validation epoch per fold):\n" + "\n".join(lines))
    return report


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def run_crossval(
    config_file: str | Sequence[str] = DEFAULT_CONFIG,
    num_folds: int = 5,
    folds: Sequence[int] | None = None,
    ckpt_dir: str | None = None,
    output_dir: str | None = None,
    **override: Any,
) -> dict:
    """Train one model per fold with the bundle's training workflow and write the cross-validation report.

    Fold k writes its checkpoints to ``<ckpt_dir>/fold{k}/model.pt`` and its logs/metrics to
    ``<output_dir>/fold{k}/``; the report goes to ``<output_dir>/crossval.{json,csv,png}``. All folds share one
    preprocessed cache, ``<output_dir>/cache`` (or ``cache_dir=...``), so the volumes are preprocessed once; each
    fold's DataLoader workers are stopped when the fold ends.

    Args:
        config_file: training config(s), merged in order (e.g. train.json + quickstart.json).
        num_folds: number of folds (the datalist must have been made with the same number).
        folds: which folds to run (default all).
        ckpt_dir: base folder for the fold checkpoints (default ``<bundle_root>/models``).
        output_dir: base folder for logs and the report (default ``<bundle_root>/runs/crossval``).
        override: any other top-level config key (max_epochs, datalist, dataset_dir, ...).
    """
    from monai.bundle import ConfigWorkflow

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    folds = list(range(int(num_folds))) if folds is None else [int(f) for f in folds]
    bad = [f for f in folds if not 0 <= f < int(num_folds)]
    if bad:
        raise ValueError(f"folds {bad} are outside 0..{int(num_folds) - 1}.")
    results = []
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES
    from monai.bundle import ConfigParser

    probe = ConfigParser()
    probe.read_config(files)
    probe.update(override)
    root = Path(probe.get_parsed_content("bundle_root"))
    base_ckpt = Path(ckpt_dir) if ckpt_dir else root / "models"
    base_out = Path(output_dir) if output_dir else root / "runs" / "crossval"
    for k in folds:
        logger.info(f"cross-validation: fold {k} of {num_folds} -> {base_ckpt / f'fold{k}'}")
        wf = ConfigWorkflow(
            config_file=files,
            workflow_type="train",
            **{"cache_dir": str(base_out / "cache"),  # one preprocessed cache for all folds (it ignores the split)
               **override, "fold": k, "num_folds": int(num_folds), "ckpt_dir": str(base_ckpt / f"fold{k}"),
               "output_dir": str(base_out / f"fold{k}")},
        )
        wf.initialize()
        class_names = wf.parser.get_parsed_content("class_names")
        wf.run()
        wf.finalize()
        release_workflow(wf)
        del wf
        best_epoch, dice = best_validation_dice(base_out / f"fold{k}" / "metrics.json", class_names)
        results.append({"fold": k, "best_epoch": best_epoch, "dice": dice,
                        "checkpoint": str(base_ckpt / f"fold{k}" / "model.pt")})
    return crossval_report(results, class_names, base_out)
