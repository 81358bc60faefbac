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

"""Fetching and unpacking for the dataset downloads: resumable HTTP with checksums, disk-space checks that name
the folder, and archive unpacking that never leaves a half-written tree."""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import io
import logging
import os
import re
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipofan_monai.utils import fsync_dir

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
"""Bytes read from the network / archive per write."""


class DownloadError(RuntimeError):
    """A download, check or unpack failed; the message says what, where, and what was kept."""


class ChecksumError(DownloadError):
    """A downloaded or given file does not match its published checksum (or is not a valid gzip/NIfTI)."""


class DiskFullError(DownloadError, OSError):
    """No space left in a folder (``errno.ENOSPC``); the message names the folder and the space needed."""

    def __init__(self, message: str):
        DownloadError.__init__(self, message)
        self.errno = errno.ENOSPC


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
