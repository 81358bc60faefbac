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

"""Give a bundle folder another organ vocabulary, consistently in every file that names the classes.

The class list lives in the configs (``class_names``; everything else -- K, the loss, the validation metrics, the
connected-component rules, the colours -- follows from it), but ``metadata.json`` is static JSON that MONAI Label
and the bundle tools read without running the configs: its ``network_data_format.outputs.pred`` ``channel_def``
is MONAI Label's label list. :func:`set_bundle_classes` (CLI: ``python -m pipofan_monai classes``) writes the
names into the configs and regenerates the class-dependent fields of ``metadata.json``, so a K = 5 bundle lists
5 organs in MONAI Label; :func:`check_bundle_classes` reports a bundle whose files disagree.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipofan_monai.vocabulary.organs import DEFAULT_CLASS_NAMES, channel_def, organ_table, validate_class_names
from pipofan_monai.utils import atomic_write_json

__all__ = ["set_bundle_classes", "check_bundle_classes", "metadata_for_classes", "classes_command"]

#: configs that hold ``class_names`` (and may hold ``organ_table`` / ``dataset_table``)
CLASS_CONFIGS: tuple[str, ...] = ("train.json", "inference.json")


def _human(name: str, organs: Mapping[str, Any] | None = None) -> str:
    """``"right_kidney"`` -> ``"right kidney"``; a group of left and right parts says so (``"kidney (left and
    right)"``)."""
    text = name.replace("_", " ")
    spec = organ_table(organs).get(name)
    parts = spec.parts if spec is not None else ()
    if any("left" in p for p in parts) and any("right" in p for p in parts):
        text += " (left and right)"
    return text


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def metadata_for_classes(
    metadata: Mapping[str, Any], class_names: Sequence[str], organs: Mapping[str, Any] | None = None
) -> dict:
    """A copy of a bundle's ``metadata.json`` content whose class-dependent fields describe ``class_names``:
    ``network_data_format.outputs.pred`` ``num_channels`` and ``channel_def``, ``label_classes``,
    ``pred_classes``, ``task`` and the organ list in ``description`` ("logits of ... out")."""
    names = validate_class_names(class_names, organs)
    meta = json.loads(json.dumps(metadata))  # deep copy of plain JSON
    organs_h = [n.replace("_", " ") for n in names[1:]]
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["num_channels"] = len(names)
    pred["channel_def"] = channel_def(names)
    meta["label_classes"] = ", ".join(f"{i} {_human(n, organs) if i else n}" for i, n in enumerate(names))
    meta["pred_classes"] = f"{len(names)} channels: {', '.join(n.replace('_', ' ') for n in names)} (logits)"
    meta["task"] = (f"{_join([o[0].upper() + o[1:] if i == 0 else o for i, o in enumerate(organs_h)])} "
                    "segmentation in abdominal CT, trained on partially labeled datasets")
    if isinstance(meta.get("description"), str):
        meta["description"] = re.sub(r"logits of .*? out for", f"logits of {_join(['background'] + organs_h)} out for",
                                     meta["description"], count=1)
    return meta


def _write_json_atomic(path: Path, obj: Any) -> None:
    """JSON with indent 4 and a trailing newline (the bundle's own layout), replaced atomically."""
    atomic_write_json(path, obj, indent=4)


def _configs_dir(bundle_dir: str | os.PathLike) -> Path:
    root = Path(bundle_dir).expanduser()
    configs = root / "configs" if (root / "configs").is_dir() else root
    if not (configs / "metadata.json").is_file():
        raise ValueError(f"{root} is not a bundle folder: {configs / 'metadata.json'} is missing.")
    return configs


