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

"""What to segment: input files, a datalist's list, a folder, or the demo's held-out volumes, as item dicts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["resolve_inputs", "as_items", "case_name", "IMAGE_SUFFIXES"]

logger = logging.getLogger("pipofan.inference")

#: file endings taken as images when a folder is given
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _norm_path(p: Any) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(p))))


def as_items(inputs: Any) -> list[dict]:
    if isinstance(inputs, (str, os.PathLike, Mapping)):
        inputs = [inputs]
    items = []
    for x in inputs:
        item = dict(x) if isinstance(x, Mapping) else {"image": x}
        if not isinstance(item.get("image"), (str, os.PathLike)):
            raise ValueError(f"each input needs an 'image' path, got {x!r}.")
        item["image"] = _norm_path(item["image"])
        if isinstance(item.get("label"), (str, os.PathLike)):
            item["label"] = _norm_path(item["label"])
        items.append(item)
    return items


def resolve_inputs(
    input_files: str | os.PathLike | Sequence | None = None,
    datalist: str | os.PathLike | Mapping | None = None,
    dataset_dir: str | os.PathLike | None = None,
    datalist_key: str = "test",
    demo_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """The items to segment, ``[{"image": path, ("label": path, "dataset": id, ...)}]``, with absolute paths.

    Precedence: ``input_files``; else ``datalist`` (its ``datalist_key`` list, paths relative to ``dataset_dir``
    or the JSON's folder); else every NIfTI/NRRD/MHA file directly in ``dataset_dir``; else the built-in
    SYNTHETIC demo dataset's held-out ``test`` volumes (generated on first use, see
    :py:func:`pipofan_monai.apps.dataset_conversion.ensure_demo_dataset`).

    Args:
        input_files: one path or a list of paths (NIfTI/NRRD files or DICOM series folders) or item dicts.
        datalist: a datalist JSON file or dict (``pipofan_monai`` datalist or MONAI decathlon style).
        dataset_dir: base folder of the datalist's relative paths, or a folder of images.
        datalist_key: the datalist list to read. Default ``"test"``.
        demo_dir: demo dataset folder (default ``$PIPOFAN_DEMO_DIR`` or ``~/.cache/pipofan_monai/demo``).

    Raises:
        ValueError: nothing to segment (empty list, empty folder, missing datalist key).
        FileNotFoundError: ``dataset_dir`` or the datalist does not exist.
    """
    if input_files not in (None, "", []):
        items = as_items(input_files)
    elif datalist not in (None, ""):
        if isinstance(datalist, Mapping):
            dl, base = dict(datalist), Path(dataset_dir or ".").expanduser()
            src = "<dict>"
        else:
            p = Path(datalist).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"datalist not found: {p}")
            dl, src = json.loads(p.read_text()), str(p)
            base = Path(dataset_dir).expanduser() if dataset_dir else p.parent
        if not isinstance(dl.get(datalist_key), list):
            raise ValueError(f"datalist {src} has no list {datalist_key!r}; keys: {sorted(dl)}.")
        items = []
        for x in dl[datalist_key]:
            item = {"image": x} if isinstance(x, (str, os.PathLike)) else dict(x)
            for k in ("image", "label"):
                if isinstance(item.get(k), str) and not os.path.isabs(os.path.expanduser(item[k])):
                    item[k] = str(base / item[k])
            items.append(item)
        items = as_items(items)
    elif dataset_dir not in (None, ""):
        folder = Path(dataset_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset_dir not found: {folder}")
        files = sorted(str(f) for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
        items = as_items(files)
    else:
        from pipofan_monai.apps.dataset_conversion import ensure_demo_dataset

        path = ensure_demo_dataset(demo_dir)
        logger.info(f"no input given: segmenting the SYNTHETIC demo dataset's held-out test volumes ({path})")
        return resolve_inputs(datalist=path, datalist_key="test")
    if not items:
        raise ValueError(
            f"nothing to segment: input_files={input_files!r}, datalist={datalist!r}, dataset_dir={dataset_dir!r}."
        )
    return items


def case_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base
