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

"""Inference memory without changed results: the CT is loaded in its own int16 type (the preprocessed image is
bitwise the float32-loaded one), the softmax runs slab by slab with the inversion (bitwise the whole-volume
probabilities where a slice has a multiple of 64 pixels, else the whole volume is activated), the overview PNG
holds no whole-volume copies, and the bundle's label maps equal the reference path's (float32 loading, whole-volume
softmax and ``Invertd``) voxel for voxel."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import body_ct, strong_ckpt, tiny_bundle_runner
from monai.transforms import Activationsd, AsDiscreted, Invertd

from pipofan_monai.inference.streaming import SlabInverter
from pipofan_monai.plans import DEFAULT_PREPROCESSING
from pipofan_monai.preprocessing import get_inference_transforms
from pipofan_monai.preprocessing.io import LoadCTd


def _save(path: Path, arr: np.ndarray, affine) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


LPS = np.diag([-0.7, -0.7, 3.0, 1.0])
RAS = np.diag([0.8, 0.9, 2.5, 1.0])


@pytest.mark.parametrize("dtype,affine,loaded", [(np.int16, LPS, torch.int16), (np.int16, RAS, torch.int16),
                                                 (np.uint8, RAS, torch.uint8), (np.float64, LPS, torch.float32),
                                                 (np.int32, RAS, torch.float32)])
def test_compact_loading_gives_the_float32_pipelines_image(tmp_path, dtype, affine, loaded):
    vol = body_ct((40, 36, 7), 1, dtype=np.float32)
    if dtype == np.uint8:
        vol = np.clip(vol + 1000, 0, 255)  # not a CT in HU: the check is off for this dtype case
    path = _save(tmp_path / "ct.nii.gz", vol.astype(dtype), affine)
    settings = {**DEFAULT_PREPROCESSING, "spatial_size": 32}
    check = "off" if dtype == np.uint8 else "error"
    new = get_inference_transforms(settings, ct_check=check)
    loader = new.transforms[0]
    assert isinstance(loader, LoadCTd) and loader.compact
    assert loader({"image": str(path)})["image"].dtype == loaded
    from pipofan_monai.preprocessing.pipelines import get_preprocessing_transforms

    old = get_preprocessing_transforms("image", None, spatial_size=32, ct_check=check, load_dtype=np.float32)
    assert old[0]({"image": str(path)})["image"].dtype == torch.float32
    a = new({"image": str(path)})["image"]
    d = {"image": str(path)}
    for t in old:
        d = t(d)
    b = d["image"]
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (1, 32, 32, 7)
    assert torch.equal(a.as_tensor(), b.as_tensor())
    assert torch.equal(a.affine, b.affine)
    assert [o["class"] for o in a.applied_operations] == [o["class"] for o in b.applied_operations]


def test_slab_activation_is_bitwise_the_whole_volume_softmax():
    act = Activationsd("pred", softmax=True)
    inv = SlabInverter([act], Invertd("pred", transform=get_inference_transforms(DEFAULT_PREPROCESSING),
                                      orig_keys="image"), AsDiscreted("pred", argmax=True), slices=3)
    torch.manual_seed(0)
    x = torch.randn(4, 32, 32, 11) * 20
    whole = torch.softmax(x, 0)
    assert inv.activates_slabs(x.shape)
    for z0 in range(0, 11, 3):
        assert torch.equal(inv._activate_slab(x[..., z0:z0 + 3]), whole[..., z0:z0 + 3])
    assert not inv.activates_slabs((4, 27, 23, 11))  # 621 pixels per slice: the whole volume is activated
    sigmoid_other = SlabInverter([Activationsd("pred", other=torch.tanh)], inv.invertd, inv.argmax)
    assert not sigmoid_other.activates_slabs(x.shape)


@pytest.mark.parametrize("affine", [LPS, RAS], ids=["lps", "ras"])
def test_bundle_labels_equal_the_float32_whole_volume_reference(tmp_path, affine):
    """The default path (int16 loading, slab softmax + inversion) against the reference: float32 loading,
    whole-volume softmax and MONAI's Invertd on the whole volume (stream_slices 0): the same label map."""
    src = _save(tmp_path / "ct.nii.gz", body_ct((48, 40, 13), 3), affine)
    ckpt = str(strong_ckpt(tmp_path / "m.pt", 22))
    runner = tiny_bundle_runner(tmp_path / "new", sw_batch_size=4, postprocess=False)
    assert runner.pipeline.pre[0].compact and runner.pipeline.streamer is not None
    new = runner.pipeline(str(src), runner._networks(ckpt))["pred"]
    ref_runner = tiny_bundle_runner(tmp_path / "ref", sw_batch_size=4, stream_slices=0, postprocess=False)
    loader = ref_runner.pipeline.pre[0]
    loader.compact = False
    loader._loader.dtype = np.float32  # the loading before the compact one
    assert ref_runner.pipeline.streamer is None
    ref = ref_runner.pipeline(str(src), ref_runner._networks(ckpt))["pred"]
    assert new.shape == ref.shape == (1, 48, 40, 13)
    new_t, ref_t = torch.as_tensor(new).to(torch.int64), torch.as_tensor(ref).to(torch.int64)
    assert torch.equal(new_t, ref_t)
    counts = torch.bincount(ref_t.flatten())
    assert int((counts > 1000).sum()) >= 2  # a real comparison: a boundary between classes
    assert np.allclose(np.asarray(new.affine), np.asarray(ref.affine))


