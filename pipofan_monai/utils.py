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

One atomic-write mechanism serves every file a user keeps (checkpoints, metrics, reports, datalists, label maps,
DICOM SEG, figures): :func:`atomic_path` hands out a temporary file name in the destination's folder
(``.<name>.<pid>.<random>.tmp<ext>``, keeping the extension because nibabel, ITK and matplotlib choose the format
from it); when the block succeeds the file is fsynced, renamed over the destination with ``os.replace`` and the
folder is fsynced, so that the rename survives a power loss. A kill or a full disk at any moment leaves the previous
file intact (or no file), never a truncated one under the final name. :func:`atomic_write` (a file object),
:func:`atomic_write_json` and :func:`atomic_torch_save` are built on it.

The writer's process id in the temporary name lets :func:`remove_stale_temporaries` tell the leftover of a killed
write (its process no longer runs on this machine) from a write in progress (kept); training (its output folders)
and inference (the outputs of each case) clean up with it.

Not on it, on purpose: the preprocessed cache publishes whole entry FOLDERS (``preprocessing/cache.py``: temporary
folder, fsync, rename), downloads keep a resumable ``.part`` file, and unpacking renames a whole folder
(``dataset_conversion/download.py``); each fsyncs its files and the folder as this module does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import IO, Any, Collection, Iterable, Iterator, Mapping

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_torch_save",
    "atomic_write_json",
    "temporary_name_of",
    "remove_stale_temporaries",
    "fsync_dir",
    "pid_alive",
    "end_with_parent",
    "is_disk_full",
    "write_error",
    "process_start_time",
    "claim_file",
    "release_claim",
    "as_bool",
    "filename_of",
    "refuse_help",
    "BUNDLE_HELP",
    "TMP_SUFFIX",
    "root_error",
]

logger = logging.getLogger(__name__)

#: marks the temporary files of :func:`atomic_path` (``.<name>.<pid>.<random>.tmp<ext>``)
TMP_SUFFIX = ".tmp"

#: a temporary file of :func:`atomic_path`: final name, writer pid, 8 hex digits, ``.tmp``, the final extension
_TMP_RE = re.compile(r"^\.(?P<final>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp(?:\.[A-Za-z0-9.]+)?$")
#: extensions of more than one suffix that writers recognise as a whole
_DOUBLE_EXTENSIONS = (".nii.gz", ".tar.gz", ".seg.nrrd")


def _extension(name: str) -> str:
    low = name.lower()
    for ext in _DOUBLE_EXTENSIONS:
        if low.endswith(ext):
            return name[-len(ext):]
    return os.path.splitext(name)[1]


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder, so that a rename into it survives a power loss; a no-op where folders cannot be opened
    (Windows, some network file systems): the rename itself is atomic anyway."""
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, file_mode: int = 0o644) -> Iterator[str]:
    """Context manager yielding a temporary file NAME whose file replaces ``path`` only when the block succeeds.

    For writers that take a file name (``nib.save``, ``ds.save_as``, ``fig.savefig``): the temporary file
    ``.<name>.<pid>.<random>.tmp<ext>`` lives in the destination folder (so ``os.replace`` is atomic) and keeps
    the extension (``.nii.gz``, ``.png``, ...). After the block the file is fsynced, given ``file_mode`` and
    renamed over ``path``, then the folder is fsynced. When the block raises (e.g. ``OSError(ENOSPC)``), the
    temporary file is removed, the error propagates and ``path`` is untouched.

    Args:
        path: the destination; its parent folders are created.
        file_mode: permission bits of the final file (default 0o644, like files written with ``open``).

    Yields:
        the temporary path to write to (absolute).

    Raises:
        FileNotFoundError: the block did not create the temporary file.
    """
    final = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(final)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}{_extension(name)}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # fsync flushes the file's data whichever descriptor wrote it
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", file_mode: int = 0o644, **open_kwargs: Any
) -> Iterator[IO]:
    """Context manager yielding a file object whose content replaces ``path`` only when the block succeeds
    (:func:`atomic_path` opened with ``open(tmp, mode, **open_kwargs)``).

    Args:
        path: destination; its parent folders are created.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8 unless ``encoding`` is given).
        file_mode: permission bits of the final file (default 0o644).
        open_kwargs: more arguments of ``open``, e.g. ``newline=""`` for the ``csv`` module.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}.")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, file_mode) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` through :func:`atomic_write`."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_json(path: str | os.PathLike, obj: Mapping | list, indent: int = 2, **dump_kwargs: Any) -> None:
    """JSON (indented, trailing newline) through :func:`atomic_write`; ``dump_kwargs`` go to ``json.dump``
    (e.g. ``default=str``)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, **dump_kwargs)
        f.write("\n")


def root_error(e: BaseException) -> BaseException:
    """The original error behind MONAI's ``RuntimeError("applying transform ...")`` wrappers (what names the file
    and the problem), or ``e`` itself."""
    while isinstance(e, RuntimeError) and str(e).startswith("applying transform") and e.__cause__ is not None:
        e = e.__cause__
    return e


#: a short write as numpy's ``tofile`` reports it (no errno): on a regular file, the disk or the quota is full
_SHORT_WRITE_RE = re.compile(r"\d+ requested and \d+ written")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` means that no space is left: ``ENOSPC``, ``EDQUOT`` (quota), or a short write without an errno
    (numpy's ``OSError: 2621440 requested and 2580352 written``)."""
    if not isinstance(e, OSError):
        return False
    return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or (
        e.errno is None and bool(_SHORT_WRITE_RE.search(str(e))))


