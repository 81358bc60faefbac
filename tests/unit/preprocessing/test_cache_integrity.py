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

"""The preprocessed cache's contents and a full disk: an entry whose arrays were changed after the build (same
size, e.g. NaN bytes) is found by its checksum and rebuilt with a warning naming it and its source; a full disk
while an entry is written (numpy's errno-less short write, an ``OSError(ENOSPC)``, or a real 4 MiB tmpfs when the
tests run as root) stops the fill with ``ENOSPC`` naming the cache folder and its free space, for
``pipofan preprocess`` and for a training filling its cache alike."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess

import numpy as np
import pytest

from pipofan_monai.apps.dataset_conversion import generate_demo_dataset, load_datalist
from pipofan_monai.preprocessing import cache_files
from pipofan_monai.preprocessing.cache import PreprocessedCache
from pipofan_monai.preprocessing.cache_files import NO_CHECKSUM, array_checksum, file_checksum
from pipofan_monai.apps.training.cached_data import CachedSliceDataset


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return load_datalist(generate_demo_dataset(root / "demo", num_cases_per_source=1, num_test=0, shape=(32, 32, 12),
                                               seed=0))["training"][:2]


def _overwrite_data(path, fill: bytes) -> None:
    """Overwrite the data bytes of a ``.npy`` file (after its header) with ``fill`` repeated: same size."""
    arr = np.load(path, mmap_mode="r")
    offset, nbytes = int(arr.offset), int(arr.nbytes)
    del arr
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write((fill * (nbytes // len(fill) + 1))[:nbytes])


def test_checksum_is_recorded_and_matches_the_file(items, tmp_path):
    entry = PreprocessedCache(tmp_path / "cache", spatial_size=24).fill(items[:1], progress=False)[0]
    meta = json.loads((entry.path / "meta.json").read_text())
    for name in ("image", "label"):
        recorded = meta["arrays"][name]["checksum"]
        assert recorded.startswith("crc32:") and len(recorded) == 14
        assert recorded == file_checksum(entry.path / f"{name}.npy") == array_checksum(np.asarray(getattr(entry, name)))
    # the checksum sees one changed value
    a = np.zeros((3, 4, 5), np.float16)
    b = a.copy()
    b[2, 3, 4] = 1
    assert array_checksum(a) != array_checksum(b)


@pytest.mark.parametrize("name,fill", [("image", np.float16(np.nan).tobytes()), ("label", b"\x07")])
def test_changed_entry_is_rebuilt_with_a_warning_naming_it(items, tmp_path, caplog, name, fill):
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=24)
    entry = cache.fill(items, progress=False)[0]
    before = np.array(getattr(entry, name))
    size = os.path.getsize(entry.path / f"{name}.npy")
    _overwrite_data(entry.path / f"{name}.npy", fill)
    assert os.path.getsize(entry.path / f"{name}.npy") == size  # the size check alone cannot see it

    meta, reason = cache.check_entry(entry.path)
    assert meta is None
    assert f"{name}.npy of {entry.path}" in reason and items[0]["image"] in reason and "checksum" in reason

    with caplog.at_level(logging.WARNING, logger="pipofan_monai.preprocessing.cache"):
        again = cache.fill(items, progress=False)
    assert cache.last_fill == {"built": 1, "by_others": 0}  # only the changed entry
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(entry.path) in m and items[0]["image"] in m and f"{name}.npy" in m for m in warned), warned
    np.testing.assert_array_equal(np.asarray(getattr(again[0], name)), before)
    if name == "image":
        assert np.isfinite(np.asarray(again[0].image, dtype=np.float32)).all()


def test_entry_without_checksum_is_rebuilt_quietly(items, tmp_path, caplog):
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=24)
    entry = cache.fill(items[:1], progress=False)[0]
    meta = json.loads((entry.path / "meta.json").read_text())
    for spec in meta["arrays"].values():
        del spec["checksum"]  # as written before checksums were recorded
    (entry.path / "meta.json").write_text(json.dumps(meta))
    assert cache.check_entry(entry.path) == (None, NO_CHECKSUM)
    with caplog.at_level(logging.INFO, logger="pipofan_monai.preprocessing.cache"):
        cache.fill(items[:1], progress=False)
    assert cache.last_fill["built"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and NO_CHECKSUM in r.getMessage()]
    assert cache.check_entry(entry.path)[0] is not None


# ------------------------------------------------------------------------------------------------- full disk
def _short_write(f, arr):
    """What numpy's ``tofile`` does on a full disk: part of the bytes, then an OSError without errno."""
    f.write(b"\x93NUMPY partial")
    raise OSError(f"{arr.nbytes} requested and {arr.nbytes // 2} written")


