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

"""The label map of a bundle inference run with the in-plane resize, voxel for voxel against a reference computed
here without MONAI: known probabilities on the network's 32 x 32 grid, resampled LINEARLY (the config's
``Invertd(nearest_interp=False)``) to the original in-plane size with ``torch.nn.functional.interpolate``, argmax,
and the reorientation undone with nibabel. Both the whole-volume ``Invertd`` path (``stream_slices=0``) and the
slab-by-slab one (``stream_slices=4``, slabs that do not divide the slice count) must give it, for RAS, LPS and
axis-permuted storage.

The prediction is asymmetric along both in-plane axes and differs per slice, so a mirrored, transposed or shifted
slab, a slab taken from the wrong slices, or nearest instead of linear resampling of the probabilities gives a
different map (the test checks that nearest resampling differs from the reference at many voxels). A second test
runs a real PIPO-FAN checkpoint through the bundle against the same steps done here by hand."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "bundle" / "configs" / "inference.json"
SIZE = 32  # the network's in-plane size (the plans' spatial_size)
HU = (-150.0, -60.0, 0.0, 45.0, 120.0, 190.0)  # one HU value per axial slice (inside the (-200, 200) window)


def ramp_logits(scaled: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, 4, H, W)`` of slices whose centre channel ``scaled`` ``(B, 1, H, W)`` is constant per slice:
    smooth ramps in the in-plane position (row ``u``, column ``v`` in [0, 1]) shifted by the slice's value, so that
    every class wins somewhere and the map is asymmetric along both axes."""
    h, w = scaled.shape[-2:]
    u = torch.linspace(0.0, 1.0, h, dtype=scaled.dtype).view(1, 1, h, 1)
    v = torch.linspace(0.0, 1.0, w, dtype=scaled.dtype).view(1, 1, 1, w)
    s = scaled
    zero = torch.zeros_like(u * v * s)
    return torch.cat([zero,
                      7.0 * (1.3 * u - 0.4 * v - 0.35) + 2.0 * s,
                      7.0 * (0.9 * v + 0.5 * u * v - 0.6) - 1.5 * s,
                      7.0 * (0.5 - 1.2 * u * u - 0.9 * v) + 0.5 * s], dim=1)


class RampNet(torch.nn.Module):
    """A 2.5D "network" giving :func:`ramp_logits` of its input's centre slice (one parameter, so that the bundle
    loads a checkpoint of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ramp_logits(x[:, 1:2]) * self.gain


def _storage_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation taking an array on the RAS grid back to the file's storage order."""
    return ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(affine))


#: name -> (shape on the RAS grid (H0, W0, D), storage affine): RAS, LPS (both in-plane axes flipped) and P-I-L
#: (axes permuted and flipped: the axial axis is stored second)
CASES = {
    "ras": ((45, 51, 5), np.array([[0.8, 0, 0, 5], [0, 0.9, 0, -7], [0, 0, 2.5, 11], [0, 0, 0, 1.0]])),
    "lps": ((37, 50, 6), np.array([[-0.7, 0, 0, 50], [0, -0.75, 0, 60], [0, 0, 3.0, -20], [0, 0, 0, 1.0]])),
    "permuted": ((43, 38, 5), np.array([[0, 0, -0.8, 0], [-0.9, 0, 0, 0], [0, -2.5, 0, 0], [0, 0, 0, 1.0]])),
}


def _volume(tmp_path: Path, name: str) -> tuple[Path, np.ndarray]:
    """A NIfTI whose axial slice ``z`` (on the RAS grid) is the constant ``HU[z]``: ``(path, RAS-grid HU)``."""
    (h, w, d), affine = CASES[name]
    ras = np.broadcast_to(np.asarray(HU[:d], np.float32), (h, w, d)).astype(np.int16)
    stored = apply_orientation(ras, _storage_ornt(affine))
    # the storage affine maps the stored array onto the same RAS grid: check the round trip of the reference
    np.testing.assert_array_equal(apply_orientation(stored, io_orientation(affine)), ras)
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), str(path))
    return path, ras


