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

"""DICOM series that ITK would stack on a wrong grid are refused at load time, for inference and training alike:
a missing slice (the real 20-slice series minus its 10th file, and synthetic series), duplicate positions, mixed
orientations and a gantry tilt; regular series (in any file order, with rounding jitter) still load."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipofan_monai.preprocessing import LoadCTd, check_dicom_folder
from pipofan_monai.preprocessing.dicom_geometry import SliceHeader, dicom_geometry_problem

REAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "realct" / "ts_upper_abdomen_dicom"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _headers(z, orientation=AXIAL, shift=(0.0, 0.0), tilt=None):
    """Slice headers at positions ``z`` along the normal of an axial series; ``shift`` mm in x, y per mm of z."""
    return [SliceHeader(f"s{i:03d}.dcm", (shift[0] * v, shift[1] * v, float(v)), orientation, tilt)
            for i, v in enumerate(z)]


# ------------------------------------------------------------------------------------------- the rule itself
def test_regular_series_pass_in_any_order_and_with_jitter():
    z = -100.0 + 2.0 * np.arange(20)
    assert dicom_geometry_problem("f", _headers(z)) is None
    assert dicom_geometry_problem("f", _headers(z[::-1])) is None
    jitter = z + np.random.default_rng(0).uniform(-0.05, 0.05, z.size)  # positions written to 0.1 mm
    assert dicom_geometry_problem("f", _headers(jitter)) is None
    assert dicom_geometry_problem("f", _headers(z[:1])) is None  # one slice: nothing to check
    no_position = [SliceHeader("a", None, AXIAL), SliceHeader("b", (0.0, 0.0, 5.0), AXIAL)]
    assert dicom_geometry_problem("f", no_position) is None  # cannot be checked: left to the reader


def test_missing_slice_names_the_gap_and_the_spacing():
    z = list(-100.0 + 2.0 * np.arange(20))
    del z[9]
    msg = dicom_geometry_problem("/data/ct", _headers(z))
    assert msg.startswith("DICOM series in folder /data/ct has uneven slice positions (about 1 slice(s) missing)")
    assert "s008.dcm at -84.000 mm and s009.dcm at -80.000 mm are 4.000 mm apart" in msg
    assert "expected 2.000 mm (the median spacing of its 19 slices)" in msg
    assert "uniform 2.111 mm grid, misplacing slices by up to 1.00 mm" in msg


def test_uneven_spacing_without_a_missing_slice():
    z = np.concatenate([np.arange(10) * 2.0, 18.0 + np.arange(1, 6) * 1.0])  # 2 mm, then 1 mm
    msg = dicom_geometry_problem("f", _headers(z))
    assert "uneven slice positions (uneven spacing)" in msg and "1.000 mm apart" in msg and "and 2 more" in msg


def test_duplicate_positions():
    z = [0.0, 2.0, 4.0, 4.0, 6.0]
    msg = dicom_geometry_problem("/d", _headers(z))
    assert msg == ("DICOM series in folder /d has 1 duplicate slice position(s): s002.dcm and s003.dcm are both at "
                   "4.000 mm along the slice normal (e.g. two acquisitions or copied files in one folder); keep one "
                   "file per position.")


def test_mixed_orientations():
    h = _headers([0.0, 2.0, 4.0])
    h[2] = SliceHeader("s002.dcm", (0.0, 0.0, 4.0), (1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    msg = dicom_geometry_problem("/d", h)
    assert "mixes slice orientations" in msg and "s002.dcm has (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)" in msg


def test_gantry_tilt():
    tilt = 15.0
    z = 2.0 * np.arange(10)
    msg = dicom_geometry_problem("/d", _headers(z, shift=(0.0, np.tan(np.radians(tilt))))) or ""
    assert "is tilted: its slices are stacked along a direction 15.00 degrees off their normal" in msg
    msg = dicom_geometry_problem("/d", _headers(z, shift=(0.0, np.tan(np.radians(tilt))), tilt=tilt))
    assert "(GantryDetectorTilt 15 degrees)" in msg
    assert dicom_geometry_problem("/d", _headers(z, shift=(0.0, np.tan(np.radians(0.2))))) is None


# --------------------------------------------------------------------------------------- the real series
@pytest.fixture
def real_series(tmp_path):
    src = REAL / "dicom"
    if not src.is_dir():
        pytest.skip(f"real DICOM series not available ({src}: /work/shared/data is absent)")
    dst = tmp_path / "dicom"
    shutil.copytree(src, dst)
    return dst


def test_real_series_missing_its_10th_slice_is_refused(real_series):
    assert len(check_dicom_folder(real_series)) == 1  # the complete series passes
    tenth = sorted(os.listdir(real_series))[9]
    (real_series / tenth).unlink()
    with pytest.raises(ValueError) as err:
        check_dicom_folder(real_series)
    msg = str(err.value)
    assert f"DICOM series in folder {real_series} has uneven slice positions (about 1 slice(s) missing)" in msg
    assert "4.000 mm apart; expected 2.000 mm (the median spacing of its 19 slices)" in msg
    assert "uniform 2.111 mm grid" in msg
    # the loader used by inference and by the training cache refuses it before reading any pixel
    with pytest.raises(ValueError, match="uneven slice positions"):
        LoadCTd("image")({"image": str(real_series)})


def test_training_cache_refuses_a_series_with_a_missing_slice(real_series, tmp_path):
    from pipofan_monai.preprocessing.cache import PreprocessedCache

    (real_series / sorted(os.listdir(real_series))[9]).unlink()
    item = {"image": str(real_series), "label": str(REAL / "labels_abd4_ras.nii.gz")}
    with pytest.raises(RuntimeError, match=r"could not preprocess 1 of 1 volumes(.|\n)*uneven slice positions"):
        PreprocessedCache(tmp_path / "cache", spatial_size=32).fill([item], progress=False)


# ----------------------------------------------------------------------------------- synthetic DICOM files
def _write_series(folder: Path, z, shift=(0.0, 0.0), orientations=None, tilt=None) -> Path:
    """A tiny CT series (8x8 slices) written with pydicom, one file per position in ``z``."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for i, v in enumerate(z):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "CT", "Test", "1", 1, i + 1
        ds.ImagePositionPatient = [shift[0] * v, shift[1] * v, float(v)]
        ds.ImageOrientationPatient = list((orientations or {}).get(i, AXIAL))
        if tilt is not None:
            ds.GantryDetectorTilt = tilt
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.full((8, 8), -1000 + 10 * i, dtype=np.int16).tobytes()
        ds.save_as(folder / f"slice{i:03d}.dcm", enforce_file_format=True)
    return folder


