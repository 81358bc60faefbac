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

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from bundle_utils import REPO, TINY_TRAIN, TRAIN, run_bundle
from pipofan_monai.apps.training import AuthorsLRLambda, PartialLabelSampler
from pipofan_monai.utils import atomic_torch_save
from pipofan_monai.networks import PIPOFAN


def _tiny_net() -> PIPOFAN:
    return PIPOFAN(channels=(8, 16, 32, 64, 64))


def test_training_runner_two_stages(demo, tmp_path):
    ckpt, out = tmp_path / "models", tmp_path / "runs"
    proc = run_bundle(
        ["run", "training", "--config_file", TRAIN, "--datalist", str(demo), "--max_epochs", "3", "--dps_epochs", "2",
         "--val_interval", "1", "--ckpt_dir", str(ckpt), "--output_dir", str(out)] + TINY_TRAIN
    )
    log = proc.stdout + proc.stderr
    assert "epoch 3: training stage dps -> fused" in log
    assert "ETA" in log
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["stage"] for r in rows] == ["dps", "dps", "fused"]
    assert all(0.0 <= r["val_mean_dice"] <= 1.0 for r in rows)
    assert {"loss", "lr", "val_dice_liver", "val_dice_kidney", "val_dice_spleen"} <= set(rows[0])
    assert (out / "metrics.csv").exists() and (out / "training_curves.png").stat().st_size > 5000
    assert list(out.glob("events.out.tfevents.*"))
    # the best checkpoint holds the trained weights of the configured network
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    state = state.get("model", state)
    net = _tiny_net()
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state, strict=True)
    assert any(not torch.equal(fresh[k], v) for k, v in net.state_dict().items() if v.is_floating_point())
    assert not (ckpt / "last.pt").exists()  # MONAI Label would take it for the model
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert last["engine"]["epoch"] == 3 and set(last) >= {"model", "optimizer", "lr_scheduler"}
    # the authors' schedule: x0.99 every 40 epochs, already after epoch 0 -> 2e-4 * 0.99
    assert rows[-1]["lr"] == pytest.approx(2e-4 * 0.99)


