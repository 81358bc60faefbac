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

"""Output writers of the inference: label maps and probabilities appear under their final name only when complete.

:class:`AtomicNiftiWriter` (a ``monai.data.NibabelWriter``) writes each NIfTI file to a temporary file in the
destination folder (``.<name>.<pid>.<random>.tmp.nii.gz``, :func:`pipofan_monai.utils.atomic_path`), fsyncs it,
renames it over the destination with ``os.replace`` and fsyncs the folder: a kill or a full disk at any moment leaves the previous file (or no file), never
a truncated one under the final name. :class:`LabelNiftiWriter` adds the label-map shape rule (a one-slice volume
stays 3D). :class:`AtomicSaveImaged` is ``SaveImaged`` with these writers that reports the writer's real error
(e.g. ``OSError: [Errno 28] could not write ...: No space left on device``) instead of MONAI's "cannot find a
suitable writer ... install the writer libraries".

For files written before (or by other tools), :func:`output_is_complete` tells a complete NIfTI / PNG from a
truncated one from its header and its last bytes (no voxel data read), and :func:`remove_stale_temp_files`
removes the temporary files that a killed process left behind (the process id in the name tells a dead writer
from a running one on the same machine).

Why not ``monai.data`` alone: MONAI 1.6's writers call ``nib.save`` on the final name, and ``SaveImage`` turns
every writer exception into a ``RuntimeError`` about missing writer libraries.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import threading
from typing import Any, Hashable, Iterable, Mapping

import numpy as np
from monai.data import NibabelWriter
from monai.transforms import SaveImaged
from pipofan_monai.utils import atomic_path, remove_stale_temporaries, write_error

__all__ = [
    "AtomicNiftiWriter",
    "LabelNiftiWriter",
    "AtomicSaveImaged",
    "output_is_complete",
    "remove_stale_temp_files",
]

logger = logging.getLogger("pipofan.inference")

def remove_stale_temp_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Remove the temporary files that killed writes of ``paths`` left behind.

    :func:`pipofan_monai.utils.remove_stale_temporaries` restricted to these outputs: a temporary file
    ``.<name>.<pid>.<random>.tmp<ext>`` of one of ``paths`` whose process no longer runs on this machine is removed;
    one of a running process (another run writing the same file) is kept, and so are the temporaries of other files
    in the folder. Run it before writing (or skipping) a case.

    Args:
        paths: final output paths (their folders are searched for their temporary files).

    Returns:
        the removed files.
    """
    by_folder: dict[str, set[str]] = {}
    for p in paths:
        folder, name = os.path.split(os.path.abspath(os.fspath(p)))
        by_folder.setdefault(folder, set()).add(name)
    return [str(r) for folder, names in by_folder.items() for r in remove_stale_temporaries([folder], names)]


def _nifti_expected_size(header_bytes: bytes) -> int | None:
    """Uncompressed file size declared by a NIfTI-1/2 header (vox_offset + voxel bytes), or None."""
    if len(header_bytes) < 348:
        return None
    for endian in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(endian + "i", header_bytes[:4])
        if sizeof_hdr == 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", header_bytes[40:56])
            bitpix = struct.unpack(endian + "h", header_bytes[72:74])[0]
            vox_offset = struct.unpack(endian + "f", header_bytes[108:112])[0]
            break
        if sizeof_hdr == 540 and len(header_bytes) >= 540:  # NIfTI-2
            dims = struct.unpack(endian + "8q", header_bytes[16:80])
            bitpix = struct.unpack(endian + "h", header_bytes[14:16])[0]
            vox_offset = struct.unpack(endian + "q", header_bytes[168:176])[0]
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    n = 1
    for k in range(1, ndim + 1):
        n *= max(int(dims[k]), 0)
    return int(vox_offset) + n * int(bitpix) // 8


def output_is_complete(path: str | os.PathLike) -> bool:
    """Whether an output file is complete, from its header and last bytes (no voxel data decoded).

    - ``.nii``: at least ``vox_offset + voxels * bytes`` long, as its header declares.
    - ``.nii.gz``: a valid gzip header, and the gzip trailer's uncompressed size (ISIZE, modulo 2**32) equals the
      size the NIfTI header declares (a truncated file ends with compressed data instead of that trailer).
    - ``.png``: ends with the ``IEND`` chunk.
    - other files: exist and are not empty.

    Args:
        path: the file.

    Returns:
        False for a missing, empty, truncated or unreadable file.
    """
    p = os.fspath(path)
    try:
        size = os.path.getsize(p)
        if size == 0:
            return False
        low = p.lower()
        if low.endswith(".nii.gz"):
            if size < 18:
                return False
            with open(p, "rb") as f:
                if f.read(2) != b"\x1f\x8b":
                    return False
                f.seek(size - 4)
                (isize,) = struct.unpack("<I", f.read(4))
            with gzip.open(p, "rb") as g:
                expected = _nifti_expected_size(g.read(540))
            return expected is not None and expected % (1 << 32) == isize
        if low.endswith(".nii"):
            with open(p, "rb") as f:
                expected = _nifti_expected_size(f.read(540))
            return expected is not None and size >= expected
        if low.endswith(".png"):
            with open(p, "rb") as f:
                f.seek(max(0, size - 12))
                return f.read(12) == b"\x00\x00\x00\x00IEND\xaeB`\x82"
        return True
    except (OSError, EOFError, struct.error):
        return False


