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

"""The native layouts of the public datasets (LiTS, KiTS19, the MSD tasks, BTCV): finding each dataset's image and label
pairs in its own folder structure, with a problem list instead of a crash."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)


_NII = r"\.nii(?:\.gz)?"


@dataclass
class _Case:
    case_id: str
    image: Path
    label: Path | None


def _natural_key(s: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def _files(root: Path) -> list[Path]:
    """All regular files under ``root`` (recursive), skipping hidden and AppleDouble (``._*``) files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return out


def _index(files: Sequence[Path], pattern: str, problems: list[str], what: str) -> dict[str, Path]:
    """Map the first regex group of matching file names to the path; duplicates are problems."""
    rx = re.compile(pattern)
    found: dict[str, Path] = {}
    for f in files:
        m = rx.match(f.name)
        if not m:
            continue
        key = m.group(1)
        if key in found:
            problems.append(f"duplicate {what} for case {key}: {found[key]} and {f}")
            continue
        found[key] = f
    return found


def _pair(
    images: Mapping[str, Path],
    labels: Mapping[str, Path],
    problems: list[str],
    title: str,
    sort_key: Callable[[str], Any] = _natural_key,
    case_id: Callable[[str], str] = str,
    hints: tuple[str, str] | None = None,
    is_test: Callable[[Path], bool] | None = None,
) -> tuple[list[_Case], list[_Case]]:
    """Pair images and labels that share a key (case number or file name): ``(cases, test cases)``.

    An image without a label is a test case where ``is_test(image)`` says so, else a problem; a label without an
    image is a problem. ``hints`` (``(label name, image name)`` formats of ``{k}``) say which file was expected.
    """
    cases, test = [], []
    for k in sorted(set(images) | set(labels), key=sort_key):
        if k not in labels:
            if is_test is not None and is_test(images[k]):
                test.append(_Case(case_id(k), images[k], None))
            else:
                problems.append(f"{title} image without label: {images[k]}"
                                + (f" (expected {hints[0].format(k=k)})" if hints else ""))
        elif k not in images:
            problems.append(f"{title} label without image: {labels[k]}"
                            + (f" (expected {hints[1].format(k=k)})" if hints else ""))
        else:
            cases.append(_Case(case_id(k), images[k], labels[k]))
    return cases, test


def _scan_lits(root: Path, problems: list[str]) -> tuple[list[_Case], list[_Case]]:
    files = _files(root)
    vols = _index(files, rf"^volume-(\d+){_NII}$", problems, "LiTS volume")
    segs = _index(files, rf"^segmentation-(\d+){_NII}$", problems, "LiTS segmentation")
    tests = _index(files, rf"^test-volume-(\d+){_NII}$", problems, "LiTS test volume")
    cases, _ = _pair(vols, segs, problems, "LiTS", int, lambda k: str(int(k)),
                     ("segmentation-{k}.nii[.gz]", "volume-{k}.nii[.gz]"))
    test = [_Case(str(int(k)), tests[k], None) for k in sorted(tests, key=int)]
    return cases, test


