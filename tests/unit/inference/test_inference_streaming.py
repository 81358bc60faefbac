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

"""The slab-by-slab inversion + argmax (pipofan_monai.inference.streaming) gives the whole-volume ``Invertd``
path's label maps voxel for voxel (odd sizes, LPS / oblique / permuted affines, 1 and 2 slices, slabs that do not
divide the slice count, with and without the in-plane resize, single model and vote), the mean ensemble up to
argmax ties, MONAI's geometry and metadata, and never holds the full-resolution probabilities (memory bound)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import body_ct, strong_ckpt, tiny_bundle_runner
from monai.data import MetaTensor

from pipofan_monai.apps.inference import CasePipeline
from pipofan_monai.inference.streaming import SlabInverter


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(linear: np.ndarray, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = origin
    return a


#: name -> (shape, affine): RAS, LPS (flips), oblique (rotated 25 deg about z and 10 about x, flipped x), stored
#: as P-I-L (axes permuted: the axial axis is the second array axis), one and two slices
CASES = {
    "ras": ((27, 23, 13), _affine(np.diag([0.8, 0.9, 2.5]), (5, -7, 11))),
    "lps": ((30, 26, 11), _affine(np.diag([-0.7, -0.7, 3.0]), (50, 60, -20))),
    "oblique": ((25, 29, 9), _affine(_rotation(25, 10) @ np.diag([-0.9, 0.8, 2.0]), (1, 2, 3))),
    "permuted": ((21, 7, 24), _affine(np.array([[0, 0, -0.8], [-0.9, 0, 0], [0, -2.5, 0]]), (0, 0, 0))),
    "oneslice": ((30, 28, 1), _affine(np.diag([1.0, 1.0, 5.0]), (0, 0, 0))),
    "twoslices": ((30, 28, 2), _affine(np.diag([1.0, -1.2, 5.0]), (3, 0, 0))),
}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vols")
    paths = {}
    for i, (name, (shape, affine)) in enumerate(CASES.items()):
        paths[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(body_ct(shape, i, blobs=6), affine), str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [strong_ckpt(root / f"m{k}.pt", 20 + k) for k in range(3)]


def _segment(tmp_path: Path, tag: str, src: Path, ckpts, **overrides):
    """(pred MetaTensor of the pipeline, saved NIfTI) of one case."""
    runner = tiny_bundle_runner(tmp_path / tag, **overrides)
    nets = runner._networks(ckpts)
    d = runner.pipeline(str(src), nets)
    saved = nib.load(str(tmp_path / tag / src.name.replace(".nii.gz", "_seg.nii.gz")))
    return runner, d, saved


def _assert_same_output(d_s, saved_s, d_p, saved_p, src: Path):
    ps, pp = d_s["pred"], d_p["pred"]
    assert isinstance(ps, MetaTensor) and ps.dtype == torch.uint8 and pp.dtype == torch.float32
    np.testing.assert_array_equal(ps.numpy(), pp.numpy())  # the same labels, voxel for voxel
    assert ps.applied_operations == [] and pp.applied_operations == []
    assert torch.equal(ps.affine, pp.affine)
    assert sorted(ps.meta) == sorted(pp.meta)
    ref = nib.load(str(src))
    assert saved_s.shape == saved_p.shape == ref.shape
    np.testing.assert_allclose(saved_s.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(saved_s.affine, saved_p.affine)
    assert saved_s.get_data_dtype() == saved_p.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved_s.dataobj), np.asarray(saved_p.dataobj))


@pytest.mark.parametrize("spatial_size", [32, 0])
def test_streamed_labels_equal_whole_volume_inversion(tmp_path, volumes, ckpts, spatial_size):
    """Every geometry, slabs of 4 slices (a remainder for 13, 11, 9 slices; one slab for 1 and 2 slices), with
    the in-plane resize (32) and without (0): labels, affine, metadata and the written file equal the
    ``Invertd`` path's, and the labels are not trivial."""
    for name, src in volumes.items():
        post = name == "oblique"  # the connected-component filter once (it runs after, on the same labels)
        tag = f"{name}_{spatial_size}"
        r_s, d_s, s_s = _segment(tmp_path, "s_" + tag, src, ckpts[:1], spatial_size=spatial_size,
                                 stream_slices=4, postprocess=post)
        r_p, d_p, s_p = _segment(tmp_path, "p_" + tag, src, ckpts[:1], spatial_size=spatial_size,
                                 stream_slices=0, postprocess=post)
        assert r_s.pipeline.streamer is not None and r_p.pipeline.streamer is None, r_s.pipeline.stream_reason
        assert r_p.pipeline.stream_reason == "stream_slices is 0"
        _assert_same_output(d_s, s_s, d_p, s_p, src)
        assert len(np.unique(d_p["pred"].numpy())) >= 2, name  # a real test: several classes


