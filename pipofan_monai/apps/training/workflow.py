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

"""One training run of the bundle's workflow, as used by cross-validation and the studies.

:func:`run_training` builds a ``ConfigWorkflow`` of the training config(s) with overrides, runs it, releases its
lock, DataLoader workers and parsed objects, and returns the best validation epoch's Dice read from the run's
``metrics.json``: the one loop that cross-validation (one run per fold) and the studies (one run per table row)
share.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipofan_monai import bundle_dir
from pipofan_monai.vocabulary.organs import metric_name

__all__ = ["DEFAULT_CONFIG", "run_training", "best_epoch_row", "best_validation_dice", "release_workflow",
           "log_trained_model"]

logger = logging.getLogger(__name__)

#: the bundle's training config (found through the package, so an installed wheel works too)
DEFAULT_CONFIG = (str(bundle_dir() / "configs" / "train.json"),)


def best_epoch_row(rows: Sequence[Mapping], key: str = "val_mean_dice") -> Mapping | None:
    """The epoch row with the highest finite ``key`` (the checkpoint kept as model.pt), or None."""
    scored = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return max(scored, key=lambda r: r[key]) if scored else None


def best_validation_dice(metrics_path: str | os.PathLike, class_names: Sequence[str]) -> tuple[int | None, dict]:
    """(best epoch, ``{organ: Dice, ..., "mean": Dice}``) of the epoch with the best ``val_mean_dice`` in a
    training run's ``metrics.json`` (values None when the file or a validation is missing)."""
    path = Path(metrics_path)
    best = best_epoch_row(json.loads(path.read_text()) if path.exists() else [])
    dice = {o: (best.get(metric_name(o)) if best else None) for o in class_names[1:]}
    dice["mean"] = best.get("val_mean_dice") if best else None
    return (best.get("epoch") if best else None), dice


def log_trained_model(ckpt_dir: str | os.PathLike, output_dir: str | os.PathLike, enabled: bool = True) -> str | None:
    """Log where the run's best model is and the ``pipofan segment`` command that uses it: the training
    workflow's last step, so that this is the last line a user sees. Returns the message (None when disabled).

    Args:
        ckpt_dir: the folder of ``model.pt``.
        output_dir: the run folder (its ``metrics.json`` gives the best epoch and Dice).
        enabled: False on ranks other than 0 of a distributed run.
    """
    if not enabled:
        return None
    import shlex

    model = Path(ckpt_dir).resolve() / "model.pt"
    if not model.is_file():
        message = f"training finished without a model: no validation wrote {model} (see {Path(output_dir).resolve()})"
        logging.getLogger("pipofan.train").warning(message)
        return message
    best = best_epoch_row(json.loads((Path(output_dir) / "metrics.json").read_text())
                          if (Path(output_dir) / "metrics.json").is_file() else [])
    score = f" (epoch {best['epoch']}, val_mean_dice {best['val_mean_dice']:.4f})" if best else ""
    message = (f"training finished; best model{score}: {model}; segment a CT with it: "
               f"pipofan segment CT.nii.gz -o segmentations --model {shlex.quote(str(model))}")
    logging.getLogger("pipofan.train").info(message)
    return message


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
    gc.collect()
    return stopped


def run_training(
    config_file: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_CONFIG,
    record: Sequence[str] = (),
    meta_file: str | None = None,
    logging_file: str | bool | None = None,
    **override: Any,
) -> dict[str, Any]:
    """Run the bundle's training workflow once and return what its best validation epoch scored.

    The workflow runs its ``initialize`` and ``run`` steps (training with validation, ``model.pt`` and
    ``last.pt`` in ``ckpt_dir`` / ``output_dir``). Its ``finalize`` step is NOT run: this function releases the
    output folder's lock itself, so that a caller running several trainings in one distributed job keeps the
    process group (which the DDP overlay's ``finalize`` destroys) for the next one. The DataLoader workers and the
    parsed objects are released also when training fails.

    Args:
        config_file: training config(s), merged in order (e.g. train.json + an overlay).
        record: config ids whose resolved values are returned under ``"settings"`` (e.g. ``max_epochs``).
        meta_file: metadata file (default: ``metadata.json`` beside the first config).
        logging_file: logging config (default: ``logging.conf`` beside the first config; False: none).
        override: config ids and values (``fold``, ``ckpt_dir``, ``output_dir``, ``network_def#block``, ...).

    Returns:
        ``{"best_epoch", "dice": {organ: value, "mean": value}, "class_names", "checkpoint", "metrics",
        "output_dir", "seconds", "settings"}``.
    """
    from monai.bundle import ConfigWorkflow

    from pipofan_monai.apps.training.run_dir import release_training_run

    files = [os.fspath(config_file)] if isinstance(config_file, (str, os.PathLike)) else [os.fspath(c) for c in config_file]
    t0 = time.perf_counter()
    wf = ConfigWorkflow(config_file=files, meta_file=meta_file, logging_file=logging_file, workflow_type="train",
                        **override)
    output_dir = None
    try:
        wf.initialize()
        class_names = list(wf.parser.get_parsed_content("class_names"))
        output_dir = Path(wf.parser.get_parsed_content("output_dir"))
        ckpt_dir = Path(wf.parser.get_parsed_content("ckpt_dir"))
        settings = {k: wf.parser.get_parsed_content(k) for k in record}
        wf.run()
    finally:
        if output_dir is not None:
            release_training_run(output_dir)
        release_workflow(wf)  # drops the parsed objects and collects
        del wf
    best_epoch, dice = best_validation_dice(output_dir / "metrics.json", class_names)
    return {"best_epoch": best_epoch, "dice": dice, "class_names": class_names,
            "checkpoint": str(ckpt_dir / "model.pt"), "metrics": str(output_dir / "metrics.json"),
            "output_dir": str(output_dir), "seconds": round(time.perf_counter() - t0, 1), "settings": settings}
