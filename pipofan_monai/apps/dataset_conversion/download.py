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

"""Public datasets by command, checked: ``download`` and ``verify``: what a training
reads must be complete and the files it expects, so every file is checked before it appears under its name.

``python -m pipofan_monai download --dataset NAME --root DIR`` fetches what is publicly downloadable and unpacks it
into the native layout that :func:`make_datalist` scans, then prints the ``datalist`` command to run next:

=============  ==========================================================================  =======================
dataset        what the command does                                                        folder under ``--root``
=============  ==========================================================================  =======================
msd_spleen     ``Task09_Spleen.tar`` from MONAI's MSD mirror, MD5 checked, unpacked          ``Task09_Spleen/``
msd_pancreas   ``Task07_Pancreas.tar`` (same)                                                ``Task07_Pancreas/``
msd_liver      ``Task03_Liver.tar`` (same; its 131 + 70 CTs are the LiTS CTs)                ``Task03_Liver/``
kits19         one ``imaging.nii.gz`` per case from the KiTS imaging host named by the       ``KiTS19/case_XXXXX/``
               kits19 repository's ``starter_code/get_imaging_v2.py``, and the case's
               ``segmentation.nii.gz`` from the kits19 git repository (``data/case_XXXXX/``)
btcv, lits     nothing: they are behind a login; the command prints where to get them and   ``BTCV/``, ``LiTS/``
               the layout to unpack to, then ``verify`` checks what the user unpacked
=============  ==========================================================================  =======================

The MSD URLs and MD5s are the ones MONAI's :class:`monai.apps.DecathlonDataset` publishes (read from it at run
time, so they stay MONAI's). Nothing appears under a final name until it is complete and checked:

* downloads go to ``NAME.part`` beside the destination and are resumed with an HTTP ``Range`` request (a cut
  connection is retried ``retries`` times from where it stopped; a later run resumes the same ``.part``);
* a completed file is checked (MD5 where published; for KiTS19, which publishes no checksums, the whole gzip stream
  is decompressed, which checks its CRC and length, and the NIfTI header is read), fsynced and ``os.replace``-d;
  a file that fails the check is renamed ``NAME.bad`` and nothing else is touched;
* archives are unpacked into a hidden temporary folder under ``--root`` that is renamed into place at the end;
* a full disk (``ENOSPC``) stops with a message naming the folder and the bytes still needed (the ``.part`` file
  is kept, so the download resumes once space is freed); free space is also checked before each download and
  unpack when the size is known.

We keep our own small HTTP fetcher rather than ``monai.apps.download_url``/``download_and_extract`` because those
download into the system temporary folder (often too small for the larger MSD tasks), cannot resume, do not keep
a failed file aside, and ``extractall`` unpacks in place (a half-unpacked folder after a failure). MONAI's
``safe_extract_member`` is used for the archive path checks.

URLs can be overridden for mirrors and tests: ``--base_url`` (or ``PIPOFAN_DOWNLOAD_BASE_URL``) replaces the
host part of the dataset's files, ``--labels_base_url`` (or ``PIPOFAN_KITS19_LABELS_BASE_URL``) the host of the
KiTS19 labels.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from pipofan_monai.utils import as_bool

from .fetch import (
    ChecksumError,
    DiskFullError,
    DownloadError,
    _is_appledouble,
    check_gzip_nifti,
    fetch_file,
    md5sum,
    unpack_archive,
)
from .sources import (
    DATASET_SOURCES,
    ENV_BASE_URL,
    ENV_LABELS_BASE_URL,
    KITS19_IMAGING_BASE,
    KITS19_IMAGING_PATH,
    KITS19_LABELED,
    KITS19_LABELS_BASE,
    KITS19_LABELS_PATH,
    KITS19_TEST,
    DatasetSource,
    _msd_resource,
    _rebase,
    _source,
)
from .verify import datalist_hint, present_datasets, verify_dataset

__all__ = [
    "DatasetSource",
    "DATASET_SOURCES",
    "DownloadError",
    "ChecksumError",
    "DiskFullError",
    "fetch_file",
    "unpack_archive",
    "download_dataset",
    "verify_dataset",
    "datalist_hint",
    "present_datasets",
    "download_command",
    "verify_command",
]

logger = logging.getLogger(__name__)

def _cases(cases) -> list[int]:
    """KiTS19 case selection: None (the 210 labeled cases), "all", "0-209", an int, or a list of ints."""
    if cases is None:
        return list(KITS19_LABELED)
    if isinstance(cases, str):
        s = cases.strip().lower()
        if s == "all":
            return list(KITS19_LABELED) + list(KITS19_TEST)
        m = re.match(r"^(\d+)\s*-\s*(\d+)$", s)
        if m:
            return list(range(int(m.group(1)), int(m.group(2)) + 1))
        try:
            return [int(t) for t in re.split(r"[,\s\[\]]+", s) if t]
        except ValueError:
            raise ValueError(f"--cases {cases!r}: use 'all', a range like 0-209, or a list like [0,1,2].") from None
    if isinstance(cases, int):
        return [cases]
    return [int(c) for c in cases]


def _download_msd(src: DatasetSource, root: Path, base_url: str | None, md5: str | None, archive: str | None,
                  keep_archive: bool, retries: int, retry_wait: float, timeout: float, progress: bool) -> Path:
    url, published = _msd_resource(src.msd_task)
    url = _rebase(url, base_url)
    expected = md5 or published
    final = root / src.folder
    if final.exists():
        logger.info("%s exists already; not downloading (run verify to check it)", final)
        return final
    if archive:
        tar = Path(archive).expanduser()
        found = md5sum(tar, progress)
        if found != expected.lower():
            raise ChecksumError(f"{tar}: MD5 {found} differs from the published {expected} for {src.msd_task}.tar; "
                                "the file was not changed. Download it again.")
    else:
        tar = root / f"{src.msd_task}.tar"
        if tar.is_file():  # complete earlier download (only checked files get this name): check again, cheaply
            found = md5sum(tar, progress)
            if found != expected.lower():
                bad = tar.with_name(tar.name + ".bad")
                os.replace(tar, bad)
                raise ChecksumError(f"{tar}: MD5 {found} differs from the published {expected}; moved to {bad}, "
                                    "nothing else changed. Run the command again to download afresh.")
        else:
            print(f"downloading {url}\n  to {tar} (MD5 {expected})", file=sys.stderr)
            fetch_file(url, tar, md5=expected, reserve=2.0, retries=retries, retry_wait=retry_wait, timeout=timeout,
                       progress=progress)
    unpack_archive(tar, root, src.msd_task, progress=progress, skip=_is_appledouble)
    if src.folder != src.msd_task:  # pragma: no cover - same names today
        os.replace(root / src.msd_task, final)
    if not archive and not keep_archive:
        tar.unlink()
    return final


def _download_kits19(src: DatasetSource, root: Path, base_url: str | None, labels_base_url: str | None, cases,
                     retries: int, retry_wait: float, timeout: float, progress: bool) -> tuple[Path, list[str]]:
    folder = root / src.folder
    img_base = (base_url or KITS19_IMAGING_BASE).rstrip("/")
    lab_base = (labels_base_url or KITS19_LABELS_BASE).rstrip("/")
    wanted = _cases(cases)
    bad = [c for c in wanted if not 0 <= c < 300]
    if bad:
        raise ValueError(f"KiTS19 cases are 0-299, got {bad}.")
    jobs = []
    for c in wanted:
        cdir = folder / f"case_{c:05d}"
        jobs.append((f"{img_base}/{KITS19_IMAGING_PATH.format(case=c)}", cdir / "imaging.nii.gz"))
        if c in KITS19_LABELED:
            jobs.append((f"{lab_base}/{KITS19_LABELS_PATH.format(case=c)}", cdir / "segmentation.nii.gz"))
    todo = [(u, d) for u, d in jobs if not d.is_file()]
    print(f"KiTS19: {len(wanted)} case(s), {len(jobs)} file(s), {len(todo)} to download into {folder}\n"
          f"  imaging from {img_base}/{KITS19_IMAGING_PATH}\n  labels  from {lab_base}/{KITS19_LABELS_PATH}",
          file=sys.stderr)
    failures = []
    from tqdm import tqdm

    for url, dest in tqdm(todo, desc="KiTS19 files", unit="file", disable=not progress or len(todo) < 2,
                          file=sys.stderr):
        try:
            fetch_file(url, dest, check=check_gzip_nifti, retries=retries, retry_wait=retry_wait, timeout=timeout,
                       progress=progress)
        except DiskFullError:
            raise
        except DownloadError as e:  # one bad file never stops the others
            failures.append(str(e))
            logger.error("%s", e)
    failures += _kits19_pair_problems(folder, wanted)
    return folder, failures


def _kits19_pair_problems(folder: Path, cases: Sequence[int]) -> list[str]:
    """Header-only check that each case's imaging and segmentation describe the same voxel grid."""
    import nibabel as nib
    import numpy as np

    problems = []
    for c in cases:
        img, seg = folder / f"case_{c:05d}/imaging.nii.gz", folder / f"case_{c:05d}/segmentation.nii.gz"
        if not (img.is_file() and seg.is_file()):
            continue
        hi, hs = nib.load(str(img)), nib.load(str(seg))
        tol = 1e-2 * float(np.abs(hi.affine[:3, :3]).max()) + 1e-4  # the datalist scanner's tolerance
        if tuple(hi.shape[:3]) != tuple(hs.shape[:3]) or not np.allclose(hi.affine, hs.affine, atol=tol, rtol=0):
            problems.append(f"{img} (shape {tuple(hi.shape)}) and {seg} (shape {tuple(hs.shape)}) do not describe "
                            "the same voxel grid: this imaging file does not belong to the kits19 labels (check "
                            "--base_url / --labels_base_url)")
    return problems


