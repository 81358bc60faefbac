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

"""DICOM SEG output (pipofan_monai.inference.dicom_seg) on the real DICOM series of ../shared/data/realct: the
upper-abdomen JPEG-2000 series (20 slices, TotalSegmentator labels) and dcmqi's 3-slice series whose files run in
descending z (hand-drawn liver, and dcmqi's own SEG of it). Each SEG is read back with pydicom and rebuilt into a
volume from its own per-frame ImagePositionPatient (independently of the writer's slice matching) and compared
voxel by voxel with the NIfTI label map the runner writes."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import PositiveHUNet, threshold_ckpt
from monai.data import MetaTensor
from monai.transforms import Orientation, SaveImaged

from pipofan_monai.inference.dicom_seg import (
    SEGMENT_CATEGORY_ANATOMY,
    SaveDicomSegd,
    SegmentCode,
    check_dicom_seg_input,
    output_formats,
    label_map_to_frames,
    read_series_headers,
    rgb_to_dicom_lab,
    segment_code_for,
    write_dicom_seg,
)

from pipofan_monai.vocabulary.organs import ORGANS, get_organ  # noqa: E402

DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "realct"
needs_realct = pytest.mark.skipif(not DATA.is_dir(), reason=f"real CT test data not found at {DATA}")
TS = DATA / "ts_upper_abdomen_dicom"
DCMQI = DATA / "dcmqi_ct3slice"
CLASSES = ["background", "liver", "kidney", "spleen"]
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _dicom():
    return pytest.importorskip("pydicom", reason="DICOM SEG output needs the `dicom` extra (highdicom, pydicom)")


def _highdicom():
    _dicom()
    return pytest.importorskip("highdicom", reason="DICOM SEG output needs the `dicom` extra (highdicom, pydicom)")


# ---------------------------------------------------------------------------------------------- helpers
def _load(path) -> MetaTensor:
    from pipofan_monai.preprocessing import LoadCTd

    return LoadCTd("x")({"x": str(path)})["x"]


def _on_grid(label: MetaTensor, image: MetaTensor) -> MetaTensor:
    """``label`` reoriented onto ``image``'s grid (same voxels, the image's axis order and flips)."""
    out = Orientation(axcodes="".join(nib.aff2axcodes(np.asarray(image.affine))), labels=None)(label)
    assert tuple(out.shape) == tuple(image.shape)
    np.testing.assert_allclose(np.asarray(out.affine), np.asarray(image.affine), atol=1e-4)
    return out


def _save_nifti(label: MetaTensor, out_dir: Path) -> Path:
    """The NIfTI label map as the runner writes it (uint8, input shape and affine)."""
    from pipofan_monai.inference.writers import LabelNiftiWriter

    SaveImaged("pred", output_dir=str(out_dir), output_postfix="seg", output_ext=".nii.gz", output_dtype=np.uint8,
               writer=LabelNiftiWriter, resample=False, separate_folder=False, print_log=False)({"pred": label})
    (path,) = out_dir.glob("*_seg.nii.gz")
    return path


def _frame_geometry(seg, i):
    frame = seg.PerFrameFunctionalGroupsSequence[i]
    shared = seg.SharedFunctionalGroupsSequence[0]

    def find(seq):
        return (frame.get(seq) or shared.get(seq))[0]

    ipp = np.asarray([float(v) for v in find("PlanePositionSequence").ImagePositionPatient])
    iop = np.asarray([float(v) for v in find("PlaneOrientationSequence").ImageOrientationPatient])
    spacing = [float(v) for v in find("PixelMeasuresSequence").PixelSpacing]
    return ipp, iop, spacing


def _seg_to_volume(seg, affine_ras: np.ndarray, shape) -> np.ndarray:
    """Rebuild a label volume on a NIfTI grid from a SEG: every SEG pixel goes to the voxel at its own world position
    (ImagePositionPatient + column * PixelSpacing[1] * row cosines + row * PixelSpacing[0] * column cosines)."""
    px = seg.pixel_array
    px = px.reshape((int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)))
    inv = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras)  # LPS -> voxel
    rows, cols = np.mgrid[0 : int(seg.Rows), 0 : int(seg.Columns)]
    vol = np.zeros(shape, np.uint8)
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp, iop, (dr, dc) = _frame_geometry(seg, i)
        world = ipp + cols[..., None] * dc * iop[:3] + rows[..., None] * dr * iop[3:]
        ijk = world @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(ijk).astype(int)
        assert np.abs(ijk - idx).max() < 1e-3, "SEG pixel centres must fall on voxel centres"
        on = px[i] > 0
        sel = idx[on]
        assert not vol[sel[:, 0], sel[:, 1], sel[:, 2]].any(), "segments must not overlap"
        vol[sel[:, 0], sel[:, 1], sel[:, 2]] = number
    return vol


def _copy_with_uids(src: Path, dst: Path) -> Path:
    """The upper-abdomen series with the Study/Series/SOP Instance UIDs its anonymisation blanked filled in (the
    JPEG-2000 pixel data are copied as stored, not decoded)."""
    pydicom = _dicom()
    dst.mkdir(parents=True, exist_ok=True)
    study = pydicom.uid.generate_uid(entropy_srcs=["pipofan-test-study"])
    series = pydicom.uid.generate_uid(entropy_srcs=["pipofan-test-series"])
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(dst / f.name)
    return dst


@pytest.fixture(scope="module")
def ts_case(tmp_path_factory):
    """(series folder, image, label on the image's grid with the project's classes)."""
    _highdicom()
    if not DATA.is_dir():
        pytest.skip(f"real CT test data not found at {DATA}")
    folder = _copy_with_uids(TS / "dicom", tmp_path_factory.mktemp("ts") / "dicom")
    image = _load(folder)
    label = _on_grid(_load(TS / "labels_abd4_ras.nii.gz"), image)
    # the file's convention: 1 liver, 2 right kidney, 3 left kidney, 4 spleen (no kidneys in this slab)
    assert set(torch.unique(label).tolist()) == {0, 1, 4}
    label = torch.where(label == 4, 3, label)
    return folder, image, label


@pytest.fixture(scope="module")
def dcmqi_case():
    _highdicom()
    if not DATA.is_dir():
        pytest.skip(f"real CT test data not found at {DATA}")
    image = _load(DCMQI / "dicom")
    label = _on_grid(_load(DCMQI / "liver_seg.nrrd"), image)
    return DCMQI / "dicom", image, label


def _check_seg(seg_path: Path, nifti_path: Path, folder: Path, class_names, label_counts: dict):
    """The SEG at ``seg_path`` against the NIfTI label map and the source series."""
    pydicom = _dicom()
    seg = pydicom.dcmread(seg_path)
    sources = {str(s.SOPInstanceUID): s for s in read_series_headers(folder).popitem()[1]}
    first = next(iter(sources.values()))
    # what it is and what it references
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == first.SeriesInstanceUID
    assert {str(r.ReferencedSOPInstanceUID) for r in ref.ReferencedInstanceSequence} == set(sources)
    # segments: one per organ, labels and codes as declared
    segs = seg.SegmentSequence
    assert [int(s.SegmentNumber) for s in segs] == list(range(1, len(class_names)))
    assert [s.SegmentLabel for s in segs] == list(class_names[1:])
    for s, name in zip(segs, class_names[1:]):
        (cat,), (typ,) = s.SegmentedPropertyCategoryCodeSequence, s.SegmentedPropertyTypeCodeSequence
        assert (cat.CodeValue, cat.CodingSchemeDesignator, cat.CodeMeaning) == SEGMENT_CATEGORY_ANATOMY
        assert (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning) == get_organ(name).code
        assert s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "pipofan-monai"
    from pipofan_monai.visualize.overlay import DEFAULT_COLORS

    for s in segs:  # the overview PNG's colours
        assert list(s.RecommendedDisplayCIELabValue) == rgb_to_dicom_lab(DEFAULT_COLORS[int(s.SegmentNumber)])
    # frames: one per (segment, slice) with voxels, each at the position of its source slice
    nifti = nib.load(str(nifti_path))
    expected = np.asarray(nifti.dataobj)
    slice_axis = 2
    nonempty = {(int(c), k) for c in range(1, len(class_names)) for k in range(expected.shape[slice_axis])
                if (expected[:, :, k] == c).any()}
    assert int(seg.NumberOfFrames) == len(nonempty)
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        (src_ref,) = frame.DerivationImageSequence[0].SourceImageSequence
        src = sources[str(src_ref.ReferencedSOPInstanceUID)]
        ipp, iop, spacing = _frame_geometry(seg, i)
        np.testing.assert_allclose(ipp, [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        np.testing.assert_allclose(iop, [float(v) for v in src.ImageOrientationPatient], atol=1e-6)
        np.testing.assert_allclose(spacing, [float(v) for v in src.PixelSpacing], atol=1e-6)
    # voxels: the SEG rebuilt on the NIfTI grid from its own frame positions equals the NIfTI label map
    vol = _seg_to_volume(seg, nifti.affine, expected.shape)
    np.testing.assert_array_equal(vol, expected)
    assert {c: int((vol == c).sum()) for c in label_counts} == label_counts
    return seg


# ---------------------------------------------------------------------------------------------- real series
@needs_realct
def test_upper_abdomen_jpeg2000_seg_matches_nifti(ts_case, tmp_path):
    folder, image, label = ts_case
    counts = {c: int((label == c).sum()) for c in range(1, 4)}
    assert counts[1] > 0 and counts[2] == 0 and counts[3] > 0  # liver and spleen, no kidney in this slab
    nifti = _save_nifti(label, tmp_path)
    out = write_dicom_seg(label, folder, CLASSES, tmp_path / "ts_seg.dcm")
    assert out == str(tmp_path / "ts_seg.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([nifti.name, "ts_seg.dcm"])  # no temp files left
    seg = _check_seg(tmp_path / "ts_seg.dcm", nifti, folder, CLASSES, counts)
    # the algorithm identification names pipofan-monai, an AI algorithm, with its version
    import pipofan_monai

    alg = seg.SegmentSequence[0]
    assert alg.SegmentAlgorithmName == "pipofan-monai"
    (ident,) = alg.SegmentationAlgorithmIdentificationSequence
    assert ident.AlgorithmName == "pipofan-monai" and ident.AlgorithmVersion == pipofan_monai.__version__
    assert ident.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # DCM "Artificial Intelligence"
    # the source's pixel data were never decoded: they are JPEG-2000 and stay so
    pydicom = _dicom()
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert src.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"


@needs_realct
def test_descending_file_order_matches_nifti_and_dcmqi_seg(dcmqi_case, tmp_path):
    """dcmqi's files 01..03 run in descending z; the loaded grid runs ascending. Frames must still land on the
    right source instances: compared with the voxels and with dcmqi's own SEG of the same liver."""
    pydicom = _dicom()
    folder, image, label = dcmqi_case
    positions = [float(pydicom.dcmread(folder / f, stop_before_pixels=True).ImagePositionPatient[2])
                 for f in ("01.dcm", "02.dcm", "03.dcm")]
    assert positions == sorted(positions, reverse=True)
    counts = {1: int((label == 1).sum()), 2: 0, 3: 0}
    assert counts[1] > 0
    nifti = _save_nifti(label, tmp_path)
    seg = _check_seg(Path(write_dicom_seg(label, folder, CLASSES, tmp_path / "seg.dcm")), nifti, folder, CLASSES,
                     counts)
    # dcmqi's SEG of this mask: the same pixels for every source instance
    ref = pydicom.dcmread(DCMQI / "liver_seg.dcm")

    def by_instance(ds):
        px = ds.pixel_array.reshape((int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)))
        return {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID): px[i]
                for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence) if px[i].any()}

    ours, theirs = by_instance(seg), by_instance(ref)
    assert sorted(ours) == sorted(theirs) and len(ours) >= 1
    for uid in ours:
        np.testing.assert_array_equal(ours[uid], theirs[uid])


