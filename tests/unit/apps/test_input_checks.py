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

"""Issue 13, items 7 and 9-14: outputs are complete or absent (full disk, killed writes, ``--overwrite skip``),
inputs that used to give wrong results with exit code 0 are refused by name (singular affines, label maps given
as CT, broken checkpoints, unknown dataset ids), and inputs that used to crash deep inside libraries get a clear
error at the earliest point. Tiny volumes, tiny network, CPU; a full disk is a patched ``nibabel.save`` that
writes part of the file and raises ``OSError(ENOSPC)``, plus a real 1 MiB tmpfs when the tests run as root."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import PositiveHUNet, threshold_ckpt
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from pipofan_monai.apps.inference import SegmentationRunner
from pipofan_monai.plans import load_network_weights
from pipofan_monai.apps.training.data import split_training_data
from pipofan_monai.losses import DeepPyramidSupervisionLoss, TargetAdaptiveLoss
from pipofan_monai.networks import PIPOFAN
from pipofan_monai.preprocessing import LoadCTd

# the checks and writers under test are imported inside the tests, so that on the code before the fix
# every behavioural test fails on its assertions, not on an import error

REPO = Path(__file__).resolve().parents[3]
INFER = REPO / "bundle" / "configs" / "inference.json"
TRAIN = REPO / "bundle" / "configs" / "train.json"
REALCT = Path(__file__).resolve().parents[4] / "shared" / "data" / "realct"
needs_realct = pytest.mark.skipif(not REALCT.is_dir(), reason=f"real CT test data not found at {REALCT}")
TINY = [8, 16, 32, 64, 64]


# ---------------------------------------------------------------------------------------------- helpers
def _ct(shape, seed: int = 0) -> np.ndarray:
    """HU-like int16 volume: air (-1000) around a soft-tissue block with noise."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, -1000, dtype=np.int16)
    sl = tuple(slice(s // 4, max(s // 4 + 1, 3 * s // 4)) for s in shape)
    img[sl] = rng.integers(-100, 200, size=img[sl].shape)
    return img


def _nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def _ckpt(path: Path) -> Path:
    return threshold_ckpt(path, PositiveHUNet)


def _runner(out: Path, network: torch.nn.Module | None = None, **overrides) -> SegmentationRunner:
    parser = ConfigParser()
    parser.read_config(str(INFER))
    cfg = {"bundle_root": str(REPO / "bundle"), "spatial_size": 0, "sw_batch_size": 8, "output_dir": str(out),
           "device": "cpu", "amp": False, "save_overlay": False, "postprocess": False, "fail_on_error": False}
    cfg.update(overrides)
    parser.update(cfg)
    kw = {k: parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")}
    return SegmentationRunner(network=network or PositiveHUNet(), **kw,
                              overwrite=parser.get_parsed_content("overwrite"), fail_on_error=False)


def _partial_then_enospc(monkeypatch):
    """nibabel.save that writes the first bytes of the file, then fails as a full disk does."""
    real = nib.save

    def full_disk(img, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\x1f\x8b\x08\x00" + b"\x00" * 60)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", full_disk)
    return real


def _chain(exc: BaseException) -> str:
    """The messages of an exception and its causes (MONAI's config parser wraps the original error)."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------------------- item 7: full disk
def test_full_disk_reports_cause_and_leaves_no_partial_output(tmp_path, monkeypatch):
    src = _nifti(tmp_path / "case.nii.gz", _ct((16, 16, 4)))
    out = tmp_path / "out"
    ckpt = _ckpt(tmp_path / "m.pt")
    real_save = _partial_then_enospc(monkeypatch)
    res = _runner(out, save_probabilities=True).run([src], ckpt)
    case = res["cases"][0]
    assert case["status"] == "failed"
    assert "No space left on device" in case["error"] and "[Errno 28]" in case["error"], case["error"]
    assert "suitable writer" not in case["error"] and str(out / "case_prob.nii.gz") in case["error"]
    assert sorted(os.listdir(out)) == []  # neither a truncated prob nor a 0-byte seg, no temporary file
    from pipofan_monai.inference.writers import output_is_complete

    # disk space back: a rerun with --overwrite skip segments the case (nothing complete to skip)
    monkeypatch.setattr(nib, "save", real_save)
    res = _runner(out, save_probabilities=True, overwrite="skip").run([src], ckpt)
    assert res["cases"][0]["status"] == "ok"
    seg = nib.load(str(out / "case_seg.nii.gz"))
    assert seg.shape == (16, 16, 4) and output_is_complete(out / "case_prob.nii.gz")
    expected = (_ct((16, 16, 4)) > 0).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected)


def test_full_disk_keeps_the_previous_output(tmp_path, monkeypatch):
    src = _nifti(tmp_path / "case.nii.gz", _ct((16, 16, 4)))
    out = tmp_path / "out"
    ckpt = _ckpt(tmp_path / "m.pt")
    assert _runner(out).run([src], ckpt)["num_ok"] == 1
    before = (out / "case_seg.nii.gz").read_bytes()
    _partial_then_enospc(monkeypatch)
    res = _runner(out, overwrite=True).run([src], ckpt)
    assert res["cases"][0]["status"] == "failed" and "No space left" in res["cases"][0]["error"]
    assert (out / "case_seg.nii.gz").read_bytes() == before
    assert sorted(os.listdir(out)) == ["case_seg.nii.gz"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    """A real ENOSPC: a 128 KiB tmpfs cannot hold the probabilities of a 64x64x64 volume (4 MiB raw)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        rng = np.random.default_rng(0)
        src = _nifti(tmp_path / "big.nii.gz", rng.integers(-1000, 1000, (64, 64, 64)).astype(np.int16))
        res = _runner(mnt, save_probabilities=True).run([src], _ckpt(tmp_path / "m.pt"))
        case = res["cases"][0]
        assert case["status"] == "failed" and "No space left on device" in case["error"], case["error"]
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_skip_redoes_truncated_and_missing_outputs(tmp_path):
    """Outputs of an earlier version killed by a full disk (0-byte seg, truncated prob) are not "done"."""
    from pipofan_monai.inference.writers import output_is_complete

    src = _nifti(tmp_path / "case.nii.gz", _ct((16, 16, 4)))
    out = tmp_path / "out"
    ckpt = _ckpt(tmp_path / "m.pt")
    assert _runner(out, save_probabilities=True).run([src], ckpt)["num_ok"] == 1
    prob = (out / "case_prob.nii.gz").read_bytes()
    (out / "case_prob.nii.gz").write_bytes(prob[: len(prob) // 2])
    (out / "case_seg.nii.gz").write_bytes(b"")
    assert not output_is_complete(out / "case_prob.nii.gz") and not output_is_complete(out / "case_seg.nii.gz")
    res = _runner(out, save_probabilities=True, overwrite="skip").run([src], ckpt)
    assert res["cases"][0]["status"] == "ok"
    assert output_is_complete(out / "case_prob.nii.gz") and output_is_complete(out / "case_seg.nii.gz")
    # complete outputs are skipped; one missing output is made again
    assert _runner(out, save_probabilities=True, overwrite="skip").run([src], ckpt)["num_skipped"] == 1
    (out / "case_seg.nii.gz").unlink()
    res = _runner(out, save_probabilities=True, overwrite="skip").run([src], ckpt)
    assert res["cases"][0]["status"] == "ok" and (out / "case_seg.nii.gz").is_file()
    # without overwrite an incomplete file is not replaced, and the message says it is incomplete
    (out / "case_seg.nii.gz").write_bytes(b"")
    res = _runner(out, save_probabilities=True).run([src], ckpt)
    assert "FileExistsError" in res["cases"][0]["error"] and "incomplete" in res["cases"][0]["error"]


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    src = _nifti(tmp_path / "case.nii.gz", _ct((16, 16, 4)))
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".case_seg.nii.gz.{_dead_pid()}.0123abcd.tmp.nii.gz"
    alive = out / f".case_seg.nii.gz.{os.getppid()}.89abcdef.tmp.nii.gz"  # a running process: kept
    other = out / f".notes.txt.{_dead_pid()}.0123abcd.tmp"  # not an output of this run: kept
    for p in (dead, alive, other):
        p.write_bytes(b"\x1f\x8b partial")
    res = _runner(out).run([src], _ckpt(tmp_path / "m.pt"))
    assert res["num_ok"] == 1
    assert not dead.exists() and alive.exists() and other.exists()
    from pipofan_monai.inference.writers import remove_stale_temp_files

    assert remove_stale_temp_files([out / "case_seg.nii.gz"]) == []


def test_output_is_complete_detects_truncation(tmp_path):
    from pipofan_monai.inference.writers import output_is_complete

    arr = np.arange(40 * 30 * 7, dtype=np.float32).reshape(40, 30, 7)
    for name in ("a.nii", "a.nii.gz"):
        p = _nifti(tmp_path / name, arr)
        assert output_is_complete(p)
        data = p.read_bytes()
        for cut in (0, 100, len(data) // 2, len(data) - 1):
            (tmp_path / ("t" + name)).write_bytes(data[:cut])
            assert not output_is_complete(tmp_path / ("t" + name)), (name, cut)
    assert not output_is_complete(tmp_path / "missing.nii.gz")
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    assert output_is_complete(png)
    png.write_bytes(png.read_bytes()[:-5])
    assert not output_is_complete(png)


def test_overview_png_is_complete_or_absent(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from pipofan_monai.visualize import save_overlay_png

    ct = _ct((24, 20, 6)).astype(np.float32)
    seg = (ct > 0).astype(np.uint8)
    png = tmp_path / "case_overview.png"
    save_overlay_png(ct, seg, png)
    before = png.read_bytes()
    assert before.endswith(b"IEND\xaeB`\x82")
    real = Figure.savefig

    def full_disk(self, fname, *args, **kwargs):
        real(self, fname, *args, **kwargs)  # the PNG bytes reach the file object, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_overlay_png(ct, 1 - seg, png)
    assert png.read_bytes() == before and os.listdir(tmp_path) == ["case_overview.png"]


def test_label_writer_keeps_shapes_and_writes_atomically(tmp_path):
    from pipofan_monai.inference.writers import AtomicSaveImaged, LabelNiftiWriter

    save = AtomicSaveImaged("pred", output_dir=str(tmp_path), output_postfix="seg", output_dtype=np.uint8,
                            writer=LabelNiftiWriter, resample=False, separate_folder=False, print_log=False)
    aff = torch.diag(torch.tensor([0.8, 0.7, 2.5, 1.0], dtype=torch.float64))
    for shape in [(1, 1, 1, 1), (1, 12, 10, 1), (1, 12, 10, 3)]:
        data = torch.arange(int(np.prod(shape))).reshape(shape).float() % 4
        save({"pred": MetaTensor(data, affine=aff, meta={"filename_or_obj": f"/in/v{shape[-1]}{shape[1]}.nii.gz"})})
        img = nib.load(str(tmp_path / f"v{shape[-1]}{shape[1]}_seg.nii.gz"))
        assert img.shape == shape[1:] and img.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(img.dataobj), data[0].numpy())
        np.testing.assert_allclose(img.affine, aff.numpy())
    assert all(not n.startswith(".") for n in os.listdir(tmp_path))
    assert oct(os.stat(tmp_path / "v11_seg.nii.gz").st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------------------------------------- item 9: affines
def _nifti_with_sform(path: Path, sform: np.ndarray, qform: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(_ct((16, 16, 4)), None)
    img.header.set_sform(sform, code=1)
    img.header.set_qform(qform, code=1 if qform is not None else 0)
    nib.save(img, str(path))
    return path


def test_singular_or_nan_affine_is_refused_by_name(tmp_path):
    zero_z = np.diag([0.8, 0.8, 0.0, 1.0])
    nan = np.diag([0.8, 0.8, 2.0, 1.0])
    nan[1, 3] = np.nan
    files = {
        "zero_z": (_nifti_with_sform(tmp_path / "zero_z.nii.gz", zero_z), "voxel spacing along axis 2 is 0"),
        "nan": (_nifti_with_sform(tmp_path / "nan.nii.gz", nan), "NaN"),
    }
    out = tmp_path / "out"
    res = _runner(out).run([p for p, _ in files.values()], _ckpt(tmp_path / "m.pt"))
    for case, (path, words) in zip(res["cases"], files.values()):
        assert case["status"] == "failed", case
        assert str(path) in case["error"] and "unusable affine" in case["error"] and words in case["error"], case
    assert not out.exists() or os.listdir(out) == []  # no output with an identity affine


def test_valid_qform_is_used_with_a_warning(tmp_path, caplog):
    qform = np.diag([0.8, 0.8, 2.0, 1.0])
    qform[:3, 3] = (-10.0, 5.0, 30.0)
    src = _nifti_with_sform(tmp_path / "q.nii.gz", np.diag([0.8, 0.8, 0.0, 1.0]), qform)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _runner(out).run([src], _ckpt(tmp_path / "m.pt"))
    assert res["num_ok"] == 1
    assert any("using the file's valid qform" in str(w.message) and str(src) in str(w.message) for w in caught)
    np.testing.assert_allclose(nib.load(str(out / "q_seg.nii.gz")).affine, qform, atol=1e-5)
    from pipofan_monai.preprocessing import CheckAffined

    with pytest.raises(ValueError, match="unusable affine"):
        CheckAffined("image", qform_fallback=False)(LoadCTd("image")({"image": str(src)}))


def _nrrd(path: Path, directions: str, shape=(16, 16, 4)) -> Path:
    arr = _ct(shape)
    header = (f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {' '.join(map(str, shape))}\n"
              f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
              "space origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + arr.transpose(2, 1, 0).astype("<i2").tobytes())
    return path


def test_nrrd_with_zero_slice_spacing_is_refused_by_name(tmp_path):
    bad = _nrrd(tmp_path / "zero.nrrd", "(0.8,0,0) (0,0.8,0) (0,0,0)")
    good = _nrrd(tmp_path / "good.nrrd", "(0.8,0,0) (0,0.8,0) (0,0,2)")
    res = _runner(tmp_path / "out").run([bad, good], _ckpt(tmp_path / "m.pt"))
    case = res["cases"][0]
    assert case["status"] == "failed" and str(bad) in case["error"], case
    assert "voxel spacing along axis 2 is 0" in case["error"] and "start_ornt" not in case["error"]
    assert res["cases"][1]["status"] == "ok"


# ---------------------------------------------------------------------------------------------- item 10: not CT
def test_label_maps_and_unscaled_values_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[4:10, 4:10] = 1
    lab[10:14, 2:6] = 3
    raw = rng.integers(0, 4000, (16, 16, 4)).astype(np.uint16)  # CT stored values without the rescale
    files = {
        "label": (_nifti(tmp_path / "seg.nii.gz", lab), "looks like a label map"),
        "raw": (_nifti(tmp_path / "raw.nii.gz", raw), "not Hounsfield units"),
    }
    ct = _nifti(tmp_path / "ct.nii.gz", _ct((16, 16, 4)))
    out = tmp_path / "out"
    res = _runner(out).run([files["label"][0], files["raw"][0], ct], _ckpt(tmp_path / "m.pt"))
    for case, (path, words) in zip(res["cases"], files.values()):
        assert case["status"] == "failed" and str(path) in case["error"] and words in case["error"], case
        assert "not plausibly a CT" in case["error"]
    assert res["cases"][2]["status"] == "ok"
    assert sorted(os.listdir(out)) == ["ct_seg.nii.gz"]
    # --ct_check warn segments them with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _runner(tmp_path / "out2", ct_check="warn").run([files["label"][0]], _ckpt(tmp_path / "m2.pt"))
    assert res["num_ok"] == 1 and any("looks like a label map" in str(w.message) for w in caught)


@needs_realct
def test_real_ct_passes_and_real_segmentations_are_refused():
    from pipofan_monai.preprocessing import CheckCTIntensityd

    check = CheckCTIntensityd("image")
    # the JPEG-2000 series ts_upper_abdomen_dicom/dicom (12 s to decode) passes the same check in the bundle's
    # preprocessing in tests/integration/test_inference_workflow.py::test_geometry_exact_round_trip
    for rel in ("dcmqi_ct3slice/dicom", "deeplesion_pelvis/ct_pli.nii.gz", "ts_chest_cropped/ct.nii.gz",
                "pydicom_ct_small/CT_small.dcm"):
        d = LoadCTd("image")({"image": str(REALCT / rel)})
        assert check(d)["image"] is d["image"], rel
    for rel, values in (("ts_upper_abdomen_dicom/labels_abd4_ras.nii.gz", "3 distinct integer values (0, 1, 4)"),
                        ("dcmqi_ct3slice/liver_seg.nrrd", "2 distinct integer values (0, 1)"),
                        ("dcmqi_ct3slice/liver_seg.dcm", "2 distinct integer values (0, 255)")):  # DICOM SEG
        d = LoadCTd("image")({"image": str(REALCT / rel)})
        with pytest.raises(ValueError, match="looks like a label map") as err:
            check(d)
        assert values in str(err.value) and str(REALCT / rel) in str(err.value)


# ---------------------------------------------------------------------------------------------- item 11: weights
def test_checkpoint_with_nan_or_negative_variance_fails_at_load(tmp_path):
    torch.manual_seed(0)
    net = PIPOFAN(channels=TINY)
    sd = net.state_dict()
    nan_sd = {k: v.clone() for k, v in sd.items()}
    nan_sd["stem.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan_sd, tmp_path / "nan.pt")
    var_key = next(k for k in sd if k.endswith("running_var"))
    var_sd = {k: v.clone() for k, v in sd.items()}
    var_sd[var_key][0] = -1.0
    torch.save({"model": var_sd}, tmp_path / "var.pt")
    with pytest.raises(ValueError, match="broken weights") as err:
        load_network_weights(PIPOFAN(channels=TINY), tmp_path / "nan.pt")
    assert str(tmp_path / "nan.pt") in str(err.value) and "stem.conv1.weight (1 NaN" in str(err.value)
    with pytest.raises(ValueError, match="negative normalisation variance") as err:
        load_network_weights(PIPOFAN(channels=TINY), tmp_path / "var.pt")
    assert str(tmp_path / "var.pt") in str(err.value) and var_key in str(err.value)


def test_non_finite_network_output_fails_naming_the_checkpoint(tmp_path):
    src = _nifti(tmp_path / "case.nii.gz", _ct((16, 16, 4)))
    ckpt = _ckpt(tmp_path / "diverged.pt")
    out = tmp_path / "out"
    res = _runner(out, network=PositiveHUNet(nan=True)).run([src], ckpt)
    case = res["cases"][0]
    assert case["status"] == "failed" and str(ckpt) in case["error"] and "NaN" in case["error"], case
    assert not (out / "case_seg.nii.gz").exists()  # no all-background label map


# ---------------------------------------------------------------------------------------------- items 12-13: datalist
def _datalist(tmp_path: Path, datasets=("lits", "lits", "kits19", "kits19"), slices=(4, 4, 4, 4)) -> dict:
    items = []
    for i, (ds, d) in enumerate(zip(datasets, slices)):
        img = _nifti(tmp_path / f"img{i}.nii.gz", _ct((16, 16, d)))
        lab = _nifti(tmp_path / f"lab{i}.nii.gz", np.zeros((16, 16, d), np.uint8))
        item = {"image": str(img), "label": str(lab), "fold": i % 2, "case_id": f"c{i}"}
        if ds is not None:
            item["dataset"] = ds
        items.append(item)
    return {"num_folds": 2, "training": items}


def test_unknown_dataset_ids_are_an_error_listing_the_known_ones(tmp_path):
    data = _datalist(tmp_path)
    with pytest.raises(ValueError, match=r"unknown dataset id\(s\) \['foo'\]") as err:
        split_training_data(data, fold=0, num_folds=2, datasets=["lits", "foo"])
    assert "['kits19', 'lits']" in str(err.value) and "msd_spleen" in str(err.value)
    train, val = split_training_data(data, fold=0, num_folds=2, datasets=["kits"])  # alias of kits19
    assert [it["dataset"] for it in train + val] == ["kits19", "kits19"]
    train, _ = split_training_data(data, fold=0, num_folds=2, datasets="lits")  # one id, not a substring test
    assert [it["case_id"] for it in train] == ["c1"]


def test_unknown_dataset_ids_through_the_bundle_config(tmp_path):
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps(_datalist(tmp_path)))
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({"bundle_root": str(tmp_path), "datalist": str(dl), "num_folds": 2, "datasets": ["lits", "foo"]})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("data_split")
    assert "unknown dataset id(s) ['foo']" in _chain(err.value)


def test_items_mixing_with_and_without_dataset_key_fail_at_start_up(tmp_path):
    data = _datalist(tmp_path, datasets=("lits", None, "kits19", "kits19"))
    with pytest.raises(ValueError, match=r"1 of 4 training items have no 'dataset' key: item 1 \(c1\)"):
        split_training_data(data, fold=0, num_folds=2)
    # the documented rule: no item names a dataset -> all are fully labeled in the global convention
    train, val = split_training_data(_datalist(tmp_path, datasets=(None,) * 4), fold=0, num_folds=2)
    assert len(train) == 2 and len(val) == 2


def test_volumes_thinner_than_the_slab_fail_at_start_up(tmp_path):
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps(_datalist(tmp_path, slices=(1, 2, 4, 4))))
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({"bundle_root": str(tmp_path), "datalist": str(dl), "num_folds": 2, "fold": 0})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("data_split")  # at start-up, before any caching or sampling
    msg = _chain(err.value)
    assert "fewer than 3 slices" in msg
    assert str(tmp_path / "img1.nii.gz") in msg and "(16, 16, 2)" in msg
    assert "img0" not in msg  # a validation volume: inference handles 1 slice


# ---------------------------------------------------------------------------------------------- item 14: crashes
def test_one_voxel_volume_gets_a_clear_error(tmp_path):
    src = _nifti(tmp_path / "dot.nii.gz", np.full((1, 1, 1), -1000, np.int16))
    res = _runner(tmp_path / "out").run([src], _ckpt(tmp_path / "m.pt"))
    err = res["cases"][0]["error"]
    assert "too small to be a CT volume" in err and str(src) in err and "writer" not in err


def test_tal_on_an_empty_batch_is_a_clear_error():
    loss = TargetAdaptiveLoss()
    with pytest.raises(ValueError, match="empty input of shape \\(0, 4, 8, 8\\)"):
        loss(torch.zeros(0, 4, 8, 8), torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="empty input"):
        DeepPyramidSupervisionLoss()([torch.zeros(0, 4, 8, 8)] * 3, torch.zeros(0, 1, 8, 8))


def test_deep_supervision_checks_the_number_of_outputs():
    y = torch.randint(0, 4, (2, 1, 16, 16))
    outs = [torch.randn(2, 4, 16, 16) for _ in range(6)]
    loss = DeepPyramidSupervisionLoss(num_scales=5)
    assert torch.isfinite(loss(outs, y))
    for n in (2, 5, 7):
        with pytest.raises(ValueError, match=f"expects 6 outputs .*got a list of {n}"):
            loss([torch.randn(2, 4, 16, 16) for _ in range(n)], y)
    assert torch.isfinite(DeepPyramidSupervisionLoss(num_scales=3, has_fused=False)(outs[:3], y))
    with pytest.raises(ValueError, match="expects 3 outputs"):
        DeepPyramidSupervisionLoss(num_scales=3, has_fused=False)(outs[:4], y)
    with pytest.raises(ValueError, match="num_scales"):
        DeepPyramidSupervisionLoss(num_scales=0)
    # the bundle sets it from the network
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({"network_def#num_scales_out": 3, "network_channels": TINY, "device": "cpu"})
    assert parser.get_parsed_content("loss").num_scales == 3


def test_float64_input_to_pipofan_is_a_clear_error():
    net = PIPOFAN(channels=TINY).eval()
    with pytest.raises(TypeError, match="float64 input .* x.float\\(\\)"):
        net(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point input"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.int16))
    with torch.no_grad():
        assert net.double()(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
