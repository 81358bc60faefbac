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

"""Studies: each study's runner writes its table with the expected rows and columns (quick mode), and
the naive baseline changes only the training mask."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from pipofan_monai.apps.dataset_conversion import generate_demo_dataset, load_datalist, select_split
from pipofan_monai.networks import PIPOFAN
from pipofan_monai.apps.training.studies import (
    PAPER_CHANNELS,
    QUICK_DATA,
    count_parameters,
    run_study,
    study_rows,
    subset_datalist,
)
from pipofan_monai.preprocessing import MapDatasetLabelsd, get_val_transforms
from pipofan_monai.apps.training import get_train_transforms

REPO = Path(__file__).resolve().parents[2]
TRAIN_JSON = REPO / "bundle" / "configs" / "train.json"
ORGAN_COLUMNS = ["dice_liver", "dice_kidney", "dice_spleen", "dice_mean"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The quick studies' tiny synthetic dataset, generated once for the module."""
    root = tmp_path_factory.mktemp("study_demo")
    generate_demo_dataset(root / "data", **QUICK_DATA)
    return root / "data"


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _check_files(out: Path, name: str, row_names: list[str], extra: list[str]) -> dict:
    for ext in ("json", "csv", "png"):
        assert (out / f"{name}.{ext}").is_file(), f"{name}.{ext} missing"
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = _read_csv(out / f"{name}.csv")
    assert table[0] == ["row"] + ORGAN_COLUMNS + extra
    assert [r[0] for r in table[1:]] == row_names
    report = json.loads((out / f"{name}.json").read_text())
    assert report["study"] == name
    assert [r["name"] for r in report["rows"]] == row_names
    for r in report["rows"]:
        assert set(r["dice"]) == {"liver", "kidney", "spleen", "mean"}
        assert r["best_epoch"] in (1, 2)
        assert Path(r["checkpoint"]).is_file()
    assert report["settings"]["max_epochs"] == 2 and report["settings"]["split"] == "btcv_paper"
    return report


def test_study_rows_match_the_paper_tables():
    assert [r["name"] for r in study_rows("datasets")] == [
        "BTCV", "BTCV + LiTS", "BTCV + KiTS", "BTCV + Spleen", "LiTS + KiTS + Spleen", "All datasets"]
    assert [r["sources"] for r in study_rows("datasets")][4] == ("lits", "kits19", "msd_spleen")
    loss = study_rows("loss")
    assert [r["overrides"]["partial_labels"] for r in loss] == [True, False, True]
    assert [r["sources"] for r in loss][2] == ("btcv",)
    arch = study_rows("architecture")
    assert len(arch) == 6
    assert arch[0]["overrides"] == {"network_def#num_scales_in": 1, "network_def#num_scales_out": 1,
                                    "network_def#ecd": False, "network_def#adaptive_fusion": False,
                                    "dps_epochs": "@max_epochs"}
    assert arch[-1]["arch"]["num_scales_out"] == 3
    with pytest.raises(ValueError, match="unknown study 'tables'"):
        study_rows("tables")


def test_subset_datalist_keeps_btcv_validation(demo):
    dl = load_datalist(demo / "datalist.json")
    _, val_all = select_split(dl, "btcv_paper")
    assert len(val_all) == 1
    train, val = select_split(subset_datalist(dl, "btcv_paper", ("lits", "kits19", "msd_spleen")), "btcv_paper")
    assert val == val_all
    assert sorted(i["dataset"] for i in train) == ["kits19", "lits", "msd_spleen"]
    train, val = select_split(subset_datalist(dl, "btcv_paper", ("btcv", "lits")), "btcv_paper")
    assert val == val_all and sorted(i["dataset"] for i in train) == ["btcv", "btcv", "lits"]
    with pytest.raises(ValueError, match="unknown split 'nope'"):
        subset_datalist(dl, "nope", ("btcv",))


def test_count_parameters_matches_the_network():
    net = PIPOFAN(channels=PAPER_CHANNELS, num_scales_in=1, num_scales_out=1, ecd=False, adaptive_fusion=False)
    n = sum(p.numel() for p in net.parameters())
    assert count_parameters(PAPER_CHANNELS, num_scales_in=1, num_scales_out=1, ecd=False, adaptive_fusion=False) == n
    small = count_parameters((4, 8, 8, 16, 16))
    assert 0 < small < count_parameters(PAPER_CHANNELS) / 100


