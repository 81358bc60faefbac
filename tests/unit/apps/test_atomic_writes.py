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

"""The one atomic-write mechanism (``pipofan_monai.utils.atomic_path`` and what is built on it) and the one
stale-temporary cleanup, as training (``prepare_training_run``) and inference (``remove_stale_temp_files``) use it.

A killed write is a real process that opens an atomic write, writes part of the file and is killed with SIGKILL;
a write in progress is a real process that holds an atomic write open while the cleanups run."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipofan_monai import utils
from pipofan_monai.inference.writers import remove_stale_temp_files
from pipofan_monai.apps.training.run_dir import prepare_training_run, release_training_run
from pipofan_monai.utils import (
    atomic_path,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    remove_stale_temporaries,
    temporary_name_of,
)

# opens an atomic write of argv[1], writes part of it, says "ready" and then either is killed (argv[2] == "kill")
# or waits for a line on stdin and finishes the write
_WRITER = r"""
import os, signal, sys
from pipofan_monai.utils import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"partial")
    f.flush()
    print("ready", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()
    f.write(b" and the rest")
"""


def _start_writer(path: Path, how: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), how], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if temporary_name_of(p.name) is not None)


def _killed_write(path: Path) -> Path:
    proc = _start_writer(path, "kill")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (tmp,) = [p for p in _temporaries(path.parent) if temporary_name_of(p.name) == (path.name, proc.pid)]
    assert tmp.read_bytes() == b"partial"
    return tmp


def test_temporary_name_keeps_extension_and_pid(tmp_path):
    with atomic_path(tmp_path / "case_seg.nii.gz") as tmp:
        name = os.path.basename(tmp)
        assert os.path.dirname(tmp) == str(tmp_path)
        assert name.startswith(".case_seg.nii.gz.") and name.endswith(".tmp.nii.gz")
        assert temporary_name_of(name) == ("case_seg.nii.gz", os.getpid())
        Path(tmp).write_bytes(b"x")
    assert (tmp_path / "case_seg.nii.gz").read_bytes() == b"x" and _temporaries(tmp_path) == []
    assert temporary_name_of(".training.lock.123.tmp") is None  # the lock's own temporary name is not ours
    assert temporary_name_of("model.pt") is None


def test_killed_write_is_cleaned_by_both_cleanups_and_a_live_one_is_kept(tmp_path):
    out, models = tmp_path / "runs", tmp_path / "models"
    out.mkdir()
    models.mkdir()
    (out / "last.pt").write_bytes(b"previous state")
    dead_train = _killed_write(out / "last.pt")
    dead_best = _killed_write(models / "model.pt")
    other = out / "notes.tmp"  # not one of ours: kept
    other.write_bytes(b"user file")
    live = _start_writer(out / "metrics.json", "wait")
    try:
        (live_tmp,) = [p for p in _temporaries(out) if temporary_name_of(p.name)[0] == "metrics.json"]
        prepare_training_run(out, resume=True, ckpt_dir=models, datalist="given")
        release_training_run(out)
        assert not dead_train.exists() and not dead_best.exists()
        assert live_tmp.exists() and other.exists()
        assert (out / "last.pt").read_bytes() == b"previous state"  # the killed write never touched it

        # inference: the same recogniser, only the temporaries of the case's outputs
        seg = tmp_path / "pred"
        seg.mkdir()
        dead_seg = _killed_write(seg / "case_seg.nii.gz")
        dead_other = _killed_write(seg / "other_case_seg.nii.gz")
        live_seg = _start_writer(seg / "case_seg.nii.gz", "wait")
        try:
            (live_seg_tmp,) = [p for p in _temporaries(seg) if temporary_name_of(p.name)[1] == live_seg.pid]
            assert remove_stale_temp_files([seg / "case_seg.nii.gz"]) == [str(dead_seg)]
            assert live_seg_tmp.exists() and dead_other.exists()
        finally:
            live_seg.communicate("\n", timeout=60)
        assert live_seg.returncode == 0
        assert (seg / "case_seg.nii.gz").read_bytes() == b"partial and the rest"
    finally:
        live.communicate("\n", timeout=60)
    assert live.returncode == 0 and not live_tmp.exists()
    assert (out / "metrics.json").read_bytes() == b"partial and the rest"
    # without a name filter every dead temporary in the folder goes
    assert remove_stale_temporaries([seg, tmp_path / "missing"]) == [dead_other]


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced: list[tuple[bool, int]] = []
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    dest = tmp_path / "sub" / "metrics.json"
    atomic_write_json(dest, {"dice": 0.5})
    assert json.loads(dest.read_text()) == {"dice": 0.5}
    file_ino, folder_ino = dest.stat().st_ino, dest.parent.stat().st_ino
    # the temporary file (now renamed to dest, same inode) first, then the destination folder after the rename
    assert synced == [(False, file_ino), (True, folder_ino)]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_failed_write_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(2)}, dest)
    with pytest.raises(OSError, match="No space"):
        with atomic_write(dest) as f:
            f.write(b"half")
            raise OSError(28, "No space left on device")
    with pytest.raises(FileNotFoundError):  # the writer never created the file: an error, not an empty file
        with atomic_path(dest):
            pass
    assert torch.equal(torch.load(dest, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_text_mode_is_utf8_and_csv_newlines_pass_through(tmp_path):
    dest = tmp_path / "report.csv"
    with atomic_write(dest, "w", newline="") as f:
        f.write("organ,dice\r\nmilz\u00e4,1\r\n")
    assert dest.read_bytes() == "organ,dice\r\nmilz\u00e4,1\r\n".encode("utf-8")
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(dest, "a"):
            pass


def test_report_writers_use_the_atomic_path(tmp_path, monkeypatch):
    """The evaluation report, the bundle vocabulary configs and the curves go through atomic_path."""
    from pipofan_monai.evaluation.metrics import evaluate_case, write_reports
    from pipofan_monai.visualize.curves import plot_training_curves

    seen: list[str] = []
    real = utils.atomic_path

    def spy(path, *a, **k):
        seen.append(os.path.basename(os.fspath(path)))
        return real(path, *a, **k)

    monkeypatch.setattr(utils, "atomic_path", spy)
    import pipofan_monai.visualize.curves as curves

    monkeypatch.setattr(curves, "atomic_path", spy)
    label = np.zeros((8, 8, 4), dtype=np.uint8)
    label[2:6, 2:6, 1:3] = 1
    write_reports([evaluate_case(label, label, surface=False, case_id="c1")], tmp_path, prefix="ev")
    plot_training_curves([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}], tmp_path / "c.png")
    assert {"ev.json", "ev_cases.csv", "ev_summary.csv", "c.png"} <= set(seen)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "ev.json").read_text())["cases"][0]["organs"]["liver"]["dice"] == 1.0
    assert _temporaries(tmp_path) == []
