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

"""The memory-mapped preprocessed cache: samples equal to the old CacheDataset path, reuse and
invalidation, corrupt entries, concurrent fills (each volume built once; a killed builder blocks nobody), read-only folders, the CLI, and one real-size volume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_utils import KW, SHAPE, entry_files
from monai.data import CacheDataset, DataLoader, PersistentDataset
from monai.data.utils import set_rnd

from pipofan_monai.apps.training import PartialLabelSampler, get_train_transforms
from pipofan_monai.apps.training.cached_data import (
    CachedSliceDataset,
    CachedVolumeDataset,
    make_train_dataset,
    make_val_dataset,
)
from pipofan_monai.preprocessing import get_val_transforms
from pipofan_monai.preprocessing.cache import CacheEntry, PreprocessedCache

REPO = Path(__file__).resolve().parents[3]


def _assert_same_sample(old: dict, new: dict) -> None:
    """Labels identical, image equal to the old float32 image rounded to float16, same mask, crop and affine."""
    assert torch.equal(old["label"].as_tensor(), new["label"].as_tensor())
    assert torch.equal(old["image"].as_tensor().half().float(), new["image"].as_tensor())
    assert new["image"].dtype == old["image"].dtype == torch.float32
    assert new["label"].dtype == old["label"].dtype
    assert torch.equal(old["label"].meta["labeled_mask"], new["label"].meta["labeled_mask"])
    assert torch.equal(old["image"].meta["slab_index"], new["image"].meta["slab_index"])
    for k in ("image", "label"):
        np.testing.assert_allclose(np.asarray(old[k].affine), np.asarray(new[k].affine), atol=1e-6)
    assert old["dataset"] == new["dataset"]


@pytest.mark.parametrize("pos_ratio,partial_labels", [(1.0, True), (0.5, True), (0.7, False)])
def test_samples_equal_cache_dataset_path(items, tmp_path, pos_ratio, partial_labels):
    kw = {**KW, "pos_ratio": pos_ratio, "partial_labels": partial_labels}
    old = CacheDataset(items, get_train_transforms(**kw), progress=False)
    new = CachedSliceDataset(items, tmp_path / "cache", progress=False, **kw)
    set_rnd(old, 7)
    set_rnd(new, 7)
    flips = set()
    for i in [0, 1, 2, 3, 3, 2, 1, 0] * 4:
        a, b = old[i], new[i]
        _assert_same_sample(a, b)
        flips.add(tuple(b["image"].affine.diagonal()[:2].sign().tolist()))
    assert len(flips) > 1  # the flips really happened (and matched)
    if not partial_labels:
        assert torch.equal(new[0]["label"].meta["labeled_mask"], torch.ones(4))


def test_dataloader_workers_and_sampler_give_the_old_batches(items, tmp_path):
    """Same torch seed -> the same batches from 2 DataLoader workers with PartialLabelSampler (MONAI's per-worker
    seeding reaches the new transforms exactly as the old ones)."""
    old = CacheDataset(items, get_train_transforms(**KW), progress=False)
    new = CachedSliceDataset(items, tmp_path / "cache", progress=False, **KW)
    batches = []
    for ds in (old, new):
        sampler = PartialLabelSampler([d["dataset"] for d in items], mode="round_robin", samples_per_epoch=6, seed=3)
        sampler.set_epoch(2)
        torch.manual_seed(11)
        batches.append(list(DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2)))
    assert len(batches[0]) == len(batches[1]) == 2
    for a, b in zip(*batches):
        assert b["image"].shape == (3, 3, 32, 32) and b["label"].shape == (3, 1, 32, 32)
        assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
        assert torch.equal(a["image"].as_tensor().half().float(), b["image"].as_tensor())
        assert torch.equal(a["label"].meta["labeled_mask"], b["label"].meta["labeled_mask"])
        assert b["label"].meta["labeled_mask"].shape == (3, 4)
        assert a["dataset"] == b["dataset"] and len(set(b["dataset"])) == 1  # round robin: one dataset per epoch


def test_validation_volumes_equal_old_path(items, tmp_path):
    old = CacheDataset(items, get_val_transforms(spatial_size=40, allow_missing_label=False), progress=False)
    new = CachedVolumeDataset(items, tmp_path / "cache", spatial_size=40, progress=False)
    for i in range(len(items)):
        a, b = old[i], new[i]
        assert b["image"].shape == a["image"].shape == (1, 40, 40, SHAPE[2])
        assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
        assert torch.equal(a["image"].as_tensor().half().float(), b["image"].as_tensor())
        assert torch.equal(a["label"].meta["labeled_mask"], b["label"].meta["labeled_mask"])
        np.testing.assert_allclose(np.asarray(a["image"].affine), np.asarray(b["image"].affine), atol=1e-6)
    ctx = CachedVolumeDataset(items[:1], tmp_path / "cache", spatial_size=40, context=1, progress=False)
    assert ctx[0]["image"].shape == (3, 40, 40, SHAPE[2])


def test_entries_are_memory_mapped_slice_major_with_organ_slices(items, tmp_path):
    ds = CachedSliceDataset(items, tmp_path / "cache", progress=False, **KW)
    ds[0]
    for entry in ds.entries:
        assert isinstance(entry.image, np.memmap) and entry.image.mode == "r"
        assert isinstance(entry.label, np.memmap)
        assert entry.image.dtype == np.float16 and entry.label.dtype == np.uint8
        assert entry.image.shape == entry.label.shape == (SHAPE[2], 40, 40)  # (D, H, W): a slice is contiguous
        assert entry.image.flags.c_contiguous
        meta = json.loads((entry.path / "meta.json").read_text())
        lab = np.asarray(entry.label)
        for c in range(1, 4):
            assert meta["organ_slices"][str(c)] == np.flatnonzero((lab == c).any(axis=(1, 2))).tolist()
        assert meta["sources"]["image"]["size"] == os.path.getsize(meta["sources"]["image"]["path"])
        assert len(meta["affine"]) == 4 and len(meta["labeled_mask"]) == 4
    # organ-centred (pos_ratio 1): the centre label slice holds an organ the dataset annotates
    set_rnd(ds, 0)
    for i in range(len(items)):
        s = ds[i]
        organs = [c for c, v in enumerate(s["label"].meta["labeled_mask"].tolist()) if c and v]
        z = int(s["image"].meta["slab_index"][2])
        assert np.isin(np.asarray(ds.entries[i].label[z]), organs).any()
    # pickling an entry (to a spawned worker) sends no array data
    import pickle

    assert len(pickle.dumps(ds.entries[0])) < 20_000


def test_reuse_and_invalidation(items, tmp_path):
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=40)
    first = cache.fill(items, progress=False)
    files = [entry_files(e) for e in first]
    again = cache.fill(items, progress=False)
    assert [entry_files(e) for e in again] == files  # reused, nothing rewritten
    # a changed setting: new entries beside the old ones, which stay valid for their own setting
    other = PreprocessedCache(tmp_path / "cache", spatial_size=40, hu_window=(-100, 300)).fill(items, progress=False)
    assert {e.path for e in other}.isdisjoint({e.path for e in first})
    assert not np.array_equal(np.asarray(other[0].image), np.asarray(first[0].image))
    assert [entry_files(e) for e in cache.fill(items, progress=False)] == files
    # a changed source file (mtime): only that entry is rebuilt, in place
    st = os.stat(items[1]["label"])
    os.utime(items[1]["label"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = cache.fill(items, progress=False)
    after = [entry_files(e) for e in rebuilt]
    assert after[1] != files[1] and rebuilt[1].path == first[1].path
    assert [a for i, a in enumerate(after) if i != 1] == [f for i, f in enumerate(files) if i != 1]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith((".tmp", ".trash"))]  # none left
    assert cache.last_fill == {"built": 1, "by_others": 0}


@pytest.mark.parametrize("damage", ["truncate_image", "garbage_meta", "missing_label", "wrong_shape"])
def test_corrupt_entry_is_rebuilt(items, tmp_path, damage):
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=40)
    entry = cache.fill(items[:2], progress=False)[0]
    want = np.array(entry.image)
    if damage == "truncate_image":
        with open(entry.path / "image.npy", "r+b") as f:
            f.truncate(os.path.getsize(entry.path / "image.npy") - 100)
    elif damage == "garbage_meta":
        (entry.path / "meta.json").write_text('{"format": 1, "key": "')
    elif damage == "missing_label":
        os.remove(entry.path / "label.npy")
    else:
        np.save(entry.path / "label.npy", np.zeros((3, 40, 40), np.uint8))
    assert cache.lookup(items[0])[0] is None
    fixed = cache.fill(items[:2], progress=False)[0]
    assert fixed.path == entry.path
    np.testing.assert_array_equal(np.asarray(fixed.image), want)
    assert cache.lookup(items[0])[0] is not None



# holds the lock of the first item's entry; "build": builds that entry once the other three exist (i.e. once the
# fill in the test has done its share), then lets go; "hold": keeps the lock until killed

def test_parallel_fill_equals_sequential_and_failures_name_the_file(items, tmp_path):
    seq = PreprocessedCache(tmp_path / "a", spatial_size=40).fill(items, num_workers=0, progress=False)
    par = PreprocessedCache(tmp_path / "b", spatial_size=40).fill(items, num_workers=2, progress=False)
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.meta["organ_slices"] == b.meta["organ_slices"]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    broken = [dict(items[0]), {**items[1], "image": str(bad)}]
    cache = PreprocessedCache(tmp_path / "c", spatial_size=40)
    with pytest.raises(RuntimeError, match="bad.nii.gz"):
        cache.fill(broken, progress=False)
    assert cache.lookup(items[0])[0] is not None  # the good volume was kept


def test_interrupted_fill_keeps_finished_entries(items, tmp_path, monkeypatch):
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=40)
    real_build = PreprocessedCache.build
    calls = []

    def build(self, item):
        calls.append(item["image"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_build(self, item)

    monkeypatch.setattr(PreprocessedCache, "build", build)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(items, progress=False)
    monkeypatch.setattr(PreprocessedCache, "build", real_build)
    assert cache.lookup(items[0])[0] is not None and cache.lookup(items[1])[0] is None
    # a temporary folder left by a killed process (dead pid) is removed by the next fill
    import socket

    leftover = tmp_path / "cache" / f".tmp-x-{socket.gethostname()}-999999999-0123abcd"
    leftover.mkdir()
    (leftover / "image.npy").write_bytes(b"half")
    done = cache.fill(items, progress=False)
    assert len(done) == len(items) and not leftover.exists()


def test_read_only_cache_folder(items, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    PreprocessedCache(cache_dir, spatial_size=40).fill(items[:1], progress=False)
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(cache_dir)) and self != cache_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)  # as root, chmod would not stop us: refuse the writes
    cache = PreprocessedCache(cache_dir, spatial_size=40)
    assert len(cache.fill(items[:1], progress=False)) == 1  # complete entries are read from a read-only folder
    with pytest.raises(PermissionError, match=f"cache folder '{cache_dir}' is not writable"):
        cache.fill(items[:2], progress=False)


def test_dataset_factories(items, tmp_path):
    assert isinstance(make_train_dataset(items, "mmap", tmp_path / "c", progress=False, **KW), CachedSliceDataset)
    mem = make_train_dataset(items, "memory", None, cache_rate=0.5, copy_cache=False, progress=False, **KW)
    assert isinstance(mem, CacheDataset) and mem.copy_cache is False and mem.cache_num == 2
    per = make_train_dataset(items, "persistent", tmp_path / "c", **KW)
    assert isinstance(per, PersistentDataset) and per[0]["image"].shape == (3, 32, 32)
    assert isinstance(make_val_dataset(items, "mmap", tmp_path / "c", spatial_size=40, progress=False),
                      CachedVolumeDataset)
    with pytest.raises(ValueError, match="cache_rate=0.5 applies to cache='memory'"):
        make_train_dataset(items, "mmap", tmp_path / "c", cache_rate=0.5, **KW)
    with pytest.raises(ValueError, match="cache must be one of"):
        make_train_dataset(items, "disk", tmp_path / "c", **KW)
    with pytest.raises(ValueError, match="needs a cache_dir"):
        make_train_dataset(items, "mmap", None, **KW)



def _children() -> set[int]:
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def test_release_workflow_stops_persistent_workers():
    """A finished fold's persistent DataLoader workers are stopped (they leaked per fold before)."""
    import time
    from types import SimpleNamespace

    from monai.bundle import ConfigParser

    from pipofan_monai.apps.training.workflow import release_workflow

    before = _children()
    parser = ConfigParser({
        "ds": {"_target_": "monai.data.Dataset", "data": [1, 2, 3, 4]},
        "train": {"dataloader": {"_target_": "DataLoader", "dataset": "@ds", "batch_size": 2, "num_workers": 2,
                                 "persistent_workers": True}},
    })
    loader = parser.get_parsed_content("train#dataloader")
    assert [b.tolist() for b in loader] == [[1, 2], [3, 4]]
    assert len(_children() - before) == 2  # persistent: still alive after the epoch
    assert release_workflow(SimpleNamespace(parser=parser)) == 1
    for _ in range(50):
        if not _children() - before:
            break
        time.sleep(0.1)
    assert not _children() - before
    assert release_workflow(SimpleNamespace(parser=parser)) == 0  # idempotent