@needs_realct
@pytest.mark.parametrize("axcodes", ["RAS", "IPL", "SLA"])
def test_any_axis_order_of_the_grid_gives_the_same_frames(dcmqi_case, axcodes):
    """The label map may arrive reoriented (RAS after Orientationd, or any permutation/flip): frames are matched by
    position, so the frames for each source instance do not change."""
    folder, image, label = dcmqi_case
    sources = read_series_headers(folder).popitem()[1]
    ref_frames, ref_sources = label_map_to_frames(label, sources)
    moved = Orientation(axcodes=axcodes, labels=None)(label)
    assert tuple(moved.shape) != tuple(label.shape) or not np.allclose(np.asarray(moved.affine),
                                                                       np.asarray(label.affine))
    frames, ordered = label_map_to_frames(moved, list(reversed(sources)))
    key = {str(s.SOPInstanceUID): i for i, s in enumerate(ordered)}
    for i, s in enumerate(ref_sources):
        np.testing.assert_array_equal(frames[key[str(s.SOPInstanceUID)]], ref_frames[i])
    # frame of instance 01.dcm (highest z) is the label map's last slice on the ITK grid (ascending z)
    first = next(i for i, s in enumerate(ref_sources) if os.path.basename(s.filename) == "01.dcm")
    np.testing.assert_array_equal(ref_frames[first], np.asarray(label[0, :, :, -1]).T)


