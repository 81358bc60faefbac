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

"""What a training run reports while it runs: the iteration progress bar, one log line per epoch (loss, learning
rate, stage, validation metrics, ETA) and the metrics files with the training curves.

These handlers only read the trainer's and the evaluator's state; they save nothing a resume needs and change
nothing the training does. They are apart from ``handlers.py`` (the stage switch, the divergence stop, the
resumable and best-model checkpoints and the epoch seeds, which all shape or keep the training itself) so that
the reporting can change without touching the resume logic. :mod:`~pipofan_monai.apps.training.handlers`
re-exports them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from pipofan_monai.utils import atomic_write

__all__ = ["EpochProgressLogger", "MetricsFileWriter", "TrainingProgressBar", "loss_of"]

# the name all training handlers log under, as before the reporting had a module of its own: logging configs and
# filters that name it keep working
logger = logging.getLogger("pipofan_monai.apps.training.handlers")


def loss_of(output: Any) -> float | None:
    """The scalar loss in a trainer's output (a dict, or the list of dicts of a decollated batch), or None."""
    if isinstance(output, list) and output and isinstance(output[0], Mapping):
        output = output[0]
    if isinstance(output, Mapping) and "loss" in output:
        return float(output["loss"])
    return None


class _EpochLoss:
    """Mean training loss of the current epoch, updated after every iteration, and the learning rate the epoch
    trains with (read at the epoch start, after a stage switch's reset; the scheduler steps at the epoch end)."""

    optimizer: torch.optim.Optimizer | None = None

    def __init__(self) -> None:
        self._losses: list[float] = []
        self.epoch_lr: float | None = None

    def attach_loss(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _epoch_started(self, engine: Engine) -> None:
        self._losses.clear()
        self.epoch_lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None

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
        self.logger = logging.getLogger(name or logger.name)
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
        if self.epoch_lr is not None:
            parts.append(f"lr {self.epoch_lr:.3g}")
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
        if self.epoch_lr is not None:
            row["lr"] = self.epoch_lr  # the learning rate this epoch trained with
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
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_write(self.output_dir / "metrics.csv", "w") as f:
            f.write(buf.getvalue())
        with atomic_write(self.json_path, "w") as f:
            f.write(json.dumps(self.rows, indent=1))

    def _completed(self, engine: Engine) -> None:
        if not self.plot or not self.rows:
            return
        try:
            from pipofan_monai.visualize import plot_training_curves

            plot_training_curves(self.json_path, self.output_dir / "training_curves.png")
        except Exception as e:  # a plot must never fail a finished training run
            logger.warning(f"could not draw the training curves: {e}")


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
