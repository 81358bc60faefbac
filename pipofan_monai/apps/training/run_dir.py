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

"""The training run's output folder: one run at a time (a lock file), an earlier run's history kept (moved aside)
and leftovers of killed saves removed.

The bundle's ``initialize`` calls :func:`prepare_training_run` before anything is built or written (after
:func:`pipofan_monai.utils.refuse_help`); ``finalize`` calls :func:`release_training_run`. The lock is also released
when the process exits, also when it ends by SIGTERM (a cluster's preemption or time limit: the signal becomes
``SystemExit(143)``, so exit handlers run and a requeued job on another host finds no lock of a dead run).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipofan_monai.utils import atomic_path, pid_alive, process_start_time as _proc_start_time, remove_stale_temporaries

__all__ = [
    "LOCK_NAME",
    "HISTORY_DIR",
    "RunFolderInUseError",
    "acquire_run_lock",
    "release_run_lock",
    "set_aside_previous_run",
    "remove_stale_temporaries",  # pipofan_monai.utils's, used by prepare_training_run
    "prepare_training_run",
    "release_training_run",
    "exit_cleanly_on_sigterm",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"
HISTORY_DIR = "previous_runs"
# files of one training run in its output folder (TensorBoard event files are matched by prefix)
_RUN_FILES = ("last.pt", "metrics.json", "metrics.csv", "training_curves.png")
_EVENTS_PREFIX = "events.out.tfevents."
_held: dict[Path, dict] = {}
_sigterm_owner: int | None = None  # the process whose SIGTERM handler is ours


class RunFolderInUseError(RuntimeError):
    """Another live training process holds the output folder's lock."""