def test_overview_png_holds_no_whole_volume_copy(tmp_path):
    """The PNG of a 256x256x160 case: the old code held the windowed float32 volume (40 MiB), its temporaries and
    an int64 copy of the labels (80 MiB), over 120 MiB; now only the shown slices are converted (about 13 MiB
    measured, most of it matplotlib's figure)."""
    from pipofan_monai.visualize import save_overlay_png

    image = np.full((256, 256, 160), -1000, np.int16)
    image[64:192, 64:192] = 40
    label = np.zeros((256, 256, 160), np.uint8)
    label[80:150, 90:160, 40:120] = 1
    label[160:180, 100:130, 60:90] = 3
    out = tmp_path / "o.png"
    tracemalloc.start()
    try:
        save_overlay_png(image, label, out, affine=np.diag([0.8, 0.8, 2.0, 1.0]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.stat().st_size > 1000
    assert peak < 32 * 2**20, f"overview PNG peak {peak / 2**20:.1f} MiB"


def test_all_finite_chunked_and_network_output_check():
    from pipofan_monai.apps.inference.pipeline import check_network_output
    from pipofan_monai.preprocessing.intensity import all_finite

    t = torch.randn(4, 8, 8, 10)
    assert all_finite(t, chunk=7) and all_finite(t.permute(3, 0, 1, 2), chunk=7)
    assert all_finite(torch.zeros(3, dtype=torch.int16))
    # finite values whose sum overflows: checked value by value, still finite; a NaN among them is found
    huge = torch.full((4, 8, 8, 10), 3e38)
    assert not torch.isfinite(huge.sum()) and all_finite(huge, chunk=7)
    huge[1, 2, 3, 4] = float("nan")
    assert not all_finite(huge, chunk=7)
    for idx, value in (((3, 7, 7, 9), float("nan")), ((0, 0, 0, 0), float("inf")), ((2, 3, 4, 5), -float("inf"))):
        bad = t.clone()
        bad[idx] = value
        assert not all_finite(bad, chunk=7) and not all_finite(bad.permute(3, 0, 1, 2), chunk=7)
        with pytest.raises(ValueError, match="network output of checkpoint 'ck' on img.nii.gz holds"):
            check_network_output(bad, "ck", "img.nii.gz")