def reference_labels(ras_hu: np.ndarray, affine: np.ndarray, mode: str = "trilinear") -> np.ndarray:
    """The expected label map in the file's storage order: HU window (-200, 200) scaled to [-1, 1] (constant per
    slice, so the in-plane resize to 32 keeps it exactly), :func:`ramp_logits` on the 32 x 32 grid, softmax,
    resampling of the probabilities to the original in-plane size (``mode``), argmax, back to storage order."""
    h, w, d = ras_hu.shape
    scaled = torch.from_numpy(np.clip(ras_hu[0, 0, :], -200, 200) / 200.0).float()  # (D,)
    logits = ramp_logits(scaled.view(d, 1, 1, 1).expand(d, 1, SIZE, SIZE))  # (D, 4, 32, 32)
    probs = torch.softmax(logits, dim=1).permute(1, 2, 3, 0)[None]  # (1, 4, 32, 32, D)
    kw = {"align_corners": False} if mode == "trilinear" else {}
    up = F.interpolate(probs, size=(h, w, d), mode=mode, **kw)[0]  # (4, H0, W0, D)
    top2 = torch.topk(up, 2, dim=0).values
    labels = up.argmax(0).numpy().astype(np.uint8)
    near_tie = (top2[0] - top2[1]).numpy() < 1e-5
    return apply_orientation(labels, _storage_ornt(affine)), apply_orientation(near_tie, _storage_ornt(affine))


@pytest.fixture(scope="module")
def ramp_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ramp") / "ramp.pt"
    torch.save(RampNet().state_dict(), path)
    return path


def _bundle_labels(out: Path, src: Path, ckpt: Path, stream_slices: int) -> np.ndarray:
    """Segment ``src`` with the bundle's inference config (network replaced by :class:`RampNet`) and return the
    written label map."""
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_path": str(ckpt), "fold_ckpt_paths": [],
                   "spatial_size": SIZE, "network_def": RampNet(), "device": "cpu", "amp": False,
                   "channels_last": False, "sw_batch_size": 4, "output_dir": str(out), "save_overlay": False,
                   "postprocess": False, "ct_check": "off", "stream_slices": stream_slices, "overwrite": True})
    res = parser.get_parsed_content("runner").run([str(src)], str(ckpt))
    assert res["num_ok"] == 1, res
    seg = nib.load(str(out / src.name.replace(".nii.gz", "_seg.nii.gz")))
    ref = nib.load(str(src))
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    return np.asarray(seg.dataobj)


