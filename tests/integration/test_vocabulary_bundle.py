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

"""A five-organ vocabulary through the bundle end to end (training and inference runs)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

PAPER = ["background", "liver", "kidney", "spleen"]


@pytest.mark.slow
def test_five_class_bundle_end_to_end(tmp_path):
    """K = 5 (the demo's fifth organ): training, inference and the bundle's label list, through the bundle runner."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bundle_utils import REPO, TINY_TRAIN, TRAIN, run_bundle

    from pipofan_monai.apps.bundle_vocabulary import set_bundle_classes
    from pipofan_monai.apps.dataset_conversion import generate_demo_dataset, load_datalist

    five = ["background", "liver", "kidney", "spleen", "pancreas"]
    demo = generate_demo_dataset(tmp_path / "demo", 2, num_test=1, shape=(64, 64, 12), pancreas=True)
    ckpt, runs = tmp_path / "models", tmp_path / "runs"
    proc = run_bundle(["run", "training", "--config_file", TRAIN, "--datalist", str(demo), "--class_names", str(five),
                       "--max_epochs", "2", "--dps_epochs", "1", "--val_interval", "1", "--ckpt_dir", str(ckpt),
                       "--output_dir", str(runs)] + TINY_TRAIN)
    log = proc.stdout + proc.stderr
    assert "class 'pancreas' is annotated by btcv, msd_pancreas" in log
    rows = json.loads((runs / "metrics.json").read_text())
    assert {"val_dice_liver", "val_dice_kidney", "val_dice_spleen", "val_dice_pancreas"} <= set(rows[-1])
    assert "val_dice_stomach" not in rows[-1]
    state = torch.load(ckpt / "model.pt", weights_only=True)
    state = state.get("model", state)
    out_convs = [k for k, v in state.items() if v.ndim == 4 and v.shape[0] == 5]
    assert out_convs, "no 5-channel output convolution in the checkpoint"
    # inference: labels 0..4 on the input grid, overview PNG drawn
    image = load_datalist(demo)["test"][0]["image"]
    out = tmp_path / "seg"
    infer = ["run", "inference", "--config_file", str(REPO / "bundle/configs/inference.json"), "--input_files",
             str([image]), "--output_dir", str(out), "--ckpt_path", str(ckpt / "model.pt"),
             "--network_channels", "[8,16,32,64,64]", "--spatial_size", "64"]
    # a two-epoch model need not find any organ: its output heads are set to say "pancreas" (class 4) everywhere,
    # so the fifth class must reach the written label map (its plans, the five class names, stay as trained)
    state = torch.load(ckpt / "model.pt", weights_only=True)
    weights = state.get("model", state)
    heads = [k[: -len(".weight")] for k in weights if k.endswith("head.conv.weight")]
    assert heads, "no output head in the checkpoint"
    for h in heads:
        weights[h + ".weight"].zero_()
        weights[h + ".bias"].copy_(torch.nn.functional.one_hot(torch.tensor(4), 5).float() * 10)
    torch.save(state, ckpt / "model.pt")
    run_bundle(infer)  # the class names come from the checkpoint's plans
    seg = nib.load(next(out.glob("*_seg.nii.gz")))
    assert seg.shape == nib.load(image).shape and (np.asarray(seg.dataobj) == 4).all()
    assert next(out.glob("*_overview.png")).stat().st_size > 0
    assert torch.load(ckpt / "model.pt", weights_only=True)["plans"]["class_names"] == five
    # asking for the four classes with this checkpoint is refused, naming both lists
    with pytest.raises(AssertionError, match=r"class_names: checkpoint \['background', 'liver', 'kidney', 'spleen', "
                                             r"'pancreas'\], given \['background', 'liver', 'kidney', 'spleen'\]"):
        run_bundle(infer + ["--class_names", str(PAPER), "--output_dir", str(tmp_path / "seg4")])
    # a bundle copy with this vocabulary lists the five classes (MONAI Label reads metadata.json's channel_def)
    shutil.copytree(REPO / "bundle" / "configs", tmp_path / "bundle5" / "configs")
    set_bundle_classes(tmp_path / "bundle5", five)
    meta = json.loads((tmp_path / "bundle5" / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {str(i): n for i, n in enumerate(five)}
