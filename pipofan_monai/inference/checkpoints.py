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

"""Which checkpoints an inference run uses, and the plans its network and preprocessing are built from.

The plans come from the checkpoints the run uses, never from a file it does not use: ``inference.json``'s run ids
name their checkpoints first (``run_ckpt_paths``: ``inference`` the ``ckpt_path``, ``ensemble`` the fold models),
then build the runner. A config parsed without a run id (MONAI Label, a script that calls ``runner.run(items,
ckpts)`` itself) reads the given ``ckpt_path``, or else the bundle's default model only as a guess: when that
file's plans disagree with settings given explicitly (a user's quick-start ``models/model.pt`` beside a test's
``spatial_size=32``), the explicit settings win, and the checkpoints the run then loads are checked against them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from pipofan_monai.plans import PlansMismatchError, resolve_plans

__all__ = ["use_checkpoints", "run_plans", "model_files"]

logger = logging.getLogger("pipofan.inference")


def use_checkpoints(selection: list, paths: Sequence[str | os.PathLike]) -> list:
    """Name the checkpoints of this run in the config's ``run_ckpt_paths`` list (in place, so that the plans,
    resolved after it, read them); a run id evaluated again replaces them instead of adding to them.

    Returns:
        ``selection``, now holding ``paths``.
    """
    selection[:] = [os.fspath(p) for p in paths]
    return selection


def run_plans(run_ckpts: Sequence[str | os.PathLike] | None, given: str | os.PathLike | None,
              defaults: Sequence[str | os.PathLike] = (), **settings: Any) -> dict[str, Any]:
    """The plans of a run (see the module docstring).

    Args:
        run_ckpts: the checkpoints the run uses (filled by the bundle's run id before the network is built);
            empty when the config is parsed without a run id.
        given: the ``ckpt_path`` the user gave (None: not given).
        defaults: the bundle's default model files (``models/model.pt``, the fold models), read only when neither
            of the above is known, and only if their plans agree with ``settings``.
        **settings: explicit settings for :func:`pipofan_monai.plans.resolve_plans` (None: from the checkpoint).

    Raises:
        PlansMismatchError: a checkpoint the run uses disagrees with an explicit setting (names both values).
    """
    if run_ckpts:
        return resolve_plans(list(run_ckpts), **settings)
    if given:
        return resolve_plans([given], **settings)
    try:
        return resolve_plans(list(defaults), **settings)
    except PlansMismatchError as e:
        logger.info(f"not building from the default model ({e}); using the explicit settings. The checkpoints "
                    "a run loads are checked against them.")
        return resolve_plans(None, **settings)


def model_files(model: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Checkpoint files of ``--model``: one file, several files, or a folder of fold models
    (``<folder>/fold*/model.pt``, else ``<folder>/*.pt``), in a stable order.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without checkpoints (names it).
    """
    paths = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    if not paths:
        raise ValueError("no model given: pass a checkpoint file, several, or a folder of fold models.")
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(str(p.resolve()))
        elif p.is_dir():
            found = sorted(p.glob("fold*/model.pt")) or sorted(p.glob("*.pt"))
            if not found:
                raise FileNotFoundError(f"model folder {p} holds no checkpoints (expected fold*/model.pt or *.pt).")
            files.extend(str(f.resolve()) for f in found)
        else:
            raise FileNotFoundError(f"model not found: {p}")
    return files
