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

"""The next case is read while the current one is in the network (stage timestamps of a real run)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]


CONFIG = REPO / "bundle" / "configs" / "inference.json"


TINY = [8, 16, 32, 64, 64]


NAMES = ["background", "liver", "kidney", "spleen"]


def _nifti(path: Path, array: np.ndarray, spacing=(1.5, 1.25, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def _ct(shape=(20, 18, 3), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(20, 300, size=shape) * rng.choice([-1, 1], size=shape)).astype(np.int16)


def _parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"device": "cpu", "amp": False, "save_overlay": False, "sw_batch_size": 8, **overrides})
    return parser


class ThresholdNet(torch.nn.Module):
    """Class 1 (liver) where the centre slice is > 0.5 after the window (HU > 100), class 2 (kidney) where < -0.5
    (HU < -100), else background: exact label values known from the CT alone (no in-plane resize)."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        c = x[:, 1:2]
        hi, lo = (c - 0.5) * self.scale, (-c - 0.5) * self.scale
        return torch.cat([torch.zeros_like(c), hi, lo, torch.full_like(c, -50.0)], dim=1)


def _threshold_runner(out: Path, delay: float = 0.0, **overrides):
    from pipofan_monai.apps.inference import SegmentationRunner

    parser = _parser(output_dir=str(out), spatial_size=0, postprocess=False, network_channels=TINY,
                     bundle_root=str(out / "no_bundle"), **overrides)
    kw = {k: parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")}
    extra = {k: parser.get_parsed_content(k) for k in ("statistics", "report_file", "mirror_folders", "overwrite",
                                                          "fail_on_error")}
    ids = parser.get_parsed_content("write_class_ids")
    return SegmentationRunner(network=ThresholdNet(delay), **kw, **extra, class_names=NAMES, prefetch=True,
                              statistics_organs=None if ids is None else [NAMES[i] for i in ids])


def _threshold_ckpt(path: Path) -> Path:
    torch.save(ThresholdNet().state_dict(), path)
    return path


def test_next_case_loads_while_the_current_one_is_in_the_network(tmp_path):
    """Stage timestamps: the second case's loading starts before the first case's network pass ends (the network
    sleeps 1 s per call, so this cannot happen by chance in a serial loop), and the models are loaded once."""
    images = [str(_nifti(tmp_path / f"c{i}.nii.gz", _ct(seed=i))) for i in range(3)]
    runner = _threshold_runner(tmp_path / "out", delay=1.0)
    spans: list[tuple[str, str, float, float]] = []
    load, process = runner.pipeline.load, runner.pipeline.process

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append((kind, threading.current_thread().name, t0, time.perf_counter()))
        return wrapper

    runner.pipeline.load = timed("load", load)
    runner.pipeline.process = timed("process", process)
    loads = []
    import pipofan_monai.apps.inference.runner as runner_module

    orig = runner_module.load_network_weights
    runner_module.load_network_weights = lambda net, p: (loads.append(p), orig(net, p))[1]
    try:
        res = runner.run(images, _threshold_ckpt(tmp_path / "t.pt"))
    finally:
        runner_module.load_network_weights = orig
    assert res["num_ok"] == 3 and len(loads) == 1
    load_spans = [s for s in spans if s[0] == "load"]
    process_spans = [s for s in spans if s[0] == "process"]
    assert len(load_spans) == 3 and all(s[1].startswith("pipofan-load") for s in load_spans)
    for k in range(2):  # load of case k+1 starts while case k is in the network
        assert load_spans[k + 1][2] < process_spans[k][3] - 0.5, spans
    # without prefetch the loop is serial
    runner.prefetch, spans[:] = False, []
    runner.outputs.overwrite = True
    runner.run(images, tmp_path / "t.pt")
    load_spans = [s for s in spans if s[0] == "load"]
    process_spans = [s for s in spans if s[0] == "process"]
    assert all(load_spans[k + 1][2] >= process_spans[k][3] for k in range(2))
