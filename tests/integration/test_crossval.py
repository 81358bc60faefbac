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

"""Five-fold cross-validation as the bundle's ``crossval`` run id: folds, shared cache, report, resume, DDP."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from bundle_utils import REPO, TINY_TRAIN, TRAIN, run_bundle
from pipofan_monai.apps.training.crossval import run_crossval, run_crossval_workflow
from pipofan_monai.apps.training.workflow import best_epoch_row


def _tiny_overrides() -> dict:
    pairs = dict(zip([a.lstrip("-") for a in TINY_TRAIN[0::2]], TINY_TRAIN[1::2]))
    return {k: json.loads(v) if v not in ("False", "True") else v == "True" for k, v in pairs.items()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


def _check_report(cv: Path, models: Path, folds: list[int]) -> dict:
    report = json.loads((cv / "crossval.json").read_text())
    assert [f["fold"] for f in report["folds"]] == folds
    for f in report["folds"]:
        rows = json.loads((cv / f"fold{f['fold']}" / "metrics.json").read_text())
        best = best_epoch_row(rows)
        assert f["best_epoch"] == best["epoch"]
        assert f["dice"]["kidney"] == pytest.approx(best["val_dice_kidney"])
        assert f["dice"]["mean"] == pytest.approx(best["val_mean_dice"])
        assert Path(f["checkpoint"]) == models / f"fold{f['fold']}" / "model.pt"
    kidney = [f["dice"]["kidney"] for f in report["folds"]]
    assert report["summary"]["kidney"]["mean"] == pytest.approx(sum(kidney) / len(kidney))
    assert report["summary"]["kidney"]["num_folds"] == len(folds)
    with open(cv / "crossval.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["fold", "dice_liver", "dice_kidney", "dice_spleen", "dice_mean", "best_epoch"]
    assert [r[0] for r in table[1:]] == [str(k) for k in folds] + ["mean", "std"]
    assert (cv / "crossval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


def test_bundle_run_crossval_trains_each_fold_with_the_merged_config(demo, tmp_path):
    models, runs = tmp_path / "models", tmp_path / "runs"
    runs.mkdir()
    (runs / "metrics.json").write_text("[]")  # an earlier plain training run: crossval must not move it aside
    proc = run_bundle(["run", "crossval", "--config_file", TRAIN, "--datalist", str(demo), "--folds", "[0,1]",
                       "--max_epochs", "2", "--dps_epochs", "1", "--val_interval", "1",
                       "--ckpt_dir", str(models), "--output_dir", str(runs)] + TINY_TRAIN)
    cv = runs / "crossval"
    _check_report(cv, models, [0, 1])
    assert (runs / "metrics.json").read_text() == "[]" and not (runs / "previous_runs").exists()
    # each fold ran the command line's config (overrides included) with its own fold id and folders
    for k in (0, 1):
        cfg = json.loads((cv / f"fold{k}" / "crossval_config.json").read_text())
        assert cfg["max_epochs"] == 2 and cfg["network_channels"] == [8, 16, 32, 64, 64] and cfg["folds"] == [0, 1]
        rows = json.loads((cv / f"fold{k}" / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == [1, 2]
        assert not (cv / f"fold{k}" / ".training.lock").exists()  # released after each fold
    w0, w1 = _weights(models / "fold0" / "model.pt"), _weights(models / "fold1" / "model.pt")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # two different trainings (different splits)
    # one preprocessed cache for both folds, at the training default (<output_dir>/cache)
    volumes = len(json.loads(Path(demo).read_text())["training"])
    assert len([p for p in (runs / "cache").iterdir() if (p / "meta.json").is_file()]) == volumes
    assert not any((cv / f"fold{k}" / "cache").exists() for k in (0, 1))
    assert "fold 1 of 5" in proc.stdout + proc.stderr


def test_crossval_resume_keeps_finished_folds_and_continues_an_interrupted_one(demo, tmp_path):
    models, cv = tmp_path / "models", tmp_path / "runs" / "crossval"
    common = dict(datalist=str(demo), dps_epochs=1, val_interval=1, ckpt_dir=str(models),
                  output_dir=str(tmp_path / "runs"), **_tiny_overrides())
    run_crossval(TRAIN, folds=[0], max_epochs=2, **common)
    fold0_model, fold0_metrics = _digest(models / "fold0" / "model.pt"), (cv / "fold0" / "metrics.json").read_text()
    # fold 1 "killed" after its first epoch: its last.pt holds epoch 1 of 2
    run_crossval(TRAIN, folds=[1], max_epochs=1, **common)
    first = json.loads((cv / "fold1" / "metrics.json").read_text())
    report = run_crossval(TRAIN, folds=[0, 1], max_epochs=2, resume=True, **common)
    assert [f["fold"] for f in report["folds"]] == [0, 1]
    assert _digest(models / "fold0" / "model.pt") == fold0_model  # finished fold kept, not retrained
    assert (cv / "fold0" / "metrics.json").read_text() == fold0_metrics
    resumed = json.loads((cv / "fold1" / "metrics.json").read_text())
    assert [r["epoch"] for r in resumed] == [1, 2] and resumed[0]["loss"] == first[0]["loss"]
    _check_report(cv, models, [0, 1])
    # the resumed fold ends where an uninterrupted run of the same fold ends
    ref_models, ref_cv = tmp_path / "ref_models", tmp_path / "ref_runs" / "crossval"
    run_crossval(TRAIN, folds=[1], max_epochs=2, **{**common, "ckpt_dir": str(ref_models),
                                                     "output_dir": str(tmp_path / "ref_runs")})
    a = _weights(cv / "fold1" / "last.pt")
    b = _weights(ref_cv / "fold1" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_crossval_two_gloo_processes(demo, tmp_path):
    models, runs = tmp_path / "models", tmp_path / "runs"
    run_bundle(
        ["run", "crossval", "--config_file", f"['{TRAIN}','{REPO / 'bundle/configs/multi_gpu_train.json'}']",
         "--datalist", str(demo), "--folds", "[0,1]", "--max_epochs", "1", "--dps_epochs", "1", "--val_interval", "1",
         "--ckpt_dir", str(models), "--output_dir", str(runs)] + TINY_TRAIN,
        runner=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                "-m", "monai.bundle"],
    )
    _check_report(runs / "crossval", models, [0, 1])
    for k in (0, 1):
        rows = json.loads((runs / "crossval" / f"fold{k}" / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == [1]  # rank 0 alone writes, once per fold


def test_crossval_entry_outside_a_workflow_and_bad_folds_are_clear_errors():
    with pytest.raises(RuntimeError, match="run crossval"):
        run_crossval_workflow(folds=[0])
    with pytest.raises(ValueError, match=r"distinct integer in 0\.\.4"):
        run_crossval(TRAIN, folds=[0, 0])