def test_naive_option_changes_only_the_training_mask(demo):
    dl = load_datalist(demo / "datalist.json")
    item = next(i for i in dl["training"] if i["dataset"] == "lits")
    partial = torch.tensor([1.0, 1.0, 0.0, 0.0])  # LiTS annotates the liver only
    # the transform itself
    lab = torch.zeros(1, 4, 4, 2)
    lab[0, 0, 0, 0] = 1
    for flag, want in ((True, partial), (False, torch.ones(4))):
        out = MapDatasetLabelsd("label", partial_labels=flag)({"label": lab, "dataset": "lits"})
        assert torch.equal(out["label"].meta["labeled_mask"], want)
        assert out["label"].meta["labeled_mask"].dtype == torch.float32
    # the pipelines: training mask all ones with partial_labels=False, same label values; validation stays partial
    kw = {"spatial_size": 32, "roi_size": 32, "flip_prob": 0.0}
    tr_naive = get_train_transforms(partial_labels=False, **kw)
    tr_tal = get_train_transforms(**kw)
    tr_naive.set_random_state(0)
    tr_tal.set_random_state(0)
    a, b = tr_naive(dict(item)), tr_tal(dict(item))
    assert torch.equal(a["label"].meta["labeled_mask"], torch.ones(4))
    assert torch.equal(b["label"].meta["labeled_mask"], partial)
    assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
    val = get_val_transforms(spatial_size=32)(dict(item))
    assert torch.equal(val["label"].meta["labeled_mask"], partial)
    # the bundle: the top-level key reaches the training pipeline only
    parser = ConfigParser()
    parser.read_config(str(TRAIN_JSON))
    assert parser["partial_labels"] is True
    parser.update({"partial_labels": False, "spatial_size": 32, "roi_size": 32})
    train_pre = parser.get_parsed_content("train#preprocessing")
    val_pre = parser.get_parsed_content("validate#preprocessing")
    train_pre.set_random_state(0)
    assert torch.equal(train_pre(dict(item))["label"].meta["labeled_mask"], torch.ones(4))
    assert torch.equal(val_pre(dict(item))["label"].meta["labeled_mask"], partial)


def test_loss_study_quick(demo, tmp_path):
    report = run_study("loss", quick=True, output_dir=tmp_path / "loss", demo_dir=demo)
    names = ["TAL (partial labels)", "Naive (unlabeled = background)", "Fully labeled only (BTCV)"]
    _check_files(tmp_path / "loss", "loss", names, ["best_epoch", "seconds"])
    assert [r["partial_labels"] for r in report["rows"]] == [True, False, True]
    assert report["rows"][2]["sources"] == ["btcv"]
    assert "TAL (partial labels)" in report["table"]
    # the naive run really trained with all-ones masks: its row's training used partial_labels=False
    cfg = json.loads((Path(report["rows"][1]["run_dir"]) / "datalist.json").read_text())
    assert Path(report["rows"][1]["run_dir"]).name == "naive_unlabeled_background"
    assert {i["dataset"] for i in cfg["training"]} == {"btcv", "lits", "kits19", "msd_spleen"}


def test_datasets_study_quick(demo, tmp_path):
    rows = ["BTCV", "LiTS + KiTS + Spleen"]
    report = run_study("datasets", quick=True, output_dir=tmp_path / "ds", demo_dir=demo, rows=rows)
    _check_files(tmp_path / "ds", "datasets", rows, ["best_epoch", "seconds"])
    assert report["rows"][1]["sources"] == ["lits", "kits19", "msd_spleen"]
    with pytest.raises(ValueError, match="unknown rows"):
        run_study("datasets", quick=True, output_dir=tmp_path / "x", demo_dir=demo, rows=["BTCV + MSD"])


def test_architecture_study_quick(demo, tmp_path):
    rows = ["ResU-Net (1/1 scales)", "PIPO-FAN 5/3 scales"]
    report = run_study("architecture", quick=True, output_dir=tmp_path / "arch", demo_dir=demo, rows=rows)
    _check_files(tmp_path / "arch", "architecture", rows, ["params_study", "params_paper", "best_epoch", "seconds"])
    r0, r1 = report["rows"]
    assert r0["params_paper"] == count_parameters(PAPER_CHANNELS, num_scales_in=1, num_scales_out=1, ecd=False,
                                                  adaptive_fusion=False)
    assert r1["params_study"] == count_parameters(report["settings"]["network_channels"], num_scales_in=5,
                                                  num_scales_out=3, ecd=True, adaptive_fusion=True)
    assert r0["params_study"] < r1["params_study"] < r1["params_paper"]
    state = torch.load(r0["checkpoint"], map_location="cpu", weights_only=True)
    net = PIPOFAN(channels=report["settings"]["network_channels"], **r0["arch"])
    net.load_state_dict(state.get("model", state))  # the row really trained the 1/1-scale network


def test_cli_study_reruns_give_the_same_table(demo, tmp_path):
    from pipofan_monai.__main__ import study

    row = ["Fully labeled only (BTCV)"]
    msg = study("loss", quick=True, output_dir=str(tmp_path / "a"), demo_dir=str(demo), rows=row)
    assert msg.startswith("wrote ") and msg.endswith("loss.png")
    study("loss", quick=True, output_dir=str(tmp_path / "b"), demo_dir=str(demo), rows=row)
    a = json.loads((tmp_path / "a" / "loss.json").read_text())["rows"][0]
    b = json.loads((tmp_path / "b" / "loss.json").read_text())["rows"][0]
    assert a["best_epoch"] == b["best_epoch"]
    for organ in ("liver", "kidney", "spleen", "mean"):
        assert a["dice"][organ] == pytest.approx(b["dice"][organ], abs=1e-4)
    ma = json.loads((tmp_path / "a" / "fully_labeled_only_btcv" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "fully_labeled_only_btcv" / "metrics.json").read_text())
    assert [r["loss"] for r in ma] == pytest.approx([r["loss"] for r in mb], rel=1e-4)