def download_dataset(
    dataset: str,
    root: str | os.PathLike,
    base_url: str | None = None,
    labels_base_url: str | None = None,
    md5: str | None = None,
    archive: str | None = None,
    cases=None,
    keep_archive: bool = True,
    retries: int = 3,
    retry_wait: float = 5.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict:
    """Fetch, check and unpack one public dataset under ``root`` (see the module doc), or, for a dataset behind a
    login, return the instructions.

    Args:
        dataset: one of :data:`DATASET_SOURCES`.
        root: folder that receives the dataset folder (created).
        base_url: mirror of the dataset's files (MSD: the folder holding ``TaskXX_Name.tar``; KiTS19: the folder
            holding ``images/case_XXXXX.nii.gz``). Default: ``$PIPOFAN_DOWNLOAD_BASE_URL``, else the published host.
        labels_base_url: KiTS19 only: the folder holding ``data/case_XXXXX/segmentation.nii.gz``. Default:
            ``$PIPOFAN_KITS19_LABELS_BASE_URL``, else the kits19 git repository (branch master).
        md5: MSD only: expected MD5 of the archive instead of the published one (for a mirror with another copy).
        archive: MSD only: an already downloaded ``TaskXX_Name.tar`` to check and unpack instead of downloading.
        cases: KiTS19 only: which cases (None: the 210 labeled ones; ``"all"``: also the 90 test cases; a range
            ``"0-9"``; a list).
        keep_archive: MSD: keep the downloaded ``.tar`` after unpacking (default True).
        retries: reconnections after a cut connection, per file.
        retry_wait: seconds between reconnections.
        timeout: socket timeout, seconds.
        progress: progress bars (bytes, rate, ETA).

    Returns:
        ``{"dataset", "folder", "public", "datalist_command"}`` for a downloaded dataset; ``{"dataset", "folder",
        "public": False, "instructions"}`` for a login dataset.

    Raises:
        ChecksumError, DiskFullError, DownloadError: see :func:`fetch_file`; for KiTS19, after trying every file,
            one DownloadError listing all failed files.
    """
    src = _source(dataset)
    root = Path(root).expanduser()
    folder = root / src.folder
    if not src.public:
        text = src.instructions.format(folder=folder, folder_q=shlex.quote(str(folder)), root=root,
                                       root_q=shlex.quote(str(root)))
        others = present_datasets(root) if root.is_dir() else []
        return {"dataset": src.name, "folder": str(folder), "public": False, "instructions": text,
                "datalist_command": datalist_hint(root, [src.name] + others)}
    root.mkdir(parents=True, exist_ok=True)
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    if src.msd_task:
        folder = _download_msd(src, root, base_url, md5, archive, keep_archive, retries, retry_wait, timeout, progress)
    else:
        labels_base_url = labels_base_url or os.environ.get(ENV_LABELS_BASE_URL) or None
        folder, failures = _download_kits19(src, root, base_url, labels_base_url, cases, retries, retry_wait,
                                            timeout, progress)
        if failures:
            raise DownloadError(f"KiTS19: {len(failures)} problem(s) (the good files are in place; run the same "
                                "command again to fetch what is missing):\n  " + "\n  ".join(failures))
    return {"dataset": src.name, "folder": str(folder), "public": True,
            "datalist_command": datalist_hint(root, [src.name] + present_datasets(root))}


# -------------------------------------------------------------------------------------------------------- CLI


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


# The CLI wrapper repeats download_dataset's parameters on purpose: fire builds ``--help`` from this signature and
# this docstring (a ``**kwargs`` pass-through would list no options), and here they are parsed from the command line.
def download_command(
    dataset: str,
    root: str = "data",
    base_url: str | None = None,
    labels_base_url: str | None = None,
    md5: str | None = None,
    archive: str | None = None,
    cases=None,
    keep_archive: bool = True,
    retries: int = 3,
    retry_wait: float = 5.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> None:
    """Download a public dataset into the layout ``datalist`` scans, check it, and print the next command.

    ``python -m pipofan_monai download --dataset msd_spleen|msd_pancreas|msd_liver|kits19|btcv|lits --root DIR``

    msd_*: fetch TaskXX_Name.tar (URL and MD5 as published by MONAI's DecathlonDataset), check the MD5, unpack to
    DIR/TaskXX_Name. kits19: fetch DIR/KiTS19/case_XXXXX/imaging.nii.gz (KiTS imaging host) and
    segmentation.nii.gz (kits19 git repository) for the 210 labeled cases (--cases all: also the 90 test cases),
    each checked as a complete gzip/NIfTI file. btcv, lits: behind a login; print where to get them and the layout.
    An interrupted download resumes from its .part file when the command is run again.

    Args:
        dataset: msd_spleen, msd_pancreas, msd_liver, kits19, btcv or lits.
        root: folder receiving the dataset folder. Default "data".
        base_url: mirror URL replacing the host of the dataset's files (or $PIPOFAN_DOWNLOAD_BASE_URL).
        labels_base_url: kits19: mirror of the kits19 repository files (or $PIPOFAN_KITS19_LABELS_BASE_URL).
        md5: msd_*: expected archive MD5 instead of the published one.
        archive: msd_*: a TaskXX_Name.tar you already have: check and unpack it instead of downloading.
        cases: kits19: "all", a range "0-9" or a list "[0,1,2]" (default: the 210 labeled cases).
        keep_archive: msd_*: keep the .tar after unpacking. Default True.
        retries: reconnections after a cut connection, per file. Default 3.
        retry_wait: seconds between reconnections. Default 5.
        timeout: socket timeout in seconds. Default 60.
        progress: show progress bars. Default True.
    """
    _logging()
    try:
        out = download_dataset(dataset, root, base_url=base_url, labels_base_url=labels_base_url,
                               md5=None if md5 is None else str(md5), archive=archive, cases=cases,
                               keep_archive=as_bool(keep_archive, "keep_archive"), retries=int(retries),
                               retry_wait=float(retry_wait), timeout=float(timeout),
                               progress=as_bool(progress, "progress"))
    except (DownloadError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted: finished files are in place, a partial download is kept as *.part; run the same command "
              "again to resume.", file=sys.stderr)
        raise SystemExit(130) from None
    note = ""
    if "--lits " in out["datalist_command"] and "--msd_liver " in out["datalist_command"]:
        note = "\n(LiTS and msd_liver hold the same 131 CTs: keep only one of --lits / --msd_liver)"
    if not out["public"]:
        print(out["instructions"])
        print(f"Then write the datalist (with the datasets found under {root}):\n  {out['datalist_command']}{note}")
        raise SystemExit(2)
    print(f"{out['dataset']}: ready in {out['folder']}\n"
          f"Next, write the datalist (with the datasets found under {root}):\n  {out['datalist_command']}{note}")


def verify_command(dataset: str, path: str, md5: str | None = None, full: bool = False, progress: bool = True) -> None:
    """Check a dataset archive (tar/zip) or unpacked folder you supply; list every problem by file.

    ``python -m pipofan_monai verify --dataset msd_spleen|msd_pancreas|msd_liver|kits19|btcv|lits --path PATH``

    Checks file names and layout, the number of labeled and test cases of the release, image/label pairs,
    dataset.json (MSD), the published MD5 (MSD archives), empty files and Git LFS pointers, and, for a folder,
    every NIfTI header. Exit status 0 when there is no problem, 1 otherwise.

    Args:
        dataset: msd_spleen, msd_pancreas, msd_liver, kits19, btcv or lits.
        path: the archive, or the dataset folder (e.g. DIR/Task09_Spleen, DIR/KiTS19, DIR/BTCV, DIR/LiTS).
        md5: expected archive MD5 (default: the published one for MSD archives).
        full: also decompress every .nii.gz of a folder completely (checks its gzip CRC; reads every byte).
        progress: show progress bars. Default True.
    """
    _logging()
    try:
        report = verify_dataset(dataset, path, md5=None if md5 is None else str(md5), full=as_bool(full, "full"),
                                progress=as_bool(progress, "progress"))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(report)
    if not report.ok:
        raise SystemExit(1)