@needs_realct
def test_label_map_off_the_series_grid_is_refused(dcmqi_case, tmp_path):
    from monai.transforms import Resize

    folder, image, label = dcmqi_case
    small = Resize((256, 256, 3), mode="nearest")(label)
    with pytest.raises(ValueError, match="not on the voxel grid of the DICOM series"):
        write_dicom_seg(small, folder, CLASSES, tmp_path / "seg.dcm")
    shifted = label.clone()
    shifted.affine[2, 3] += 0.5  # half a slice off
    with pytest.raises(ValueError, match="not on a slice of the label map"):
        write_dicom_seg(shifted, folder, CLASSES, tmp_path / "seg.dcm")
    missing = label[..., :2]  # a slice more in the series than in the label map
    with pytest.raises(ValueError, match="not on a slice|no source instance"):
        write_dicom_seg(missing, folder, CLASSES, tmp_path / "seg.dcm")
    assert not list(tmp_path.iterdir())


@needs_realct
def test_bad_label_values_fail_and_keep_an_existing_output(dcmqi_case, tmp_path):
    folder, image, label = dcmqi_case
    out = tmp_path / "seg.dcm"
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError, match=r"outside the classes 0\.\.3"):
        write_dicom_seg(label * 7, folder, CLASSES, out)
    with pytest.raises(ValueError, match="non-integer values"):
        write_dicom_seg(label * 0.5, folder, CLASSES, out)
    with pytest.raises(ValueError, match="no standard code known for class 'brain stem thing'"):
        write_dicom_seg(label, folder, ["background", "brain stem thing"], out)
    assert out.read_bytes() == b"previous result" and sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]
    write_dicom_seg(label, folder, CLASSES, out)  # replaced on success
    assert _dicom().dcmread(out).SOPClassUID == SEG_SOP_CLASS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