def write_error(path: str | os.PathLike, e: OSError) -> OSError:
    """The error to raise when writing ``path`` failed with ``e``: an ``OSError`` with ``e``'s errno whose message
    names the file and the cause. A full disk (see :func:`is_disk_full`) becomes ``OSError(ENOSPC, "could not write
    <file>: No space left on device (<free> free in <folder>) ...")``. The one place that words write failures
    (inference outputs, cache entries); raise it ``from e``."""
    import shutil

    name = os.fspath(path)
    if not is_disk_full(e):
        return OSError(e.errno if e.errno is not None else errno.EIO,
                       f"could not write {name}: {e.strerror or e}")
    folder = os.path.dirname(os.path.abspath(name))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # a file of a folder not yet in place (published when complete)
    try:
        free = f"{_human_bytes(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        free = f"free space in {folder} unknown"
    detail = "" if e.errno is not None else f"; the writer reported: {e}"
    return OSError(errno.ENOSPC, f"could not write {name}: {os.strerror(errno.ENOSPC)} ({free}{detail}). "
                   "Free some disk space (or write elsewhere) and run again.")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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


def end_with_parent(parent_pid: int | None = None, poll_s: float = 1.0) -> None:
    """Make this (worker) process end when its parent process ends, also when the parent is SIGKILLed.

    Call it first thing in a worker process (e.g. a ``ProcessPoolExecutor`` initializer). On Linux the kernel
    sends this process SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG, SIGTERM)``); everywhere, a daemon
    thread checks the parent's pid every ``poll_s`` seconds and ends the process when the parent is gone (it is
    reparented). SIGTERM is reset to its default action here, because a forked worker inherits the parent's
    Python handlers (a training's graceful-stop handler would keep the worker alive).

    Args:
        parent_pid: the pid of the process that started this one (None: ``os.getppid()`` now). Pass the parent's
            ``os.getpid()`` from the parent, so that a parent that died before this call is noticed too.
        poll_s: seconds between two checks of the fallback watch.
    """
    import signal
    import sys
    import threading

    parent = os.getppid() if parent_pid is None else int(parent_pid)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl here: the watch below still ends the process
            pass

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(128 + int(signal.SIGTERM))  # the parent is gone: end now (no cleanup that could block)

    if os.getppid() != parent:
        os._exit(128 + int(signal.SIGTERM))
    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
def process_start_time(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux ``/proc``), to tell a reused pid apart; None
    where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of stat; fields after the "(comm)" start at field 3


def _holder_alive(holder: Mapping) -> bool:
    """Whether the process that wrote a claim or lock (``{"pid", "start"}``) still runs (and is not a reused pid)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return False
    start, now = holder.get("start"), process_start_time(pid)
    return start is None or now is None or start == now


def claim_file(path: str | os.PathLike, **info: Any) -> dict | None:
    """Claim a piece of work across processes: create ``path`` exclusively (``O_CREAT | O_EXCL``) holding this
    process's pid, its start time and ``info`` as JSON.

    A claim of a process that no longer runs (killed) is taken over with a warning; this process's own claim counts
    as held by it. Release with :func:`release_claim`.

    Returns:
        None when this process holds the claim now, else the holder's record (``{"pid", "start", ...}``) of the
        other live process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "start": process_start_time(os.getpid()), **info}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if holder.get("pid") == os.getpid():
                return None
            if holder and not _holder_alive(holder):
                logger.warning(f"taking over the claim {path} of process {holder.get('pid')} (no longer running)")
                path.unlink(missing_ok=True)
                continue
            if not holder:  # being written right now, or left empty by a kill: wait for it to age
                with contextlib.suppress(OSError):
                    if os.path.getmtime(path) < time.time() - 60:
                        path.unlink(missing_ok=True)
                        continue
                return {"pid": None}
            return holder
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return None
    return {"pid": None}


