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

"""Five-fold cross-validation as a run id of the bundle: one training workflow per fold, then a report in the
form of the paper's Table V (Dice per organ and fold, mean +- std).

``python -m monai.bundle run crossval --config_file bundle/configs/train.json [--folds "[0,1]"] [--resume True]``
evaluates ``train.json``'s ``crossval`` entry, :func:`run_crossval_workflow`, which trains the folds in turn with
the SAME merged config (overlays and command-line overrides included) plus ``fold``, ``ckpt_dir``, ``output_dir``:

- fold k: ``<ckpt_dir>/fold{k}/model.pt`` (what ``inference.json``'s ``ensemble`` reads) and
  ``<crossval_dir>/fold{k}/`` (``last.pt``, ``metrics.json``, the config it ran with);
- report: ``<crossval_dir>/crossval.{json,csv,png}``, rewritten after every fold, over every fold that has results;
- one preprocessed cache (``cache_dir``, the training default) for all folds: it does not depend on the split;
- ``--resume True``: finished folds are kept, an interrupted fold continues from its ``last.pt``, the others start;
  without it every requested fold is a new run (an earlier one is moved aside, as plain training does);
- the DDP overlay works: every rank runs the same fold loop; the process group lives until the end.

``python -m pipofan_monai crossval`` is an alias of the same run id (:func:`run_crossval`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipofan_monai.evaluation.tables import write_dice_table
from pipofan_monai.vocabulary.organs import DEFAULT_CLASS_NAMES
from pipofan_monai.apps.training.workflow import DEFAULT_CONFIG, best_validation_dice, run_training
from pipofan_monai.utils import atomic_write_json

__all__ = ["run_crossval", "run_crossval_workflow", "crossval_folds", "crossval_report", "fold_status"]

logger = logging.getLogger(__name__)

#: the file each fold's run is built from: the merged config of the cross-validation, as it ran
FOLD_CONFIG = "crossval_config.json"


def _fold_list(folds: Any, num_folds: int) -> list[int]:
    if folds is None:
        return list(range(int(num_folds)))
    folds = [folds] if isinstance(folds, int) else list(folds)
    bad = [f for f in folds if not isinstance(f, int) or not 0 <= f < int(num_folds)]
    if bad or len(set(folds)) != len(folds):
        raise ValueError(f"folds {folds}: each must be a distinct integer in 0..{int(num_folds) - 1} (num_folds "
                         f"{int(num_folds)}).")
    return [int(f) for f in folds]


def fold_status(output_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, max_epochs: int) -> str:
    """``"done"`` (``last.pt`` reached ``max_epochs`` and ``model.pt`` exists), ``"started"`` (a ``last.pt`` to
    resume from) or ``"new"``."""
    import torch

    last = Path(output_dir) / "last.pt"
    if not last.is_file():
        return "new"
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["engine"]["epoch"]
    except Exception as e:  # unreadable: the training's own resume reports it by name
        logger.warning(f"cannot read the epoch of {last} ({e}); the fold is resumed from it")
        return "started"
    return "done" if int(epoch) >= int(max_epochs) and (Path(ckpt_dir) / "model.pt").is_file() else "started"


def crossval_report(
    crossval_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, num_folds: int, class_names: Sequence[str]
) -> dict:
    """Write ``<crossval_dir>/crossval.{json,csv,png}`` over every fold of ``0..num_folds-1`` that has a
    ``metrics.json`` (folds of one call or of several, e.g. one job per fold) and return the report."""
    rows = []
    for k in range(int(num_folds)):
        metrics = Path(crossval_dir) / f"fold{k}" / "metrics.json"
        if not metrics.is_file():
            continue
        best_epoch, dice = best_validation_dice(metrics, class_names)
        rows.append({"name": k, "fold": k, "dice": dice, "best_epoch": best_epoch,
                     "checkpoint": str(Path(ckpt_dir) / f"fold{k}" / "model.pt")})
    return write_dice_table(
        "crossval", rows, crossval_dir, label="fold", extra_columns=("best_epoch",), summary=True,
        title="Cross-validation Dice (best validation epoch per fold)", rows_key="folds",
        report={"metric": "hard Dice of the best validation epoch", "num_folds": int(num_folds)},
    )


def crossval_folds(
    config: Mapping[str, Any],
    folds: Any = None,
    num_folds: int = 5,
    crossval_dir: str | os.PathLike = "runs/crossval",
    ckpt_dir: str | os.PathLike = "models",
    cache_dir: str | os.PathLike | None = None,
    resume: bool = False,
    max_epochs: int | None = None,
    meta_file: str | None = None,
    logging_file: str | bool | None = False,
    enabled: bool = True,
    label_space: Any = None,
) -> dict:
    """Train ``folds`` of the training ``config`` (a merged, unparsed bundle config) one after the other and write
    the report. See the module docstring for the layout and the resume rules.

    Args:
        config: the training config content (what ``ConfigParser.config`` holds).
        folds: fold ids (default all), an int or a list.
        num_folds: number of folds of the split.
        crossval_dir: folder of the fold runs and the report.
        ckpt_dir: base folder of the fold checkpoints (``<ckpt_dir>/fold{k}/model.pt``).
        cache_dir: the preprocessed cache shared by the folds (None: the config's default per fold run).
        resume: keep finished folds, resume interrupted ones.
        max_epochs: the schedule's length (to recognise finished folds; default ``config["max_epochs"]``).
        meta_file: metadata file of the bundle.
        logging_file: logging config for the fold workflows (False: keep the current logging).
        enabled: write the report (False on ranks other than 0).
        label_space: the config's :class:`~pipofan_monai.vocabulary.LabelSpace` (its organs are the report's
            columns; default the paper's four classes).

    Returns:
        the report (see :func:`crossval_report`).
    """
    from pipofan_monai.utils import as_bool

    resume = as_bool(resume, "resume")
    fold_ids = _fold_list(folds, num_folds)
    crossval_dir, ckpt_dir = Path(crossval_dir).absolute(), Path(ckpt_dir).absolute()
    max_epochs = int(config.get("max_epochs") if max_epochs is None else max_epochs)
    try:
        content = json.loads(json.dumps(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"cross-validation: the training config must be plain JSON to be run per fold ({e}).") from e
    report: dict = {}
    for k in fold_ids:
        out_k, ckpt_k = crossval_dir / f"fold{k}", ckpt_dir / f"fold{k}"
        status = fold_status(out_k, ckpt_k, max_epochs) if resume else "new"
        if status == "done":
            logger.info(f"cross-validation: fold {k} finished earlier ({out_k}); kept")
        else:
            logger.info(f"cross-validation: fold {k} of {num_folds} ({'resumed' if status == 'started' else 'new run'})"
                        f" -> {ckpt_k / 'model.pt'}")
            fold_config = out_k / FOLD_CONFIG
            atomic_write_json(fold_config, content)  # identical on every rank of a distributed run
            override = {"fold": k, "num_folds": int(num_folds), "ckpt_dir": str(ckpt_k), "output_dir": str(out_k),
                        "resume_path": str(out_k / "last.pt"), "resume": status == "started"}
            if cache_dir is not None:
                override["cache_dir"] = str(cache_dir)
            run_training(fold_config, meta_file=meta_file, logging_file=logging_file, **override)
            _barrier()
        if enabled:
            names = label_space.class_names if label_space is not None else DEFAULT_CLASS_NAMES
            report = crossval_report(crossval_dir, ckpt_dir, num_folds, names)
    _barrier()
    return report


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _running_workflow() -> Any:
    """The ``ConfigWorkflow`` whose run step is evaluating the caller.

    MONAI's config language gives an expression no handle on its own parser, and the fold runs must be built from
    the SAME merged config the user ran (every config file and command-line override), which only the running
    workflow holds: it is found on the call stack (``ConfigWorkflow.run`` -> ``_run_expr`` -> ... -> here).
    """
    from monai.bundle import ConfigWorkflow

    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, ConfigWorkflow):
            return obj
        frame = frame.f_back
    raise RuntimeError(
        "run_crossval_workflow is the 'crossval' run id of the bundle: run it with `python -m monai.bundle run "
        "crossval --config_file bundle/configs/train.json` or call pipofan_monai.apps.training.run_crossval(...)."
    )


def run_crossval_workflow(**settings: Any) -> dict:
    """The bundle's ``crossval`` run id: :func:`crossval_folds` on the running workflow's merged config.

    Args:
        settings: the keyword arguments of :func:`crossval_folds` other than ``config``, ``meta_file`` and
            ``logging_file``; ``train.json`` passes its resolved ``folds``, ``num_folds``, ``crossval_dir``,
            ``ckpt_dir``, ``cache_dir``, ``resume``, ``max_epochs``, ``label_space`` and ``rank0`` (as
            ``enabled``).
    """
    wf = _running_workflow()
    config = copy.deepcopy(wf.parser.config)
    config.pop("_meta_", None)  # the fold workflows read metadata.json themselves
    logging_file = wf.config_root_path / "logging.conf"
    return crossval_folds(config, meta_file=wf.meta_file,
                          logging_file=str(logging_file) if logging_file.is_file() else False, **settings)


def run_crossval(
    config_file: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_CONFIG,
    num_folds: int = 5,
    folds: Any = None,
    ckpt_dir: str | None = None,
    output_dir: str | None = None,
    **override: Any,
) -> dict:
    """``python -m monai.bundle run crossval`` from Python (and ``python -m pipofan_monai crossval``).

    Args:
        config_file: training config(s), merged in order (e.g. train.json + quickstart.json).
        num_folds: number of folds (the datalist must have been made with the same number).
        folds: which folds to run (default all).
        ckpt_dir: base folder of the fold checkpoints (default ``<bundle_root>/models``).
        output_dir: the config's ``output_dir`` (default ``<bundle_root>/runs``): the fold runs and the report go
            to its ``crossval/`` folder (``crossval_dir``), the preprocessed cache to its ``cache/`` (``cache_dir``).
        override: any other config id (max_epochs, datalist, dataset_dir, resume, ...).

    Returns:
        the report (see :func:`crossval_report`).
    """
    from monai.bundle import ConfigWorkflow

    files = [os.fspath(config_file)] if isinstance(config_file, (str, os.PathLike)) else [os.fspath(c) for c in config_file]
    _fold_list(folds, num_folds)  # a wrong fold fails before anything is built
    override = {**override, "num_folds": int(num_folds), "folds": folds}
    if ckpt_dir is not None:
        override["ckpt_dir"] = str(ckpt_dir)
    if output_dir is not None:
        override["output_dir"] = str(output_dir)
    wf = ConfigWorkflow(config_file=files, run_id="crossval", workflow_type=None, **override)
    wf.initialize()
    try:
        return wf.run()[-1]
    finally:
        wf.finalize()
