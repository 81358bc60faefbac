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

"""Training never loses or corrupts a result: faithful resume (best score, stage, optimizer, learning
rate, random states), atomic checkpoints, one run per output folder, an earlier run kept, ``--help`` that runs
nothing. Tiny networks on a tiny synthetic dataset; kills are simulated in-process at exact points (an exception
that no handler sees, as after SIGKILL nothing runs) and once for real with SIGKILL in a subprocess."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from bundle_utils import REPO, TRAIN
from training_utils import TINY_WORKFLOW, tiny_workflow, workflow_settings

TINY = {
    **TINY_WORKFLOW,
    "lr_decay_epochs": 1,  # the learning rate changes every epoch, so an lr one epoch behind shows
    "lr_decay": 0.9,
}
MAX_EPOCHS = 3


def _cli(over: dict) -> list[str]:
    args = []
    for k, v in over.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, (bool, str)) else str(v)]
    return args


class Killed(BaseException):
    """Raised at a kill point; a BaseException, so no engine handler reacts (as after SIGKILL)."""


def _train(run: Path, demo: Path, max_epochs: int = MAX_EPOCHS, resume: bool = False, kill=None, **over) -> None:
    """Train in-process; ``kill=(epoch, "after_save" | "after_validation")`` stops dead at that point: right after
    the epoch's last.pt is written, or right after its validation (best model saved, metrics row and last.pt not)."""
    wf = tiny_workflow(run, demo, TINY, max_epochs=max_epochs, resume=resume, **over)
    trainer = wf.parser.get_parsed_content("train#trainer")
    if kill is None:
        wf.run()
        wf.finalize()
        return
    epoch, where = kill

    def die(engine):
        if engine.state.epoch == epoch:
            raise Killed(f"killed at epoch {epoch} {where}")

    if where == "after_save":
        # registered when the run starts, after the checkpoint handler registered its end-of-epoch save
        trainer.add_event_handler(Events.STARTED, lambda e: e.add_event_handler(Events.EPOCH_COMPLETED, die))
    else:
        wf.parser.get_parsed_content("validate#evaluator").add_event_handler(Events.COMPLETED, die)
    with pytest.raises(Killed):
        wf.run()


def _state(run: Path) -> dict:
    last = torch.load(run / "runs" / "last.pt", map_location="cpu", weights_only=False)
    best = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    rows = json.loads((run / "runs" / "metrics.json").read_text())
    return {"last": last, "best": best, "rows": rows}


def _assert_equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            _assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> dict:
    """The uninterrupted run: 3 epochs, stage switch at epoch 2."""
    run = tmp_path_factory.mktemp("reference")
    _train(run, demo)
    return _state(run)


# ------------------------------------------------------------------------------------------------ resume (5, 3, 4)
def test_killed_and_resumed_run_equals_uninterrupted_run(demo, reference, tmp_path, caplog):
    """Kills before the switch (after epoch 1), in the switch epoch between its validation and its last.pt, and
    after the switch (after epoch 2): the resumed run ends bitwise equal to the uninterrupted one (CPU)."""
    caplog.set_level("INFO")
    _train(tmp_path, demo, kill=(1, "after_save"))
    assert torch.load(tmp_path / "runs" / "last.pt", weights_only=False)["engine"]["epoch"] == 1
    _train(tmp_path, demo, resume=True, kill=(2, "after_validation"))
    # killed after epoch 2's validation: last.pt still says epoch 1, so epoch 2 is trained and validated again
    assert torch.load(tmp_path / "runs" / "last.pt", weights_only=False)["engine"]["epoch"] == 1
    assert [r["epoch"] for r in json.loads((tmp_path / "runs" / "metrics.json").read_text())] == [1]
    _train(tmp_path, demo, resume=True, kill=(2, "after_save"))
    saved = torch.load(tmp_path / "runs" / "last.pt", weights_only=False)
    assert saved["engine"]["epoch"] == 2 and saved["stage"] == {"stage": "fused"}
    assert saved["optimizer"]["state"], "the optimizer state after the switch epoch is in last.pt"
    caplog.clear()
    _train(tmp_path, demo, resume=True)
    # resuming after the switch restores stage, optimizer and schedule: no second reset
    assert "at epoch 2" in caplog.text
    assert "training stage dps -> fused" not in caplog.text and "optimizer state reset" not in caplog.text
    got = _state(tmp_path)
    assert [r["epoch"] for r in got["rows"]] == [1, 2, 3]
    assert [r["stage"] for r in got["rows"]] == ["dps", "fused", "fused"]
    _assert_equal(got["rows"], reference["rows"], "metrics.json")
    for key in ("model", "optimizer", "lr_scheduler", "stage", "best_model", "engine"):
        _assert_equal(got["last"][key], reference["last"][key], f"last.pt/{key}")
    _assert_equal(got["best"], reference["best"], "model.pt")