@needs_realct
def test_save_dicom_segd_transform(dcmqi_case, tmp_path):
    folder, image, label = dcmqi_case
    t = SaveDicomSegd("pred", class_names=CLASSES, output_dir=tmp_path, series_description="test series")
    d = t({"image": image, "pred": label})
    assert d["pred"] is label
    out = tmp_path / "dicom_seg.dcm"  # FolderLayout naming, as the NIfTI output "<name>_seg.nii.gz"
    assert t.output_path(str(folder)) == str(out) and out.is_file()
    seg = _dicom().dcmread(out)
    assert seg.SeriesDescription == "test series" and int(seg.SeriesNumber) == 2 + 1000  # source series 2
    with pytest.raises(ValueError, match="no standard code known for class 'tail'"):
        SaveDicomSegd("pred", class_names=["background", "tail"], output_dir=tmp_path)


@needs_realct
def test_laterality_and_tumour_codes_are_written_and_highdicom_reads_the_seg(dcmqi_case, tmp_path):
    hd = _highdicom()
    folder, image, label = dcmqi_case
    two = label.clone()
    two[..., 0] = torch.where(label[..., 0] > 0, 2, 0)  # a second class on one slice
    names = ["background", "kidney_left", "liver tumour"]
    out = write_dicom_seg(two, folder, names, tmp_path / "seg.dcm")
    seg = _dicom().dcmread(out)
    kidney, tumour = seg.SegmentSequence
    (typ,) = kidney.SegmentedPropertyTypeCodeSequence
    assert typ.CodeValue == "64033007" and typ.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert tumour.AnatomicRegionSequence[0].CodeValue == "10200004"
    # highdicom's own reader accepts it and sees the same segments
    back = hd.seg.segread(out)
    assert [back.get_segment_description(i).segment_label for i in (1, 2)] == names[1:]
    assert int(back.NumberOfFrames) == int((two[0] == 1).any(0).any(0).sum() + (two[0] == 2).any(0).any(0).sum())