@pytest.mark.parametrize("stream_slices", [0, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_resized_inversion_equals_linear_resampling_reference(tmp_path, ramp_ckpt, name, stream_slices):
    src, ras = _volume(tmp_path, name)
    affine = CASES[name][1]
    expected, near_tie = reference_labels(ras, affine)
    # the reference is not trivial: every class, no in-plane symmetry, per-slice differences, and nearest
    # resampling of the same probabilities gives a measurably different map
    assert set(np.unique(expected).tolist()) == {0, 1, 2, 3}
    ras_expected = apply_orientation(expected, io_orientation(affine))
    assert not np.array_equal(ras_expected, ras_expected[::-1]) and not np.array_equal(ras_expected,
                                                                                          ras_expected[:, ::-1])
    assert len({ras_expected[..., z].tobytes() for z in range(ras_expected.shape[-1])}) == ras_expected.shape[-1]
    nearest, _ = reference_labels(ras, affine, mode="nearest")
    assert int((nearest != expected).sum()) >= 100, int((nearest != expected).sum())

    got = _bundle_labels(tmp_path / "out", src, ramp_ckpt, stream_slices)
    assert got.dtype == np.uint8
    wrong = (got != expected) & ~near_tie
    n_wrong = int(wrong.sum())
    assert n_wrong == 0, (f"{n_wrong} of {wrong.size} voxels differ from the linear resampling reference (first "
                          f"at {np.argwhere(wrong)[:3].tolist()})")
    assert int((got != expected).sum()) <= 3  # at most a handful of exact ties


def _pipofan_ckpt(path: Path) -> Path:
    from pipofan_monai.networks import PIPOFAN

    torch.manual_seed(9)  # a seed whose map on this volume holds three classes (most random nets give one or two)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=[8, 16, 32, 64, 64])
    sd = net.state_dict()
    for k in sd:  # stronger heads than the initialisation: few near ties
        if k.endswith("head.conv.weight"):
            sd[k].mul_(50)
    torch.save(sd, path)
    return path


@pytest.mark.parametrize("stream_slices", [0, 16])
def test_real_network_labels_equal_a_reference_inference(tmp_path, stream_slices):
    """A PIPO-FAN checkpoint through the bundle (resize to 32, LPS storage, 7 slices: odd in-plane sizes) against
    a reference run here: the config's preprocessing, the network on each slice with its two neighbours (edges
    replicated), softmax, linear resampling with ``torch.nn.functional.interpolate``, argmax, nibabel's
    reorientation back to storage order."""
    from monai.data import MetaTensor

    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.plans import load_network_weights

    affine = np.array([[-0.7, 0, 0, 50], [0, -0.75, 0, 60], [0, 0, 3.0, -20], [0, 0, 0, 1.0]])
    rng = np.random.default_rng(0)
    g = np.meshgrid(*[np.linspace(-1, 1, s) for s in (41, 35, 7)], indexing="ij")
    hu = 180 * np.sin(3 * g[0] + 1) * np.cos(2 * g[1] - 0.5) + 60 * g[2] + rng.normal(0, 10, g[0].shape)
    hu[g[0] ** 2 + g[1] ** 2 > 0.9] = -1000
    src = tmp_path / "lps.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(src))
    ckpt = _pipofan_ckpt(tmp_path / "m.pt")

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"bundle_root": str(REPO / "bundle"), "ckpt_path": str(ckpt), "fold_ckpt_paths": [],
                   "network_channels": [8, 16, 32, 64, 64], "spatial_size": SIZE, "device": "cpu", "amp": False})
    image = parser.get_parsed_content("preprocessing")({"image": str(src)})["image"]
    assert isinstance(image, MetaTensor) and tuple(image.shape) == (1, SIZE, SIZE, 7)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=[8, 16, 32, 64, 64])
    load_network_weights(net, ckpt)
    net.eval()
    x = F.pad(image.as_tensor()[0], (1, 1), mode="replicate")  # (32, 32, 9)
    slabs = torch.stack([x[..., z : z + 3].permute(2, 0, 1) for z in range(7)])  # (7, 3, 32, 32)
    with torch.no_grad():
        probs = torch.softmax(net(slabs), dim=1).permute(1, 2, 3, 0)[None]  # (1, 4, 32, 32, 7)
    ras_shape = apply_orientation(hu, io_orientation(affine)).shape
    up = F.interpolate(probs, size=ras_shape, mode="trilinear", align_corners=False)[0]
    top2 = torch.topk(up, 2, dim=0).values
    expected = apply_orientation(up.argmax(0).numpy().astype(np.uint8), _storage_ornt(affine))
    near_tie = apply_orientation((top2[0] - top2[1]).numpy() < 1e-4, _storage_ornt(affine))
    values, counts = np.unique(expected, return_counts=True)
    assert len(values) >= 3 and counts.min() >= 20, (values, counts)  # not a trivial map
    assert int((apply_orientation(apply_orientation(expected, io_orientation(affine))[::-1], _storage_ornt(affine))
                != expected).sum()) > 100  # asymmetric: a mirrored map would differ

    out = tmp_path / "out"
    parser.update({"output_dir": str(out), "save_overlay": False, "postprocess": False, "sw_batch_size": 4,
                   "stream_slices": stream_slices})
    res = parser.get_parsed_content("runner").run([str(src)], str(ckpt))
    assert res["num_ok"] == 1, res
    got = np.asarray(nib.load(str(out / "lps_seg.nii.gz")).dataobj)
    assert got.shape == expected.shape
    n_wrong = int(((got != expected) & ~near_tie).sum())
    assert n_wrong == 0, f"{n_wrong} of {got.size} voxels differ from the reference inference"
