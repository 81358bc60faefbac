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

"""The open organ vocabulary: the organ table, the dataset table by organ names, their resolution
into any list of class names, and the MSD Pancreas / MSD Liver datalist scanners."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipofan_monai.apps.dataset_conversion import make_datalist
from pipofan_monai.preprocessing import MapDatasetLabelsd
from pipofan_monai.vocabulary.datasets import BUILTIN_DATASETS, datasets_annotating, get_dataset_spec
from pipofan_monai.vocabulary.organs import (
    ORGANS,
    channel_def,
    colors_for,
    metric_name,
    num_components_for,
    organ_table,
    validate_class_names,
)

PAPER = ["background", "liver", "kidney", "spleen"]
SIX = ["background", "liver", "kidney", "spleen", "pancreas", "stomach", "gallbladder"]


def _label(values, fname="seg.nii.gz") -> MetaTensor:
    return MetaTensor(torch.tensor(values, dtype=torch.float32).reshape(1, len(values), 1, 1),
                      meta={"filename_or_obj": fname})


# ------------------------------------------------------------------ default vocabulary = the paper's tables
def test_default_vocabulary_is_the_papers_table():
    """The name-based entries resolve, in the default vocabulary, to exactly the former class-id tables."""
    expected = {
        "lits": ({0: 0, 1: 1, 2: 1}, (1,)),
        "kits19": ({0: 0, 1: 2, 2: 2}, (2,)),
        "msd_spleen": ({0: 0, 1: 3}, (3,)),
        "btcv": ({0: 0, 1: 3, 2: 2, 3: 2, 4: 0, 5: 0, 6: 1, 7: 0, 8: 0, 9: 0, 10: 0, 11: 0, 12: 0, 13: 0}, (1, 2, 3)),
        "msd_liver": ({0: 0, 1: 1, 2: 1}, (1,)),
        "msd_pancreas": ({0: 0, 1: 0, 2: 0}, ()),  # annotates no organ of the paper's vocabulary
    }
    for name, (label_map, labeled) in expected.items():
        spec = BUILTIN_DATASETS[name]
        assert spec.label_map == label_map, name
        assert spec.labeled_classes == labeled, name
        assert spec.resolve(PAPER) == (label_map, labeled), name
    assert BUILTIN_DATASETS["lits"].labeled_mask(4).tolist() == [1, 1, 0, 0]
    assert num_components_for(PAPER) == {1: 1, 2: 2, 3: 1}
    from pipofan_monai.postprocessing.components import DEFAULT_NUM_COMPONENTS
    from pipofan_monai.visualize.overlay import DEFAULT_COLORS

    assert num_components_for(PAPER) == DEFAULT_NUM_COMPONENTS
    assert colors_for(PAPER) == DEFAULT_COLORS


def test_btcv_has_all_13_organs():
    spec = BUILTIN_DATASETS["btcv"]
    assert spec.labels == {0: "background", 1: "spleen", 2: "right_kidney", 3: "left_kidney", 4: "gallbladder",
                           5: "esophagus", 6: "liver", 7: "stomach", 8: "aorta", 9: "inferior_vena_cava",
                           10: "portal_splenic_vein", 11: "pancreas", 12: "right_adrenal_gland",
                           13: "left_adrenal_gland"}
    every = ["background"] + [spec.labels[v] for v in range(1, 14)]
    assert spec.resolve(every) == ({v: v for v in range(14)}, tuple(range(1, 14)))


# ------------------------------------------------------------------ any vocabulary by names, no code
def test_six_organs_from_five_datasets():
    """liver, kidney, spleen, pancreas, stomach, gallbladder from BTCV + LiTS + KiTS + MSD Pancreas + MSD Spleen."""
    r = {n: BUILTIN_DATASETS[n].resolve(SIX) for n in ("btcv", "lits", "kits19", "msd_pancreas", "msd_spleen")}
    # BTCV: 1 spleen->3, 2/3 kidneys->2, 4 gallbladder->6, 6 liver->1, 7 stomach->5, 11 pancreas->4, rest background
    assert r["btcv"] == ({0: 0, 1: 3, 2: 2, 3: 2, 4: 6, 5: 0, 6: 1, 7: 5, 8: 0, 9: 0, 10: 0, 11: 4, 12: 0, 13: 0},
                         (1, 2, 3, 4, 5, 6))
    assert r["lits"] == ({0: 0, 1: 1, 2: 1}, (1,))
    assert r["kits19"] == ({0: 0, 1: 2, 2: 2}, (2,))
    assert r["msd_pancreas"] == ({0: 0, 1: 4, 2: 4}, (4,))  # tumour -> its organ
    assert r["msd_spleen"] == ({0: 0, 1: 3}, (3,))
    t = MapDatasetLabelsd("label", class_names=SIX)
    out = t({"label": _label([0, 1, 2, 3, 4, 5, 6, 7, 11, 13]), "dataset": "btcv"})["label"]
    np.testing.assert_array_equal(out.reshape(-1).numpy(), [0, 3, 2, 2, 6, 0, 1, 5, 4, 0])
    np.testing.assert_array_equal(out.meta["labeled_mask"].numpy(), [1, 1, 1, 1, 1, 1, 1])
    out = t({"label": _label([0, 1, 2, 2]), "dataset": "msd_pancreas"})["label"]
    np.testing.assert_array_equal(out.reshape(-1).numpy(), [0, 4, 4, 4])
    np.testing.assert_array_equal(out.meta["labeled_mask"].numpy(), [1, 0, 0, 0, 1, 0, 0])
    assert num_components_for(SIX) == {1: 1, 2: 2, 3: 1, 4: 1, 5: 1, 6: 1}
    assert metric_name("right kidney") == "val_dice_right_kidney"
    assert channel_def(SIX)["4"] == "pancreas" and len(channel_def(SIX)) == 7


def test_groupings_and_finer_classes():
    # tumour as its own class: LiTS and MSD Liver annotate it, BTCV does not (its tumours are inside "liver")
    tum = ["background", "liver", "liver tumour"]
    assert BUILTIN_DATASETS["lits"].resolve(tum) == ({0: 0, 1: 1, 2: 2}, (1, 2))
    assert BUILTIN_DATASETS["msd_liver"].resolve(tum) == ({0: 0, 1: 1, 2: 2}, (1, 2))
    assert BUILTIN_DATASETS["btcv"].resolve(tum)[1] == (1,)
    # sides: BTCV annotates each kidney; KiTS19 labels both in one value, so it annotates neither side
    sides = ["background", "right_kidney", "left_kidney", "adrenal_gland"]
    btcv_map, btcv_lab = BUILTIN_DATASETS["btcv"].resolve(sides)
    assert (btcv_map[2], btcv_map[3], btcv_map[12], btcv_map[13], btcv_lab) == (1, 2, 3, 3, (1, 2, 3))
    assert BUILTIN_DATASETS["kits19"].resolve(sides) == ({0: 0, 1: 0, 2: 0}, ())
    ann = datasets_annotating(["btcv", "kits19", "lits", None], SIX)
    assert ann["kidney"] == ["btcv", "kits19", "<fully labeled>"]
    assert ann["pancreas"] == ["btcv", "<fully labeled>"]


def test_user_tables_by_name_and_errors():
    table = {"mine": {"labels": {"1": "Liver", "2": "IVC", "5": "pancreas"}}}  # annotates: every named organ
    vocab = ["background", "liver", "pancreas", "inferior vena cava"]
    t = MapDatasetLabelsd("label", class_names=vocab, datasets=table)
    out = t({"label": _label([0, 1, 2, 5]), "dataset": "mine"})["label"]
    np.testing.assert_array_equal(out.reshape(-1).numpy(), [0, 1, 3, 2])
    np.testing.assert_array_equal(out.meta["labeled_mask"].numpy(), [1, 1, 1, 1])
    # an undeclared value stays an error naming the file and the values, in any vocabulary
    with pytest.raises(ValueError, match=r"case_7_seg\.nii.*\[3, 4\]"):
        t({"label": _label([0, 1, 3, 4], "case_7_seg.nii"), "dataset": "mine"})
    with pytest.raises(ValueError, match=r"lits_3\.nii.*\[3\]"):
        MapDatasetLabelsd("label", class_names=SIX)({"label": _label([0, 1, 3], "lits_3.nii"), "dataset": "lits"})
    with pytest.raises(ValueError, match="unknown organs.*'livr'"):
        get_dataset_spec("bad", {"bad": {"labels": {"1": "livr"}}}).resolve(PAPER)
    with pytest.raises(ValueError, match="needs 'labels'"):
        get_dataset_spec("bad", {"bad": {"label": {"1": "liver"}}})
    with pytest.raises(ValueError, match="num_classes=4 does not match"):
        MapDatasetLabelsd("label", num_classes=4, class_names=SIX)
    # the older class-id form keeps working in its own vocabulary and is checked against K
    old = {"ts": {"label_map": {0: 0, 1: 1, 4: 3}, "labeled_classes": [1, 3]}}
    out = MapDatasetLabelsd("label", datasets=old)({"label": _label([0, 1, 4]), "dataset": "ts"})["label"]
    np.testing.assert_array_equal(out.reshape(-1).numpy(), [0, 1, 3])
    with pytest.raises(ValueError, match=r"\[3\] outside 0\.\.2"):
        MapDatasetLabelsd("label", datasets=old, class_names=["background", "liver", "spleen"])(
            {"label": _label([0, 1, 4]), "dataset": "ts"})


def test_class_names_checks():
    assert validate_class_names(["Background", "Right Kidney", "IVC"]) == (
        "background", "right_kidney", "inferior_vena_cava")
    for bad, msg in ((["liver", "background"], "start with 'background'"), (["background"], "K >= 2"),
                     (["background", "liver", "Liver"], "more than once"), ("background,liver", "list of names"),
                     (["background", "pancreaz"], r"unknown organs \['pancreaz'\]")):
        with pytest.raises(ValueError, match=msg):
            validate_class_names(bad)
    # new organs and other rules through the config's organ_table
    organs = {"bladder": {"num_components": 1, "color": [1, 1, 0.5], "code": ["89837001", "SCT", "Urinary bladder"]},
              "kidney": {"num_components": 1}}
    vocab = ["background", "kidney", "bladder"]
    assert validate_class_names(vocab, organs) == ("background", "kidney", "bladder")
    assert num_components_for(vocab, organs) == {1: 1, 2: 1}
    assert colors_for(vocab, organs)[2] == (1.0, 1.0, 0.5)
    assert organ_table(organs)["kidney"].parts == ORGANS["kidney"].parts  # fields not given are kept
    with pytest.raises(ValueError, match="num_components"):
        organ_table({"x": {"num_components": 0}})
    assert num_components_for(["background", "liver_tumour", "pancreas"]) == {2: 1}  # tumours: keep all


# ------------------------------------------------------------------ MSD Task07 / Task03 datalists
def _nii(path: Path, shape=(8, 8, 4), dtype=np.int16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.diag([1.5, 1.5, 5.0, 1.0])), str(path))


def _msd_task(root: Path, prefix: str, n: int, n_test: int, listed: bool = True) -> Path:
    train = []
    for i in range(1, n + 1):
        _nii(root / "imagesTr" / f"{prefix}_{i:03d}.nii.gz")
        _nii(root / "labelsTr" / f"{prefix}_{i:03d}.nii.gz", dtype=np.uint8)
        (root / "labelsTr" / f"._{prefix}_{i:03d}.nii.gz").write_bytes(b"AppleDouble junk")
        train.append({"image": f"./imagesTr/{prefix}_{i:03d}.nii.gz", "label": f"./labelsTr/{prefix}_{i:03d}.nii.gz"})
    for i in range(n_test):
        _nii(root / "imagesTs" / f"{prefix}_{900 + i}.nii.gz")
    meta = {"name": prefix, "labels": {"0": "background", "1": prefix, "2": "cancer"}, "training": train,
            "test": [f"./imagesTs/{prefix}_{900 + i}.nii.gz" for i in range(n_test)]}
    if listed:
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_pancreas_and_liver_datalists(tmp_path):
    pan = _msd_task(tmp_path / "Task07_Pancreas", "pancreas", 6, 2)
    liv = _msd_task(tmp_path / "Task03_Liver", "liver", 5, 1)
    dl = make_datalist(tmp_path / "dl.json", msd_pancreas=pan, msd_liver=liv, num_folds=3)
    assert dl["datasets"] == {"msd_pancreas": {"root": "Task07_Pancreas", "num_cases": 6, "num_test": 2},
                              "msd_liver": {"root": "Task03_Liver", "num_cases": 5, "num_test": 1}}
    first = dl["training"][0]
    assert first == {"image": "Task07_Pancreas/imagesTr/pancreas_001.nii.gz",
                     "label": "Task07_Pancreas/labelsTr/pancreas_001.nii.gz", "dataset": "msd_pancreas",
                     "fold": first["fold"], "case_id": "pancreas_001"}
    assert sorted({it["fold"] for it in dl["training"] if it["dataset"] == "msd_pancreas"}) == [0, 1, 2]
    assert [it["case_id"] for it in dl["test"]] == ["pancreas_900", "pancreas_901", "liver_900"]
    assert json.loads((tmp_path / "dl.json").read_text()) == dl
    # problems are named by the task
    (pan / "labelsTr" / "pancreas_002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"MSD Pancreas dataset\.json lists missing file\(s\): .*pancreas_002"):
        make_datalist(None, msd_pancreas=pan)
    bare = _msd_task(tmp_path / "Task03_Liver_nojson", "liver", 2, 0, listed=False)
    with pytest.raises(ValueError, match=r"MSD Liver dataset\.json missing"):
        make_datalist(None, msd_liver=bare)


# ------------------------------------------------------------------ demo: a fifth organ in one source
def test_demo_fifth_organ(tmp_path):
    from pipofan_monai.apps.dataset_conversion import generate_demo_dataset, load_datalist
    from pipofan_monai.apps.dataset_conversion.demo import PANCREAS_CLASS_NAMES

    path = generate_demo_dataset(tmp_path / "demo5", {"btcv": 1, "lits": 1, "kits19": 1, "msd_spleen": 1,
                                                       "msd_pancreas": 2}, num_test=1, shape=(48, 48, 12),
                                 pancreas=True)
    dl = load_datalist(path)
    assert dl["class_names"] == list(PANCREAS_CLASS_NAMES) == ["background", "liver", "kidney", "spleen", "pancreas"]
    pan = [it for it in dl["training"] if it["dataset"] == "msd_pancreas"]
    assert [Path(it["image"]).name for it in pan] == ["pancreas_001.nii.gz", "pancreas_002.nii.gz"]
    meta = json.loads((tmp_path / "demo5" / "msd_pancreas" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"} and meta["numTraining"] == 2

    def values(p):
        return set(np.unique(np.asarray(nib.load(p).dataobj)).tolist())

    assert values(pan[0]["label"]) == {0, 1}
    btcv = next(it for it in dl["training"] if it["dataset"] == "btcv")
    # BTCV's own ids: spleen 1, kidneys 2 and 3, gallbladder 4, liver 6, stomach 7, aorta 8, IVC 9, pancreas 11
    assert values(btcv["label"]) == {0, 1, 2, 3, 4, 6, 7, 8, 9, 11}
    assert values(dl["test"][0]["label"]) == {0, 1, 2, 3, 4}
    # through the label mapping of the five-class vocabulary: pancreas is class 4, annotated by btcv and msd_pancreas
    t = MapDatasetLabelsd("label", class_names=PANCREAS_CLASS_NAMES)
    from pipofan_monai.preprocessing import LoadCTd

    item = LoadCTd(["image", "label"])(dict(pan[0]))
    out = t(item)["label"]
    assert set(torch.unique(out).tolist()) == {0, 4}
    np.testing.assert_array_equal(out.meta["labeled_mask"].numpy(), [1, 0, 0, 0, 1])
    # the four-source default is unchanged: no pancreas in its parameters
    path4 = generate_demo_dataset(tmp_path / "demo4", 1, num_test=1, shape=(48, 48, 12))
    manifest = json.loads((tmp_path / "demo4" / "demo_manifest.json").read_text())
    assert "pancreas" not in manifest["params"] and load_datalist(path4)["class_names"] == PAPER
    assert not (tmp_path / "demo4" / "msd_pancreas").exists()
    with pytest.raises(ValueError, match="needs pancreas=True"):
        generate_demo_dataset(tmp_path / "bad", {"msd_pancreas": 1})


# ------------------------------------------------------------------ bundle files name the same classes
def test_bundle_classes_tool(tmp_path):
    import shutil

    from pipofan_monai.apps.bundle_vocabulary import check_bundle_classes, classes_command, set_bundle_classes

    repo = Path(__file__).resolve().parents[3]
    assert check_bundle_classes(repo / "bundle") == []  # the shipped bundle is consistent
    shutil.copytree(repo / "bundle" / "configs", tmp_path / "b" / "configs")
    before = {p.name: p.read_bytes() for p in (tmp_path / "b" / "configs").iterdir() if p.is_file()}
    set_bundle_classes(tmp_path / "b", PAPER)  # the shipped vocabulary: every file byte-identical
    assert {p.name: p.read_bytes() for p in (tmp_path / "b" / "configs").iterdir() if p.is_file()} == before
    five = ["background", "liver", "kidney", "spleen", "pancreas"]
    msg = classes_command(str(tmp_path / "b"), five)
    assert "pancreas" in msg
    meta = json.loads((tmp_path / "b" / "configs" / "metadata.json").read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 5 and pred["channel_def"] == {"0": "background", "1": "liver", "2": "kidney",
                                                                  "3": "spleen", "4": "pancreas"}
    assert meta["label_classes"] == "0 background, 1 liver, 2 kidney (left and right), 3 spleen, 4 pancreas"
    assert meta["task"].startswith("Liver, kidney, spleen and pancreas segmentation")
    assert "logits of background, liver, kidney, spleen and pancreas out" in meta["description"]
    # MONAI Label's BundleInferTask builds its label list from channel_def this way (monailabel/tasks/infer/bundle.py)
    labels = {v.lower(): int(k) for k, v in pred["channel_def"].items() if v.lower() != "background"}
    assert labels == {"liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    for name in ("train.json", "inference.json"):
        assert json.loads((tmp_path / "b" / "configs" / name).read_text())["class_names"] == five
    assert check_bundle_classes(tmp_path / "b") == []
    assert classes_command(str(tmp_path / "b")).endswith("consistent in configs and metadata.json")
    # a hand edit that forgets metadata.json is reported
    cfg = json.loads((tmp_path / "b" / "configs" / "inference.json").read_text())
    cfg["class_names"] = PAPER
    (tmp_path / "b" / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="inference.json: class_names"):
        classes_command(str(tmp_path / "b"))
    # invalid names write nothing
    snapshot = {p.name: p.read_bytes() for p in (tmp_path / "b" / "configs").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="unknown organs"):
        set_bundle_classes(tmp_path / "b", ["background", "livers"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "b" / "configs").iterdir() if p.is_file()} == snapshot


def test_checkpoint_with_other_vocabulary_is_refused(tmp_path):
    """A self-describing checkpoint (``plans["class_names"]`` next to ``"model"``) only runs with its vocabulary."""
    from pipofan_monai.plans import PlansMismatchError, network_from_plans, resolve_plans

    plans = resolve_plans(None, network_channels=(4, 8, 8, 8, 8), class_names=PAPER)
    net = network_from_plans(plans)
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "plans": {k: v for k, v in plans.items() if k != "source"}}, path)
    assert resolve_plans(path)["class_names"] == PAPER  # names come from the checkpoint
    assert resolve_plans(path, class_names=PAPER)["class_names"] == PAPER
    other = ["background", "liver", "spleen", "kidney"]  # same K: the weights alone would load silently
    with pytest.raises(PlansMismatchError, match=r"model\.pt.*class_names: checkpoint \['background', 'liver', "
                                                 r"'kidney', 'spleen'\], given \['background', 'liver', 'spleen'"):
        resolve_plans(path, class_names=other)
    with pytest.raises(PlansMismatchError, match="pancreas"):
        resolve_plans(path, class_names=["background", "liver", "kidney", "spleen", "pancreas"])


