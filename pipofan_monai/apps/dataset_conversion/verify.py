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

"""Checking a dataset folder or archive against its published layout (``pipofan verify``)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .fetch import ChecksumError, DownloadError, _archive_members, _is_appledouble, check_gzip_nifti, md5sum
from .sources import (
    BTCV_TEST_IDS,
    BTCV_TRAIN_IDS,
    DATASET_SOURCES,
    KITS19_LABELED,
    KITS19_TEST,
    DatasetSource,
    _msd_resource,
    _source,
)

logger = logging.getLogger(__name__)

@dataclass
class _Listing:
    """Relative POSIX paths (files only) of a folder or an archive, their sizes and a way to read small files."""

    where: Path
    files: dict[str, int]
    read: Callable[[str], bytes]
    is_archive: bool


def _list_folder(folder: Path) -> _Listing:
    files = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or f.endswith((".part", ".bad")):
                continue
            p = Path(dirpath) / f
            files[p.relative_to(folder).as_posix()] = p.stat().st_size
    return _Listing(folder, files, lambda rel: (folder / rel).read_bytes(), False)


def _list_archive(archive: Path) -> _Listing:
    members = _archive_members(archive)
    files = {n: s for n, s, o in members if o is not None and not _is_appledouble(n)}
    openers = {n: o for n, s, o in members if o is not None}

    def read(rel: str) -> bytes:
        with openers[rel]() as f:
            return f.read()

    return _Listing(archive, files, read, True)


def _names_under(listing: _Listing, sub: str) -> dict[str, str]:
    """{file name: rel path} of the files directly in ``sub`` (a relative folder, '' for the root)."""
    prefix = sub.rstrip("/") + "/" if sub else ""
    return {rel[len(prefix):]: rel for rel in listing.files if rel.startswith(prefix) and "/" not in rel[len(prefix):]}


def _verify_msd(src: DatasetSource, listing: _Listing, problems: list[str], notes: list[str]) -> None:
    metas = sorted((r for r in listing.files if Path(r).name == "dataset.json"), key=lambda r: (r.count("/"), r))
    if not metas:
        problems.append(f"{listing.where}: no dataset.json found (expected {src.msd_task}/dataset.json)")
        return
    base = str(Path(metas[0]).parent.as_posix()) if "/" in metas[0] else ""
    where = f"{listing.where}" + (f" ({base}/)" if base else "")
    j = lambda sub: f"{base}/{sub}" if base else sub  # noqa: E731
    if base and Path(base).name != src.msd_task:
        notes.append(f"the task folder is named {base!r}, the release names it {src.msd_task!r}")
    rx = re.compile(rf"^{src.msd_prefix}_(\d+)\.nii\.gz$")
    sets = {}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        names = _names_under(listing, j(sub))
        for n, rel in sorted(names.items()):
            if not rx.match(n):
                problems.append(f"{listing.where}/{rel}: unexpected file name (expected {src.msd_prefix}_N.nii.gz)")
            elif listing.files[rel] == 0:
                problems.append(f"{listing.where}/{rel}: empty file")
        sets[sub] = {n for n in names if rx.match(n)}
    for n in sorted(sets["imagesTr"] - sets["labelsTr"]):
        problems.append(f"{listing.where}/{j('imagesTr/' + n)}: image without label (labelsTr/{n} missing)")
    for n in sorted(sets["labelsTr"] - sets["imagesTr"]):
        problems.append(f"{listing.where}/{j('labelsTr/' + n)}: label without image (imagesTr/{n} missing)")
    ntr, nts = len(sets["imagesTr"] & sets["labelsTr"]), len(sets["imagesTs"])
    if ntr != src.num_train:
        problems.append(f"{where}: {ntr} labeled cases in imagesTr/labelsTr, the release has {src.num_train}")
    if nts != src.num_test:
        problems.append(f"{where}: {nts} test images in imagesTs, the release has {src.num_test}")
    try:
        meta = json.loads(listing.read(metas[0]))
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"{listing.where}/{metas[0]}: unreadable dataset.json ({e})")
        return
    for entry in meta.get("training", []) or []:
        for key in ("image", "label"):
            rel = j(os.path.normpath(str(entry.get(key, ""))).replace(os.sep, "/"))
            if rel not in listing.files:
                problems.append(f"{listing.where}/{metas[0]}: lists {entry.get(key)!r}, which is missing")
    for entry in meta.get("test", []) or []:
        rel = j(os.path.normpath(str(entry.get("image", "") if isinstance(entry, dict) else entry)).replace(os.sep, "/"))
        if rel not in listing.files:
            problems.append(f"{listing.where}/{metas[0]}: lists test image {entry!r}, which is missing")
    for key, n in (("numTraining", ntr), ("numTest", nts)):
        if key in meta and int(meta[key]) != n:
            problems.append(f"{listing.where}/{metas[0]}: {key} is {meta[key]}, found {n}")


def _verify_kits19(src: DatasetSource, listing: _Listing, problems: list[str], notes: list[str]) -> None:
    cases: dict[int, dict[str, str]] = {}
    for rel in listing.files:
        parts = rel.split("/")
        if len(parts) >= 2 and re.match(r"^case_\d{5}$", parts[-2]):
            if parts[-1] in ("imaging.nii.gz", "segmentation.nii.gz"):
                cases.setdefault(int(parts[-2][5:]), {})[parts[-1]] = rel
    if not cases:
        problems.append(f"{listing.where}: no case_XXXXX/imaging.nii.gz found")
        return
    for i in KITS19_LABELED:
        have = cases.get(i, {})
        for f in ("imaging.nii.gz", "segmentation.nii.gz"):
            if f not in have:
                problems.append(f"{listing.where}: case_{i:05d}/{f} missing")
    tests = [i for i in KITS19_TEST if "imaging.nii.gz" in cases.get(i, {})]
    if tests and len(tests) != len(KITS19_TEST):
        missing = [f"case_{i:05d}" for i in KITS19_TEST if i not in tests]
        notes.append(f"{len(tests)} of the {len(KITS19_TEST)} test cases present; missing {', '.join(missing[:5])}"
                     + (" ..." if len(missing) > 5 else ""))
    elif not tests:
        notes.append("no test cases (case_00210-case_00299, imaging only) present")
    for i, have in sorted(cases.items()):
        if i not in KITS19_LABELED and i not in KITS19_TEST:
            problems.append(f"{listing.where}: case_{i:05d} is not a KiTS19 case (0-299)")
        if i in KITS19_TEST and "segmentation.nii.gz" in have:
            notes.append(f"case_{i:05d} has a segmentation (not published for KiTS19 test cases)")
        if "imaging.nii.gz" not in have:
            if i in KITS19_TEST:
                problems.append(f"{listing.where}/{have['segmentation.nii.gz']}: label without imaging.nii.gz")
        for rel in have.values():
            if listing.files[rel] == 0:
                problems.append(f"{listing.where}/{rel}: empty file")
            elif listing.files[rel] < 1024 and listing.read(rel).startswith(b"version https://git-lfs"):
                problems.append(f"{listing.where}/{rel}: a Git LFS pointer (the file itself was not fetched)")


def _verify_btcv(src: DatasetSource, listing: _Listing, problems: list[str], notes: list[str]) -> None:
    imgs, labs = {}, {}
    for rel in listing.files:
        m = re.match(r"^(img|label)(\d{4})\.nii\.gz$", Path(rel).name)
        if m:
            (imgs if m.group(1) == "img" else labs).setdefault(int(m.group(2)), []).append(rel)
    if not imgs:
        problems.append(f"{listing.where}: no imgXXXX.nii.gz found (expected RawData/Training/img/img0001.nii.gz ...)")
        return
    for d in (imgs, labs):
        for i, rels in d.items():
            if len(rels) > 1:
                problems.append(f"{listing.where}: case {i:04d} appears {len(rels)} times: {', '.join(sorted(rels))}")
    for i in BTCV_TRAIN_IDS:
        if i not in imgs:
            problems.append(f"{listing.where}: training image img{i:04d}.nii.gz missing")
        if i not in labs:
            problems.append(f"{listing.where}: training label label{i:04d}.nii.gz missing")
    for i in sorted(set(imgs) | set(labs)):
        if i not in BTCV_TRAIN_IDS and i not in BTCV_TEST_IDS:
            problems.append(f"{listing.where}/{(imgs.get(i) or labs[i])[0]}: not a BTCV case id")
        if i in BTCV_TEST_IDS and i in imgs and not any("test" in r.lower() for r in imgs[i]):
            problems.append(f"{listing.where}/{imgs[i][0]}: test image outside a Testing folder (the datalist scanner "
                            "needs 'test' in its folder name to list it as a test case)")
    ntest = len([i for i in BTCV_TEST_IDS if i in imgs])
    if ntest != len(BTCV_TEST_IDS):
        notes.append(f"{ntest} of the {len(BTCV_TEST_IDS)} test images (img0061-img0080) present")


def _verify_lits(src: DatasetSource, listing: _Listing, problems: list[str], notes: list[str]) -> None:
    found: dict[str, dict[int, list[str]]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    for rel in listing.files:
        m = re.match(r"^(volume|segmentation|test-volume)-(\d+)\.nii(?:\.gz)?$", Path(rel).name)
        if m:
            found[m.group(1)].setdefault(int(m.group(2)), []).append(rel)
    if not found["volume"]:
        problems.append(f"{listing.where}: no volume-N.nii found (expected volume-0.nii ... volume-130.nii)")
        return
    for kind, d in found.items():
        for i, rels in d.items():
            if len(rels) > 1:
                problems.append(f"{listing.where}: {kind}-{i} appears {len(rels)} times: {', '.join(sorted(rels))}")
    for i in range(src.num_train):
        for kind in ("volume", "segmentation"):
            if i not in found[kind]:
                problems.append(f"{listing.where}: {kind}-{i}.nii missing")
    for kind, n in (("volume", src.num_train), ("segmentation", src.num_train), ("test-volume", src.num_test)):
        extra = sorted(i for i in found[kind] if i >= n)
        for i in extra:
            problems.append(f"{listing.where}/{found[kind][i][0]}: not a LiTS case (0-{n - 1})")
    ntest = len([i for i in range(src.num_test) if i in found["test-volume"]])
    if ntest != src.num_test:
        notes.append(f"{ntest} of the {src.num_test} test volumes (test-volume-0 .. test-volume-69) present")


_VERIFIERS = {"msd": _verify_msd, "kits19": _verify_kits19, "btcv": _verify_btcv, "lits": _verify_lits}


def _check_nifti_files(listing: _Listing, problems: list[str], full: bool, progress: bool) -> int:
    """Read every NIfTI header of a folder (and, with ``full``, decompress every .nii.gz to check its CRC)."""
    import nibabel as nib
    from tqdm import tqdm

    rels = sorted(r for r in listing.files if re.search(r"\.nii(\.gz)?$", r))
    for rel in tqdm(rels, desc="checking files", unit="file", disable=not progress, file=sys.stderr, leave=False):
        path = listing.where / rel
        try:
            if full and rel.endswith(".gz"):
                check_gzip_nifti(path)
            else:
                with open(path, "rb") as f:
                    head = f.read(64)
                if head.startswith(b"version https://git-lfs"):
                    raise ChecksumError("a Git LFS pointer, not the image data")
                nib.load(str(path)).header  # noqa: B018  (reads the header only)
        except ChecksumError as e:
            problems.append(f"{path}: {str(e).replace(str(path) + ' ', '')}")
        except Exception as e:  # nibabel raises several types for corrupt files
            problems.append(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})")
    return len(rels)


@dataclass
class VerifyReport:
    """Result of :func:`verify_dataset`: ``problems`` (each naming a file) and ``notes`` (not errors)."""

    dataset: str
    path: Path
    problems: list[str]
    notes: list[str]
    num_files: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"{self.dataset}: {self.path}: OK ({self.num_files} files checked)" if self.ok else
                f"{self.dataset}: {self.path}: {len(self.problems)} problem(s)")
        lines = [head] + [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_dataset(dataset: str, path: str | os.PathLike, md5: str | None = None, full: bool = False,
                   progress: bool = True) -> VerifyReport:
    """Check a user-supplied archive (tar/zip) or unpacked folder of ``dataset`` against the published release.

    Checks: the file names and folder layout the datalist scanner expects, the number of labeled and test cases,
    image/label pairs, ``dataset.json`` entries (MSD), the published MD5 of an MSD archive (when ``path`` is the
    archive), empty files and Git LFS pointers; for a folder also every NIfTI header (``full``: decompress every
    ``.nii.gz`` completely, which checks its gzip CRC).

    Args:
        dataset: one of :data:`DATASET_SOURCES`.
        path: archive file or folder (for a folder, the dataset folder, e.g. ``DIR/Task09_Spleen``).
        md5: expected MD5 of an archive (default: the published one for MSD archives, none otherwise).
        full: decompress every ``.nii.gz`` of a folder (slow: reads every byte). Default False.
        progress: progress bars.

    Returns:
        a :class:`VerifyReport`; every problem names the file concerned.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown dataset.
    """
    src = _source(dataset)
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    problems: list[str] = []
    notes: list[str] = []
    if path.is_file():
        if src.msd_task is not None:
            expected = md5 or _msd_resource(src.msd_task)[1]
            found = md5sum(path, progress)
            if found != expected.lower():
                problems.append(f"{path}: MD5 {found} differs from the published {expected} for {src.msd_task}.tar")
        elif md5:
            found = md5sum(path, progress)
            if found != md5.lower():
                problems.append(f"{path}: MD5 {found} differs from the expected {md5}")
        else:
            notes.append(f"no checksum is published for {src.title} archives; file names and counts only")
        try:
            listing = _list_archive(path)
        except (DownloadError, tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            problems.append(f"{path}: unreadable archive ({e})")
            return VerifyReport(src.name, path, problems, notes, 0)
    else:
        listing = _list_folder(path)
    verifier = _VERIFIERS["msd" if src.msd_task else src.name]
    verifier(src, listing, problems, notes)
    n = len(listing.files)
    if not listing.is_archive:
        _check_nifti_files(listing, problems, full, progress)
    return VerifyReport(src.name, path, problems, notes, n)


# --------------------------------------------------------------------------------------------------- download


def present_datasets(root: str | os.PathLike) -> list[str]:
    """Datasets whose folder (:attr:`DatasetSource.folder`) exists and is not empty under ``root``."""
    root = Path(root)
    return [n for n, s in DATASET_SOURCES.items() if (root / s.folder).is_dir() and any((root / s.folder).iterdir())]


def datalist_hint(root: str | os.PathLike, datasets: Sequence[str], output: str | os.PathLike | None = None) -> str:
    """The ``datalist`` command (one shell line, paths quoted where needed) for ``datasets`` unpacked under
    ``root`` in their :attr:`DatasetSource.folder`; ``output`` defaults to ``root/datalist.json``."""
    root = Path(root)
    names = [n for n in DATASET_SOURCES if n in {_source(d).name for d in datasets}]
    args = " ".join(f"--{n} {shlex.quote(str(root / DATASET_SOURCES[n].folder))}" for n in names)
    out = root / "datalist.json" if output is None else Path(output)
    return f"python -m pipofan_monai datalist {args} --output {shlex.quote(str(out))}"