# ---------------------------------------------------------------------------------------------- non-DICOM input
@needs_realct
def test_non_dicom_input_is_refused_naming_the_file(tmp_path):
    _highdicom()
    nifti = TS / "labels_abd4_ras.nii.gz"
    with pytest.raises(ValueError, match=f"needs a DICOM series as input, but {nifti} is not a DICOM"):
        check_dicom_seg_input(nifti)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=f"folder {tmp_path} contains no DICOM image files"):
        check_dicom_seg_input(tmp_path)
    with pytest.raises(FileNotFoundError, match="input not found"):
        check_dicom_seg_input(tmp_path / "nothing")
    # the upper-abdomen files as stored: their anonymisation blanked the study and series UIDs
    with pytest.raises(ValueError, match="has no SeriesInstanceUID, StudyInstanceUID"):
        check_dicom_seg_input(TS / "dicom")
    assert check_dicom_seg_input(DCMQI / "dicom") == str(DCMQI / "dicom")
    assert check_dicom_seg_input(DCMQI / "dicom" / "01.dcm") == str(DCMQI / "dicom" / "01.dcm")
    t = SaveDicomSegd("pred", class_names=CLASSES, output_dir=tmp_path)
    with pytest.raises(ValueError, match=f"{nifti} is not a DICOM"):
        t({"image": str(nifti), "pred": torch.zeros(1, 2, 2, 2)})


# ---------------------------------------------------------------------------------------------- codes
@pytest.mark.parametrize(
    "name, category, prop, modifier, region",
    [
        ("liver", "123037004", "10200004", None, None),
        ("Kidney", "123037004", "64033007", None, None),
        ("kidney_left", "123037004", "64033007", "7771000", None),
        ("Right kidney", "123037004", "64033007", "24028007", None),
        ("spleen", "123037004", "78961009", None, None),
        ("pancreas", "123037004", "15776009", None, None),
        ("gall-bladder", "123037004", "28231008", None, None),
        ("inferior_vena_cava", "123037004", "64131007", None, None),
        ("right adrenal gland", "123037004", "23451007", "24028007", None),
        ("liver tumour", "49755003", "108369006", None, "10200004"),
        ("pancreas_tumor", "49755003", "108369006", None, "15776009"),
        ("tumour", "49755003", "108369006", None, None),
    ],
)
def test_segment_codes(name, category, prop, modifier, region):
    code = segment_code_for(name)
    assert code.category[0] == category and code.property_type[0] == prop
    assert (code.modifier[0] if code.modifier else None) == modifier
    assert (code.anatomic_region[0] if code.anatomic_region else None) == region
    assert all(c[1] == "SCT" for c in (code.category, code.property_type))


def test_codes_come_from_the_organ_table():
    """One table of codes: every coded organ of the organ table gets its code (and category) in a SEG, a config's
    organ_table adds organs or replaces a code, and an organ without a code is refused naming both ways out."""
    for name, spec in ORGANS.items():
        lateral = name.startswith(("left_", "right_"))  # coded as the organ with a laterality modifier
        if spec.code is not None and spec.category == SEGMENT_CATEGORY_ANATOMY and not lateral:
            assert segment_code_for(name) == SegmentCode(SEGMENT_CATEGORY_ANATOMY, spec.code), name
    assert segment_code_for("Urinary Bladder") == segment_code_for("bladder")  # the organ table's aliases
    assert segment_code_for("portal vein and splenic vein").property_type == ("32764006", "SCT", "Portal vein")
    appendix = ("66754008", "SCT", "Appendix")
    with pytest.raises(ValueError, match=r"no standard code known for class 'appendix'.*organ_table"):
        segment_code_for("appendix")
    table = {"appendix": {"code": list(appendix)}, "liver": {"code": ["999", "99X", "My liver"]}}
    assert segment_code_for("appendix", organs=table) == SegmentCode(SEGMENT_CATEGORY_ANATOMY, appendix)
    assert segment_code_for("liver", organs=table).property_type == ("999", "99X", "My liver")
    assert segment_code_for("liver tumour", organs=table).anatomic_region == ("999", "99X", "My liver")
    with pytest.raises(ValueError, match=r"class 'appendix'.*give its SNOMED CT code in the organ_table"):
        segment_code_for("appendix", organs={"appendix": {"num_components": 1}})  # an organ without a code
    assert segment_code_for("right adrenal gland").modifier == ("24028007", "SCT", "Right")
    pytest.importorskip("highdicom")
    t = SaveDicomSegd("pred", class_names=["background", "liver", "appendix"], organs=table, output_dir=".")
    assert t.organs is table
    with pytest.raises(ValueError, match="appendix"):
        SaveDicomSegd("pred", class_names=["background", "liver", "appendix"], output_dir=".")


def test_unknown_names_need_user_codes():
    with pytest.raises(ValueError, match="no standard code known for class 'left right kidney'"):
        segment_code_for("left right kidney")
    with pytest.raises(ValueError, match="no standard code known for class 'wing'"):
        segment_code_for("wing")
    mine = ("12345678", "SCT", "Something")
    assert segment_code_for("wing", {"Wing": mine}) == SegmentCode(SEGMENT_CATEGORY_ANATOMY, mine)
    with pytest.raises(ValueError, match="must be a SegmentCode"):
        segment_code_for("wing", {"wing": "12345678"})


