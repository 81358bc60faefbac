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

"""Datalists from fake trees in the native layouts of LiTS, KiTS19, MSD Spleen and BTCV (tiny NIfTI files)."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from pipofan_monai.apps.dataset_conversion import (
    BTCV_PAPER_VALIDATION,
    assign_folds,
    datalist_command,
    load_datalist,
    make_datalist,
    select_fold,
    select_split,
)

BTCV_IDS = [f"{i:04d}" for i in list(range(1, 11)) + list(range(21, 41))]  # the 30 labeled BTCV cases


def _nii(path: Path, shape=(8, 8, 4), dtype=np.int16, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.diag([1.5, 1.5, 5.0, 1.0]) if affine is None else affine),
             str(path))


def make_lits(root: Path, n=11) -> Path:
    for i in range(n):  # two "Training Batch" sub-folders, mixed .nii / .nii.gz
        sub = root / ("Training Batch 1" if i < 5 else "Training Batch 2")
        ext = ".nii" if i % 2 else ".nii.gz"
        _nii(sub / f"volume-{i}{ext}")
        _nii(sub / f"segmentation-{i}{ext}", dtype=np.uint8)
    _nii(root / "test" / "test-volume-0.nii")
    return root


def make_kits(root: Path, n=7, n_test=2) -> Path:
    for i in range(n + n_test):
        d = root / "data" / f"case_{i:05d}"
        _nii(d / "imaging.nii.gz", shape=(4, 8, 8))  # slice axis first, as KiTS19
        if i < n:
            _nii(d / "segmentation.nii.gz", shape=(4, 8, 8), dtype=np.uint8)
    return root


def make_msd(root: Path, n=6) -> Path:
    train = []
    for i in range(1, n + 1):
        _nii(root / "imagesTr" / f"spleen_{i}.nii.gz")
        _nii(root / "labelsTr" / f"spleen_{i}.nii.gz", dtype=np.uint8)
        (root / "imagesTr" / f"._spleen_{i}.nii.gz").write_bytes(b"AppleDouble junk")
        train.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    _nii(root / "imagesTs" / "spleen_99.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "Spleen", "training": train,
                                                   "test": ["./imagesTs/spleen_99.nii.gz"]}))
    return root


def make_btcv(root: Path, ids=BTCV_IDS) -> Path:
    for k in ids:
        _nii(root / "Training" / "img" / f"img{k}.nii.gz")
        _nii(root / "Training" / "label" / f"label{k}.nii.gz", dtype=np.uint8)
    _nii(root / "Testing" / "img" / "img0061.nii.gz")
    return root


@pytest.fixture()
def trees(tmp_path):
    return {
        "lits": make_lits(tmp_path / "LiTS"),
        "kits19": make_kits(tmp_path / "KiTS19"),
        "msd_spleen": make_msd(tmp_path / "Task09_Spleen"),
        "btcv": make_btcv(tmp_path / "BTCV"),
    }


def _check_balanced(items):
    for ds in {it["dataset"] for it in items}:
        sizes = Counter(it["fold"] for it in items if it["dataset"] == ds)
        counts = [sizes.get(f, 0) for f in range(5)]
        assert max(counts) - min(counts) <= 1, (ds, counts)


def test_all_four_layouts(trees, tmp_path):
    out = tmp_path / "lists" / "datalist.json"
    dl = make_datalist(out, **{k: str(v) for k, v in trees.items()}, seed=3)
    assert json.loads(out.read_text()) == dl
    keys = {"name", "description", "num_folds", "seed", "class_names", "datasets", "training", "test", "splits"}
    assert set(dl) >= keys
    assert dl["class_names"] == ["background", "liver", "kidney", "spleen"]
    counts = Counter(it["dataset"] for it in dl["training"])
    assert counts == {"lits": 11, "kits19": 7, "msd_spleen": 6, "btcv": 30}
    assert {k: v["num_cases"] for k, v in dl["datasets"].items()} == counts
    assert Counter(it["dataset"] for it in dl["test"]) == {"lits": 1, "kits19": 2, "msd_spleen": 1, "btcv": 1}
    _check_balanced(dl["training"])
    for it in dl["training"]:  # pairing and relative paths
        assert not Path(it["image"]).is_absolute() and it["image"].startswith("../")
        img, lab = Path(it["image"]).name, Path(it["label"]).name
        if it["dataset"] == "lits":
            assert img.replace("volume", "segmentation") == lab and img.split("-")[1].split(".")[0] == it["case_id"]
        elif it["dataset"] == "kits19":
            assert (img, lab) == ("imaging.nii.gz", "segmentation.nii.gz")
            assert Path(it["image"]).parent.name == it["case_id"]
        elif it["dataset"] == "msd_spleen":
            assert img == lab == f"{it['case_id']}.nii.gz"
        else:
            assert (img, lab) == (f"img{it['case_id']}.nii.gz", f"label{it['case_id']}.nii.gz")
    assert [it["case_id"] for it in dl["test"] if it["dataset"] == "kits19"] == ["case_00007", "case_00008"]
    split = dl["splits"]["btcv_paper"]
    assert split["dataset"] == "btcv" and split["validation"] == list(BTCV_PAPER_VALIDATION)
    assert len(split["training"]) == 21 and not set(split["training"]) & set(split["validation"])
    # resolved paths exist; MONAI's decathlon reader understands the file too
    resolved = load_datalist(out)
    assert all(Path(it["image"]).is_file() and Path(it["label"]).is_file() for it in resolved["training"])
    monai_items = load_decathlon_datalist(str(out), data_list_key="training", base_dir=str(out.parent))
    expected = [Path(r["image"]).resolve() for r in resolved["training"]]
    assert [Path(m["image"]).resolve() for m in monai_items] == expected
    assert monai_items[0]["dataset"] == "lits"


def test_determinism_and_seed(trees, tmp_path):
    roots = {k: str(v) for k, v in trees.items()}
    make_datalist(tmp_path / "a.json", **roots, seed=0)
    make_datalist(tmp_path / "b.json", **roots, seed=0)
    make_datalist(tmp_path / "c.json", **roots, seed=1)
    a, b, c = ((tmp_path / f"{n}.json").read_bytes() for n in "abc")
    assert a == b
    folds = lambda raw: [it["fold"] for it in json.loads(raw)["training"]]  # noqa: E731
    assert folds(a) != folds(c)
    _check_balanced(json.loads(c)["training"])
    f = assign_folds([str(i) for i in range(23)], 5, seed=4, salt="x")
    assert sorted(Counter(f.values()).values()) == [4, 4, 5, 5, 5]
    assert f == assign_folds([str(i) for i in reversed(range(23))], 5, seed=4, salt="x")  # order-independent


def test_reroot_and_selection(trees, tmp_path):
    out = tmp_path / "dl.json"
    dl = make_datalist(out, lits=trees["lits"], btcv=trees["btcv"])
    assert dl["training"][0]["image"] == "LiTS/Training Batch 1/volume-0.nii.gz"
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "LiTS", moved / "LiTS")
    shutil.copytree(tmp_path / "BTCV", moved / "BTCV")
    shutil.rmtree(tmp_path / "LiTS")
    with pytest.raises(FileNotFoundError, match="volume-0.nii.gz"):
        load_datalist(out)
    res = load_datalist(out, dataset_dir=moved)
    assert res["training"][0]["image"] == str(moved / "LiTS" / "Training Batch 1" / "volume-0.nii.gz")
    assert res["datasets"]["lits"]["root"] == str(moved / "LiTS")
    seen = []
    for k in range(5):
        train, val = select_fold(res, k)
        assert len(train) + len(val) == 41
        seen += [it["case_id"] + it["dataset"] for it in val]
        assert all(it["fold"] == k for it in val) and all(it["fold"] != k for it in train)
    assert sorted(seen) == sorted(it["case_id"] + it["dataset"] for it in res["training"])
    _, val_lits = select_fold(res["training"], 0, datasets=["lits"])
    assert {it["dataset"] for it in val_lits} == {"lits"}
    for bad in (5, -1, 1.0, "0"):
        with pytest.raises(ValueError, match="fold must be an integer in 0..4"):
            select_fold(res, bad)
    train, val = select_split(res)
    assert [it["case_id"] for it in val] == list(BTCV_PAPER_VALIDATION)
    assert Counter(it["dataset"] for it in train) == {"lits": 11, "btcv": 21}
    train, _ = select_split(res, datasets=["btcv"])
    assert len(train) == 21
    with pytest.raises(ValueError, match="unknown split 'nope'; available: \\['btcv_paper'\\]"):
        select_split(res, "nope")
    with pytest.raises(ValueError, match="training item 0 .* fold 7"):
        load_datalist({"num_folds": 5, "training": [{"image": "a", "label": "b", "fold": 7}]}, check_files=False)
    with pytest.raises(ValueError, match="'training' list"):
        load_datalist({"items": []})


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("lits_no_seg", r"LiTS image without label: .*volume-3\.nii"),
        ("lits_no_img", r"LiTS label without image: .*segmentation-4\.nii\.gz"),
        ("kits_no_img", r"KiTS19 label without image: .*case_00002.*segmentation\.nii\.gz"),
        ("msd_no_json", r"MSD Spleen dataset\.json missing: .*Task09_Spleen.dataset\.json"),
        ("msd_listed_missing", r"MSD Spleen dataset\.json lists missing file\(s\): .*labelsTr.spleen_2\.nii\.gz"),
        ("btcv_no_label", r"BTCV image without label: .*img0005\.nii\.gz"),
        ("btcv_shape", r"btcv case 0006: image .*img0006\.nii\.gz shape \(8, 8, 4\) != label .*label0006\.nii\.gz "
                       r"shape \(8, 8, 5\)"),
        ("btcv_corrupt", r"btcv case 0007: unreadable header .*label0007\.nii\.gz"),
        ("empty", r"btcv: no labeled cases found under .*EmptyBTCV"),
        ("missing_root", r"lits root is not a folder: .*NoSuchFolder"),
    ],
)
def test_broken_trees_are_reported(trees, tmp_path, caplog, breakage, message):
    roots = {k: str(v) for k, v in trees.items()}
    lits, kits, msd, btcv = trees["lits"], trees["kits19"], trees["msd_spleen"], trees["btcv"]
    if breakage == "lits_no_seg":
        (lits / "Training Batch 1" / "segmentation-3.nii").unlink()
    elif breakage == "lits_no_img":
        (lits / "Training Batch 1" / "volume-4.nii.gz").unlink()
    elif breakage == "kits_no_img":
        (kits / "data" / "case_00002" / "imaging.nii.gz").unlink()
    elif breakage == "msd_no_json":
        (msd / "dataset.json").unlink()
    elif breakage == "msd_listed_missing":
        (msd / "labelsTr" / "spleen_2.nii.gz").unlink()
    elif breakage == "btcv_no_label":
        (btcv / "Training" / "label" / "label0005.nii.gz").unlink()
    elif breakage == "btcv_shape":
        _nii(btcv / "Training" / "label" / "label0006.nii.gz", shape=(8, 8, 5), dtype=np.uint8)
    elif breakage == "btcv_corrupt":
        (btcv / "Training" / "label" / "label0007.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    elif breakage == "empty":
        (tmp_path / "EmptyBTCV").mkdir()
        roots["btcv"] = str(tmp_path / "EmptyBTCV")
    elif breakage == "missing_root":
        roots["lits"] = str(tmp_path / "NoSuchFolder")
    with pytest.raises(ValueError, match=message):
        make_datalist(tmp_path / "dl.json", **roots)
    assert not (tmp_path / "dl.json").exists()
    # non-strict: the same problem is logged by name and the rest is written
    with caplog.at_level(logging.WARNING, logger="pipofan_monai.apps.dataset_conversion.datalist"):
        dl = make_datalist(tmp_path / "dl.json", **roots, strict=False)
    assert any(__import__("re").search(message, r.getMessage()) for r in caplog.records)
    assert (tmp_path / "dl.json").is_file() and len(dl["training"]) > 0


def test_missing_btcv_validation_cases_warn_and_kits_tests(tmp_path, caplog):
    btcv = make_btcv(tmp_path / "BTCV", ids=[f"{i:04d}" for i in range(1, 11)])
    with caplog.at_level(logging.WARNING, logger="pipofan_monai.apps.dataset_conversion.datalist"):
        dl = make_datalist(None, btcv=btcv)
    assert "0032, 0033" in caplog.text and dl["splits"]["btcv_paper"]["validation"] == []
    assert Path(dl["training"][0]["image"]).is_absolute()  # no output file: absolute paths
    with pytest.raises(ValueError, match="at least one dataset"):
        make_datalist(tmp_path / "x.json")


def test_datalist_command(trees, tmp_path):
    out = tmp_path / "cli.json"
    msg = datalist_command(str(out), kits19=str(trees["kits19"]), msd_spleen=str(trees["msd_spleen"]), seed=2)
    assert "kits19: 7 labeled + 2 test" in msg and "msd_spleen: 6 labeled + 1 test" in msg
    assert json.loads(out.read_text())["seed"] == 2