def _enospc(f, arr):
    f.write(b"\x93NUMPY partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_disk_full(err: BaseException, cache_dir) -> None:
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC, repr(err)
    msg = str(err)
    assert "No space left on device" in msg and f"free in {cache_dir}" in msg, msg
    assert msg.startswith(f"[Errno 28] could not write {cache_dir}{os.sep}"), msg  # the entry's file


@pytest.mark.parametrize("writer", [_short_write, _enospc])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_full_disk_while_filling_is_named(items, tmp_path, monkeypatch, writer, num_workers):
    monkeypatch.setattr(cache_files, "_save", writer)  # inherited by the forked workers
    cache_dir = tmp_path / "cache"
    with pytest.raises(OSError) as err:
        PreprocessedCache(cache_dir, spatial_size=24).fill(items, num_workers=num_workers, progress=False)
    _assert_disk_full(err.value, cache_dir)
    assert sorted(p.name for p in cache_dir.iterdir()) == [".locks"]  # no half-written entry or temporary folder


def test_full_disk_while_a_training_fills_its_cache(items, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_files, "_save", _short_write)
    with pytest.raises(OSError) as err:
        CachedSliceDataset(items, tmp_path / "cache", spatial_size=24, roi_size=24, progress=False)
    _assert_disk_full(err.value, tmp_path / "cache")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    """A 4 MiB tmpfs cannot hold one 256x256x40 float16 image (5 MiB)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
                      check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (mount not permitted)")
    try:
        big = load_datalist(generate_demo_dataset(tmp_path / "demo", num_cases_per_source=1, num_test=0,
                                                  shape=(32, 32, 40), seed=1))["training"][:1]
        with pytest.raises(OSError) as err:
            PreprocessedCache(mnt / "cache", spatial_size=256).fill(big, progress=False)
        _assert_disk_full(err.value, mnt / "cache")
        assert sorted(p.name for p in (mnt / "cache").iterdir()) == [".locks"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --------------------------------------------------------------------------------------- moved source files
def test_moved_sources_are_not_taken_from_the_cache(tmp_path):
    """What docs/reference/reliability.md states: a cache never stands in for its source files. After the sources
    are moved, the old datalist is refused naming every missing file, the cache names the missing source, and the
    datalist of the new location rebuilds every entry (the key holds the absolute paths, size and mtime)."""
    datalist = generate_demo_dataset(tmp_path / "demo", num_cases_per_source=1, num_test=0, shape=(16, 16, 8), seed=0)
    items = load_datalist(datalist)["training"][:2]
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=16)
    cache.fill(items, progress=False)
    (tmp_path / "abs.json").write_text(json.dumps({"training": items}))  # absolute paths, kept in place
    (tmp_path / "demo").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError) as err:
        load_datalist(tmp_path / "abs.json")
    for item in items:
        assert item["image"] in str(err.value) and item["label"] in str(err.value)
    with pytest.raises(FileNotFoundError, match=f"source file not found: '{items[0]['image']}'"):
        cache.fill(items, progress=False)
    moved = load_datalist(tmp_path / "moved" / "datalist.json")["training"][:2]
    cache.fill(moved, progress=False)
    assert cache.last_fill == {"built": 2, "by_others": 0}