def test_one_settings_object(items, tmp_path):
    """The plans' preprocessing dict (or a CacheSettings) carries the deterministic settings: same entries and
    samples as the settings given one by one; its context sizes the slab; the bundle passes it whole."""
    from monai.bundle import ConfigParser

    from pipofan_monai.plans import DEFAULT_PREPROCESSING
    from pipofan_monai.preprocessing.cache import CacheSettings

    prep = {**DEFAULT_PREPROCESSING, "spatial_size": 40, "hu_window": [-100.0, 300.0], "context": 2}
    loose = CachedSliceDataset(items, tmp_path / "cache", progress=False, spatial_size=40, hu_window=(-100, 300),
                               context=2, roi_size=32)
    whole = make_train_dataset(items, "mmap", tmp_path / "cache", progress=False, preprocessing=prep, roi_size=32)
    assert [e.path for e in whole.entries] == [e.path for e in loose.entries]  # same keys: nothing rebuilt
    assert whole.cache.config == CacheSettings(spatial_size=40, hu_window=(-100.0, 300.0))
    set_rnd(loose, 3)
    set_rnd(whole, 3)
    for i in range(len(items)):
        a, b = loose[i], whole[i]
        assert b["image"].shape == (5, 32, 32)  # 2 * context + 1 slices, context from the dict
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())
        assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
    # the validation volumes ignore the dict's context (the 2.5D inferer stacks the slices)
    val = make_val_dataset(items[:1], "mmap", tmp_path / "cache", progress=False, preprocessing=prep)
    assert val[0]["image"].shape == (1, 40, 40, SHAPE[2])
    assert val.entries[0].path == whole.entries[0].path
    # the other modes build MONAI's pipelines from the same object
    mem = make_train_dataset(items[:1], "memory", None, progress=False, preprocessing=prep, roi_size=32)
    assert mem[0]["image"].shape == (5, 32, 32)
    # an explicit setting overrides the dict's (the older calling style keeps working)
    assert PreprocessedCache(tmp_path / "c", prep, spatial_size=48).config.spatial_size == 48
    with pytest.raises(TypeError, match=r"unknown cache settings \['spatial_sise'\]"):
        PreprocessedCache(tmp_path / "c", spatial_sise=48)
    with pytest.raises(TypeError, match="plans' preprocessing dict"):
        PreprocessedCache(tmp_path / "c", 40)  # the old positional spatial_size
    with pytest.raises(ValueError, match="hu_window"):
        CacheSettings(hu_window=(300, -100))

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))
    for block in ("train#dataset", "validate#dataset"):
        cfg = parser.get(block)
        assert cfg["preprocessing"] == "@preprocessing_settings", block
        assert not {"spatial_size", "hu_window", "intensity", "image_mode", "context"} & set(cfg), block


