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

"""One training data path: one pipeline (deterministic head, random tail) whose tail every cache mode applies,
and a training config that states each setting once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import set_rnd

from pipofan_monai.apps.dataset_conversion import generate_demo_dataset, load_datalist
from pipofan_monai.apps.training import RandSlabCropd, RandSlabFlipd, get_train_transforms, make_train_dataset

REPO = Path(__file__).resolve().parents[3]
PREP = {"spatial_size": 32, "hu_window": [-200.0, 200.0], "intensity": "scale", "context": 2, "image_mode": "trilinear"}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return load_datalist(generate_demo_dataset(root / "demo", num_cases_per_source=1, num_test=1,
                                               shape=(40, 40, 12), seed=1))["training"]


@pytest.mark.parametrize("partial_labels", [True, False])
def test_every_cache_mode_applies_the_pipelines_own_random_part(items, tmp_path, partial_labels):
    """mmap, memory, persistent and none, built from one get_train_transforms, give the same samples for one
    seed (mmap: images rounded to float16); mmap uses the pipeline's own random transforms and its label rule."""
    def pipeline():
        return get_train_transforms(preprocessing=PREP, roi_size=24, partial_labels=partial_labels)

    transform = pipeline()
    mmap = make_train_dataset(items, "mmap", tmp_path / "c", progress=False, transform=transform, preprocessing=PREP)
    tail = [t for t in transform.transforms if isinstance(t, (RandSlabCropd, RandSlabFlipd))]
    assert [t for t in mmap.transform.transforms if isinstance(t, (RandSlabCropd, RandSlabFlipd))] == tail
    others = {m: make_train_dataset(items, m, tmp_path / "c", progress=False, transform=pipeline())
              for m in ("memory", "persistent", "none")}
    for ds in (mmap, *others.values()):
        set_rnd(ds.transform, 5)
    want_mask = None if partial_labels else torch.ones(4)
    for i in [0, 1, 2, 3, 2, 0]:
        ref = mmap[i]
        assert ref["image"].shape == (5, 24, 24) and ref["label"].shape == (1, 24, 24)  # context 2 from PREP
        if want_mask is not None:
            assert torch.equal(ref["label"].meta["labeled_mask"], want_mask)
        for mode, ds in others.items():
            got = ds[i]
            assert torch.equal(got["label"].as_tensor(), ref["label"].as_tensor()), mode
            assert torch.equal(got["image"].as_tensor().half().float(), ref["image"].as_tensor()), mode
            assert torch.equal(got["label"].meta["labeled_mask"], ref["label"].meta["labeled_mask"]), mode
            assert torch.equal(got["image"].meta["slab_index"], ref["image"].meta["slab_index"]), mode
            np.testing.assert_allclose(np.asarray(got["image"].affine), np.asarray(ref["image"].affine), atol=1e-6)


def test_flip_equals_monai_flip_values_and_affine():
    from monai.data import MetaTensor
    from monai.transforms import RandFlipd

    img = MetaTensor(torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3),
                     affine=torch.diag(torch.tensor([2.0, 3.0, 5.0, 1.0], dtype=torch.float64)))
    for axis in (0, 1):
        ours = RandSlabFlipd("image", prob=1.0, spatial_axis=axis)({"image": img})["image"]
        monai = RandFlipd("image", prob=1.0, spatial_axis=axis)({"image": img.clone()})["image"]
        assert torch.equal(ours.as_tensor(), monai.as_tensor())
        torch.testing.assert_close(ours.affine, monai.affine.to(torch.float64))
    draws = RandSlabFlipd("image", prob=0.5)
    draws.set_random_state(3)
    ref = np.random.RandomState(3)
    for _ in range(20):  # one R.rand() < prob per call, as RandFlipd: a Compose seeds both alike
        flipped = not torch.equal(draws({"image": img})["image"].as_tensor(), img.as_tensor())
        assert flipped == (ref.rand() < 0.5)


def test_train_json_states_each_setting_once():
    text = (REPO / "bundle" / "configs" / "train.json").read_text()
    cfg = json.loads(text)
    assert "@train#preprocessing#" not in text and "@validate#preprocessing#" not in text
    # 67 after the six duplicated settings went; + pretrained, start_plans (MONAI Label retraining) and
    # divergence_limit: a new top-level key must be a setting a user overrides
    assert len(cfg) <= 70
    for block in (cfg["train"]["dataset"], cfg["validate"]["dataset"]):
        assert not {"roi_size", "pos_ratio", "num_classes", "datasets", "partial_labels"} & set(block)
    for block in (cfg["train"]["preprocessing"], cfg["validate"]["preprocessing"]):
        assert block["preprocessing"] == "@preprocessing_settings"
        assert not {"spatial_size", "hu_window", "intensity", "image_mode", "context"} & set(block)


def test_the_cache_module_does_not_import_training():
    code = "import sys, pipofan_monai.preprocessing.cache; print(sorted(m for m in sys.modules if 'training' in m))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pipofan_monai.apps.training" not in out.stdout, out.stdout


def test_every_cache_mode_maps_labels_into_the_label_space(tmp_path):
    """A vocabulary other than the default (here with the stomach) reaches the memory-mapped cache: BTCV's stomach
    (label 7) is class 4 and labeled in every mode; the cache once mapped labels in the default vocabulary (stomach
    -> background, unlabeled), so a model trained from it never learned the stomach."""
    import nibabel as nib
    from monai.transforms import Compose

    from pipofan_monai.vocabulary import LabelSpace

    shape = (32, 32, 8)
    lab = np.zeros(shape, np.uint8)
    lab[4:10, 4:10] = 6  # BTCV liver
    lab[12:20, 12:20] = 7  # BTCV stomach
    lab[22:28, 22:28] = 1  # BTCV spleen
    img = np.where(lab > 0, 100, 40).astype(np.int16)
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(tmp_path / "seg.nii.gz"))
    item = {"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "seg.nii.gz"), "dataset": "btcv"}
    prep = {**PREP, "spatial_size": None, "context": 1}
    space = LabelSpace.create(["background", "liver", "kidney", "spleen", "stomach"])
    transform = get_train_transforms(preprocessing=prep, roi_size=16, label_space=space, ct_check="off")
    mmap = make_train_dataset([item], "mmap", tmp_path / "c", progress=False, transform=transform,
                              preprocessing=prep, ct_check="off")
    entry = mmap.entries[0]
    head = Compose([t for t in transform.transforms if not isinstance(t, (RandSlabCropd, RandSlabFlipd))][:-1])
    ref = head(dict(item))["label"]
    assert sorted(np.unique(np.asarray(entry.label)).tolist()) == [0, 1, 3, 4]
    np.testing.assert_array_equal(np.asarray(entry.label), ref[0].permute(2, 0, 1).numpy().astype(np.uint8))
    assert entry.labeled_mask.tolist() == ref.meta["labeled_mask"].tolist() == [1, 1, 1, 1, 1]