def test_last_pt_holds_the_learning_rate_of_the_next_epoch(reference):
    """last.pt is written after the scheduler stepped: its lr is the one the next epoch uses."""
    rows, last = reference["rows"], reference["last"]
    # epoch 1 (dps): 2e-4 * 0.9; the switch restarts the schedule at epoch 2: 2e-4 * 0.9; epoch 3: 2e-4 * 0.9 ** 2
    assert [r["lr"] for r in rows] == pytest.approx([2e-4 * 0.9, 2e-4 * 0.9, 2e-4 * 0.81])
    assert last["lr_scheduler"]["last_epoch"] == 2  # restarted at 0 in epoch 2, stepped at the end of 2 and 3
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.9**3)
    assert last["stage"] == {"stage": "fused"}


def test_resume_after_the_switch_does_not_reset_the_optimizer(demo, reference, tmp_path, caplog):
    """A resume at an epoch after dps_epochs continues the saved optimizer and schedule (no second reset)."""
    caplog.set_level("INFO")
    _train(tmp_path, demo, max_epochs=2)
    caplog.clear()
    _train(tmp_path, demo, max_epochs=3, resume=True)
    assert "optimizer state reset" not in caplog.text and "training stage dps -> fused" not in caplog.text
    last = torch.load(tmp_path / "runs" / "last.pt", weights_only=False)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(reference["last"]["optimizer"]["param_groups"][0]["lr"])
    _assert_equal(last["model"], reference["last"]["model"], "weights")


# ---------------------------------------------------------------------------------------- best model (1, 2)
def _fixed_scores(monkeypatch, run_scores: dict[int, float]) -> dict:
    """Make every validation metric of epoch e return ``run_scores[e]``."""
    from pipofan_monai.evaluation import PartialDiceMetric

    current = {"epoch": 0}
    monkeypatch.setattr(PartialDiceMetric, "aggregate", lambda self, *a, **k: torch.tensor(run_scores[current["epoch"]]))
    return current


def _track_epoch(run, demo, current, **kw):
    wf = tiny_workflow(run, demo, TINY, **kw)
    wf.parser.get_parsed_content("validate#evaluator").add_event_handler(
        Events.EPOCH_STARTED, lambda e: current.__setitem__("epoch", e.state.epoch))
    return wf


def test_best_model_survives_resume_and_a_failed_save(demo, tmp_path, monkeypatch):
    current = _fixed_scores(monkeypatch, {1: 0.5, 2: 0.7, 3: 0.2})
    wf = _track_epoch(tmp_path, demo, current, max_epochs=1)
    wf.run()
    wf.finalize()
    best_path = tmp_path / "models" / "model.pt"
    first = torch.load(best_path, weights_only=True)
    assert first["epoch"] == 1 and first["key_metric_value"] == pytest.approx(0.5) and "model" in first

    # the disk is full while the new best of epoch 2 is written: the previous model.pt stays whole
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        name = os.path.basename(str(getattr(f, "name", f)))
        if "model.pt" in name or (isinstance(obj, dict) and "key_metric" in obj):
            if hasattr(f, "write"):
                f.write(b"partial")
            else:
                Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    wf = _track_epoch(tmp_path, demo, current, max_epochs=2, resume=True)
    with pytest.raises(Exception) as err:
        wf.run()
    cause = err.value
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__  # MONAI wraps errors raised inside the config's run expression
    assert cause is not None and cause.errno == errno.ENOSPC, repr(err.value)
    monkeypatch.setattr(torch, "save", real_save)
    kept = torch.load(best_path, weights_only=True)
    _assert_equal(kept, first, "model.pt after the failed save")
    assert sorted(p.name for p in best_path.parent.iterdir()) == ["model.pt"]

    # epoch 2 again (0.7, a new best), then a resume whose epoch 3 scores worse (0.2): model.pt stays epoch 2
    wf = _track_epoch(tmp_path, demo, current, max_epochs=2, resume=True)
    wf.run()
    wf.finalize()
    second = torch.load(best_path, weights_only=True)
    assert second["epoch"] == 2 and second["key_metric_value"] == pytest.approx(0.7)
    wf = _track_epoch(tmp_path, demo, current, max_epochs=3, resume=True)
    wf.run()
    wf.finalize()
    _assert_equal(torch.load(best_path, weights_only=True), second, "model.pt after a worse epoch past a resume")
    last = torch.load(tmp_path / "runs" / "last.pt", weights_only=False)
    assert last["best_model"] == {"best_metric": pytest.approx(0.7), "best_epoch": 2}