def test_label_map_given_as_the_image_is_refused_before_caching(items, tmp_path):
    """A datalist with image and label swapped trains on garbage unless the CT check runs in training too: it
    refuses at the cache fill, naming the file, and caches nothing for it."""
    swapped = {**items[0], "image": items[0]["label"]}
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=40)
    with pytest.raises(RuntimeError) as err:
        cache.fill([swapped], progress=False)
    text = "".join(str(e) for e in (err.value, err.value.__cause__) if e is not None)
    assert str(items[0]["label"]) in text and "looks like a label map" in text, text
    assert cache.lookup(swapped)[0] is None
    # filled by worker processes: the same message comes back (the root error, not MONAI's wrapper)
    with pytest.raises(RuntimeError, match="segmentation-0.nii.gz: ValueError: .*looks like a label map"):
        cache.fill([items[1], swapped], num_workers=2, progress=False)
    assert cache.lookup(items[1])[0] is not None and cache.lookup(swapped)[0] is None
    # the same check in the in-memory path (train#preprocessing of CacheDataset / plain Dataset)
    with pytest.raises(Exception) as err2:
        get_train_transforms(**KW)(dict(swapped))
    assert "looks like a label map" in str(err2.value) or "looks like a label map" in str(err2.value.__cause__)


def test_training_ct_check_can_be_relaxed_for_a_real_ct_without_air(items, tmp_path):
    """A CT in HU that the rule refuses (a tight soft-tissue crop: no voxel at or below -100 HU) stops training
    with the error, whose advice (--ct_check warn or off) works for training and `pipofan preprocess` too."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    from pipofan_monai.preprocessing import CheckCTIntensityd
    from pipofan_monai.preprocessing.cache import preprocessed_cache_from_config

    src = nib.load(items[0]["image"])
    hu = np.random.default_rng(0).uniform(-50.0, 150.0, src.shape).astype(np.float32)  # soft tissue only
    crop = tmp_path / "tight_crop.nii.gz"
    nib.save(nib.Nifti1Image(hu, src.affine), crop)
    item = {**items[0], "image": str(crop)}
    with pytest.raises(RuntimeError, match=r"tight_crop.nii.gz: ValueError: .*not plausibly a CT.*--ct_check warn"):
        PreprocessedCache(tmp_path / "cache", spatial_size=40).fill([item], progress=False)
    with pytest.warns(UserWarning, match="tight_crop.nii.gz"):
        entry = PreprocessedCache(tmp_path / "cache", spatial_size=40, ct_check="warn").fill([item], progress=False)[0]
    # ct_check is not part of the key: the entry built under "warn" is the one a default run finds
    assert PreprocessedCache(tmp_path / "cache", spatial_size=40).lookup(item)[0].path == entry.path
    with pytest.raises(ValueError, match="ct_check must be"):
        PreprocessedCache(tmp_path / "cache", ct_check="maybe")
    # the bundle: one key, --ct_check, reaches the cache (mmap) and both in-memory pipelines
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle/configs/train.json"))
    parser["ct_check"] = "off"
    for ref in ("train#preprocessing", "validate#preprocessing"):
        checks = [t for t in parser.get_parsed_content(ref).transforms if isinstance(t, CheckCTIntensityd)]
        assert [c.mode for c in checks] == ["off"], ref
    for ref in ("train#dataset", "validate#dataset"):
        assert parser.get_parsed_content(f"{ref}#ct_check") == "off"
    # the test's own datalist: the default (the demo dataset in the user's cache folder) is not the test's to write
    cache, _ = preprocessed_cache_from_config(str(REPO / "bundle/configs/train.json"), cache_dir=tmp_path / "c2",
                                              datalist=str(Path(items[0]["image"]).parents[1] / "datalist.json"),
                                              ct_check="off")
    assert cache.config.ct_check == "off"
    ds = make_train_dataset([item], "mmap", tmp_path / "c3", progress=False, ct_check="off", **KW)
    assert ds.cache.config.ct_check == "off" and len(ds.entries) == 1


def test_a_file_system_without_locks_still_fills(items, tmp_path, monkeypatch, caplog):
    """Where file locks are not supported (filelock 3 raises NotImplementedError on e.g. Lustre without flock),
    the fill warns and builds without the lock: correct (atomic publish), only the sharing of work is lost."""
    import filelock

    def no_locks(self, *args, **kwargs):
        raise NotImplementedError("FileSystem does not appear to support flock")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_locks)
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=40)
    with caplog.at_level("WARNING", logger="pipofan_monai.preprocessing.cache"):
        entries = cache.fill(items[:2], progress=False)
    assert [e.path for e in entries] == [cache.entry_path(it) for it in items[:2]]
    assert cache.last_fill == {"built": 2, "by_others": 0} and "no file lock" in caplog.text


DCMQI = REPO.parent / "shared" / "data" / "realct" / "dcmqi_ct3slice"


@pytest.mark.skipif(not DCMQI.is_dir(), reason=f"real CT test data not found at {DCMQI}")
def test_a_changed_file_inside_a_dicom_series_folder_rebuilds_its_entry(tmp_path):
    """A DICOM series is a folder: its key follows every file in it (name, size, mtime_ns, as for a single file).
    Rewriting one slice's pixel data in place (same name, same size) rebuilds the entry, and the new entry holds
    the new pixels in that slice only; so does replacing a file by one of the same name and size with an OLDER
    mtime (a restored backup, ``cp -p``), which a key of the latest mtime over the folder would miss. An
    unchanged folder is reused."""
    series = tmp_path / "series"
    series.mkdir()
    for f in sorted((DCMQI / "dicom").iterdir()):  # writable copies (the shared data is read-only)
        (series / f.name).write_bytes(f.read_bytes())
    t0 = os.stat(series / "03.dcm").st_mtime_ns
    for k, name in enumerate(("01.dcm", "02.dcm", "03.dcm")):  # distinct, well separated mtimes
        os.utime(series / name, ns=(t0, t0 + k * 10**9))
    item = {"image": str(series), "label": str(DCMQI / "liver_seg.nrrd"), "dataset": "lits"}
    cache = PreprocessedCache(tmp_path / "cache", spatial_size=40)
    first = cache.fill([item], progress=False)[0]
    before = np.asarray(first.image, dtype=np.float32).copy()
    assert cache.fill([item], progress=False)[0].path == first.path and cache.last_fill["built"] == 0  # reused

    def rewrite_pixels(name: str, mtime_ns: int) -> None:
        """Brighten the last third of the slice's pixel data (little-endian int16, the file's last element) in
        place: same name, same size."""
        path = series / name
        size = path.stat().st_size
        n = 512 * 512 * 2
        with open(path, "r+b") as f:
            f.seek(size - n)
            px = np.frombuffer(f.read(n), dtype="<i2").copy()
            px[-px.size // 3:] = np.clip(px[-px.size // 3:].astype(np.int32) + 300, -32768, 32767)
            f.seek(size - n)
            f.write(px.tobytes())
        assert path.stat().st_size == size
        os.utime(path, ns=(mtime_ns, mtime_ns))

    def changed_slices(entry: CacheEntry, ref: np.ndarray) -> list[int]:
        img = np.asarray(entry.image, dtype=np.float32)  # (D, S, S)
        return [int(z) for z in np.flatnonzero(np.abs(img - ref).max(axis=(1, 2)) > 1e-2)]

    # 1. one slice rewritten in place (a later mtime, as any write gives)
    rewrite_pixels("02.dcm", t0 + 5 * 10**9)
    assert cache.lookup(item) == (None, "source file or settings changed")
    second = cache.fill([item], progress=False)[0]
    assert cache.last_fill["built"] == 1 and second.path == first.path
    assert len(changed_slices(second, before)) == 1  # exactly the rewritten slice
    after_second = np.asarray(second.image, dtype=np.float32).copy()
    # 2. the oldest file replaced by one of the same name and size, its mtime older still (below the folder's latest)
    rewrite_pixels("01.dcm", t0 - 10**9)
    assert cache.lookup(item) == (None, "source file or settings changed")
    third = cache.fill([item], progress=False)[0]
    assert cache.last_fill["built"] == 1
    assert len(changed_slices(third, after_second)) == 1
    assert cache.fill([item], progress=False)[0].path == third.path and cache.last_fill["built"] == 0  # reused
