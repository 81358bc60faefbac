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

import errno
import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipofan_monai.utils import as_bool, fsync_dir

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

CHUNK = 1 << 20
"""Bytes read from the network / archive per write."""

KITS19_IMAGING_BASE = "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main"
"""Host of the KiTS imaging used by the kits19 repository's ``starter_code/get_imaging_v2.py``."""
KITS19_IMAGING_PATH = "images/case_{case:05d}.nii.gz"
KITS19_LABELS_BASE = "https://raw.githubusercontent.com/neheller/kits19/master"
"""The kits19 git repository (branch master): its ``data/case_XXXXX/segmentation.nii.gz`` are plain git files."""
KITS19_LABELS_PATH = "data/case_{case:05d}/segmentation.nii.gz"
KITS19_LABELED = range(0, 210)
"""KiTS19 cases with a published segmentation (case_00000 .. case_00209)."""
KITS19_TEST = range(210, 300)
"""KiTS19 challenge test cases (imaging only): case_00210 .. case_00299."""

BTCV_TRAIN_IDS: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 41))
"""The 30 labeled BTCV abdomen cases (img0001-0010, img0021-0040)."""
BTCV_TEST_IDS: tuple[int, ...] = tuple(range(61, 81))
"""The 20 unlabeled BTCV test cases (img0061-0080)."""

ENV_BASE_URL = "PIPOFAN_DOWNLOAD_BASE_URL"
ENV_LABELS_BASE_URL = "PIPOFAN_KITS19_LABELS_BASE_URL"


class DownloadError(RuntimeError):
    """A download, check or unpack failed; the message says what, where, and what was kept."""


class ChecksumError(DownloadError):
    """A downloaded or given file does not match its published checksum (or is not a valid gzip/NIfTI)."""