# ---------------------------------------------------------------------------------------------- writers
_errors = threading.local()


def _record(exc: BaseException) -> None:
    stack = getattr(_errors, "stack", None)
    if stack:
        stack[-1].append(exc)


class AtomicNiftiWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` that writes atomically (temporary file in the same folder, fsync,
    ``os.replace``) and reports write errors with the file name and the cause.

    A full disk raises ``OSError(ENOSPC, "could not write <file>: No space left on device (<free> free in
    <folder>) ...")`` (worded by :func:`pipofan_monai.utils.write_error`); the temporary file is removed and a
    previous file under the final name is left untouched. Use with
    :class:`AtomicSaveImaged` (or ``SaveImaged(writer=AtomicNiftiWriter)``, which writes atomically too but
    reports errors as MONAI does).
    """

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        """As ``NibabelWriter.set_data_array``; errors are reported by :class:`AtomicSaveImaged`."""
        try:
            super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=squeeze_end_dims, **kwargs)
        except Exception as e:
            _record(e)
            raise

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write ``filename`` atomically (see the class docstring).

        Raises:
            OSError: the file could not be written (the message names it and the cause, e.g. no space left).
        """
        try:
            with atomic_path(filename) as tmp:
                super().write(tmp, verbose=verbose, **obj_kwargs)
        except OSError as e:
            err = write_error(filename, e)
            _record(err)
            raise err from e
        except Exception as e:
            _record(e)
            raise
        if verbose:
            logger.info(f"wrote {os.fspath(filename)}")


class LabelNiftiWriter(AtomicNiftiWriter):
    """:class:`AtomicNiftiWriter` that keeps the volume's spatial dimensions for single-channel data.

    MONAI's writers squeeze trailing singleton dimensions, so a one-slice volume ``(1, H, W, 1)`` would be
    written as a 2D ``(H, W)`` NIfTI (and a ``(1, 1, 1, 1)`` one would fail); this writer writes ``(H, W, D)``,
    the input's exact shape. Use it with ``AtomicSaveImaged(writer=LabelNiftiWriter, ...)``. Multi-channel data
    are written as MONAI does (channel last).
    """

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        """Args: as ``NibabelWriter.set_data_array``; shape ``(1, H, W, D)`` is written as ``(H, W, D)``."""
        shape = list(data_array.shape)
        single = False
        if channel_dim is not None:
            cdim = int(channel_dim) % len(shape)
            single = shape[cdim] == 1
            if single:
                shape.pop(cdim)
        # squeezing would drop the spatial singleton dimensions too: the shape is restored below instead
        super().set_data_array(data_array, channel_dim=channel_dim,
                               squeeze_end_dims=squeeze_end_dims and not single, **kwargs)
        if not single:
            return
        spatial = shape[:3]
        if self.data_obj is not None and tuple(self.data_obj.shape) != tuple(spatial):
            if int(np.prod(spatial)) == int(np.prod(self.data_obj.shape)):
                self.data_obj = self.data_obj.reshape(spatial)


class AtomicSaveImaged(SaveImaged):
    """``monai.transforms.SaveImaged`` whose NIfTI outputs are written atomically and whose write errors are the
    real ones.

    The default writer for ``.nii`` / ``.nii.gz`` is :class:`AtomicNiftiWriter` (pass ``writer=LabelNiftiWriter``
    for label maps). When the writer fails, the writer's exception (e.g. ``OSError: [Errno 28] could not write
    <file>: No space left on device``) is raised instead of MONAI's ``RuntimeError("... cannot find a suitable
    writer ... install the writer libraries")``. All arguments are those of ``SaveImaged``.
    """

    def __init__(self, keys: Any, *args: Any, writer: Any = None, **kwargs: Any) -> None:
        ext = str(kwargs.get("output_ext", ".nii.gz")).lower()
        if writer is None and not args and ext in (".nii", ".nii.gz"):
            writer = AtomicNiftiWriter
        super().__init__(keys, *args, writer=writer, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        stack = getattr(_errors, "stack", None)
        if stack is None:
            stack = _errors.stack = []
        stack.append([])
        try:
            return super().__call__(data)
        except RuntimeError as e:
            errs = stack[-1]
            if errs and "suitable writer" in str(e):
                raise errs[-1] from None
            raise
        finally:
            stack.pop()