def test_streamed_vote_equals_whole_volume_vote(tmp_path, volumes, ckpts):
    for name in ("oblique", "permuted"):
        src = volumes[name]
        _, d_s, s_s = _segment(tmp_path, f"s_{name}", src, ckpts, stream_slices=5, postprocess=False)
        _, d_p, s_p = _segment(tmp_path, f"p_{name}", src, ckpts, stream_slices=0, postprocess=False)
        _assert_same_output(d_s, s_s, d_p, s_p, src)
        singles = [_segment(tmp_path, f"one_{name}_{k}", src, [c], postprocess=False)[1]["pred"].numpy()
                   for k, c in enumerate(ckpts)]
        assert len({s.tobytes() for s in singles}) == 3  # the models disagree: the vote is exercised


def test_streamed_mean_ensemble_equals_up_to_ties(tmp_path, volumes, ckpts):
    """The mean is taken at the network's resolution, then inverted (resizing is linear): the probabilities
    equal the whole-volume mean to float rounding, so labels may differ only where two classes tie."""
    from monai.transforms import Resize

    # linearity, numerically: resize of the mean == mean of the resizes
    g = torch.Generator().manual_seed(0)
    probs = [torch.softmax(torch.randn(4, 32, 32, 7, generator=g) * 3, 0) for _ in range(3)]
    up = Resize((61, 47, -1), mode="trilinear")
    mean_then_resize = torch.as_tensor(up(sum(probs) / 3))
    resize_then_mean = sum(torch.as_tensor(up(p)) for p in probs) / 3
    assert float((mean_then_resize - resize_then_mean).abs().max()) < 1e-6
    for name in ("lps", "oblique"):
        src = volumes[name]
        _, d_s, _ = _segment(tmp_path, f"s_{name}", src, ckpts, ensemble_mode="mean", stream_slices=4,
                             postprocess=False)
        _, d_p, _ = _segment(tmp_path, f"p_{name}", src, ckpts, ensemble_mode="mean", stream_slices=0,
                             postprocess=False, save_probabilities=True)
        a, b = d_s["pred"].numpy(), d_p["pred"].numpy()
        assert torch.equal(d_s["pred"].affine, d_p["pred"].affine) and a.shape == b.shape
        diff = a != b
        assert diff.mean() <= 1e-3, diff.sum()
        if diff.any():  # only at ties of the whole-volume mean probabilities
            p = np.sort(d_p["prob"].numpy(), axis=0)
            assert float((p[-1] - p[-2])[diff[0]].max()) < 1e-5


def test_streaming_falls_back_where_it_does_not_apply(tmp_path, volumes, ckpts):
    """save_probabilities needs the full-resolution probabilities: the whole-volume path is used (and gives the
    same labels); a bad stream_slices is refused."""
    runner = tiny_bundle_runner(tmp_path / "prob", save_probabilities=True)
    assert runner.pipeline.streamer is None and "probabilities" in runner.pipeline.stream_reason
    runner = tiny_bundle_runner(tmp_path / "plain")
    assert runner.pipeline.streamer is not None and runner.pipeline.stream_slices == 16  # the bundle's default
    streamer = runner.pipeline.streamer
    assert streamer.why_not(torch.zeros(1, 4, 4, 2)) is not None  # no applied operations to undo
    with pytest.raises(ValueError, match="stream_slices must be >= 0"):
        CasePipeline(runner.preprocessing, runner.inferer, runner.postprocessing, 4, stream_slices=-1)
    inv, reason = SlabInverter.from_postprocessing(runner.pipeline.post[:1], runner.pipeline.post[2], 4, 4)
    assert inv is None and "Invertd" in reason


# ---------------------------------------------------------------------------------------------- memory

def test_hu_window_scales_in_place_with_the_same_values():
    """HUWindowd's in-place scaling (one temporary volume fewer at 512²) gives bitwise the out-of-place formula's
    values and leaves its input untouched."""
    from pipofan_monai.preprocessing import HUWindowd

    g = torch.Generator().manual_seed(0)
    img = MetaTensor((torch.randn(1, 37, 29, 11, generator=g) * 400).round(), affine=torch.eye(4))
    before = img.clone()
    out = HUWindowd("image", window=(-200, 200))({"image": img})["image"]
    t = before.as_tensor().clamp(-200, 200)
    assert torch.equal(out.as_tensor(), (t - -200.0) * (2.0 / 400.0) + -1.0) and torch.equal(img, before)
    z = HUWindowd("image", window=(-200, 200), mode="zscore")({"image": img})["image"]
    assert torch.equal(z.as_tensor(), (t - t.mean()) / t.std()) and torch.equal(img, before)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
