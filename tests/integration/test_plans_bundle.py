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

"""A trained model's plans drive the bundle's inference without width or size flags (a training run and inference runs)."""

from __future__ import annotations

import json

import nibabel as nib
import pytest
import torch
from bundle_utils import REPO, TINY_TRAIN, TRAIN, make_tiny_demo, run_bundle
from monai.bundle import ConfigParser

from pipofan_monai.plans import (
    read_plans,
)

INFER = str(REPO / "bundle" / "configs" / "inference.json")


TINY = [8, 16, 32, 64, 64]


@pytest.mark.slow
def test_trained_model_runs_without_width_or_size_flags(tmp_path):
    """Train a tiny model with non-default widths and size, then inference, evaluation and the benchmark's
    label-agreement check read them from the checkpoint; a contradicting flag is refused naming both values."""
    demo = make_tiny_demo(tmp_path / "demo")  # the datalist file
    ckpt_dir = tmp_path / "models"
    run_bundle(["run", "training", "--config_file", TRAIN, "--datalist", str(demo), "--max_epochs", "2",
                "--dps_epochs", "1", "--val_interval", "1", "--ckpt_dir", str(ckpt_dir),
                "--output_dir", str(tmp_path / "runs"), "--hu_window", "[-150,250]"] + TINY_TRAIN)
    model = ckpt_dir / "model.pt"
    plans = read_plans(model)
    assert plans["network"]["channels"] == TINY and plans["preprocessing"]["spatial_size"] == 64
    assert plans["preprocessing"]["hu_window"] == [-150.0, 250.0]
    last = torch.load(tmp_path / "runs" / "last.pt", map_location="cpu", weights_only=True)
    assert last["plans"]["network"] == plans["network"]

    out = tmp_path / "out"
    test_items = json.loads(demo.read_text())["test"]
    image = str((demo.parent / test_items[0]["image"]).resolve())
    run_bundle(["run", "inference", "--config_file", INFER, "--input_files", f"['{image}']", "--ckpt_path", str(model),
                "--output_dir", str(out), "--save_overlay", "False", "--device", "cpu"])
    seg = nib.load(str(next(out.glob("*_seg.nii.gz"))))
    assert seg.shape == nib.load(image).shape

    # the config's components are built from the plans (MONAI Label reads these keys)
    parser = ConfigParser()
    parser.read_config(INFER)
    parser.update({"ckpt_path": str(model), "device": "cpu"})
    assert parser.get_parsed_content("network_def").get_config()["channels"] == TINY
    pre = parser.get_parsed_content("preprocessing")
    resize = [t for t in pre.transforms if type(t).__name__ == "Resized"][0]
    assert tuple(resize.resizer.spatial_size)[:2] == (64, 64)

    # an explicit, contradicting size is an error naming both values
    with pytest.raises(AssertionError, match=r"spatial_size: checkpoint 64, given 256"):
        run_bundle(["run", "inference", "--config_file", INFER, "--input_files", f"['{image}']",
                    "--ckpt_path", str(model), "--output_dir", str(tmp_path / "out2"), "--spatial_size", "256",
                    "--device", "cpu"])

    # the benchmark's label agreement feeds the trained model the training intensities (from the plans)
    import benchmarks as bm

    net = bm.make_network(None, ckpt=str(model))
    assert net.get_config()["channels"] == TINY
    slabs = bm.accuracy_slabs(str(model), num_slices=4, seed=0)
    assert slabs.shape[1:] == (3, 64, 64)
    assert float(slabs.min()) >= -1.0 and float(slabs.min()) < -0.5  # windowed to [-1, 1], not [0, 1]