def _nii_in(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _scan_kits19(root: Path, problems: list[str]) -> tuple[list[_Case], list[_Case]]:
    case_dirs = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        case_dirs += [Path(dirpath) / d for d in dirnames if re.match(r"^case_\d+$", d)]
    seen: dict[str, Path] = {}
    cases, test = [], []
    for cdir in sorted(case_dirs, key=lambda p: _natural_key(p.name)):
        if cdir.name in seen:
            problems.append(f"duplicate KiTS19 case {cdir.name}: {seen[cdir.name]} and {cdir}")
            continue
        seen[cdir.name] = cdir
        img, seg = _nii_in(cdir, "imaging"), _nii_in(cdir, "segmentation")
        if img is None:
            what = f"label without image: {seg}" if seg else "case folder without imaging.nii.gz"
            problems.append(f"KiTS19 {what} ({cdir})")
        elif seg is None:
            test.append(_Case(cdir.name, img, None))
        else:
            cases.append(_Case(cdir.name, img, seg))
    if test:
        logger.info("KiTS19: %d case(s) without segmentation listed as test cases: %s", len(test),
                    ", ".join(c.case_id for c in test))
    return cases, test


def _msd_stem(p: Path) -> str:
    return re.sub(rf"{_NII}$", "", p.name)


def _scan_msd(root: Path, problems: list[str], title: str) -> tuple[list[_Case], list[_Case]]:
    """A Medical Segmentation Decathlon task (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``);
    ``title`` (e.g. "MSD Spleen") names it in the problem messages."""
    img_dir, lab_dir, ts_dir = root / "imagesTr", root / "labelsTr", root / "imagesTs"
    nii = re.compile(rf"^[^.].*{_NII}$")
    images = {p.name: p for p in sorted(img_dir.glob("*")) if nii.match(p.name)} if img_dir.is_dir() else {}
    labels = {p.name: p for p in sorted(lab_dir.glob("*")) if nii.match(p.name)} if lab_dir.is_dir() else {}
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            problems.append(f"{title} folder missing: {d}")
    meta_file = root / "dataset.json"
    cases, test = [], []
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{title} dataset.json unreadable: {meta_file} ({e})")
            meta = None
    else:
        problems.append(f"{title} dataset.json missing: {meta_file} (pairing imagesTr/labelsTr by file name)")
        meta = None
    if meta is not None and isinstance(meta.get("training"), list):
        listed = set()
        for entry in meta["training"]:
            img, lab = root / entry["image"], root / entry["label"]
            listed.add(img.name)
            missing = [str(p) for p in (img, lab) if not p.is_file()]
            if missing:
                problems.append(f"{title} dataset.json lists missing file(s): {', '.join(missing)}")
                continue
            cases.append(_Case(_msd_stem(img), img, lab))
        unlisted = sorted(set(images) - listed)
        if unlisted:
            listing = ", ".join(str(images[n]) for n in unlisted)
            problems.append(f"{title} images not listed in {meta_file}: {listing}")
        for entry in meta.get("test", []) or []:
            p = root / (entry["image"] if isinstance(entry, Mapping) else entry)
            if p.is_file():
                test.append(_Case(_msd_stem(p), p, None))
            else:
                problems.append(f"{title} dataset.json lists a missing test file: {p}")
    else:
        if meta is not None:
            problems.append(f"{title} {meta_file} has no 'training' list")
        cases, _ = _pair(images, labels, problems, title, case_id=lambda name: _msd_stem(images[name]))
        if ts_dir.is_dir():
            test = [_Case(_msd_stem(p), p, None) for p in sorted(ts_dir.glob("*")) if nii.match(p.name)]
    cases.sort(key=lambda c: _natural_key(c.case_id))
    return cases, test


def _scan_msd_spleen(root: Path, problems: list[str]) -> tuple[list[_Case], list[_Case]]:
    return _scan_msd(root, problems, "MSD Spleen")


def _scan_msd_pancreas(root: Path, problems: list[str]) -> tuple[list[_Case], list[_Case]]:
    return _scan_msd(root, problems, "MSD Pancreas")


def _scan_msd_liver(root: Path, problems: list[str]) -> tuple[list[_Case], list[_Case]]:
    return _scan_msd(root, problems, "MSD Liver")


def _scan_btcv(root: Path, problems: list[str]) -> tuple[list[_Case], list[_Case]]:
    files = _files(root)
    imgs = _index(files, rf"^img(\d+){_NII}$", problems, "BTCV image")
    labs = _index(files, rf"^label(\d+){_NII}$", problems, "BTCV label")
    # an unlabeled image in a folder named like "test" (BTCV's Testing/img) is a test case
    return _pair(imgs, labs, problems, "BTCV", int, hints=("label{k}.nii[.gz]", "img{k}.nii[.gz]"),
                 is_test=lambda p: any("test" in part.lower() for part in p.relative_to(root).parts[:-1]))


_SCANNERS = {"lits": _scan_lits, "kits19": _scan_kits19, "msd_spleen": _scan_msd_spleen, "btcv": _scan_btcv,
             "msd_pancreas": _scan_msd_pancreas, "msd_liver": _scan_msd_liver}


def _check_headers(name: str, cases: list[_Case], problems: list[str]) -> list[_Case]:
    """Compare NIfTI header shapes/affines of each image/label pair (headers only, no voxel data read)."""
    import nibabel as nib

    good = []
    for c in cases:
        try:
            hi, hl = nib.load(str(c.image)), nib.load(str(c.label))
        except Exception as e:  # nibabel raises several types for corrupt files
            problems.append(
                f"{name} case {c.case_id}: unreadable header ({type(e).__name__}: {e}) in {c.image} or {c.label}"
            )
            continue
        if tuple(hi.shape[:3]) != tuple(hl.shape[:3]):
            problems.append(
                f"{name} case {c.case_id}: image {c.image} shape {hi.shape} != label {c.label} shape {hl.shape}"
            )
            continue
        tol = 1e-2 * float(np.abs(hi.affine[:3, :3]).max()) + 1e-4
        if not np.allclose(hi.affine, hl.affine, atol=tol, rtol=0):
            problems.append(f"{name} case {c.case_id}: image {c.image} and label {c.label} affines differ "
                            f"(max {np.abs(hi.affine - hl.affine).max():.4g})")
            continue
        good.append(c)
    return good