def test_training_resume(demo, tmp_path):
    common = ["--config_file", TRAIN, "--datalist", str(demo), "--dps_epochs", "2", "--val_interval", "2",
              "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs")] + TINY_TRAIN
    run_bundle(["run", "training", "--max_epochs", "2"] + common)
    first = torch.load(tmp_path / "runs" / "last.pt", map_location="cpu", weights_only=False)
    proc = run_bundle(["run", "training", "--max_epochs", "4", "--resume", "True"] + common)
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "at epoch 2" in log
    assert "epoch 3: training stage dps -> fused" in log
    assert "epoch 1/4" not in log
    rows = json.loads((tmp_path / "runs" / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    last = torch.load(tmp_path / "runs" / "last.pt", map_location="cpu", weights_only=False)
    assert last["engine"]["epoch"] == 4 and last["engine"]["iteration"] == 2 * first["engine"]["iteration"]


def test_check_properties_and_config_keys(tmp_path):
    from monai.bundle import ConfigWorkflow

    # checking the properties builds the trainer (TensorBoard writers, the run lock): into tmp_path, not bundle/runs
    wf = ConfigWorkflow(config_file=TRAIN, workflow_type="train", output_dir=str(tmp_path / "runs"),
                        ckpt_dir=str(tmp_path / "models"))
    wf.initialize()
    assert not wf.check_properties()
    wf.finalize()
    for key in ["dataset_dir", "datalist", "fold", "num_folds", "max_epochs", "dps_epochs", "val_interval",
                "batch_size", "learning_rate", "num_workers", "device", "amp", "ckpt_dir", "output_dir",
                "network_def", "network", "loss", "optimizer", "train", "validate", "initialize", "run", "training",
                "finalize"]:
        assert key in wf.parser.config, key
    assert isinstance(wf.parser.config["train"]["handlers"], list)  # MONAI Label inserts into it


def test_verify_metadata_offline(tmp_path):
    pytest.importorskip("jsonschema")
    schema = Path(__file__).resolve().parents[3] / "shared" / "data" / "meta_schema_20240725.json"
    if not schema.exists():
        pytest.skip(f"{schema} is not available (the shared data folder is absent)")
    local = tmp_path / "schema.json"
    shutil.copy(schema, local)
    run_bundle(["verify_metadata", "--meta_file", str(REPO / "bundle/configs/metadata.json"), "--filepath", str(local)])
    meta = json.loads((REPO / "bundle/configs/metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background", "1": "liver", "2": "kidney", "3": "spleen"}


def test_ddp_overlay_two_gloo_processes(demo, tmp_path):
    out = tmp_path / "runs"
    run_bundle(
        ["run", "training", "--config_file",
         f"['{TRAIN}','{REPO / 'bundle/configs/multi_gpu_train.json'}']",
         "--datalist", str(demo), "--max_epochs", "2", "--dps_epochs", "1", "--val_interval", "1",
         "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(out)] + TINY_TRAIN,
        runner=[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                "-m", "monai.bundle"],
    )
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes
    assert (tmp_path / "models" / "model.pt").exists()
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    _tiny_net().load_state_dict(state.get("model", state), strict=True)  # saved without the DDP "module." prefix


def test_sampler_round_robin_and_sharding():
    ids = ["a"] * 3 + ["b"] * 5 + [None] * 2
    s = PartialLabelSampler(ids, mode="round_robin", seed=1)
    assert len(s) == 5 and s.datasets == ["a", "b", "(fully labeled)"]
    seen = []
    for epoch in (1, 2, 3, 4):
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == 5
        seen.append({ids[i] for i in idx})
    assert seen == [{"a"}, {"b"}, {None}, {"a"}]
    s.set_epoch(2)
    assert sorted(s) == [3, 4, 5, 6, 7]  # each volume once when the dataset is the largest
    s.set_epoch(1)
    assert sorted(set(s)) == [0, 1, 2]  # a smaller dataset is cycled
    ranks = [PartialLabelSampler(ids, mode="mixed", num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(5)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))
    again = PartialLabelSampler(ids, mode="mixed", num_replicas=2, rank=0, seed=3)
    again.set_epoch(5)
    assert list(again) == a
    with pytest.raises(ValueError, match="mode"):
        PartialLabelSampler(ids, mode="sequential")


def test_authors_lr_schedule():
    f = AuthorsLRLambda(40, 0.99)
    assert [f(0), f(39), f(40), f(80)] == pytest.approx([0.99, 0.99, 0.99**2, 0.99**3])
    with pytest.raises(ValueError):
        AuthorsLRLambda(0, 0.99)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_crossval_one_fold_report(demo, tmp_path):
    from pipofan_monai.apps.training.crossval import run_crossval

    overrides = dict(zip([a.lstrip("-") for a in TINY_TRAIN[0::2]], TINY_TRAIN[1::2]))
    overrides = {k: json.loads(v) if v not in ("False", "True") else v == "True" for k, v in overrides.items()}
    report = run_crossval(
        TRAIN, num_folds=5, folds=[1], ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "cv"),
        datalist=str(demo), max_epochs=2, dps_epochs=1, val_interval=1, **overrides,
    )
    assert (tmp_path / "models" / "fold1" / "model.pt").exists()
    assert [f["fold"] for f in report["folds"]] == [1]
    rows = json.loads((tmp_path / "cv" / "crossval" / "fold1" / "metrics.json").read_text())
    best = max(rows, key=lambda r: r["val_mean_dice"])
    assert report["folds"][0]["dice"]["liver"] == pytest.approx(best["val_dice_liver"])
    assert report["summary"]["liver"]["num_folds"] == 1 and report["summary"]["liver"]["std"] == 0.0
    for name in ("crossval.json", "crossval.csv", "crossval.png"):
        assert (tmp_path / "cv" / "crossval" / name).stat().st_size > 0
    assert (tmp_path / "cv" / "cache").is_dir()  # the training default, <output_dir>/cache
    csv_text = (tmp_path / "cv" / "crossval" / "crossval.csv").read_text().splitlines()
    assert csv_text[0] == "fold,dice_liver,dice_kidney,dice_spleen,dice_mean,best_epoch"
    assert csv_text[1].startswith("1,") and csv_text[-2].startswith("mean,") and csv_text[-1].startswith("std,")
    with pytest.raises(ValueError, match=r"0\.\.4"):
        run_crossval(TRAIN, num_folds=5, folds=[5])


@pytest.mark.parametrize("cwd", ["repo", "bundle"])
def test_bundle_root_from_repo_root_and_from_inside_bundle(cwd, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO if cwd == "repo" else REPO / "bundle")
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config("bundle/configs/" + name if cwd == "repo" else "configs/" + name)
        assert Path(parser.get_parsed_content("bundle_root")) == REPO / "bundle"
        if name == "train.json":
            assert Path(parser.get_parsed_content("ckpt_dir")) == REPO / "bundle" / "models"
        else:
            assert Path(parser.get_parsed_content("ckpt_path")) == REPO / "bundle" / "models" / "model.pt"


def test_stage_switch_resets_optimizer_and_restarts_schedule(caplog):
    caplog.set_level("INFO")
    from types import SimpleNamespace

    from pipofan_monai.apps.training import StageSwitchHandler
    from pipofan_monai.losses import DeepPyramidSupervisionLoss

    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.RMSprop([w], lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, AuthorsLRLambda(2, 0.5))
    loss = DeepPyramidSupervisionLoss(stage="dps")
    handler = StageSwitchHandler(loss, dps_epochs=3, reset_optimizer=opt, lr_scheduler=sched)
    engine = SimpleNamespace(state=SimpleNamespace(epoch=0))
    lrs = []
    for epoch in range(1, 6):
        engine.state.epoch = epoch
        handler(engine)
        w.grad = torch.ones(2)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
        if epoch == 3:
            assert opt.state[w]  # momentum buffers exist before the switch
        if epoch == 4:
            assert loss.stage == "fused" and engine.state.stage == "fused"
    # scheduler epoch s = e - 1 gives 1e-3 * 0.5 ** (s // 2 + 1): 5e-4, 5e-4, 2.5e-4; the switch at epoch 4 restarts
    # the schedule at s = 0 (5e-4) and epoch 5 continues it (s = 1: 5e-4)
    assert lrs == pytest.approx([5e-4, 5e-4, 2.5e-4, 5e-4, 5e-4])
    assert "training stage dps -> fused" in caplog.text and "schedule restarted" in caplog.text
    with pytest.raises(ValueError):
        StageSwitchHandler(torch.nn.MSELoss(), 3)


def test_readme_quick_start_command_runs(demo, tmp_path):
    """The README's quick start, as written (`--config_file "['bundle/configs/train.json','bundle/configs/quickstart.json']"`
    from the repository root), cut to 2 epochs on the tiny demo: the quick-start overlay's settings are the ones the
    run and its model use, and the run ends by naming the model and the segment command."""
    ckpt, out = tmp_path / "models", tmp_path / "runs"
    proc = run_bundle(["run", "training", "--config_file", "['bundle/configs/train.json','bundle/configs/quickstart.json']",
                       "--datalist", str(demo), "--max_epochs", "2", "--dps_epochs", "1", "--val_interval", "1",
                       "--samples_per_epoch", "8", "--num_workers", "0", "--max_val_volumes", "1",
                       "--ckpt_dir", str(ckpt), "--output_dir", str(out)])
    plans = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)["plans"]
    assert plans["network"]["channels"] == [16, 32, 64, 128, 128]  # quickstart.json's widths
    assert plans["preprocessing"]["spatial_size"] == 128
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())] == [1, 2]
    done = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "training finished" in ln]
    assert len(done) == 1 and f"pipofan segment CT.nii.gz -o segmentations --model {ckpt / 'model.pt'}" in done[0]