def release_claim(path: str | os.PathLike) -> None:
    """Remove a claim of :func:`claim_file` if this process holds it."""
    path = Path(path)
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return
    if holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def temporary_name_of(entry: str) -> tuple[str, int] | None:
    """``(final name, writer pid)`` when the file name ``entry`` is a temporary file of :func:`atomic_path`
    (``.<name>.<pid>.<random>.tmp<ext>``), else None."""
    m = _TMP_RE.match(entry)
    return None if m is None else (m.group("final"), int(m.group("pid")))


def remove_stale_temporaries(folders: Iterable[str | os.PathLike],
                             finals: Collection[str] | None = None) -> list[Path]:
    """Remove the temporary files that killed :func:`atomic_path` writes left in ``folders``.

    A temporary file whose writer process no longer runs on this machine is removed (with a warning); one of a
    running process (another run writing the same file right now) is kept, and so is every file that is not such
    a temporary file.

    Args:
        folders: folders to search; missing ones are skipped.
        finals: only the temporaries of these final file names (e.g. one case's outputs); None: all.

    Returns:
        the removed files.
    """
    removed: list[Path] = []
    for folder in folders:
        try:
            entries = sorted(os.listdir(folder))
        except OSError:  # the folder does not exist (yet)
            continue
        for entry in entries:
            parsed = temporary_name_of(entry)
            if parsed is None or (finals is not None and parsed[0] not in finals) or pid_alive(parsed[1]):
                continue
            p = Path(folder) / entry
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                p.unlink()
                removed.append(p)
                logger.warning(f"removing {p}: temporary file of an interrupted write of {parsed[0]} "
                               f"(process {parsed[1]} no longer runs)")
    return removed


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
  --ct_check warn|off     a real CT in HU refused as "not plausibly CT" (default error; checked when cached)
A new run into an --output_dir that holds an earlier run moves that run to <output_dir>/previous_runs/<date>/.
See bundle/docs/README.md for all keys. Nothing was run.""",
    "inference": """PIPO-FAN inference workflow (bundle/configs/inference.json; evaluate.json adds metrics).

usage: python -m monai.bundle run inference --config_file bundle/configs/inference.json [--KEY VALUE ...]

Every top-level key of the config can be overridden with --KEY VALUE, for example:
  --input_files "['ct1.nii.gz', ...]"  or  --datalist PATH [--datalist_key test]
  --ckpt_path models/model.pt   --output_dir DIR   --device cpu   --overwrite skip
  --sw_batch_size 8   slices per network call (default auto: as many as fit in half the available memory,
                      at most 32; the full network needs about 1.9 GiB at 8, 5.2 GiB at 32 on a CPU)
  --stream_slices 16  slices per slab of the resize inversion and argmax (0: whole volume, more memory)
  --backend auto|torch|onnxruntime   auto (default): ONNX Runtime on a CPU when installed (exported once per
                      checkpoint, cached beside it as <ckpt>.<H>x<W>.onnx), PyTorch otherwise or on a GPU
  --save_probabilities True   --save_overlay False   --postprocess False
  --output_format dicom_seg  or  "['nifti','dicom_seg']"   DICOM SEG beside/instead of NIfTI (DICOM series inputs;
                                                           pip install "pipofan-monai[dicom]")
  --organs liver,spleen   write only these organs     --statistics True   per-organ volume / HU tables
  --report_file DIR/report.json   the run report     --mirror_folders True   patientA/ct.nii.gz, patientB/ct.nii.gz
See bundle/docs/README.md for all keys. Nothing was run.""",
}


def refuse_help(help: Any = False, workflow: str = "training") -> None:
    """Bundle ``initialize`` check: with ``--help`` (the bundle runner passes it as an override ``help=True``)
    print the workflow's help (:data:`BUNDLE_HELP`) and exit 0 before anything is built, read or written, instead
    of running the workflow with an ignored ``help`` key."""
    if help not in (False, None, "", "False", "false", 0):
        print(BUNDLE_HELP.get(workflow, BUNDLE_HELP["training"]), flush=True)
        raise SystemExit(0)

