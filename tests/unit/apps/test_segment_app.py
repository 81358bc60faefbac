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

"""``pipofan segment`` (pipofan_monai.apps.segment.main) and ``pipofan_monai.segment``: the bundle's label maps,
plain options, ensembles from a folder of fold models, mirrored folders, report.json, statistics, in-memory
results, and a --help that answers without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_utils import INFER_CONFIG, TINY, body_ct, nifti, strong_ckpt

from pipofan_monai.apps.segment import expand_inputs, main

REPO = Path(__file__).resolve().parents[3]


def _ckpt(path: Path, seed: int = 0) -> Path:
    """A tiny model with its plans (32x32), heads strengthened so that several classes win somewhere."""
    return strong_ckpt(path, seed, plans_size=32)


def _ct(path: Path, shape=(24, 20, 4), seed: int = 0) -> Path:
    return nifti(path, body_ct(shape, seed), spacing=(0.8, 0.9, 2.5))


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_help_answers_fast_without_torch():
    code = ("import sys, time; t = time.perf_counter()\nfrom pipofan_monai.apps.segment import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('HEAVY', [m for m in ('torch', 'monai') if m in sys.modules], time.perf_counter() - t)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "--output_type {nifti,dicom_seg}" in proc.stdout and "--organs LIST" in proc.stdout
    assert "HEAVY []" in proc.stdout  # neither torch nor MONAI imported
    assert wall < 2.0, wall
    lazy = subprocess.run([sys.executable, "-c", "import sys, pipofan_monai; f = pipofan_monai.segment; "
                           "print('torch' in sys.modules, f.__module__)"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert lazy.stdout.split() == ["False", "pipofan_monai.apps.segment"], lazy.stderr  # torch only when it runs


def test_same_label_maps_as_the_bundle_runner(tmp_path):
    """``monai.bundle run inference`` and ``pipofan segment`` on the same inputs and checkpoint give identical label
    maps (the same pipeline, built from inference.json); segment also writes report.json and exits 0."""
    images = [_ct(tmp_path / "in" / f"case{i}.nii.gz", seed=i) for i in range(2)]
    ckpt = _ckpt(tmp_path / "model.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(INFER_CONFIG),
           "--bundle_root", str(tmp_path / "bundle"), "--input_files", repr([str(p) for p in images]),
           "--output_dir", str(tmp_path / "bundle_out"), "--ckpt_path", str(ckpt), "--device", "cpu",
           "--save_overlay", "False"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "seg_out"), "--model", str(ckpt), "--device", "cpu"]) == 0
    for p in images:
        name = p.name.replace(".nii.gz", "_seg.nii.gz")
        a, b = _labels(tmp_path / "bundle_out" / name), _labels(tmp_path / "seg_out" / name)
        assert a.shape == (24, 20, 4) and len(np.unique(a)) > 1
        np.testing.assert_array_equal(a, b)
    report = json.loads((tmp_path / "seg_out" / "report.json").read_text())
    assert [c["image"] for c in report["cases"]] == [str(p) for p in images]
    assert report["device"] == "cpu" and report["models"][0]["plans"]["network"]["channels"] == TINY


def test_fold_folder_ensemble_mirrored_folders_organs_statistics_preview(tmp_path):
    """--model FOLDER is the ensemble of its fold models (the same labels as listing them); same names in two
    folders go to mirrored sub-folders; --organs, --statistics, --preview; a second run without --overwrite fails
    each case naming the file (exit 1), with --overwrite it succeeds."""
    a = _ct(tmp_path / "in" / "patientA" / "ct.nii.gz", seed=3)
    b = _ct(tmp_path / "in" / "patientB" / "ct.nii.gz", seed=4)
    models = tmp_path / "models"
    folds = [_ckpt(models / f"fold{k}" / "model.pt", seed=10 + k) for k in range(3)]
    out = tmp_path / "out"
    argv = [str(tmp_path / "in"), "-o", str(out), "--model", str(models), "--device", "cpu", "--statistics",
            "--preview", "--organs", "liver,spleen"]
    assert main(argv) == 0
    listed = tmp_path / "listed"
    assert main([str(a), str(b), "-o", str(listed), "--model", *map(str, folds), "--device", "cpu"]) == 0
    csv = (out / "statistics.csv").read_text().splitlines()
    assert csv[0].startswith("case,organ,voxels,volume_ml,hu_mean")
    for src in (a, b):
        case = out / src.parent.name
        seg, full = _labels(case / "ct_seg.nii.gz"), _labels(listed / src.parent.name / "ct_seg.nii.gz")
        np.testing.assert_array_equal(seg, np.where(np.isin(full, [1, 3]), full, 0))  # kidney not written
        stats = json.loads((case / "ct_statistics.json").read_text())
        assert list(stats) == ["liver", "spleen"]
        assert stats["liver"]["voxels"] == int((full == 1).sum())
        assert stats["liver"]["volume_ml"] == pytest.approx((full == 1).sum() * 0.8 * 0.9 * 2.5 / 1000, rel=1e-6)
        assert (case / "ct_overview.png").stat().st_size > 0
        assert sum(row.startswith(f"{src},") for row in csv) == 2
    report = json.loads((out / "report.json").read_text())
    assert [m["path"] for m in report["models"]] == [str(f) for f in folds]
    assert main(argv) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["num_failed"] == 2 and "output file exists" in report["cases"][0]["error"]
    assert main([*argv, "--overwrite"]) == 0


def test_python_api_returns_label_maps_and_statistics_in_memory(tmp_path):
    import pipofan_monai

    image = _ct(tmp_path / "in" / "case.nii.gz", seed=7)
    ckpt = _ckpt(tmp_path / "model.pt")
    res = pipofan_monai.segment(image, model=ckpt, device="cpu", statistics=True)
    assert res["num_ok"] == 1
    case = res["cases"][0]
    written = tmp_path / "out"
    assert main([str(image), "-o", str(written), "--model", str(ckpt), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(case["label"], _labels(written / "case_seg.nii.gz"))
    np.testing.assert_allclose(case["affine"], nib.load(str(written / "case_seg.nii.gz")).affine, atol=1e-5)
    assert case["statistics"]["kidney"]["voxels"] == int((case["label"] == 2).sum())
    assert case["outputs"] == [] and not list((tmp_path / "in").glob("*_seg*"))


def test_inputs_files_dicom_series_and_folders(tmp_path):
    (tmp_path / "series").mkdir()
    for i in range(3):
        (tmp_path / "series" / f"IM{i:04d}").write_bytes(b"x")
    nii = _ct(tmp_path / "tree" / "p1" / "ct.nii.gz")
    (tmp_path / "tree" / "p2" / "dicom").mkdir(parents=True)
    (tmp_path / "tree" / "p2" / "dicom" / "1.dcm").write_bytes(b"x")
    (tmp_path / "tree" / "notes.txt").write_text("not an image")
    assert expand_inputs([tmp_path / "series"]) == [str(tmp_path / "series")]
    assert expand_inputs(tmp_path / "tree") == [str(nii), str(tmp_path / "tree" / "p2" / "dicom")]
    with pytest.raises(FileNotFoundError, match="input not found"):
        expand_inputs(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m.pt")]) == 2


REALCT = REPO.parent / "shared" / "data" / "realct"


@pytest.mark.skipif(not (REALCT / "dcmqi_ct3slice" / "dicom").is_dir(), reason="real CT data not present")
def test_dicom_series_to_nifti_and_dicom_seg(tmp_path):
    """A real DICOM series (dcmqi's 3-slice CT, 512 x 512 x 3) gets both outputs on its own grid; a NIfTI input with DICOM SEG output
    is refused before anything is computed (exit 2, nothing written)."""
    import pydicom

    series = REALCT / "dcmqi_ct3slice" / "dicom"
    ckpt = _ckpt(tmp_path / "model.pt")
    out = tmp_path / "out"
    assert main([str(series), "-o", str(out), "--model", str(ckpt), "--device", "cpu",
                 "--output_type", "nifti", "dicom_seg"]) == 0
    assert _labels(out / "dicom_seg.nii.gz").shape == (512, 512, 3)
    seg = pydicom.dcmread(out / "dicom_seg.dcm")
    assert seg.Modality == "SEG" and seg.NumberOfFrames > 0
    nii = _ct(tmp_path / "in" / "ct.nii.gz")
    assert main([str(nii), "-o", str(tmp_path / "o2"), "--model", str(ckpt), "--output_type", "dicom_seg"]) == 2
    assert not (tmp_path / "o2" / "ct_seg.dcm").exists()
