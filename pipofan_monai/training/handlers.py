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

"""Ignite handlers for the PIPO-FAN training workflow: stage switch, progress with ETA, metrics file and an
atomic resumable checkpoint."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from pipofan_monai.utils import atomic_torch_save
from ignite.engine import Engine, Events

__all__ = [
    "StageSwitchHandler",
    "EpochProgressLogger",
    "MetricsFileWriter",
    "ResumableCheckpoint",
    "TrainingProgressBar",
    "loss_of",
    "stage_for_epoch",
]

logger = logging.getLogger(__name__)


def stage_for_epoch(epoch: int, dps_epochs: int) -> str:
    """Training stage of (1-based) ``epoch``: "dps" for the first ``dps_epochs`` epochs, then "fused"."""
    return "dps" if epoch <= dps_epochs else "fused"


class StageSwitchHandler:
    """Flip the deep-pyramid-supervision loss from stage "dps" to stage "fused" after ``dps_epochs`` epochs (§3).

    The stage is derived from the engine's epoch at every epoch start, so a resumed run is in the right stage.
    The switch is logged. The authors reset the optimizer and learning rate at the switch (two separate runs);
    with ``reset_optimizer`` the optimizer state (momentum, RMS averages) is cleared and the learning-rate
    schedule restarted from its epoch 0 at the switch epoch.

    Args:
        loss: a loss with ``set_stage(stage)`` and a ``stage`` attribute (:class:`DeepPyramidSupervisionLoss`).
        dps_epochs: number of epochs of stage "dps"; 0 trains the fused output only.
        reset_optimizer: optimizer to reset at the switch, or None.
        lr_scheduler: scheduler whose base learning rates are restored when the optimizer is reset.
    """

    def __init__(self, loss: Any, dps_epochs: int, reset_optimizer: torch.optim.Optimizer | None = None, lr_scheduler=None):
        if dps_epochs < 0:
            raise ValueError(f"dps_epochs must be >= 0, got {dps_epochs}.")
        if not hasattr(loss, "set_stage"):
            raise ValueError(f"the loss {type(loss).__name__} has no set_stage(); wrap it in DeepPyramidSupervisionLoss.")
        self.loss = loss
        self.dps_epochs = int(dps_epochs)
        self.optimizer = reset_optimizer
        self.lr_scheduler = lr_scheduler

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        stage = stage_for_epoch(engine.state.epoch, self.dps_epochs)
        if getattr(self.loss, "stage", None) != stage:
            previous = getattr(self.loss, "stage", None)
            self.loss.set_stage(stage)
            logger.info(f"epoch {engine.state.epoch}: training stage {previous} -> {stage}")
            if previous == "dps" and stage == "fused" and self.optimizer is not None:
                self.optimizer.state.clear()
                base = getattr(self.lr_scheduler, "base_lrs", None)
                if base is not None:
                    # restart the schedule as the authors' second run did: initial lr, scheduler at its epoch 0
                    for group, lr in zip(self.optimizer.param_groups, base):
                        group["lr"] = lr
                    self.lr_scheduler.last_epoch = -1
                    self.lr_scheduler.step()
                lr = self.optimizer.param_groups[0]["lr"]
                logger.info(f"optimizer state reset and learning-rate schedule restarted (lr {lr:.3g}) at the stage switch")
        engine.state.stage = stage  # type: ignore[attr-defined]


def loss_of(output: Any) -> float | None:
    """The scalar loss in a trainer's output (a dict, or the list of dicts of a decollated batch), or None."""
    if isinstance(output, list) and output and isinstance(output[0], Mapping):
        output = output[0]
    if isinstance(output, Mapping) and "loss" in output:
        return float(output["loss"])
    return None


