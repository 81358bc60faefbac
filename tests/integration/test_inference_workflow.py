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

"""The bundle's inference workflow (configs/inference.json + pipofan_monai.apps.inference.runner): the real bundle
runner, geometry round trips (RAS, LPS, PLI NIfTI, DICOM series), every slice written, bad inputs, overwrite
protection, checkpoint checks, fold ensembles and evaluation. Tiny network, tiny volumes, CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import INFER_CONFIG, TINY, PositiveHUNet, random_ct, threshold_ckpt, tiny_bundle_parser
from monai.bundle import ConfigParser
from monai.transforms import LoadImage

from pipofan_monai.ensembling import majority_vote, mean_probabilities
from pipofan_monai.apps.inference import InferenceError, SegmentationRunner, resolve_inputs
from pipofan_monai.plans import load_network_weights
from pipofan_monai.preprocessing import CheckVolumed
from pipofan_monai.networks import PIPOFAN

REPO = Path(__file__).resolve().parents[2]
EVAL_CONFIG = REPO / "bundle" / "configs" / "evaluate.json"
REALCT = Path(__file__).resolve().parents[3] / "shared" / "data" / "realct"
needs_realct = pytest.mark.skipif(not REALCT.is_dir(), reason=f"real CT test data not found at {REALCT}")



def _save_ckpt(path: Path, seed: int, channels=TINY, wrap: bool = False) -> Path:
    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=channels)
    sd = net.state_dict()
    torch.save({"model": sd} if wrap else sd, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_ckpt(tmp_path_factory.mktemp("ckpt") / "model.pt", seed=0)


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _affine(spacing, origin, flips=(1, 1, 1)) -> np.ndarray:
    a = np.diag([s * f for s, f in zip(spacing, flips)] + [1.0])
    a[:3, 3] = origin
    return a


def _runner(out_dir: Path, network: torch.nn.Module | None = None, **overrides) -> SegmentationRunner:
    parser = tiny_bundle_parser(out_dir, **overrides)
    if network is None:
        return parser.get_parsed_content("runner")
    kw = {k: parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")}
    return SegmentationRunner(network=network, **kw, overwrite=parser.get_parsed_content("overwrite"))


# ---------------------------------------------------------------------------------------------- bundle runner
def test_bundle_cli_run_inference(tmp_path):
    """The real command line: list overrides, output naming, uint8 output on the input grid holding the network's
    labels (a checkpoint that says "kidney" everywhere), a bad input listed at the end with a non-zero exit while
    the good one is written."""
    ckpt = _constant_ckpt(tmp_path / "kidney.pt", 2)
    good = _nifti(tmp_path / "case_a.nii.gz", random_ct((20, 18, 3)), _affine((1.5, 1.5, 3.0), (-10, 20, 30)))
    bad = _nifti(tmp_path / "flat.nii.gz", random_ct((20, 18)), np.eye(4))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(INFER_CONFIG),
           "--input_files", f"['{good}', '{bad}']", "--output_dir", str(out), "--ckpt_path", str(ckpt),
           "--network_channels", "[8,16,32,64,64]", "--spatial_size", "32", "--save_overlay", "False"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "1 of 2 inputs failed" in log and str(bad) in log and "2D image" in log, log[-3000:]
    seg = nib.load(str(out / "case_a_seg.nii.gz"))
    ref = nib.load(str(good))
    assert seg.shape == (20, 18, 3)
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    assert (np.asarray(seg.dataobj) == 2).all()
    # the label map and the run report, nothing else
    assert sorted(p.name for p in out.iterdir()) == ["case_a_seg.nii.gz", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert [c["status"] for c in report["cases"]] == ["ok", "failed"]  # the 2D input failed, named in the report


def test_config_components_for_monai_label(tmp_path):
    """Keys MONAI Label reads: network_def, preprocessing (first transform loads {"image": path}), inferer,
    postprocessing with an Invertd; no @_meta_ references."""
    parser = tiny_bundle_parser(tmp_path)
    text = INFER_CONFIG.read_text()
    assert "_meta_" not in text
    for key in ("device", "bundle_root", "network_def", "preprocessing", "postprocessing", "inferer", "run",
                "inference", "ensemble"):
        assert key in parser.config, key
    pre = parser.get_parsed_content("preprocessing")
    assert type(pre.transforms[0]).__name__ == "LoadCTd" and tuple(pre.transforms[0].keys) == ("image",)
    post = parser.get_parsed_content("postprocessing")
    names = [type(t).__name__ for t in post.transforms]
    assert names == ["Activationsd", "Invertd", "AsDiscreted", "KeepLargestOrganComponentsd", "AtomicSaveImaged"]
    assert type(parser.get_parsed_content("inferer")).__name__ == "SlidingSliceInferer"


# ---------------------------------------------------------------------------------------------- geometry
@needs_realct
def test_geometry_exact_round_trip(tmp_path):
    """No resize + a thresholding network: output == (HU > 0) voxel for voxel, with the input's shape and affine,
    for RAS, LPS, the PLI volume, a one-slice volume and the DICOM series; every slice written."""
    ras = _nifti(tmp_path / "ras.nii.gz", random_ct((24, 20, 6), 1), _affine((0.8, 0.9, 2.5), (5, -7, 11)))
    lps = _nifti(tmp_path / "lps.nii.gz", random_ct((22, 26, 5), 2),
                 _affine((0.8, 0.9, 2.5), (50, 60, -20), (-1, -1, 1)))
    one = _nifti(tmp_path / "one.nii.gz", random_ct((20, 16, 1), 3), _affine((1, 1, 5), (0, 0, 0)))
    pli_img = nib.load(str(REALCT / "deeplesion_pelvis" / "ct_pli.nii.gz")).slicer[200:248, 180:236, :]
    assert nib.aff2axcodes(pli_img.affine) == ("P", "L", "I")
    pli = tmp_path / "pli.nii.gz"
    nib.save(pli_img, str(pli))
    dicom = REALCT / "ts_upper_abdomen_dicom" / "dicom"
    nrrd = REALCT / "dcmqi_ct3slice" / "liver_seg.nrrd"  # a 0/1 mask, read by ITK like any NRRD image
    out = tmp_path / "out"
    thr = threshold_ckpt(tmp_path / "thr.pt", PositiveHUNet)
    # the real CT (JPEG-2000 DICOM, PLI NIfTI) passes the default CT plausibility check; the NRRD is a mask, which
    # that check refuses (tests/unit/apps/test_input_checks.py): its geometry is tested with the check off
    res = _runner(out, PositiveHUNet(), spatial_size=0, postprocess=False).run([ras, lps, one, pli, dicom], thr)
    assert res["num_ok"] == 5, res
    res = _runner(out, PositiveHUNet(), spatial_size=0, postprocess=False, ct_check="off").run([nrrd], thr)
    assert res["num_ok"] == 1, res
    for src in (ras, lps, one, pli):
        ref = nib.load(str(src))
        seg = nib.load(str(out / src.name.replace(".nii.gz", "_seg.nii.gz")))
        assert seg.shape == ref.shape, src.name
        np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), (np.asarray(ref.dataobj) > 0).astype(np.uint8))
    for src, name, shape in ((dicom, "dicom_seg.nii.gz", (512, 512, 20)), (nrrd, "liver_seg_seg.nii.gz", None)):
        ref = LoadImage(image_only=True)(str(src))  # the geometry as ITK/MONAI read it (RAS affine)
        seg = nib.load(str(out / name))
        assert seg.shape == tuple(ref.shape) == (shape or tuple(ref.shape))
        np.testing.assert_allclose(seg.affine, np.asarray(ref.affine), atol=1e-3)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), (ref.numpy() > 0).astype(np.uint8))
    assert np.asarray(nib.load(str(out / "liver_seg_seg.nii.gz")).dataobj).sum() > 0


def test_geometry_with_resize(tmp_path, ckpt):
    """The real pipeline (in-plane resize to 32, PIPO-FAN, inversion with probability resampling): shape and affine
    of the input for odd sizes, LPS storage and 1 or 2 slices."""
    cases = {
        "lps": (random_ct((27, 23, 5), 4), _affine((0.7, 0.7, 3.0), (1, 2, 3), (-1, -1, 1))),
        "oneslice": (random_ct((30, 28, 1), 5), _affine((1.0, 1.0, 5.0), (0, 0, 0))),
        "twoslices": (random_ct((30, 28, 2), 6).astype(np.float32), _affine((1.0, 1.2, 5.0), (3, 0, 0), (1, -1, 1))),
    }
    paths = [_nifti(tmp_path / f"{k}.nii.gz", a, aff) for k, (a, aff) in cases.items()]
    out = tmp_path / "out"
    res = _runner(out).run(paths, ckpt)
    assert res["num_ok"] == 3
    for p in paths:
        ref, seg = nib.load(str(p)), nib.load(str(out / p.name.replace(".nii.gz", "_seg.nii.gz")))
        assert seg.shape == ref.shape and seg.get_data_dtype() == np.uint8
        np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)


def _constant_ckpt(path: Path, cls: int) -> Path:
    """A PIPO-FAN checkpoint whose every head outputs the same constant logits (class ``cls`` wins)."""
    torch.manual_seed(0)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY)
    sd = net.state_dict()
    for k in sd:
        if k.endswith("head.conv.weight"):
            sd[k].zero_()
        if k.endswith("head.conv.bias"):
            sd[k].copy_(torch.nn.functional.one_hot(torch.tensor(cls), 4).float() * 10)
    torch.save(sd, path)
    return path


def test_every_slice_written_and_memory_batching(tmp_path):
    """A constant network through the resize path, sw_batch_size smaller than the slice count: every voxel of
    every slice (first and last included) holds the class."""
    src = _nifti(tmp_path / "vol.nii.gz", random_ct((20, 22, 11), 7), _affine((1, 1, 2), (0, 0, 0)))
    out = tmp_path / "out"
    res = _runner(out, sw_batch_size=4).run([src], _constant_ckpt(tmp_path / "c.pt", 3))
    assert res["num_ok"] == 1
    seg = np.asarray(nib.load(str(out / "vol_seg.nii.gz")).dataobj)
    assert seg.shape == (20, 22, 11)
    assert (seg == 3).all()


# ---------------------------------------------------------------------------------------------- bad inputs
@needs_realct
def test_bad_inputs_listed_others_processed(tmp_path, ckpt):
    good = _nifti(tmp_path / "good.nii.gz", random_ct((16, 16, 3)), np.eye(4))
    nan = random_ct((16, 16, 3)).astype(np.float32)
    nan[3, 4, 1] = np.nan
    bad = {
        "2d": (_nifti(tmp_path / "flat.nii.gz", random_ct((16, 16)), np.eye(4)), "2D image"),
        "4d": (_nifti(tmp_path / "series4d.nii.gz", random_ct((16, 16, 3, 2)), np.eye(4)), "holds 2 volumes"),
        "nan": (_nifti(tmp_path / "nan.nii.gz", nan, np.eye(4)), "1 NaN"),
        "missing": (tmp_path / "missing.nii.gz", "not found"),
        "empty_dir": (tmp_path / "empty_series", "contains no DICOM series"),
        "not_dicom": (tmp_path / "notes", "contains no DICOM series"),
        "corrupt": (tmp_path / "corrupt.nii.gz", "could not read"),
    }
    (tmp_path / "empty_series").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    (tmp_path / "other").mkdir()
    _nifti(tmp_path / "other" / "good.nii.gz", random_ct((16, 16, 3)), np.eye(4))
    out = tmp_path / "out"
    inputs = [bad["2d"][0], bad["4d"][0], good, bad["nan"][0], bad["missing"][0], bad["empty_dir"][0],
              bad["not_dicom"][0], bad["corrupt"][0], tmp_path / "other" / "good.nii.gz"]
    with pytest.raises(InferenceError) as err:
        _runner(out).run(inputs, ckpt)
    msg = str(err.value)
    assert msg.startswith(f"{len(bad)} of {len(inputs)} inputs failed")
    for path, words in bad.values():
        line = next((ln for ln in msg.splitlines() if ln.strip().startswith(str(path) + ":")), None)
        assert line is not None and words in line, (path, words, msg)
    # the same file name in another folder is no clash: the input folders are mirrored under the output folder
    assert (out / "good_seg.nii.gz").is_file() and (out / "other" / "good_seg.nii.gz").is_file()
    # without fail_on_error the statuses are returned
    res = _runner(out, fail_on_error=False, overwrite=True).run([good, bad["4d"][0]], ckpt)
    assert [c["status"] for c in res["cases"]] == ["ok", "failed"]
    assert res["num_failed"] == 1


def test_check_volumed_accepts_single_volume_4d(tmp_path):
    arr = random_ct((10, 12, 3, 1))
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(_nifti(tmp_path / "t1.nii.gz", arr, np.eye(4))))
    assert tuple(CheckVolumed("image")({"image": img})["image"].shape) == (1, 10, 12, 3)


def test_checkpoint_errors(tmp_path, ckpt):
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_network_weights(net, tmp_path / "nope.pt")
    other = _save_ckpt(tmp_path / "other.pt", 0, channels=[4, 8, 16, 32, 32])
    with pytest.raises(ValueError, match=r"shape mismatches.*checkpoint \(4, 3, 3, 3\) vs network \(8, 3, 3, 3\)"):
        load_network_weights(net, other)
    sd = torch.load(ckpt, weights_only=True)
    renamed = {k.replace("encoder", "enc"): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        load_network_weights(net, tmp_path / "renamed.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_network_weights(net, tmp_path / "garbage.pt")
    # accepted: {"model": sd} (training's last.pt) and a DDP "module." prefix; weights really loaded
    wrapped = _save_ckpt(tmp_path / "wrapped.pt", 1, wrap=True)
    load_network_weights(net, wrapped)
    ref = torch.load(wrapped, weights_only=True)["model"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.items())
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    load_network_weights(net, tmp_path / "ddp.pt")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    # in a run, a bad checkpoint stops everything before any output is written
    src = _nifti(tmp_path / "v.nii.gz", random_ct((16, 16, 2)), np.eye(4))
    with pytest.raises(ValueError, match="does not match the network"):
        _runner(tmp_path / "out").run([src], other)
    # no output; the run report says why
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json"]
    assert "shape mismatches" in json.dumps(json.loads((tmp_path / "out" / "report.json").read_text()))


def test_overwrite_protection(tmp_path, ckpt):
    src = _nifti(tmp_path / "v.nii.gz", random_ct((16, 16, 2)), np.eye(4))
    out = tmp_path / "out"
    target = out / "v_seg.nii.gz"
    _runner(out).run([src], ckpt)
    _nifti(target, np.full((16, 16, 2), 7, np.uint8), np.eye(4))  # a complete earlier result
    previous = target.read_bytes()
    with pytest.raises(InferenceError, match=f"output file exists: {target}"):
        _runner(out).run([src], ckpt)
    assert target.read_bytes() == previous
    res = _runner(out, overwrite="skip").run([src], ckpt)
    assert res["cases"][0]["status"] == "skipped" and target.read_bytes() == previous
    target.write_bytes(b"truncated")  # not a complete output: skip segments the case again
    res = _runner(out, overwrite="skip").run([src], ckpt)
    assert res["cases"][0]["status"] == "ok" and nib.load(str(target)).shape == (16, 16, 2)
    res = _runner(out, overwrite=True).run([src], ckpt)
    assert res["cases"][0]["status"] == "ok" and nib.load(str(target)).shape == (16, 16, 2)


# ---------------------------------------------------------------------------------------------- ensembles
def test_majority_vote_hand_made():
    a = torch.tensor([[0, 1, 2, 3, 1, 2]])
    b = torch.tensor([[0, 1, 3, 3, 2, 0]])
    c = torch.tensor([[1, 1, 3, 0, 3, 3]])
    # votes: col0 0,0,1 -> 0; col1 1; col2 2,3,3 -> 3; col3 3,3,0 -> 3; col4 1,2,3 tie -> 1 (lowest); col5 2,0,3 -> 0
    np.testing.assert_array_equal(majority_vote([a, b, c], 4).numpy(), [[0, 1, 3, 3, 1, 0]])
    # four voters, 2-2 tie between liver and spleen -> liver (lower id); background loses to 2 votes
    maps = [np.array([1]), np.array([3]), np.array([3]), np.array([1])]
    assert majority_vote(maps, 4).tolist() == [1]
    assert majority_vote([np.array([2, 0], dtype=np.uint8)], 4).dtype == np.uint8
    with pytest.raises(ValueError, match="at least one"):
        majority_vote([], 4)
    with pytest.raises(ValueError, match="shape"):
        majority_vote([a, a[:, :3]], 4)
    with pytest.raises(ValueError, match="outside the class ids"):
        majority_vote([a, a + 1], 4)


def test_mean_probabilities():
    p = [torch.tensor([[0.2, 0.8]]), torch.tensor([[0.6, 0.4]]), torch.tensor([[1.0, 0.0]])]
    np.testing.assert_allclose(mean_probabilities(iter(p)).numpy(), [[0.6, 0.4]], rtol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        mean_probabilities([])


def test_ensemble_run_equals_combination_of_single_runs(tmp_path):
    """vote == majority_vote of the single-model label maps; mean == argmax of the mean of their probabilities
    (both on the original grid); save_probabilities writes the mean probabilities."""
    src = _nifti(tmp_path / "v.nii.gz", random_ct((21, 19, 4), 9), _affine((1.1, 0.9, 3), (0, 0, 0), (-1, 1, 1)))
    ckpts = [_save_ckpt(tmp_path / f"m{k}.pt", seed=10 + k) for k in range(3)]
    labels, probs = [], []
    for k, c in enumerate(ckpts):
        out = tmp_path / f"single{k}"
        _runner(out, postprocess=False, save_probabilities=True).run([src], c)
        labels.append(np.asarray(nib.load(str(out / "v_seg.nii.gz")).dataobj))
        probs.append(nib.load(str(out / "v_prob.nii.gz")).get_fdata(dtype=np.float32))
    assert probs[0].shape == (21, 19, 4, 4)  # channel last in the NIfTI
    assert len({lab.tobytes() for lab in labels}) == 3  # the models disagree somewhere
    vote_dir = tmp_path / "vote"
    _runner(vote_dir, postprocess=False).run([src], ckpts)
    voted = np.asarray(nib.load(str(vote_dir / "v_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(voted, majority_vote(labels, 4))
    mean_dir = tmp_path / "mean"
    _runner(mean_dir, postprocess=False, ensemble_mode="mean", save_probabilities=True).run([src], ckpts)
    mean_p = np.mean(probs, axis=0)
    np.testing.assert_allclose(nib.load(str(mean_dir / "v_prob.nii.gz")).get_fdata(), mean_p, atol=1e-5)
    mean_lab = np.asarray(nib.load(str(mean_dir / "v_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(mean_lab, mean_p.argmax(-1))
    with pytest.raises(ValueError, match="ensemble_mode must be 'vote' or 'mean', got 'max'"):
        SegmentationRunner(torch.nn.Identity(), [], None, [], ensemble_mode="max")


# ---------------------------------------------------------------------------------------------- inputs, evaluation
def test_resolve_inputs(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("b.nii.gz", "a.nrrd", "notes.txt"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    assert resolve_inputs(str(tmp_path / "imgs" / "b.nii.gz")) == [{"image": str(tmp_path / "imgs" / "b.nii.gz")}]
    assert [i["image"] for i in resolve_inputs(dataset_dir=tmp_path / "imgs")] == [
        str(tmp_path / "imgs" / "a.nrrd"), str(tmp_path / "imgs" / "b.nii.gz")]
    dl = {"test": [{"image": "imgs/b.nii.gz", "label": "lab/b.nii.gz", "dataset": "lits"}, "imgs/a.nrrd"]}
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    items = resolve_inputs(datalist=tmp_path / "dl.json")
    assert items[0] == {"image": str(tmp_path / "imgs" / "b.nii.gz"), "label": str(tmp_path / "lab" / "b.nii.gz"),
                        "dataset": "lits"}
    assert items[1] == {"image": str(tmp_path / "imgs" / "a.nrrd")}
    with pytest.raises(ValueError, match="no list 'validation'"):
        resolve_inputs(datalist=tmp_path / "dl.json", datalist_key="validation")
    with pytest.raises(FileNotFoundError, match="dataset_dir not found"):
        resolve_inputs(dataset_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to segment"):
        resolve_inputs(dataset_dir=tmp_path / "empty")


@needs_realct
def test_evaluate_with_labels_and_overview(tmp_path, ckpt):
    """evaluate.json overlay: labeled DICOM (3 slices) + NRRD liver mask; reports, overview PNG with the ground
    truth; a constant 'liver' model gives Dice = 2|GT| / (|GT| + all voxels)."""
    parser = ConfigParser()
    parser.read_config([str(INFER_CONFIG), str(EVAL_CONFIG)])
    parser.update({"bundle_root": str(REPO / "bundle"), "network_channels": TINY, "spatial_size": 32,
                   "device": "cpu", "amp": False, "output_dir": str(tmp_path / "eval"), "postprocess": False})
    assert parser.get_parsed_content("compute_metrics") is True
    dcmqi = REALCT / "dcmqi_ct3slice"
    item = {"image": str(dcmqi / "dicom"), "label": str(dcmqi / "liver_seg.nrrd"), "dataset": "lits"}
    res = parser.get_parsed_content("runner").run([item], _constant_ckpt(tmp_path / "liver.pt", 1))
    gt = LoadImage(image_only=True)(item["label"]).numpy() > 0
    expected = 2 * gt.sum() / (gt.sum() + gt.size)
    organs = res["evaluation"]["organs"]
    assert organs["liver"]["n_cases"] == 1 and organs["kidney"]["n_cases"] == 0  # LiTS labels only the liver
    np.testing.assert_allclose(organs["liver"]["dice_mean"], expected, rtol=1e-6)
    for name in ("evaluation.json", "evaluation_cases.csv", "evaluation_summary.csv", "dicom_overview.png",
                 "dicom_seg.nii.gz"):
        assert (tmp_path / "eval" / name).is_file(), name