def set_bundle_classes(
    bundle_dir: str | os.PathLike,
    class_names: Sequence[str],
    organ_table: Mapping[str, Any] | None = None,
    dataset_table: Mapping[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Write a vocabulary into a bundle folder: ``class_names`` (and optionally ``organ_table`` /
    ``dataset_table``) into ``configs/train.json`` and ``configs/inference.json``, and the class-dependent fields
    of ``configs/metadata.json`` (MONAI Label's label list). Every file is replaced atomically; nothing is
    written when the names are invalid. Meant for a COPY of ``bundle/`` (as MONAI Label uses it).

    Args:
        bundle_dir: the bundle folder (holding ``configs/``) or its ``configs/`` folder.
        class_names: K >= 2 names, background first (see :func:`pipofan_monai.vocabulary.organs.validate_class_names`).
        organ_table: optional config-level organ table (new organs, other rules) stored with the names.
        dataset_table: optional config-level dataset table stored with the names.

    Returns:
        ``{file name: [keys written]}``.

    Raises:
        ValueError: invalid names, or not a bundle folder.
    """
    names = list(validate_class_names(class_names, organ_table))
    configs = _configs_dir(bundle_dir)
    changes: dict[str, list[str]] = {}
    updates: list[tuple[Path, Any]] = []
    for fname in CLASS_CONFIGS:
        path = configs / fname
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        keys = []
        if cfg.get("class_names") is not None or names != list(DEFAULT_CLASS_NAMES):
            cfg["class_names"] = names  # null (read from the checkpoint's plans) stays null for the default names
            keys.append("class_names")
        if organ_table is not None:
            cfg["organ_table"] = dict(organ_table)
            keys.append("organ_table")
        if dataset_table is not None:
            cfg["dataset_table"] = dict(dataset_table)
            keys.append("dataset_table")
        updates.append((path, cfg))
        changes[fname] = keys
    meta_path = configs / "metadata.json"
    meta = metadata_for_classes(json.loads(meta_path.read_text()), names, organ_table)
    updates.append((meta_path, meta))
    changes["metadata.json"] = ["network_data_format.outputs.pred", "label_classes", "pred_classes", "task",
                                "description"]
    for path, obj in updates:
        _write_json_atomic(path, obj)
    return changes


def check_bundle_classes(bundle_dir: str | os.PathLike) -> list[str]:
    """Problems of a bundle whose files disagree on the classes (empty list: consistent): the configs'
    ``class_names`` versus ``metadata.json``'s ``channel_def`` / ``num_channels``."""
    configs = _configs_dir(bundle_dir)
    meta = json.loads((configs / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    problems = []
    for fname in CLASS_CONFIGS:
        path = configs / fname
        if not path.is_file():
            continue
        names = json.loads(path.read_text()).get("class_names")
        if names is None:
            continue
        if pred.get("channel_def") != channel_def(names):
            problems.append(f"{path}: class_names {names} but metadata.json channel_def is {pred.get('channel_def')}")
        if pred.get("num_channels") != len(names):
            problems.append(f"{path}: K={len(names)} but metadata.json num_channels is {pred.get('num_channels')}")
    return problems


def classes_command(bundle_dir: str = "bundle", class_names: Sequence[str] | str | None = None,
                    organ_table: Mapping | str | None = None, dataset_table: Mapping | str | None = None) -> str:
    """CLI entry: ``python -m pipofan_monai classes --bundle_dir my_bundle --class_names
    "['background','liver','kidney','spleen','pancreas']"``. Without ``class_names`` it checks the bundle.

    JSON strings are accepted for the tables (``--organ_table '{"bladder": {"num_components": 1}}'``).
    """
    def _parse(x):
        if isinstance(x, str):
            try:
                return json.loads(x)
            except ValueError:
                return x
        return x

    if class_names is None:
        problems = check_bundle_classes(bundle_dir)
        if problems:
            raise ValueError("the bundle's files disagree on the classes:\n  " + "\n  ".join(problems))
        return f"{bundle_dir}: class names consistent in configs and metadata.json"
    names = _parse(class_names)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    changes = set_bundle_classes(bundle_dir, names, _parse(organ_table), _parse(dataset_table))
    return f"{bundle_dir}: wrote class_names {list(validate_class_names(names, _parse(organ_table)))} to " + ", ".join(
        sorted(changes))