class _EpochLoss:
    """Mean training loss of the current epoch, updated after every iteration."""

    def __init__(self) -> None:
        self._losses: list[float] = []

    def attach_loss(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _iteration(self, engine: Engine) -> None:
        loss = loss_of(engine.state.output)
        if loss is not None:
            self._losses.append(loss)

    def mean_loss(self) -> float:
        return sum(self._losses) / len(self._losses) if self._losses else math.nan


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class EpochProgressLogger(_EpochLoss):
    """Log one line per epoch: epoch/max, mean loss, learning rate, stage, validation metrics, elapsed time and
    ETA for the whole run (iteration-level progress comes from ignite's ProgressBar).

    Args:
        optimizer: to report the learning rate (optional).
        evaluator: the validation engine whose metrics to report (optional).
        name: logger name.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, evaluator: Engine | None = None, name: str | None = None):
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.logger = logging.getLogger(name or __name__)
        self._start = 0.0
        self._start_epoch = 0
        super().__init__()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        self.attach_loss(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._start = time.time()
        self._start_epoch = engine.state.epoch

    def _epoch_completed(self, engine: Engine) -> None:
        done = engine.state.epoch - self._start_epoch
        elapsed = time.time() - self._start
        remaining = (engine.state.max_epochs - engine.state.epoch) * elapsed / max(done, 1)
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}", f"loss {self.mean_loss():.4f}"]
        if self.optimizer is not None:
            parts.append(f"lr {self.optimizer.param_groups[0]['lr']:.3g}")
        stage = getattr(engine.state, "stage", None)
        if stage is not None:
            parts.append(f"stage {stage}")
        if self.evaluator is not None and self.evaluator.state.metrics:
            metrics = self.evaluator.state.metrics
            parts.append(" ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float))))
        parts.append(f"elapsed {_fmt(elapsed)} ETA {_fmt(remaining)}")
        self.logger.info(" | ".join(parts))


class MetricsFileWriter(_EpochLoss):
    """Append one row per epoch (epoch, loss, lr, stage and the validation metrics) to ``metrics.csv`` and
    ``metrics.json`` in ``output_dir``, and draw ``training_curves.png`` when training completes.

    Attach it after the validation handler so the epoch's validation metrics are in the row.

    Args:
        output_dir: folder for the files (created).
        optimizer: to record the learning rate.
        evaluator: validation engine whose scalar metrics to record.
        plot: draw the curves at the end of training.
        enabled: set False on ranks other than 0.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        optimizer: torch.optim.Optimizer | None = None,
        evaluator: Engine | None = None,
        plot: bool = True,
        enabled: bool = True,
    ):
        self.output_dir = Path(output_dir)
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.plot = plot
        self.enabled = enabled
        self.rows: list[dict] = []
        super().__init__()

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._load_existing)
        self.attach_loss(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    @property
    def json_path(self) -> Path:
        return self.output_dir / "metrics.json"

    def _load_existing(self, engine: Engine) -> None:
        # a resumed run keeps the rows of the epochs it does not repeat
        self.rows = []
        if engine.state.epoch > 0 and self.json_path.exists():
            self.rows = [r for r in json.loads(self.json_path.read_text()) if r.get("epoch", 0) <= engine.state.epoch]

    def _epoch_completed(self, engine: Engine) -> None:
        row: dict[str, Any] = {"epoch": engine.state.epoch, "loss": self.mean_loss()}
        if self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        stage = getattr(engine.state, "stage", None)
        if stage is not None:
            row["stage"] = stage
        if self.evaluator is not None and self.evaluator.state.metrics and self.evaluator.state.epoch == engine.state.epoch:
            for k, v in self.evaluator.state.metrics.items():
                if isinstance(v, (int, float)):
                    row[k] = float(v) if math.isfinite(v) else None  # undefined (e.g. organ absent): null, not NaN
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.output_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        self.json_path.write_text(json.dumps(self.rows, indent=1))

    def _completed(self, engine: Engine) -> None:
        if not self.plot or not self.rows:
            return
        try:
            from pipofan_monai.visualize import plot_training_curves

            plot_training_curves(self.json_path, self.output_dir / "training_curves.png")
        except Exception as e:  # a plot must never fail a finished training run
            logger.warning(f"could not draw the training curves: {e}")


class ResumableCheckpoint:
    """Save everything needed to resume after every epoch, atomically, and optionally resume from it.

    The file holds \`\`{name: obj.state_dict()}\`\` for the objects of \`\`save_dict\`\` (DDP wrappers unwrapped) plus
    \`\`"engine": {"epoch", "iteration"}\`\`. With \`\`resume=True\`\` and an existing file, the objects are restored when
    the engine starts and the engine continues after the saved epoch (the training stage follows from the epoch).
    Attach it FIRST among the trainer's handlers, so later handlers see the restored epoch.

    Args:
        save_path: the checkpoint file (e.g. \`\`<ckpt_dir>/last.pt\`\`).
        save_dict: objects to save and restore, e.g. \`\`{"model": net, "optimizer": opt, "lr_scheduler": sched}\`\`.
        resume: restore from \`\`save_path\`\` at start when it exists.
        save: write the checkpoint (set False on ranks other than 0).
        map_location: device to load tensors onto.
    """

    def __init__(
        self,
        save_path: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        save: bool = True,
        map_location: Any = "cpu",
    ):
        self.save_path = Path(save_path)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.save = save
        self.map_location = map_location

    @staticmethod
    def _unwrap(obj: Any) -> Any:
        if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            return obj.module
        return obj

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def load(self, engine: Engine) -> None:
        if not self.save_path.exists():
            logger.info(f"resume requested but {self.save_path} does not exist: starting from scratch")
            return
        try:
            ckpt = torch.load(self.save_path, map_location=self.map_location, weights_only=False)
        except Exception as e:
            raise ValueError(f"cannot resume: the checkpoint {self.save_path} is unreadable ({e}).") from e
        missing = [k for k in list(self.save_dict) + ["engine"] if k not in ckpt]
        if missing:
            raise ValueError(f"cannot resume: the checkpoint {self.save_path} lacks {missing}.")
        for name, obj in self.save_dict.items():
            self._unwrap(obj).load_state_dict(ckpt[name])
        epoch, iteration = int(ckpt["engine"]["epoch"]), int(ckpt["engine"]["iteration"])
        if engine.state.max_epochs is not None and epoch >= engine.state.max_epochs:
            logger.warning(f"the checkpoint is at epoch {epoch} >= max_epochs {engine.state.max_epochs}: nothing to do")
        engine.state.epoch, engine.state.iteration = epoch, iteration
        logger.info(f"resumed from {self.save_path} at epoch {epoch} (iteration {iteration})")

    def __call__(self, engine: Engine) -> None:
        state: dict[str, Any] = {name: self._unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["engine"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        atomic_torch_save(state, self.save_path)


class TrainingProgressBar:
    """Iteration progress bar (ignite's tqdm ``ProgressBar``) showing the running loss and the epoch ETA.

    Args:
        enabled: False to skip (e.g. on ranks other than 0, or in logs without a terminal).
        persist: keep each epoch's finished bar.
    """

    def __init__(self, enabled: bool = True, persist: bool = False):
        self.enabled = enabled
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        def running_loss(output: Any) -> dict:
            loss = loss_of(output)
            return {} if loss is None else {"loss": loss}

        ProgressBar(persist=self.persist).attach(engine, output_transform=running_loss)
