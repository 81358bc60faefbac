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

"""The built-in synthetic demo dataset: layout, label conventions, anatomy, determinism, caching."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from pipofan_monai.apps.dataset_conversion import (
    default_demo_dir,
    ensure_demo_dataset,
    generate_demo_dataset,
    load_datalist,
    select_fold,
    select_split,
    synthesize_case,
)
from pipofan_monai.preprocessing import MapDatasetLabelsd, load_ct_transforms
from pipofan_monai.apps.training import get_train_transforms

SHAPE = (64, 64, 20)
COUNTS = (3, 2, 2, 2)  # btcv, lits, kits19, msd_spleen


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "ds"
    t = time.perf_counter()
    path = generate_demo_dataset(root, COUNTS, num_test=2, shape=SHAPE, seed=5)
    return path, time.perf_counter() - t


def _load(item):
    return Compose(load_ct_transforms(("image", "label")))(item)


def test_layout_and_datalist(demo):
    path, seconds = demo
    assert seconds < 20
    root = path.parent
    for rel in ("btcv/img/img0001.nii.gz", "btcv/label/label0003.nii.gz", "lits/volume-1.nii.gz",
                "lits/segmentation-0.nii.gz", "kits19/case_00001/imaging.nii.gz",
                "kits19/case_00000/segmentation.nii.gz",
                "msd_spleen/imagesTr/spleen_2.nii.gz", "msd_spleen/labelsTr/spleen_1.nii.gz", "msd_spleen/dataset.json",
                "test/imagesTs/demo_002.nii.gz", "test/labelsTs/demo_001.nii.gz", "README.txt", "demo_manifest.json"):
        assert (root / rel).is_file(), rel
    assert "SYNTHETIC" in (root / "README.txt").read_text() and "accuracy" in (root / "README.txt").read_text()
    raw = json.loads(path.read_text())
    assert raw["synthetic"] is True and "SYNTHETIC" in raw["description"]
    assert not any(Path(it["image"]).is_absolute() for it in raw["training"] + raw["test"])  # relocatable
    dl = load_datalist(path)
    counts = {k: v["num_cases"] for k, v in dl["datasets"].items()}
    assert counts == {"btcv": 3, "lits": 2, "kits19": 2, "msd_spleen": 2}
    assert len(dl["test"]) == 2 and all("dataset" not in t and "label" in t for t in dl["test"])
    train, val = select_split(dl, "btcv_paper", datasets=["btcv"])
    assert [t["case_id"] for t in train] == ["0001", "0002"] and [v["case_id"] for v in val] == ["0003"]
    assert sum(len(select_fold(dl, k)[1]) for k in range(5)) == 9


EXPECTED_VALUES = {"btcv": {0, 1, 2, 3, 4, 6, 7, 8, 9}, "lits": {0, 1, 2}, "kits19": {0, 1, 2}, "msd_spleen": {0, 1}}
EXPECTED_MASK = {"btcv": [1, 1, 1, 1], "lits": [1, 1, 0, 0], "kits19": [1, 0, 1, 0], "msd_spleen": [1, 0, 0, 1]}


def test_sources_conventions_and_anatomy(demo):
    dl = load_datalist(demo[0])
    seen = {}
    for it in dl["training"]:
        out = _load(it)
        lab, img = out["label"][0], out["image"][0]
        assert tuple(img.shape) == SHAPE  # every storage orientation comes back to the same RAS grid
        assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
        seen.setdefault(it["dataset"], set()).update(torch.unique(lab).int().tolist())
        mapped = MapDatasetLabelsd("label")(out)["label"]
        assert mapped.meta["labeled_mask"].tolist() == EXPECTED_MASK[it["dataset"]]
        assert int(mapped.max()) <= 3
        assert float(img[0:2, 0:2].mean()) < -950  # air outside the body
    for ds, values in EXPECTED_VALUES.items():
        assert seen[ds] <= values and len(seen[ds]) >= 2, (ds, seen[ds])
    assert seen["btcv"] >= {1, 2, 3, 6}
    # a fully labeled test case in the global convention: anatomy and HU
    t = _load(dl["test"][0])
    img, lab = t["image"][0], t["label"][0]
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0, 2.0, 3.0}
    ctr = {c: torch.nonzero(lab == c).float().mean(0) for c in (1, 2, 3)}
    mid = (SHAPE[0] - 1) / 2
    assert ctr[1][0] > mid > ctr[3][0]  # liver on the patient's right (high x in RAS), spleen on the left
    kid = torch.nonzero(lab == 2).float()
    assert (kid[:, 0] > mid).any() and (kid[:, 0] < mid).any()  # both kidneys
    assert ctr[2][1] < ctr[1][1]  # kidneys posterior to the liver centre (low y = posterior)
    med = {c: float(img[lab == c].median()) for c in (1, 2, 3)}
    assert 55 <= med[1] <= 115 and 35 <= med[3] <= 85 and 20 <= med[2] <= 220
    assert float(img.max()) > 400  # bone
    assert float((img < -850).sum()) > 0


def test_determinism(demo, tmp_path):
    a = synthesize_case([1, 2, 3], shape=(32, 32, 12), tumour="liver")
    b = synthesize_case([1, 2, 3], shape=(32, 32, 12), tumour="liver")
    c = synthesize_case([1, 2, 4], shape=(32, 32, 12), tumour="liver")
    assert a[0].dtype == np.int16 and a[1].dtype == np.uint8
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].tobytes() != c[0].tobytes()
    again = generate_demo_dataset(tmp_path / "again", COUNTS, num_test=2, shape=SHAPE, seed=5)
    for rel in ("lits/volume-1.nii.gz", "kits19/case_00000/segmentation.nii.gz"):
        x = np.asanyarray(nib.load(str(demo[0].parent / rel)).dataobj)
        y = np.asanyarray(nib.load(str(again.parent / rel)).dataobj)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert demo[0].read_text() == again.read_text()


def test_ensure_reuses_regenerates_and_protects(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "demo"
    kw = dict(num_cases_per_source=1, num_test=1, shape=(24, 24, 8))
    p1 = ensure_demo_dataset(root, **kw)
    stamp = (root / "demo_manifest.json").stat().st_mtime_ns
    assert ensure_demo_dataset(root, **kw) == p1 and (root / "demo_manifest.json").stat().st_mtime_ns == stamp
    p2 = ensure_demo_dataset(root, **{**kw, "seed": 1})  # other parameters: regenerated in its own folder
    assert p2 == p1 and json.loads((root / "demo_manifest.json").read_text())["params"]["seed"] == 1
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by the demo generator"):
        ensure_demo_dataset(user, **kw)
    with pytest.raises(ValueError, match="not written by the demo generator"):
        generate_demo_dataset(user, overwrite=True, **kw)
    assert (user / "notes.txt").read_text() == "keep me" and len(os.listdir(user)) == 1
    with pytest.raises(ValueError, match="overwrite=True"):
        generate_demo_dataset(root, **kw)
    monkeypatch.setenv("PIPOFAN_DEMO_DIR", str(tmp_path / "env_demo"))
    assert default_demo_dir() == tmp_path / "env_demo"
    assert ensure_demo_dataset(**kw) == tmp_path / "env_demo" / "datalist.json"
    with pytest.raises(ValueError, match="4 values"):
        generate_demo_dataset(tmp_path / "bad", num_cases_per_source=(1, 2))


def test_train_pipeline_on_demo(demo):
    dl = load_datalist(demo[0])
    xf = get_train_transforms(spatial_size=64, roi_size=48)
    xf.set_random_state(0)
    for it in dl["training"]:
        out = xf(it)
        assert out["image"].shape == (3, 48, 48) and out["label"].shape == (1, 48, 48)
        mask = out["label"].meta["labeled_mask"]
        assert mask.tolist() == EXPECTED_MASK[it["dataset"]]
        organs = [c for c in (1, 2, 3) if mask[c] > 0]
        pre = MapDatasetLabelsd("label")(_load(it))["label"][0]
        z = int(out["label"].meta["slab_index"][2])
        assert any(bool((pre[..., z] == c).any()) for c in organs)  # organ-centred on an annotated organ


def test_a_demo_folder_of_an_earlier_layout_is_reused(tmp_path):
    """A demo folder written before the generator module moved (its manifest names the old module) is the same
    generator's data: reused as it is, not refused as someone else's files."""
    root = tmp_path / "demo"
    kw = dict(num_cases_per_source=1, num_test=1, shape=(24, 24, 8))
    ensure_demo_dataset(root, **kw)
    manifest = root / "demo_manifest.json"
    old = json.loads(manifest.read_text())
    assert old["generator"] == "pipofan_monai.apps.dataset_conversion.demo"
    old["generator"] = "pipofan_monai.apps.dataset_conversion.demo"  # the 0.2.0 layout
    manifest.write_text(json.dumps(old))
    stamp = manifest.stat().st_mtime_ns
    assert ensure_demo_dataset(root, **kw) == root / "datalist.json"
    assert manifest.stat().st_mtime_ns == stamp  # reused, not regenerated
