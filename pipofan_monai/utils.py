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

"""Small helpers every stage uses: atomic file writes, option parsing and file names for messages.

One atomic-write mechanism serves every file a user keeps (checkpoints, metrics, reports, datalists, label maps):
:func:`atomic_write` opens a temporary file in the destination's folder, the caller writes to it, and only after
``flush`` + ``fsync`` is it renamed over the destination with ``os.replace``. A kill or a full disk at any moment
leaves the previous file intact (or no file), never a truncated one under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

__all__ = [
    "atomic_write",
    "atomic_torch_save",
    "atomic_write_json",
    "as_bool",
    "filename_of",
    "refuse_help",
    "BUNDLE_HELP",
    "TMP_SUFFIX",
]

#: suffix of the temporary files :func:`atomic_write` creates (``.<name>.<random>.tmp``)
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", file_mode: int = 0o644) -> Iterator[IO]:
    """Context manager yielding a file object whose content replaces ``path`` only when the block succeeds.

    Args:
        path: destination; its parent folders are created.
        mode: ``"wb"`` (default) or ``"w"``.
        file_mode: permission bits of the final file (default 0o644, like files written with ``open``).

    The temporary file lives in the same folder (so ``os.replace`` is atomic), is flushed and fsynced before the
    rename, and is removed when the block raises (e.g. ``OSError(ENOSPC)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` through :func:`atomic_write`."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_json(path: str | os.PathLike, obj: Mapping | list) -> None:
    """JSON (indented, trailing newline) through :func:`atomic_write`."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def as_bool(value: Any, name: str) -> bool:
    """Parse a boolean option from the command line or a config: ``True``/``False``, 0/1 or the strings
    ``true/false/1/0/yes/no`` (any case). Anything else raises ``ValueError`` naming the option."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{name} must be True or False, got {value!r}.")


def filename_of(x: Any) -> str:
    """The source file of a MetaTensor (``meta["filename_or_obj"]``) for error messages, or ``"<unknown file>"``."""
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj", None)
    return str(name) if name not in (None, "") else "<unknown file>"


#: help printed by ``python -m monai.bundle run <workflow> --config_file ... --help``
BUNDLE_HELP = {
    "training": """PIPO-FAN training workflow (bundle/configs/train.json).

usage: python -m monai.bundle run training --config_file bundle/configs/train.json [--KEY VALUE ...]
       python -m monai.bundle run crossval --config_file bundle/configs/train.json [--folds "[0,1]"] [--KEY VALUE ...]

Every top-level key of the config can be overridden with --KEY VALUE, for example:
  --datalist PATH         datalist JSON (python -m pipofan_monai datalist ...); none: the SYNTHETIC demo data
  --dataset_dir DIR       folder the datalist's relative paths are resolved against
  --fold K --num_folds N  cross-validation fold (or --split btcv_paper)
  --max_epochs N --dps_epochs N --val_interval N --batch_size N --learning_rate LR
  --ckpt_dir DIR          best checkpoint models/model.pt
  --output_dir DIR        last.pt (resume state), metrics.{json,csv}, TensorBoard files; one run at a time
  --resume True           continue the run in --output_dir from its last.pt (crossval: keep finished folds,
                          continue an interrupted one)
  --folds "[0,1]"         crossval: the folds to train (default all); runs in <output_dir>/crossval/fold{k}/
  --device cuda:0 --amp True --num_workers N --seed S
A new run into an --output_dir that holds an earlier run moves that run to <output_dir>/previous_runs/<date>/.
See bundle/docs/README.md for all keys. Nothing was run.""",
    "inference": """PIPO-FAN inference workflow (bundle/configs/inference.json; evaluate.json adds metrics).

usage: python -m monai.bundle run inference --config_file bundle/configs/inference.json [--KEY VALUE ...]

Every top-level key of the config can be overridden with --KEY VALUE, for example:
  --input_files "['ct1.nii.gz', ...]"  or  --datalist PATH [--datalist_key test]
  --ckpt_path models/model.pt   --output_dir DIR   --device cpu   --overwrite skip
  --save_probabilities True   --save_overlay False   --postprocess False
  --output_format dicom_seg  or  "['nifti','dicom_seg']"   DICOM SEG beside/instead of NIfTI (DICOM series inputs;
                                                           pip install "pipofan-monai[dicom]")
See bundle/docs/README.md for all keys. Nothing was run.""",
}


def refuse_help(help: Any = False, workflow: str = "training") -> None:
    """Bundle ``initialize`` check: with ``--help`` (the bundle runner passes it as an override ``help=True``)
    print the workflow's help (:data:`BUNDLE_HELP`) and exit 0 before anything is built, read or written, instead
    of running the workflow with an ignored ``help`` key."""
    if help not in (False, None, "", "False", "false", 0):
        print(BUNDLE_HELP.get(workflow, BUNDLE_HELP["training"]), flush=True)
        raise SystemExit(0)


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so that a rename into it survives a power loss; a no-op where folders cannot be opened
    (Windows, some network file systems): the rename itself is atomic anyway."""
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one owned by another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