class DiskFullError(DownloadError, OSError):
    """No space left in a folder (``errno.ENOSPC``); the message names the folder and the space needed."""

    def __init__(self, message: str):
        DownloadError.__init__(self, message)
        self.errno = errno.ENOSPC


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset comes from and what a complete copy looks like.

    Args:
        name: dataset id (the ``dataset`` key of datalist items and the ``datalist`` command option).
        title: human readable name.
        folder: folder under ``--root`` that holds the native layout (the root passed to ``datalist``).
        public: True when :func:`download_dataset` can fetch it without a login.
        num_train: labeled cases of the published release.
        num_test: unlabeled (challenge test) cases of the published release.
        msd_task: MSD task name (``Task09_Spleen``) for the MSD tasks, else None.
        msd_prefix: file name prefix of the MSD task's cases (``spleen`` for ``spleen_12.nii.gz``).
        homepage: where the data is described / obtained.
        instructions: for login datasets, the steps to get and unpack the data (``{root}`` is filled in).
    """

    name: str
    title: str
    folder: str
    public: bool
    num_train: int
    num_test: int
    msd_task: str | None = None
    msd_prefix: str | None = None
    homepage: str = ""
    instructions: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


_BTCV_INSTRUCTIONS = """\
BTCV (Multi-Atlas Labeling Beyond the Cranial Vault, abdomen) needs a free Synapse account:
  1. Register at https://www.synapse.org and sign in.
  2. Open the challenge page https://www.synapse.org/#!Synapse:syn3193805/wiki/89480 , go to Files ->
     Abdomen and download RawData.zip (30 labeled + 20 test CTs).
  3. Unpack it so that this layout exists:
       {folder}/RawData/Training/img/img0001.nii.gz ... img0040.nii.gz   (30 files: 0001-0010, 0021-0040)
       {folder}/RawData/Training/label/label0001.nii.gz ... label0040.nii.gz
       {folder}/RawData/Testing/img/img0061.nii.gz ... img0080.nii.gz    (20 files, no labels)
     e.g.:  mkdir -p {folder_q} && unzip RawData.zip -d {folder_q}
     (the datalist scanner searches below {folder}; images in a folder named "Testing" become test items)
  4. Check it:  python -m pipofan_monai verify --dataset btcv --path {folder_q}
     (or check the archive before unpacking: --path RawData.zip)"""

_LITS_INSTRUCTIONS = """\
LiTS (Liver Tumor Segmentation Challenge 2017) is distributed by its challenge site after registration:
  1. Register for the LiTS challenge on CodaLab, https://competitions.codalab.org/competitions/17094
     (also linked from https://www.lits-challenge.com), accept the terms, and download from its
     "Participate" page the two training batches ("Training Batch 1": volume-0 .. volume-27 with
     segmentation-0 .. segmentation-27; "Training Batch 2": volume-28 .. volume-130 with segmentation-28 ..
     segmentation-130) and, optionally, the test data (test-volume-0 .. test-volume-69, no labels).
  2. Unpack every downloaded archive into {folder} so that this layout exists (sub-folder names are free, the
     datalist scanner searches below {folder}):
       {folder}/Training Batch 1/volume-0.nii, segmentation-0.nii, ...
       {folder}/Training Batch 2/volume-28.nii, segmentation-28.nii, ... volume-130.nii, segmentation-130.nii
       {folder}/<any folder>/test-volume-0.nii ... test-volume-69.nii   (optional)
     e.g.:  mkdir -p {folder_q} && unzip ARCHIVE.zip -d {folder_q}   (once per archive)
  3. Check it:  python -m pipofan_monai verify --dataset lits --path {folder_q}
The same 131 labeled CTs (and the 70 test CTs) are public without a login as the MSD liver task:
  python -m pipofan_monai download --dataset msd_liver --root {root_q}
(files liver_N.nii.gz in the MSD layout; use it as --msd_liver, or as LiTS data, not both)."""

DATASET_SOURCES: dict[str, DatasetSource] = {
    "msd_spleen": DatasetSource("msd_spleen", "MSD Task09 Spleen", "Task09_Spleen", True, 41, 20, "Task09_Spleen",
                                "spleen", "http://medicaldecathlon.com/"),
    "msd_pancreas": DatasetSource("msd_pancreas", "MSD Task07 Pancreas", "Task07_Pancreas", True, 281, 139,
                                  "Task07_Pancreas", "pancreas", "http://medicaldecathlon.com/"),
    "msd_liver": DatasetSource("msd_liver", "MSD Task03 Liver (the LiTS CTs)", "Task03_Liver", True, 131, 70,
                               "Task03_Liver", "liver", "http://medicaldecathlon.com/"),
    "kits19": DatasetSource("kits19", "KiTS19", "KiTS19", True, len(KITS19_LABELED), len(KITS19_TEST),
                            homepage="https://github.com/neheller/kits19"),
    "btcv": DatasetSource("btcv", "BTCV abdomen", "BTCV", False, len(BTCV_TRAIN_IDS), len(BTCV_TEST_IDS),
                          homepage="https://www.synapse.org/#!Synapse:syn3193805/wiki/89480",
                          instructions=_BTCV_INSTRUCTIONS),
    "lits": DatasetSource("lits", "LiTS 2017", "LiTS", False, 131, 70,
                          homepage="https://competitions.codalab.org/competitions/17094",
                          instructions=_LITS_INSTRUCTIONS),
}
"""The six datasets of the ``download`` / ``verify`` commands."""


def _source(name: str) -> DatasetSource:
    key = str(name).lower()
    if key not in DATASET_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_SOURCES)}.")
    return DATASET_SOURCES[key]


def _msd_resource(task: str) -> tuple[str, str]:
    """(URL, MD5) of an MSD task as published by ``monai.apps.DecathlonDataset``."""
    from monai.apps import DecathlonDataset

    return DecathlonDataset.resource[task], DecathlonDataset.md5[task]


def _rebase(url: str, base_url: str | None) -> str:
    """Replace everything before the file name of ``url`` by ``base_url`` (keeps ``url`` when None/empty)."""
    if not base_url:
        return url
    return base_url.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


def _human(n: float | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _write(f, data: bytes) -> None:
    """Write one chunk (one place, so tests can make it raise ``ENOSPC``)."""
    f.write(data)


def _copy_chunks(read: Callable[[], bytes], f: Any, bar: Any, folder: Path, what: str, needed: int | None) -> int:
    """Copy ``read()`` chunks into ``f`` until an empty one, counting them on ``bar``; returns the bytes copied.

    A full disk raises :class:`DiskFullError` naming ``folder``, ``what`` was being done and how much of ``needed``
    (bytes still to write at the start; None: unknown) was still missing. Used by downloads and unpacking.
    """
    copied = 0
    while True:
        buf = read()
        if not buf:
            return copied
        try:
            _write(f, buf)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(folder, None if needed is None else needed - copied, what) from None
            raise
        copied += len(buf)
        bar.update(len(buf))


def _disk_full(folder: Path, needed: int | None, what: str) -> DiskFullError:
    try:
        free = shutil.disk_usage(str(folder)).free
    except OSError:
        free = None
    need = f"about {_human(needed)} more is needed" if needed is not None else "the size still needed is unknown"
    return DiskFullError(f"no space left in {folder} while {what}: {need}, {_human(free)} free there. "
                         "Free some space (or choose another --root) and run the same command again.")


def _check_space(folder: Path, needed: int | None, what: str) -> None:
    """Fail early when ``needed`` bytes clearly do not fit in ``folder``."""
    if needed is None or needed <= 0:
        return
    free = shutil.disk_usage(str(folder)).free
    if needed > free:
        raise DiskFullError(f"not enough space in {folder} for {what}: {_human(needed)} needed, {_human(free)} free. "
                            "Free some space (or choose another --root) and run the same command again.")


def _bar(total: int | None, initial: int, desc: str, progress: bool, unit: str = "B"):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                disable=not progress, file=sys.stderr, leave=False, dynamic_ncols=True)


def md5sum(path: str | os.PathLike, progress: bool = False) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks (with a progress bar when ``progress``).

    (MONAI's ``check_hash`` only says yes/no; the error message needs the digest found.)
    """
    h = hashlib.md5(usedforsecurity=False)  # allowed on FIPS machines
    size = os.path.getsize(path)
    with open(path, "rb") as f, _bar(size, 0, f"md5 {Path(path).name}", progress) as bar:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def check_gzip_nifti(path: str | os.PathLike) -> None:
    """Check that ``path`` is a complete gzip stream (CRC and length) holding a readable NIfTI header.

    Raises:
        ChecksumError: naming the file and what is wrong (a Git LFS pointer, a truncated or corrupt gzip stream,
            not NIfTI).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(b"version https://git-lfs"):
        raise ChecksumError(f"{path} is a Git LFS pointer, not the image data (the real file was not fetched).")
    if head[:2] != b"\x1f\x8b":
        raise ChecksumError(f"{path} is not a gzip file (starts with {head[:16]!r}).")
    try:
        with gzip.open(path, "rb") as g:
            first = g.read(348)
            while g.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise ChecksumError(f"{path} is a truncated or corrupt gzip stream: {e}.") from e
    import nibabel as nib

    try:
        nib.Nifti1Header.from_fileobj(io.BytesIO(first), check=True)
    except Exception as e:  # nibabel raises several types for a bad header
        raise ChecksumError(f"{path} does not hold a valid NIfTI-1 header: {type(e).__name__}: {e}.") from e


_NET_ERRORS = (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "pipofan-monai-download"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def fetch_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    check: Callable[[Path], None] | None = None,
    reserve: float = 1.0,
    retries: int = 3,
    retry_wait: float = 5.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` resumably and check it; ``dest`` appears only when complete and good.

    The bytes go to ``dest.part`` (appended to with an HTTP ``Range: bytes=N-`` request when it exists, e.g. after
    a cut connection or an interrupted run; a server that ignores ranges sends the whole file again). When the
    server's length is reached the file is checked (``md5`` and/or ``check``), fsynced and renamed to ``dest``.

    Args:
        url: http(s) URL.
        dest: final file path (its folder is created once the server answers).
        md5: expected hex MD5 (None: no checksum published).
        check: extra check of the completed ``.part`` path; raises :class:`ChecksumError` when bad.
        reserve: free space required before the transfer, as a multiple of the bytes still to fetch (2.0 for an
            archive that will be unpacked beside itself).
        retries: reconnections (with resume) after a cut connection within this call.
        retry_wait: seconds between reconnections.
        timeout: socket timeout in seconds.
        progress: show a tqdm bar (bytes, rate, ETA).

    Returns:
        ``dest`` (already complete files are not fetched again; they are not re-checked here).

    Raises:
        ChecksumError: MD5 mismatch or failed ``check``; the file is kept as ``dest.bad``, nothing else changed.
        DiskFullError: no space left (the ``.part`` is kept for resuming).
        DownloadError: HTTP error, or the connection kept failing (the ``.part`` is kept for resuming).
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        try:
            done = _fetch_once(url, part, offset, timeout, progress, reserve)
        except _Cut as e:
            got = part.stat().st_size if part.is_file() else 0
            if attempt >= retries:
                if e.reason.startswith("cannot connect") and got == 0:
                    raise DownloadError(f"cannot reach {url} ({e.reason[len('cannot connect: '):]}); check the network "
                                        "connection, or give a mirror with --base_url.") from None
                raise DownloadError(
                    f"download of {url} was cut after {_human(got)} ({e.reason}); the partial file {part} is kept: "
                    "run the same command again to resume from there.") from None
            attempt += 1
            logger.warning("connection to %s cut after %s (%s); resuming (%d/%d)", url, _human(got), e.reason,
                           attempt, retries)
            time.sleep(retry_wait)
            continue
        if done:
            break
    try:
        if md5 is not None:
            found = md5sum(part, progress)
            if found.lower() != md5.lower():
                raise ChecksumError(f"MD5 mismatch for {url}: expected {md5}, got {found}")
        if check is not None:
            check(part)
    except ChecksumError as e:
        bad = dest.with_name(dest.name + ".bad")
        os.replace(part, bad)
        raise ChecksumError(f"{e}. The downloaded file is kept as {bad} and nothing else was changed; delete it and "
                            "run the command again to download afresh (if it fails again, the server's copy "
                            "differs from the published one).") from None
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


class _Cut(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _fetch_once(url: str, part: Path, offset: int, timeout: float, progress: bool, reserve: float = 1.0) -> bool:
    """One HTTP request appending to ``part``; True when the file is complete. Raises :class:`_Cut`."""
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:  # the range starts at/after the end: the .part is already complete
            total = _content_range_total(e.headers.get("Content-Range"))
            if total is None or total == offset:
                return True
            raise DownloadError(f"{url}: server refused to resume {part} at byte {offset} (file has {total} bytes); "
                                f"delete {part} to start over.") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, _NET_ERRORS + (OSError,)):
            raise _Cut(f"cannot connect: {e.reason}") from None
        raise DownloadError(f"{url}: {e.reason}") from None
    except _NET_ERRORS as e:
        raise _Cut(f"{type(e).__name__}: {e}") from None
    with resp:
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None else None
        if offset > 0 and resp.status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(f"{url}: asked to resume at byte {offset}, server answered from byte {start}; "
                                    f"delete {part} to start over.")
            mode = "ab"
        else:
            if offset > 0:
                logger.warning("%s ignored the resume request; downloading the whole file again", url)
            offset, mode = 0, "wb"
        total = offset + length if length is not None else None
        part.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed request leaves no empty folder
        _check_space(part.parent, None if length is None else int(length * reserve),
                     f"downloading {part.name[:-5]}" + (" and unpacking it" if reserve > 1 else ""))

        def read() -> bytes:
            try:
                return resp.read(CHUNK)
            except _NET_ERRORS + (OSError,) as e:
                raise _Cut(f"{type(e).__name__}: {e}") from None

        with open(part, mode) as f, _bar(total, offset, part.name[: -len(".part")], progress) as bar:
            try:
                received = offset + _copy_chunks(read, f, bar, part.parent, f"downloading {part.name[:-5]}",
                                                 None if total is None else total - offset)
            finally:
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    pass
        if total is not None and received < total:
            raise _Cut(f"connection closed at byte {received} of {total}")
        return True


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _content_range_total(value: str | None) -> int | None:
    m = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def unpack_archive(archive: str | os.PathLike, dest_parent: str | os.PathLike, top: str, progress: bool = True,
                   skip: Callable[[str], bool] | None = None) -> Path:
    """Unpack the folder ``top`` of a tar or zip ``archive`` to ``dest_parent/top``, atomically.

    Everything is written to a hidden temporary folder in ``dest_parent`` (each file fsynced), then that folder's
    ``top`` is renamed to ``dest_parent/top``; on any failure the temporary folder is removed and nothing else
    changes. Members with absolute paths, ``..`` or links are refused (``monai.apps.utils.safe_extract_member``).

    Args:
        archive: ``.tar`` / ``.tar.gz`` / ``.zip`` file.
        dest_parent: folder to create ``top`` in.
        top: the archive's top folder (e.g. ``Task09_Spleen``); it must exist in the archive.
        progress: show a tqdm bar over the unpacked bytes (with ETA).
        skip: member names (POSIX, relative) to leave out, e.g. macOS ``._*`` files.

    Returns:
        ``dest_parent/top``.

    Raises:
        FileExistsError: ``dest_parent/top`` exists already.
        DownloadError: the archive is unreadable or has no ``top`` folder, or an unsafe member.
        DiskFullError: not enough space in ``dest_parent``.
    """
    from monai.apps.utils import safe_extract_member

    archive, dest_parent = Path(archive), Path(dest_parent)
    final = dest_parent / top
    if final.exists():
        raise FileExistsError(f"{final} exists already; move it aside to unpack {archive} again.")
    dest_parent.mkdir(parents=True, exist_ok=True)
    members = _archive_members(archive)
    wanted = [(name, size, opener) for name, size, opener in members
              if (name == top or name.startswith(top + "/")) and not (skip and skip(name))]
    if not wanted:
        raise DownloadError(f"{archive} has no folder {top}/ (found: {sorted({n.split('/')[0] for n, _, _ in members})[:5]})")
    total = sum(s for _, s, _ in wanted if s is not None)
    _check_space(dest_parent, total, f"unpacking {archive.name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.unpack-", dir=str(dest_parent)))
    done = 0  # bytes unpacked (tqdm does not count when disabled)
    try:
        with _bar(total, 0, f"unpack {archive.name}", progress) as bar:
            for name, size, opener in wanted:
                if opener is None:  # a folder
                    Path(safe_extract_member(_Named(name), str(tmp))).mkdir(parents=True, exist_ok=True)
                    continue
                target = Path(safe_extract_member(_Named(name), str(tmp)))
                target.parent.mkdir(parents=True, exist_ok=True)
                with opener() as src, open(target, "wb") as out:
                    done += _copy_chunks(lambda: src.read(CHUNK), out, bar, dest_parent, f"unpacking {archive.name}",
                                         total - done)
                    out.flush()
                    os.fsync(out.fileno())
        os.replace(tmp / top, final)
        fsync_dir(dest_parent)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DownloadError(f"cannot unpack {archive}: {type(e).__name__}: {e}") from e
    except ValueError as e:  # safe_extract_member
        raise DownloadError(f"refusing to unpack {archive}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass
class _Named:
    name: str


def _archive_members(archive: Path) -> list[tuple[str, int | None, Callable | None]]:
    """``(posix name, size, opener)`` of an archive's members (opener None for folders); links are refused."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        out = []
        for info in zf.infolist():
            n = info.filename.rstrip("/")
            out.append((n, None, None) if info.is_dir() else (n, info.file_size, lambda i=info: zf.open(i)))
        return out
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.TarError as e:
        raise DownloadError(f"{archive} is neither a tar nor a zip archive ({e}).") from e
    out = []
    for m in tf.getmembers():
        n = m.name[2:] if m.name.startswith("./") else m.name
        n = n.rstrip("/")
        if m.isdir():
            out.append((n, None, None))
        elif m.isfile():
            out.append((n, m.size, lambda m=m: tf.extractfile(m)))
        else:
            raise DownloadError(f"{archive}: member {m.name} is a link or special file; refusing to unpack it.")
    return out


def _is_appledouble(name: str) -> bool:
    return Path(name).name.startswith("._")


# ----------------------------------------------------------------------------------------------------- verify


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

