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

"""Ignite handlers for the PIPO-FAN training workflow: stage switch, progress with ETA, metrics file, an
atomic resumable checkpoint and the stop of a diverged training.

The handlers defined here shape or keep the training itself (stage switch, divergence stop, resumable and
best-model checkpoints, epoch seeds); the reporting ones (progress bar, epoch log line, metrics files) are in
:mod:`~pipofan_monai.apps.training.progress` and importable from here as well."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

from pipofan_monai.utils import atomic_torch_save

from .progress import EpochProgressLogger, MetricsFileWriter, TrainingProgressBar, loss_of

__all__ = [
    "StageSwitchHandler",
    "EpochProgressLogger",
    "MetricsFileWriter",
    "ResumableCheckpoint",
    "BestModelCheckpoint",
    "EpochSeedHandler",
    "TrainingProgressBar",
    "DivergenceGuard",
    "TrainingDivergedError",
    "register_resumable",
    "loss_of",
    "stage_for_epoch",
]

logger = logging.getLogger(__name__)


def stage_for_epoch(epoch: int, dps_epochs: int) -> str:
    """Training stage of (1-based) ``epoch``: "dps" for the first ``dps_epochs`` epochs, then "fused"."""
    return "dps" if epoch <= dps_epochs else "fused"


RESUMABLE_ATTR = "resumable_objects"


def register_resumable(engine: Any, name: str, obj: Any) -> None:
    """Declare ``obj`` (with ``state_dict``/``load_state_dict``) part of the resume state of ``engine``'s run under
    ``name``: :class:`ResumableCheckpoint` saves and restores every object registered on the trainer or on the
    evaluator it is given. Handlers register themselves when attached, so configs need no references between list
    items (MONAI Label inserts into ``train#handlers``)."""
    objects = getattr(engine, RESUMABLE_ATTR, None)
    if objects is None:
        objects = {}
        setattr(engine, RESUMABLE_ATTR, objects)
    objects[name] = obj


class StageSwitchHandler:
    """Flip the deep-pyramid-supervision loss from stage "dps" to stage "fused" after ``dps_epochs`` epochs (§3).

    The stage is checked at every epoch start and the switch is logged. The authors reset the optimizer and
    learning rate at the switch (two separate runs); with ``reset_optimizer`` the optimizer state (momentum, RMS
    averages) is cleared and the learning-rate schedule restarted from its epoch 0 at the switch epoch.

    The reset happens once, at the switch itself: a resumed run restores the stage from the resume state
    (:meth:`state_dict` is saved in ``last.pt`` by :class:`ResumableCheckpoint`) together with the saved optimizer
    and scheduler, so resuming after the switch neither resets again nor trains in the wrong stage. A resume state
    without the stage (older ``last.pt``) takes the stage of its last completed epoch.

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
        self._restored = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        register_resumable(engine, "stage", self)

    def state_dict(self) -> dict:
        """``{"stage": the loss's current stage}`` (saved in the resume state)."""
        return {"stage": getattr(self.loss, "stage", None)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the stage of a resume state, without the switch's optimizer reset."""
        stage = state.get("stage")
        if stage is not None:
            self.loss.set_stage(stage)
        self._restored = True

    def __call__(self, engine: Engine) -> None:
        if not self._restored and engine.state.epoch > 1:
            # resumed from a state without a stage: the stage of the last completed epoch, without a reset
            self.loss.set_stage(stage_for_epoch(engine.state.epoch - 1, self.dps_epochs))
        self._restored = True
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


class TrainingDivergedError(RuntimeError):
    """The training diverged: its loss or weights are not finite, or beyond the configured limit."""


class DivergenceGuard:
    """Stop the training at the first iteration whose loss or weights blow up, before anything saves them.

    After every optimizer step (``ITERATION_COMPLETED``) the iteration's loss and the largest absolute value of the
    network's parameters are checked: NaN, infinite, or beyond ``limit`` (``divergence_limit`` in train.json) is
    divergence, and :class:`TrainingDivergedError` names the epoch, the iteration and the learning rate. The
    exception ends the run before the epoch's end: the validation (so the best model ``model.pt``) and the
    end-of-epoch ``last.pt`` of :class:`ResumableCheckpoint` never see the diverged weights, and both keep the last
    completed epoch's. The loss itself refuses non-finite logits too (a check of its input); with the weights
    checked after every step, a blow-up is caught here one forward pass earlier, with the training's context.

    The limit is generous on purpose: the paper's loss is a few units (cross-entropy summed over the pyramid's
    outputs) and trained weights stay within about +-10, so 1e6 is never reached by a training that learns,
    while an optimizer step of a too large learning rate (1e6 with RMSprop moves every weight by ~1e7 at once)
    or a finite blow-up (loss 1e14) crosses it at once.

    Args:
        network: the trained network (a DDP wrapper is unwrapped).
        optimizer: to name the learning rate in the message (optional).
        limit: largest allowed ``|loss|`` and ``max |weight|``; ``None`` or ``inf`` checks finiteness only.
    """

    def __init__(self, network: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 limit: float | None = 1e6):
        limit = math.inf if limit is None else float(limit)
        if not limit > 0:
            raise ValueError(f"divergence_limit must be > 0 (or null for finiteness only), got {limit}.")
        self.network = network
        self.optimizer = optimizer
        self.limit = limit

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def largest_weight(self) -> float:
        """``max |w|`` over the network's parameters (NaN when any is NaN)."""
        params = [p.detach() for p in _unwrap(self.network).parameters() if p.numel()]
        if not params:
            return 0.0
        return float(torch.stack(torch._foreach_norm(params, math.inf)).max())

    def _blown(self, value: float) -> bool:
        return not math.isfinite(value) or abs(value) > self.limit

    def __call__(self, engine: Engine) -> None:
        loss = loss_of(engine.state.output)
        weight = self.largest_weight()
        problems = []
        if loss is not None and self._blown(loss):
            problems.append(f"loss {loss:.3g}")
        if self._blown(weight):
            problems.append(f"largest weight {weight:.3g}")
        if not problems:
            return
        state = engine.state
        length = state.epoch_length or state.iteration
        in_epoch = (state.iteration - 1) % length + 1
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        raise TrainingDivergedError(
            f"training diverged at epoch {state.epoch}, iteration {in_epoch}/{length} (iteration {state.iteration} "
            f"overall), learning rate {'unknown' if lr is None else f'{lr:.3g}'}: " + " and ".join(problems)
            + f" (not finite or beyond divergence_limit {self.limit:g}). Stopped before saving: last.pt keeps the "
            "last completed epoch and model.pt the best validated one. Train again with a lower learning_rate "
            "(--resume True would continue with the learning rate saved in last.pt)."
        )


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return obj.module
    return obj


class ResumableCheckpoint:
    """Save everything needed to resume after every epoch, atomically, and optionally resume from it.

    The file holds ``{name: obj.state_dict()}`` for the objects of ``save_dict`` (DDP wrappers unwrapped; objects
    that are None are skipped), the trainer's AMP ``GradScaler`` when it has one, and
    ``"engine": {"epoch", "iteration"}``, and every object registered with :func:`register_resumable` on the
    trainer or on ``evaluator``: the :class:`StageSwitchHandler` ("stage") and the :class:`BestModelCheckpoint`
    ("best_model": best score and its epoch). Random states need no saving when the run derives them from
    (seed, epoch) as the bundle does (:class:`EpochSeedHandler`, :class:`~pipofan_monai.apps.training.SeededItemDataset`).

    The state is saved at the END of every epoch, after every handler attached before the run starts (scheduler
    step, validation, best model, metrics file), so a resume continues with exactly the state the uninterrupted
    run has at the next epoch start; a kill before the save repeats the whole epoch, validation included.

    With ``resume=True`` and an existing file, the objects are restored when the engine starts and the engine
    continues after the saved epoch. Attach it FIRST among the trainer's handlers, so later handlers see the
    restored epoch when the run starts.

    Args:
        save_path: the checkpoint file (e.g. ``<output_dir>/last.pt``).
        save_dict: objects with ``state_dict``/``load_state_dict`` to save and restore, e.g.
            ``{"model": net, "optimizer": opt, "lr_scheduler": sched}``.
        resume: restore from ``save_path`` at start when it exists.
        save: write the checkpoint (set False on ranks other than 0).
        map_location: device to load tensors onto.
        evaluator: the validation engine, whose registered objects (the best-model saver) are saved too.
    """

    REQUIRED = ("model", "optimizer")

    def __init__(
        self,
        save_path: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        save: bool = True,
        map_location: Any = "cpu",
        evaluator: Engine | None = None,
    ):
        self.save_path = Path(save_path)
        self.save_dict = {k: v for k, v in dict(save_dict).items() if v is not None}
        self.evaluator = evaluator
        self.resume = resume
        self.save = save
        self.map_location = map_location
        self._save_attached = False

    _unwrap = staticmethod(_unwrap)

    def _objects(self, engine: Engine) -> dict[str, Any]:
        objects = dict(self.save_dict)
        for source in (engine, self.evaluator):
            for name, obj in (getattr(source, RESUMABLE_ATTR, None) or {}).items():
                objects.setdefault(name, obj)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and hasattr(scaler, "state_dict") and "scaler" not in objects:
            objects["scaler"] = scaler
        return objects

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save:
            # registered when the run starts, so that it runs after every EPOCH_COMPLETED handler attached before
            engine.add_event_handler(Events.STARTED, self._attach_save)

    def _attach_save(self, engine: Engine) -> None:
        if not self._save_attached:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)
            self._save_attached = True

    def load(self, engine: Engine) -> None:
        if not self.save_path.exists():
            logger.info(f"resume requested but {self.save_path} does not exist: starting from scratch")
            return
        try:
            ckpt = torch.load(self.save_path, map_location=self.map_location, weights_only=False)
        except Exception as e:
            raise ValueError(f"cannot resume: the checkpoint {self.save_path} is unreadable ({e}).") from e
        objects = self._objects(engine)
        needed = [k for k in self.REQUIRED if k in objects] + ["engine"]
        missing = [k for k in needed if k not in ckpt]
        if missing:
            raise ValueError(f"cannot resume: the checkpoint {self.save_path} lacks {missing}.")
        absent = [k for k in objects if k not in ckpt]
        if absent:
            logger.warning(f"{self.save_path} has no saved {absent} (written by an older version): they start "
                           "fresh, so the resumed run can differ from an uninterrupted one")
        for name, obj in objects.items():  # settings first: a changed setting is named before any weight loads
            if name in ckpt and hasattr(obj, "check_compatible"):
                try:
                    obj.check_compatible(ckpt[name], self.save_path)
                except ValueError as e:
                    raise type(e)(f"cannot resume from {self.save_path}: {e}. Resume with that run's settings, or "
                                  "start a new run without --resume True.") from None
        for name, obj in objects.items():
            if name in ckpt:
                try:
                    self._unwrap(obj).load_state_dict(ckpt[name])
                except (RuntimeError, KeyError, ValueError) as e:  # e.g. a last.pt without plans, other widths
                    lines = str(e).strip().splitlines()
                    more = f" (and {len(lines) - 3} more lines)" if len(lines) > 3 else ""
                    raise ValueError(f"cannot resume from {self.save_path}: its {name!r} does not fit this run: "
                                     + " ".join(line.strip() for line in lines[:3]) + more) from None
        epoch, iteration = int(ckpt["engine"]["epoch"]), int(ckpt["engine"]["iteration"])
        if engine.state.max_epochs is not None and epoch >= engine.state.max_epochs:
            logger.warning(f"the checkpoint is at epoch {epoch} >= max_epochs {engine.state.max_epochs}: nothing to do")
        engine.state.epoch, engine.state.iteration = epoch, iteration
        logger.info(f"resumed from {self.save_path} at epoch {epoch} (iteration {iteration})")

    def __call__(self, engine: Engine) -> None:
        state: dict[str, Any] = {name: self._unwrap(obj).state_dict() for name, obj in self._objects(engine).items()}
        state["engine"] = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        atomic_torch_save(state, self.save_path)


class BestModelCheckpoint:
    """Save the network as ``save_path`` (``models/model.pt``) whenever the validation's key metric improves.

    Our own handler instead of MONAI's ``CheckpointSaver(save_key_metric=True)`` because MONAI 1.6's saver writes
    with ``atomic=False`` and removes the previous best file before writing the new one (a kill or a full disk then
    leaves no model.pt at all), and its best score is not part of a resume state (after ``--resume`` the first
    validation overwrote a better model). Here the file is replaced atomically (:func:`atomic_torch_save`: the
    previous best stays until the new file is complete) and :meth:`state_dict` (best score and epoch) is saved in
    ``last.pt`` by :class:`ResumableCheckpoint`.

    The file is ``{"model": state_dict, "epoch": e, "key_metric": name, "key_metric_value": v, **extra}`` (MONAI
    Label and the inference workflow read ``ckpt.get("model", ckpt)``).

    Args:
        save_path: the best checkpoint file.
        network: the network (a DDP wrapper is unwrapped).
        key_metric: name of the evaluator metric to maximise.
        extra: more items stored as top-level keys of the file (e.g. ``{"plans": {...}}``: network arguments,
            class names, preprocessing), plain Python values so that ``torch.load(weights_only=True)`` reads them.
        enabled: False on ranks other than 0 (nothing is saved; the state is still kept).
    """

    RESERVED = ("model", "epoch", "key_metric", "key_metric_value")

    def __init__(
        self,
        save_path: str | os.PathLike,
        network: torch.nn.Module,
        key_metric: str = "val_mean_dice",
        extra: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ):
        self.save_path = Path(save_path)
        self.network = network
        self.key_metric = key_metric
        self.extra = dict(extra or {})
        clash = [k for k in self.extra if k in self.RESERVED]
        if clash:
            raise ValueError(f"extra checkpoint items {clash} clash with the reserved keys {list(self.RESERVED)}.")
        self.enabled = enabled
        self.best_metric = -math.inf
        self.best_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)
        register_resumable(engine, "best_model", self)

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_metric = float(state.get("best_metric", -math.inf))
        self.best_epoch = state.get("best_epoch")

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.key_metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= self.best_metric:
            return
        epoch = int(engine.state.epoch)
        self.best_metric, self.best_epoch = float(value), epoch
        if not self.enabled:
            return
        state = {"model": _unwrap(self.network).state_dict(), "epoch": epoch, "key_metric": self.key_metric,
                 "key_metric_value": float(value), **self.extra}
        atomic_torch_save(state, self.save_path)
        logger.info(f"epoch {epoch}: new best {self.key_metric} {value:.4f}, saved {self.save_path}")


class EpochSeedHandler:
    """Seed Python's, NumPy's and torch's global random generators at every epoch start from (seed, epoch), so
    that an epoch's random numbers in the main process do not depend on what ran before it: a resumed run draws
    the same numbers as the uninterrupted one (like ignite's ``DeterministicEngine``, per epoch). The data
    pipeline's crops and flips are seeded per item by the sampler instead (``item_seeds``).

    Args:
        seed: base seed.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        import random

        import numpy as np

        ss = np.random.SeedSequence([self.seed, int(engine.state.epoch)])
        a, b, c = (int(x) for x in ss.generate_state(3))
        random.seed(a)
        np.random.seed(b)
        torch.manual_seed(c)