def test_best_checkpoint_extra_metadata_and_monai_label_format(tmp_path):
    from types import SimpleNamespace

    from pipofan_monai.apps.training import BestModelCheckpoint

    net = torch.nn.Linear(2, 1)
    plans = {"network": {"channels": [4, 8]}, "class_names": ["background", "liver"]}
    saver = BestModelCheckpoint(tmp_path / "model.pt", net, "dice", extra={"plans": plans})
    engine = SimpleNamespace(state=SimpleNamespace(metrics={"dice": 0.3}, epoch=4))
    saver(engine)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["plans"] == plans and ckpt["epoch"] == 4 and ckpt["key_metric"] == "dice"
    _assert_equal(ckpt.get("model", ckpt), net.state_dict(), "model")  # what MONAI Label reads
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) == 0o644
    engine.state.metrics, engine.state.epoch = {"dice": float("nan")}, 5
    saver(engine)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["epoch"] == 4  # NaN is never a new best
    with pytest.raises(ValueError, match="reserved"):
        BestModelCheckpoint(tmp_path / "m.pt", net, extra={"model": 1})


# -------------------------------------------------------------------------- real SIGKILL during a save (8, 5, 6)
_KILL_DURING_SAVE = r"""
import os, signal, sys, json
import torch
from monai.bundle import ConfigWorkflow
settings = json.loads(sys.argv[1])
real_save = torch.save
def save(obj, f, *a, **k):
    if isinstance(obj, dict) and obj.get("engine", {}).get("epoch") == 2 and hasattr(f, "write"):
        f.write(b"partial")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
torch.save = save
wf = ConfigWorkflow(config_file=sys.argv[2], workflow_type="train", **settings)
wf.initialize()
wf.run()
"""


def test_sigkill_during_save_then_resume(demo, reference, tmp_path):
    settings = workflow_settings(tmp_path, demo, TINY, max_epochs=MAX_EPOCHS)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, json.dumps(settings), TRAIN], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    leftovers = sorted(p.name for p in runs.glob(".last.pt.*.tmp.pt"))
    assert len(leftovers) == 1, sorted(os.listdir(runs))
    last = runs / "last.pt"
    assert torch.load(last, weights_only=False)["engine"]["epoch"] == 1  # the previous state is whole
    assert stat.S_IMODE(last.stat().st_mode) == 0o644  # like every other file, not 0600
    lock = json.loads((runs / ".training.lock").read_text())  # left by the killed process
    assert lock["host"] == socket.gethostname() and isinstance(lock["pid"], int)

    resumed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--resume", "True"]
        + _cli(settings), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-5000:]
    assert "taking over the stale training lock" in log and f"process {lock['pid']}" in log
    assert f"removing {runs / leftovers[0]}" in log
    assert not list(runs.glob(".*.tmp*")) and not (runs / ".training.lock").exists()
    got = _state(tmp_path)
    _assert_equal(got["rows"], reference["rows"], "metrics.json")
    for key in ("model", "optimizer", "lr_scheduler", "stage", "engine"):
        _assert_equal(got["last"][key], reference["last"][key], f"last.pt/{key}")


# ---------------------------------------------------------------------------------------------------- lock (6)
def _write_lock(folder: Path, pid: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".training.lock"
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00",
                                "command": "python -m monai.bundle run training"}))
    return path


