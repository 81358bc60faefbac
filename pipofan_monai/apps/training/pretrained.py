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

"""Training that starts from a trained model: the network and the preprocessing come from its plans.

A checkpoint's plans describe the network it fits (widths, scales, blocks) and the preprocessing it was trained
with (in-plane size, HU window, context). Training that starts from it (``--pretrained model.pt``, or MONAI
Label's "Train" button, which loads the served ``models/model.pt`` with a ``CheckpointLoader`` it puts first
among the trainer's handlers) must build that network, not the one of train.json's settings, or the weights do
not fit: the bundle's train.json takes the checkpoint from the first trainer handler's ``load_path``
(:class:`PretrainedWeights` when MONAI Label adds no loader of its own) and reads its plans with
:func:`start_plans`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine, Events

__all__ = ["PretrainedWeights", "start_plans", "training_network"]

logger = logging.getLogger(__name__)


def start_plans(load_path: str | os.PathLike | None, label_space: Any) -> dict[str, Any] | None:
    """The plans of the checkpoint a training starts from, or None (no checkpoint, or one without plans).

    Args:
        load_path: the checkpoint (None: training from scratch).
        label_space: the config's :class:`~pipofan_monai.vocabulary.LabelSpace` (or its class names).

    Raises:
        ValueError: the checkpoint's classes differ from the config's (its output layer cannot be reused);
            names the file and both lists.
    """
    class_names: Sequence[str] = getattr(label_space, "class_names", label_space)
    if not load_path:
        return None
    from pipofan_monai.plans import read_plans

    plans = read_plans(load_path)
    if plans is None:
        logger.warning(f"{os.fspath(load_path)!r} has no plans: the network and preprocessing of the config are "
                       "used, and must fit its weights")
        return None
    if [str(c) for c in plans["class_names"]] != [str(c) for c in class_names]:
        raise ValueError(
            f"{os.fspath(load_path)!r} was trained for classes {plans['class_names']}, the config has "
            f"{list(class_names)}: set class_names as in the checkpoint (python -m pipofan_monai classes --bundle_dir <bundle> "
            "--class_names ...) or start from another checkpoint."
        )
    logger.info(f"starting from {os.fspath(load_path)}: network {dict(plans['network'])} and preprocessing "
                f"{dict(plans['preprocessing'])} from its plans")
    return plans


def training_network(plans: Mapping[str, Any] | None = None, **network_args: Any) -> torch.nn.Module:
    """The network of ``plans`` when training starts from a checkpoint with plans, else ``PIPOFAN(**network_args)``
    (the config's settings)."""
    from pipofan_monai.plans import network_from_plans

    if plans is not None:
        return network_from_plans(plans)
    from pipofan_monai.networks import PIPOFAN

    return PIPOFAN(**network_args)


class PretrainedWeights:
    """Load a trained model's weights into the network when training starts (strictly: every tensor must fit).

    Does nothing without ``load_path``, and nothing when the run resumes from its own ``last.pt``
    (``skip_if_exists``), which holds newer weights. The network is built from the checkpoint's plans
    (:func:`training_network`), so any widths fit.

    Args:
        load_path: checkpoint to start from (None: start from random weights).
        network: the network being trained.
        map_location: device the tensors are loaded onto.
        skip_if_exists: a resume checkpoint; when it exists, it is loaded instead (by the resume handler).
    """

    def __init__(self, load_path: str | os.PathLike | None, network: torch.nn.Module, map_location: Any = "cpu",
                 skip_if_exists: str | os.PathLike | None = None):
        self.load_path = load_path
        self.network = network
        self.map_location = map_location
        self.skip_if_exists = skip_if_exists

    def attach(self, engine: Engine) -> None:
        if self.load_path:
            engine.add_event_handler(Events.STARTED, self.load)

    def load(self, engine: Engine | None = None) -> None:
        from pipofan_monai.plans import load_network_weights

        if self.skip_if_exists is not None and os.path.isfile(self.skip_if_exists):
            logger.info(f"resuming from {os.fspath(self.skip_if_exists)}: {os.fspath(self.load_path)} not loaded")
            return
        net = self.network.module if hasattr(self.network, "module") else self.network
        load_network_weights(net, self.load_path, self.map_location)
        logger.info(f"weights loaded from {os.fspath(self.load_path)}")