def test_output_format_option():
    assert output_formats(None) == output_formats("nifti") == ("nifti",)
    assert output_formats("dicom_seg") == output_formats(" DICOM-SEG ") == ("dicom_seg",)
    assert output_formats(["dicom_seg", "nifti"]) == output_formats("nifti,dicom_seg") == ("nifti", "dicom_seg")
    assert output_formats("['nifti', 'dicom_seg']") == ("nifti", "dicom_seg")
    for bad in ("png", "", [], ["nifti", "rtstruct"], "[nifti", "[1]"):
        with pytest.raises(ValueError, match="output_format"):
            output_formats(bad)



def test_display_colours_in_dicom_lab():
    assert rgb_to_dicom_lab((1.0, 1.0, 1.0)) == [65535, 32896, 32896]  # L* 100, a* = b* = 0
    assert rgb_to_dicom_lab((0.0, 0.0, 0.0)) == [0, 32896, 32896]
    # sRGB red is L* 53.24, a* 80.09, b* 67.20
    np.testing.assert_allclose(rgb_to_dicom_lab((1.0, 0.0, 0.0)),
                               [53.24 / 100 * 65535, (80.09 + 128) / 255 * 65535, (67.20 + 128) / 255 * 65535], atol=15)


# ---------------------------------------------------------------------------------------------- runner / bundle
REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "bundle" / "configs" / "inference.json"


def _bundle_runner(out_dir: Path, **overrides):
    from monai.bundle import ConfigParser

    from pipofan_monai.apps.inference.runner import SegmentationRunner

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update({"bundle_root": str(REPO / "bundle"), "spatial_size": 0, "sw_batch_size": 8,
                   "output_dir": str(out_dir), "device": "cpu", "amp": False, "save_overlay": False,
                   "postprocess": False, **overrides})
    kw = {k: parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")}
    names = parser.get_parsed_content("plans")["class_names"]
    return SegmentationRunner(network=PositiveHUNet(), **kw, class_names=names)


@needs_realct
@pytest.mark.parametrize("output_format", [["nifti", "dicom_seg"], "dicom_seg"])
def test_runner_writes_seg_from_the_bundle_postprocessing(dcmqi_case, tmp_path, output_format):
    """The bundle's postprocessing (Invertd back to the series grid, argmax) with output_format: the SEG holds the
    same voxels as the NIfTI label map of the same run."""
    folder = dcmqi_case[0]
    ckpt = threshold_ckpt(tmp_path / "thr.pt", PositiveHUNet)
    out = tmp_path / "out"
    runner = _bundle_runner(out, output_format=output_format)
    res = runner.run([str(folder)], str(ckpt))
    assert res["num_ok"] == 1, res
    seg_path = out / "dicom_seg.dcm"
    assert res["cases"][0]["outputs"][-1] == str(seg_path) and seg_path.is_file()
    if output_format == "dicom_seg":
        assert sorted(p.name for p in out.iterdir()) == ["dicom_seg.dcm"]
        return
    nifti = out / "dicom_seg.nii.gz"
    labels = np.asarray(nib.load(str(nifti)).dataobj)
    counts = {1: int((labels == 1).sum()), 2: 0, 3: 0}
    assert 0 < counts[1] < labels.size  # a real, partial prediction
    _check_seg(seg_path, nifti, folder, CLASSES, counts)
    # existing outputs: the SEG is covered by the overwrite check like the NIfTI
    from pipofan_monai.apps.inference.runner import InferenceError

    with pytest.raises(InferenceError, match="output file exists"):
        runner.run([str(folder)], str(ckpt))


@needs_realct
def test_runner_refuses_non_dicom_input_before_inference(tmp_path):
    _highdicom()
    nifti = TS / "labels_abd4_ras.nii.gz"
    runner = _bundle_runner(tmp_path / "out", output_format="dicom_seg")
    # the checkpoint does not even exist: the input check comes first
    with pytest.raises(ValueError, match=f"1 of 2 inputs cannot get a DICOM SEG output:\n.*{nifti} is not a DICOM"):
        runner.run([str(DCMQI / "dicom"), str(nifti)], str(tmp_path / "missing.pt"))
    assert not (tmp_path / "out").exists()