def test_second_training_into_a_folder_in_use_is_refused(demo, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _write_lock(tmp_path / "runs", holder.pid)
        wf = tiny_workflow(tmp_path, demo, TINY, max_epochs=1)
        with pytest.raises(RuntimeError) as err:
            wf.run()  # its first step takes the lock, before anything is built
        cause = err.value
        while cause is not None and type(cause).__name__ != "RunFolderInUseError":
            cause = cause.__cause__  # MONAI wraps errors of config expressions; the traceback shows both
        assert cause is not None, f"not refused for the lock: {err.value!r}"
        message = str(cause)
        assert str(tmp_path / "runs") in message and f"process {holder.pid}" in message
        assert socket.gethostname() in message
        assert json.loads(lock.read_text())["pid"] == holder.pid  # untouched
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".training.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(demo, tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _write_lock(tmp_path / "runs", dead.pid)
    caplog.set_level("WARNING")
    wf = tiny_workflow(tmp_path, demo, TINY, max_epochs=1)
    wf.parser.get_parsed_content("run#0")  # the run's first step: prepare the output folder
    assert f"taking over the stale training lock {lock}" in caplog.text
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    wf.finalize()
    assert not lock.exists()


# ------------------------------------------------------------------------------------- earlier run kept (16)
def test_new_run_moves_an_earlier_run_aside(demo, tmp_path, caplog):
    _train(tmp_path, demo, max_epochs=1)
    before = _state(tmp_path)
    caplog.set_level("WARNING")
    _train(tmp_path, demo, max_epochs=1, learning_rate=1e-3)
    aside = sorted((tmp_path / "runs" / "previous_runs").iterdir())
    assert len(aside) == 1 and "moved its files" in caplog.text and "--resume True" in caplog.text
    old = aside[0]
    assert {"last.pt", "metrics.json", "metrics.csv", "model.pt"} <= {p.name for p in old.iterdir()}
    assert list(old.glob("events.out.tfevents.*"))
    _assert_equal(json.loads((old / "metrics.json").read_text()), before["rows"], "moved metrics.json")
    _assert_equal(torch.load(old / "last.pt", weights_only=False)["model"], before["last"]["model"], "moved last.pt")
    _assert_equal(torch.load(old / "model.pt", weights_only=True), before["best"], "kept model.pt")
    new_rows = json.loads((tmp_path / "runs" / "metrics.json").read_text())
    assert [r["epoch"] for r in new_rows] == [1] and new_rows[0]["lr"] == pytest.approx(1e-3 * 0.9)


def test_no_datalist_says_synthetic_demo_first(tmp_path, caplog):
    from monai.bundle import ConfigWorkflow

    caplog.set_level("DEBUG")
    wf = ConfigWorkflow(config_file=TRAIN, workflow_type="train", output_dir=str(tmp_path / "runs"),
                        ckpt_dir=str(tmp_path / "models"), logging_file=False)
    caplog.clear()  # MONAI's own line about the logging file; the workflow's first line comes next
    wf.initialize()
    wf.parser.get_parsed_content("run#0")  # the run's first step (the demo would train next)
    wf.finalize()
    assert caplog.records, "nothing was logged"
    first = caplog.records[0]
    assert first.levelname == "WARNING" and "SYNTHETIC DEMO" in first.getMessage()


# ------------------------------------------------------------------------------------------------- --help (15)
def test_bundle_help_prints_help_and_trains_nothing(demo, tmp_path):
    out = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--help"]
        + _cli({**TINY, "datalist": str(demo), "max_epochs": 1, "output_dir": str(out),
                "ckpt_dir": str(tmp_path / "models")}),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: python -m monai.bundle run training" in proc.stdout and "Nothing was run" in proc.stdout
    assert not out.exists() and not (tmp_path / "models").exists()


COMMANDS = ["datalist", "demo", "crossval", "study", "convert", "benchmark", "preprocess", "download", "verify",
            "classes", "organs"]


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_help_runs_nothing(command, monkeypatch, capsys):
    import pipofan_monai.__main__ as cli

    def refuse(*args, **kwargs):
        raise AssertionError(f"{command} --help ran the command")

    import benchmarks
    import pipofan_monai.apps.dataset_conversion as conversion
    import pipofan_monai.apps.training.crossval
    import pipofan_monai.apps.training.studies

    for module, name in ((pipofan_monai.apps.training.crossval, "run_crossval"),
                         (pipofan_monai.apps.training.studies, "run_study"),
                         (benchmarks, "run_benchmark"), (conversion, "ensure_demo_dataset"),
                         (conversion, "generate_demo_dataset"), (conversion, "make_datalist"),
                         (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(sys, "argv", ["pipofan", command, "--help"])
    try:
        cli.main()
    except SystemExit as e:
        assert e.code in (0, None), f"{command} --help exited {e.code}"
    text = capsys.readouterr().out
    assert f"usage: python -m pipofan_monai {command}" in text
    # terminal text, not reST: no double backquotes or roles, and the program's own name
    assert "``" not in text and not re.search(r":(class|func|meth|data|mod):`", text) and "__main__.py" not in text


def test_cli_top_level_help(monkeypatch, capsys):
    import pipofan_monai.__main__ as cli

    monkeypatch.setattr(sys, "argv", ["pipofan", "--help"])
    cli.main()
    text = capsys.readouterr().out
    assert all(f"\n    {c} " in text for c in COMMANDS + ["train", "evaluate", "segment"]) and "``" not in text
    monkeypatch.setattr(sys, "argv", ["pipofan", "trian", "--help"])  # a typo: refused, the commands listed
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train, evaluate, segment, download" in err and "monai.bundle run" in err
