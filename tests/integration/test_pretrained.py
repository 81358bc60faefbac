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

"""Training that starts from a trained model (``--pretrained``, MONAI Label's retraining): the network and the
preprocessing come from the checkpoint's plans, whatever train.json's widths and size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle_utils import REPO, TRAIN, make_tiny_demo

QUICK = [16, 32, 64, 128, 128]
CLASSES = ["background", "liver", "kidney", "spleen"]


def _checkpoint(path: Path, channels=QUICK, spatial_size=128, class_names=CLASSES, hu_window=(-150, 250)) -> Path:
    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.plans import DEFAULT_PREPROCESSING, make_plans

    torch.manual_seed(0)
    net = PIPOFAN(out_channels=len(class_names), channels=channels)
    plans = make_plans(net, class_names, {**DEFAULT_PREPROCESSING, "spatial_size": spatial_size,
                                          "hu_window": list(hu_window)})
    torch.save({"model": net.state_dict(), "plans": plans}, path)
    return path


def _parser(**override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"device": "cpu", **override})
    parser.parse()
    return parser


def _label_handlers(load_path: Path) -> list:
    """train#handlers as MONAI Label's BundleTrainTask passes them: its CheckpointLoader of the served model first."""
    from monai.bundle import ConfigParser

    raw = ConfigParser()
    raw.read_config(TRAIN)
    handlers = raw.get("train#handlers")
    handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": str(load_path),
                        "load_dict": {"model": "$@network"}, "strict": False})
    return handlers


def _settings(parser) -> dict:
    return {"channels": parser.get_parsed_content("network_def").get_config()["channels"],
            **{k: parser.get_parsed_content(k) for k in ("spatial_size", "roi_size", "hu_window", "context")}}


def test_defaults_unchanged_without_a_start_checkpoint():
    parser = _parser()
    assert parser.get_parsed_content("start_plans") is None
    assert _settings(parser) == {"channels": [64, 128, 256, 512, 512], "spatial_size": 256, "roi_size": 224,
                                 "hu_window": [-200, 200], "context": 1}
    assert type(parser.get_parsed_content("network_def")).__name__ == "PIPOFAN"
    # explicit settings still apply
    parser = _parser(network_channels=[8, 16, 32, 64, 64], spatial_size=64, **{"network_def#block": "conv"})
    assert _settings(parser)["channels"] == [8, 16, 32, 64, 64] and parser.get_parsed_content("roi_size") == 48
    assert parser.get_parsed_content("network_def").get_config()["block"] == "conv"


@pytest.mark.parametrize("how", ["pretrained", "monai_label"])
def test_network_and_preprocessing_come_from_the_start_checkpoint(how, tmp_path):
    ckpt = _checkpoint(tmp_path / "quick.pt")
    over = {"pretrained": str(ckpt)} if how == "pretrained" else {"train#handlers": _label_handlers(ckpt)}
    parser = _parser(**over)
    assert _settings(parser) == {"channels": QUICK, "spatial_size": 128, "roi_size": 112,
                                 "hu_window": [-150.0, 250.0], "context": 1}
    plans = parser.get_parsed_content("plans")
    saved = torch.load(ckpt, weights_only=True)["plans"]
    assert plans["network"] == saved["network"] and plans["preprocessing"] == saved["preprocessing"]
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt, weights_only=True)["model"], strict=True)  # the weights fit


def test_start_checkpoint_of_other_classes_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "two.pt", class_names=["background", "liver"])
    parser = _parser(pretrained=str(ckpt))
    with pytest.raises(Exception) as e:
        parser.get_parsed_content("network_def")
    text = "".join(str(x) for x in (e.value, e.value.__cause__))
    assert "two.pt" in text and "['background', 'liver']" in text and "class_names" in text


def test_pretrained_weights_handler(tmp_path):
    from ignite.engine import Engine

    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.apps.training import PretrainedWeights

    ckpt = _checkpoint(tmp_path / "quick.pt")
    net = PIPOFAN(out_channels=4, channels=QUICK)
    engine = Engine(lambda e, b: None)
    PretrainedWeights(ckpt, net).attach(engine)
    engine.run([0], max_epochs=1)
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    # resuming: last.pt exists, the start checkpoint is not loaded
    fresh = PIPOFAN(out_channels=4, channels=QUICK)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    (tmp_path / "last.pt").write_bytes(b"x")
    engine = Engine(lambda e, b: None)
    PretrainedWeights(ckpt, fresh, skip_if_exists=tmp_path / "last.pt").attach(engine)
    engine.run([0], max_epochs=1)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    # a paper-width network does not fit: the error names the checkpoint
    with pytest.raises(ValueError, match="quick.pt.*does not match"):
        PretrainedWeights(ckpt, PIPOFAN(out_channels=4)).load()


@pytest.mark.slow
def test_pipofan_train_pretrained_keeps_the_models_widths_and_size(tmp_path):
    """``pipofan train --pretrained quick.pt`` with train.json's paper settings: the quick-start-sized network is
    trained (learning rate 0: the convolution weights stay those of the checkpoint) and model.pt keeps its plans."""
    demo = make_tiny_demo(tmp_path / "demo")
    ckpt = _checkpoint(tmp_path / "quick.pt", channels=[8, 16, 32, 64, 64], spatial_size=64)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipofan_monai", "train", "--pretrained", str(ckpt), "--datalist", str(demo),
           "--max_epochs", "1", "--val_interval", "1", "--samples_per_epoch", "8", "--batch_size", "4",
           "--num_workers", "0", "--sw_batch_size", "16", "--progress_bar", "False", "--max_val_volumes", "1",
           "--learning_rate", "0", "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "runs")]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    new = torch.load(out / "models" / "model.pt", weights_only=True)
    old = torch.load(ckpt, weights_only=True)
    assert new["plans"]["network"] == old["plans"]["network"]
    assert new["plans"]["preprocessing"] == old["plans"]["preprocessing"]
    convs = [k for k in old["model"] if k.endswith(".weight") and old["model"][k].dim() == 4]
    assert convs and all(torch.equal(new["model"][k], old["model"][k]) for k in convs)
    assert json.loads((out / "runs" / "metrics.json").read_text())[0]["epoch"] == 1