def test_synthetic_regular_series_loads(tmp_path):
    folder = _write_series(tmp_path / "ok", 2.0 * np.arange(6)[::-1])
    img = LoadCTd("image")({"image": str(folder)})["image"]
    assert tuple(img.shape) == (1, 8, 8, 6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0), [1.0, 1.0, 2.0], atol=1e-5)


@pytest.mark.parametrize("case,expected", [
    ("missing", ("uneven slice positions (about 1 slice(s) missing): slice002.dcm at 4.000 mm and slice003.dcm at "
                 "8.000 mm are 4.000 mm apart; expected 2.000 mm")),
    ("duplicate", "duplicate slice position(s): slice002.dcm and slice003.dcm are both at 4.000 mm"),
    ("orientation", "mixes slice orientations"),
    ("tilt", ("is tilted: its slices are stacked along a direction 20.00 degrees off their normal "
              "(GantryDetectorTilt 20 degrees)")),
])
def test_synthetic_broken_series_are_refused(tmp_path, case, expected):
    z, kw = 2.0 * np.arange(6), {}
    if case == "missing":
        z = np.delete(z, 3)
    elif case == "duplicate":
        z = np.array([0.0, 2.0, 4.0, 4.0, 6.0])
    elif case == "orientation":
        kw["orientations"] = {4: (1.0, 0.0, 0.0, 0.0, 0.8, 0.6)}
    else:
        kw.update(shift=(0.0, float(np.tan(np.radians(20.0)))), tilt=20.0)
    folder = _write_series(tmp_path / case, z, **kw)
    with pytest.raises(ValueError) as err:
        LoadCTd("image")({"image": str(folder)})
    assert f"DICOM series in folder {folder} " in str(err.value) and expected in str(err.value), str(err.value)


def test_inference_refuses_a_series_with_a_missing_slice_and_writes_nothing(tmp_path):
    """The bundle's inference runner (what ``pipofan segment`` runs) reports the gap instead of exit 0."""
    import torch
    from monai.bundle import ConfigParser

    from pipofan_monai.apps.inference import InferenceError
    from pipofan_monai.networks import PIPOFAN

    repo = Path(__file__).resolve().parents[3]
    torch.manual_seed(0)
    torch.save(PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=[8, 16, 32, 64, 64]).state_dict(),
               tmp_path / "model.pt")
    folder = _write_series(tmp_path / "series", np.delete(2.0 * np.arange(8), 4))
    parser = ConfigParser()
    parser.read_config(str(repo / "bundle" / "configs" / "inference.json"))
    parser.update({"bundle_root": str(repo / "bundle"), "network_channels": [8, 16, 32, 64, 64], "spatial_size": 32,
                   "output_dir": str(tmp_path / "out"), "device": "cpu", "amp": False, "save_overlay": False})
    with pytest.raises(InferenceError) as err:
        parser.get_parsed_content("runner").run([str(folder)], tmp_path / "model.pt")
    msg = str(err.value)
    assert "uneven slice positions (about 1 slice(s) missing)" in msg and "expected 2.000 mm" in msg, msg
    assert not list((tmp_path / "out").glob("*.nii.gz"))
