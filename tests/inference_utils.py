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

"""Helpers shared by the inference tests: synthetic CT volumes, tiny checkpoints, known-answer networks and runners."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from bundle_utils import REPO
from monai.bundle import ConfigParser

from pipofan_monai.networks import PIPOFAN
from pipofan_monai.plans import DEFAULT_PREPROCESSING, PlansState, make_plans

INFER_CONFIG = REPO / "bundle" / "configs" / "inference.json"
TINY = [8, 16, 32, 64, 64]
NAMES = ["background", "liver", "kidney", "spleen"]


# ---------------------------------------------------------------------------------------------- volumes
def nifti(path: Path, array: np.ndarray, spacing=(1.5, 1.25, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def random_ct(shape=(20, 18, 3), seed: int = 0) -> np.ndarray:
    """Random HU values +-(20..300): no voxel near 0, so a threshold network's answer is exact."""
    rng = np.random.default_rng(seed)
    return (rng.integers(20, 300, size=shape) * rng.choice([-1, 1], size=shape)).astype(np.int16)


def body_ct(shape, seed: int, blobs: int = 5, dtype=np.int16) -> np.ndarray:
    """A smooth body-like HU volume (blobs + noise), so that the label maps have regions, not salt and pepper."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = np.zeros(shape, np.float32)
    for _ in range(blobs):
        c, r, a = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.2, 0.6), rng.uniform(-250, 250)
        vol += a * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / r**2)
    vol += rng.normal(0, 15, shape)
    vol[grids[0] ** 2 + grids[1] ** 2 > 0.8] = -1000  # air around the body
    return np.clip(vol, -1000, 1000).astype(dtype)


# ---------------------------------------------------------------------------------------------- networks
def strong_ckpt(path: Path, seed: int = 0, plans_size: int | None = None) -> Path:
    """A tiny random model with its heads strengthened (x20), so that several classes win somewhere; with
    ``plans_size``, saved with its plans at that in-plane size, else as a bare state dict."""
    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY)
    sd = net.state_dict()
    for k in sd:
        if k.endswith("head.conv.weight"):
            sd[k].mul_(20)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plans_size is None:
        torch.save(sd, path)
    else:
        plans = make_plans(net, NAMES, {**DEFAULT_PREPROCESSING, "spatial_size": plans_size})
        torch.save({"model": sd, "plans": plans}, path)
    return path


def bn_network(seed: int = 0) -> PIPOFAN:
    """A tiny network in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY)
    for m in net.modules():  # eval-mode normalisation is part of the backends' comparison
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def plans_checkpoint(path: Path, net: torch.nn.Module, size: int = 64) -> Path:
    """``net``'s weights with its plans (the four classes, in-plane ``size``)."""
    plans = make_plans(net, NAMES, {"spatial_size": size})
    torch.save({"model": net.state_dict(), "plans": PlansState(plans).state_dict()}, path)
    return path


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


class PositiveHUNet(torch.nn.Module):
    """Class 1 (liver) where the centre slice is > 0 after the HU window (HU > 0), else background: with no
    in-plane resize the label map equals ``HU > 0`` voxel for voxel on the original grid. ``nan``: finite weights,
    non-finite output (as a diverged BatchNorm gives)."""

    def __init__(self, nan: bool = False):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))
        self.nan = nan

    def forward(self, x):
        c = x[:, 1:2] * self.scale
        if self.nan:
            c = c * float("nan")
        return torch.cat([-c, c, -c - 50, -c - 50], dim=1)


def threshold_ckpt(path: Path, net_class: type[torch.nn.Module] = ThresholdNet) -> Path:
    """The weights of a known-answer network (its scale)."""
    torch.save(net_class().state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------- bundle config
def inference_parser(**overrides) -> ConfigParser:
    """The bundle's inference config on the CPU, without AMP and overlays."""
    parser = ConfigParser()
    parser.read_config(str(INFER_CONFIG))
    parser.update({"device": "cpu", "amp": False, "save_overlay": False, "sw_batch_size": 8, **overrides})
    return parser


def tiny_bundle_parser(out_dir: Path, **overrides) -> ConfigParser:
    """:func:`inference_parser` of this checkout's bundle with the tiny network at 32x32, writing to ``out_dir``."""
    return inference_parser(**{"bundle_root": str(REPO / "bundle"), "network_channels": TINY, "spatial_size": 32,
                               "output_dir": str(out_dir), **overrides})


def tiny_bundle_runner(out_dir: Path, **overrides):
    """The bundle's runner of :func:`tiny_bundle_parser`, overwriting earlier outputs."""
    return tiny_bundle_parser(out_dir, **{"overwrite": True, **overrides}).get_parsed_content("runner")


def threshold_runner(out: Path, delay: float = 0.0, **overrides):
    """The bundle's runner around :class:`ThresholdNet` (no in-plane resize, no post-processing), prefetching."""
    from pipofan_monai.apps.inference import SegmentationRunner

    parser = inference_parser(output_dir=str(out), spatial_size=0, postprocess=False, network_channels=TINY,
                              bundle_root=str(out / "no_bundle"), **overrides)
    kw = {k: parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")}
    extra = {k: parser.get_parsed_content(k) for k in ("statistics", "report_file", "mirror_folders", "overwrite",
                                                          "fail_on_error")}
    ids = parser.get_parsed_content("write_class_ids")
    return SegmentationRunner(network=ThresholdNet(delay), **kw, **extra, class_names=NAMES, prefetch=True,
                              statistics_organs=None if ids is None else [NAMES[i] for i in ids])