def _pid_alive(pid: int, start: str | None) -> bool:
    """:func:`~pipofan_monai.utils.pid_alive`, and not a reused pid (its start time differs from the lock's)."""
    if not pid_alive(pid):
        return False
    if start is not None:
        now = _proc_start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused by an unrelated process
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def acquire_run_lock(folder: str | os.PathLike) -> Path:
    """Take the training lock of ``folder`` (created): the file ``<folder>/.training.lock`` holding pid and host.

    A lock of a live process refuses; a lock of a dead process on this host (a killed run) is taken over with a
    warning. The same process may take its own lock again (sequential in-process workflows). Released by
    :func:`release_run_lock` and at process exit.

    Raises:
        RunFolderInUseError: another live process holds the folder (or one on another host, which cannot be checked).
    """
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    info = {"pid": os.getpid(), "host": host, "start": _proc_start_time(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    for _ in range(3):
        # write the full content under a temporary name, then link it to the lock name: the lock file appears
        # complete or not at all, and creating it fails if it exists
        tmp = folder / f".{LOCK_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info))
        try:
            os.link(tmp, path)
            break
        except FileExistsError:
            holder = _read_lock(path)
        finally:
            tmp.unlink(missing_ok=True)
        pid, where = holder.get("pid"), holder.get("host")
        if pid == os.getpid() and where == host:
            break  # our own lock (an earlier workflow of this process)
        if isinstance(pid, int) and where == host and not _pid_alive(pid, holder.get("start")):
            logger.warning(f"taking over the stale training lock {path} of process {pid} (no longer running; "
                           f"started {holder.get('started')})")
            path.unlink(missing_ok=True)
            continue
        if not holder and time.time() - path.stat().st_mtime > 60:
            logger.warning(f"taking over the unreadable training lock {path}")
            path.unlink(missing_ok=True)
            continue
        raise RunFolderInUseError(
            f"the output folder {folder} is in use by training process {pid} on host {where} (started "
            f"{holder.get('started')}, command: {holder.get('command')}); lock file {path}. Wait for that run to "
            f"finish or stop it, or train into another --output_dir. If that process no longer exists (e.g. on "
            f"another host), delete {path}."
        )
    else:
        raise RunFolderInUseError(f"could not take the training lock {path}.")
    _held[folder] = info
    return path


def release_run_lock(folder: str | os.PathLike) -> None:
    """Remove ``folder``'s lock if this process holds it."""
    folder = Path(folder).absolute()
    if _held.pop(folder, None) is None:
        return
    path = folder / LOCK_NAME
    holder = _read_lock(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for folder in list(_held):
        release_run_lock(folder)


def set_aside_previous_run(
    output_dir: str | os.PathLike,
    ckpt_dir: str | os.PathLike | None = None,
    resume_path: str | os.PathLike | None = None,
) -> Path | None:
    """Move an earlier run's files out of the way of a new (non-resume) run, into
    ``<output_dir>/previous_runs/<YYYYmmdd-HHMMSS>/``.

    An earlier run is there when ``output_dir`` holds ``last.pt`` or ``metrics.json`` (or ``resume_path`` exists).
    Its ``last.pt``, ``metrics.{json,csv}``, ``training_curves.png`` and TensorBoard event files are moved; the
    best checkpoint ``<ckpt_dir>/model.pt`` is linked (or copied) there too and stays in place (inference and
    MONAI Label keep using it until the new run saves its first best model).

    Returns:
        the folder the run was moved to, or None when there was none.
    """
    out = Path(output_dir)
    resume = Path(resume_path) if resume_path else out / "last.pt"
    if not ((out / "last.pt").exists() or (out / "metrics.json").exists() or resume.exists()):
        return None
    files = [out / n for n in _RUN_FILES if (out / n).is_file()]
    files += sorted(p for p in out.glob(_EVENTS_PREFIX + "*") if p.is_file())
    if resume.is_file() and resume not in files:
        files.append(resume)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out / HISTORY_DIR / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = out / HISTORY_DIR / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for f in files:
        shutil.move(str(f), str(dest / f.name))
    best = Path(ckpt_dir) / "model.pt" if ckpt_dir else None
    if best is not None and best.is_file():
        try:
            os.link(best, dest / "model.pt")  # the new run replaces model.pt by a new file: the link keeps this one
        except OSError:
            with atomic_path(dest / "model.pt") as tmp:  # a kill mid-copy leaves no half model.pt in the history
                shutil.copy2(best, tmp)
    logger.warning(
        f"{out} held an earlier training run: moved its files ({', '.join(f.name for f in files)}) to {dest} and "
        f"started a NEW run. To continue that run instead, move them back and pass --resume True."
    )
    return dest


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    if os.getpid() != _sigterm_owner:  # a forked worker inherited the handler: end it as the default action does
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    logger.warning("SIGTERM: stopping the training; last.pt keeps the last completed epoch, --resume True "
                   "continues from it")
    raise SystemExit(128 + signum)


def exit_cleanly_on_sigterm(enable: bool = True) -> None:
    """Turn SIGTERM into ``SystemExit(143)`` in this process while it trains (``enable=False`` restores the default).

    SIGTERM is how SLURM and other schedulers preempt or end a job. By default it ends Python at once, without
    exit handlers, which leaves the output folder's lock behind: harmless on the same host (a dead process's lock
    is taken over), but a requeued job whose rank 0 starts on another host could not tell it from a live run.
    As ``SystemExit`` it unwinds like Ctrl-C: an atomic save in progress removes its temporary file (the previous
    ``last.pt`` / ``model.pt`` stay), and the lock is released. Installed only from the main thread and only over
    the default handler (an application with its own handler keeps it); forked workers keep the default action.
    """
    global _sigterm_owner
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if enable and current == signal.SIG_DFL:
        _sigterm_owner = os.getpid()
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    elif not enable and current is _exit_on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_owner = None


def prepare_training_run(
    output_dir: str | os.PathLike,
    resume: bool = False,
    resume_path: str | os.PathLike | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    datalist: Any = None,
    enabled: bool = True,
) -> None:
    """Bundle ``initialize`` step before anything is built or written.

    Says loudly when no datalist is given (the synthetic demo), takes the output folder's lock (SIGTERM then ends
    the process cleanly, :func:`exit_cleanly_on_sigterm`), removes temporary
    files of interrupted saves and, for a new (non-resume) run, moves an earlier run's history aside
    (:func:`set_aside_previous_run`).

    Args:
        output_dir: the run's folder (last.pt, metrics, TensorBoard).
        resume: the run continues from ``resume_path``.
        resume_path: the resume state (default ``<output_dir>/last.pt``).
        ckpt_dir: folder of the best checkpoint ``model.pt``.
        datalist: the configured datalist (None: the synthetic demo).
        enabled: False on ranks other than 0 of a distributed run (they only log the demo warning).
    """
    if datalist in (None, ""):
        logger.warning(
            "NO DATALIST GIVEN: THIS RUN TRAINS ON THE BUILT-IN SYNTHETIC DEMO DATASET, not on CT data. Pass "
            "--datalist <datalist.json> (python -m pipofan_monai datalist ...) to train on your data."
        )
    if not enabled:
        return
    acquire_run_lock(output_dir)
    exit_cleanly_on_sigterm()
    remove_stale_temporaries([output_dir] + ([ckpt_dir] if ckpt_dir else []))
    if not resume:
        set_aside_previous_run(output_dir, ckpt_dir, resume_path)


def release_training_run(output_dir: str | os.PathLike) -> None:
    """Bundle ``finalize`` step: release the output folder's lock (and SIGTERM's default action)."""
    release_run_lock(output_dir)
    exit_cleanly_on_sigterm(False)
