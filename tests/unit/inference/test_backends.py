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

"""The inference backends: the choice (auto / torch / onnxruntime), the cache of exports (beside the checkpoint,
stale, corrupt, concurrent, read-only folder), equal logits and label maps with PyTorch (inferer and bundle runner),
and the fallback to PyTorch with one warning when ONNX Runtime is missing or the export fails."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import TINY, bn_network, plans_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from pipofan_monai.inference import (
    SlidingSliceInferer,  # noqa: E402
    backends,  # noqa: E402
)
from pipofan_monai.inference.backends import OnnxRuntimeNetwork, cpu_quota, prepare_network, resolve_backend  # noqa: E402
from pipofan_monai.networks import PIPOFAN  # noqa: E402
from pipofan_monai.plans import read_plans  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    monkeypatch.setenv("PIPOFAN_CACHE_DIR", str(tmp_path / "cache"))
    backends._WARNED.clear()


def _exports(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "to ONNX for inputs" in r.getMessage()]


def test_choice_of_backend(monkeypatch):
    assert resolve_backend("auto", "cpu") == "onnxruntime" and resolve_backend(None) == "onnxruntime"
    assert resolve_backend("auto", "cuda") == "torch"  # a GPU keeps PyTorch
    assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("ONNXRuntime", "cpu") == "onnxruntime"
    monkeypatch.setenv(backends.BACKEND_ENV, "torch")
    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend("onnxruntime", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnxruntime, got 'tensorrt'"):
        resolve_backend("tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        SlidingSliceInferer(backend="onnx")


def test_threads_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert cpu_quota(tmp_path / "none") == 6  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads
    assert cpu_quota(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) == 6
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpu_quota(v1) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_quota(tmp_path) == 1


def test_export_once_beside_checkpoint_equal_logits(tmp_path, caplog):
    net = bn_network()
    ckpt = plans_checkpoint(tmp_path / "model.pt", net)
    plans = read_plans(ckpt)
    caplog.set_level(logging.INFO, logger="pipofan.inference")
    ort_net = prepare_network(net, plans, ckpt, "onnxruntime", "cpu")
    assert isinstance(ort_net, OnnxRuntimeNetwork) and ort_net.threads == cpu_quota()
    onnx_file = tmp_path / "model.pt.64x64.onnx"
    assert onnx_file.is_file() and len(_exports(caplog)) == 1 and str(onnx_file) in _exports(caplog)[0]
    assert not list(tmp_path.glob(".*.tmp*"))  # the atomic write left no temporary file
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for n in (1, 5):  # dynamic batch axis
            x = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1
            got, ref = ort_net(x), net(x)
            assert got.shape == ref.shape == (n, 4, 64, 64) and got.dtype == torch.float32
            assert float((got - ref).abs().max()) < 1e-4
        # another in-plane size: exported on first use, beside the first one
        x = torch.rand(2, 3, 48, 80, generator=g)
        assert float((ort_net(x) - net(x)).abs().max()) < 1e-4
    assert (tmp_path / "model.pt.48x80.onnx").is_file() and len(_exports(caplog)) == 2
    # a second process (here: a second prepare) loads the cached file, no export
    inode = onnx_file.stat().st_ino  # a rewrite (atomic replace) would give the name another inode
    caplog.clear()
    again = prepare_network(bn_network(), plans, ckpt, "auto", "cpu")
    assert isinstance(again, OnnxRuntimeNetwork) and _exports(caplog) == [] and onnx_file.stat().st_ino == inode


def test_stale_and_corrupt_exports_are_rebuilt(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipofan.inference")
    ckpt = plans_checkpoint(tmp_path / "model.pt", bn_network(0))
    plans = read_plans(ckpt)
    prepare_network(bn_network(0), plans, ckpt, "onnxruntime")
    onnx_file = tmp_path / "model.pt.64x64.onnx"
    new = bn_network(1)  # retrained: same file name, other weights -> the export is stale
    plans_checkpoint(ckpt, new)
    caplog.clear()
    ort_net = prepare_network(new, plans, ckpt, "onnxruntime")
    assert len(_exports(caplog)) == 1 and "stale before" in _exports(caplog)[0]
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert float((ort_net(x) - new(x)).abs().max()) < 1e-4
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])  # truncated (a disk full in some other tool)
    caplog.clear()
    ort_net = prepare_network(new, plans, ckpt, "onnxruntime")
    assert len(_exports(caplog)) == 1 and "corrupt" in _exports(caplog)[0]
    with torch.inference_mode():
        assert float((ort_net(x) - new(x)).abs().max()) < 1e-4
    # other plans (here another class list) give another key: rebuilt
    caplog.clear()
    prepare_network(new, {**plans, "class_names": ["background", "a", "b", "c"]}, ckpt, "onnxruntime")
    assert len(_exports(caplog)) == 1 and "stale before" in _exports(caplog)[0]


def test_read_only_checkpoint_folder_uses_the_cache_folder(tmp_path, monkeypatch):
    ckpt = plans_checkpoint(tmp_path / "model.pt", bn_network())
    monkeypatch.setattr(backends, "_writable", lambda folder: False)
    ort_net = prepare_network(bn_network(), read_plans(ckpt), ckpt, "onnxruntime")
    assert isinstance(ort_net, OnnxRuntimeNetwork)
    assert not list(tmp_path.glob("*.onnx")) and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


def test_missing_onnxruntime_falls_back_with_one_warning(monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    net = bn_network()
    assert resolve_backend("auto", "cpu") == "torch"  # auto: PyTorch, silently
    caplog.set_level(logging.WARNING, logger="pipofan.inference")
    for _ in range(2):
        assert prepare_network(net, backend="onnxruntime", device="cpu", input_size=(64, 64)) is net
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "onnxruntime / onnx are not installed" in warnings[0].getMessage()


def test_failed_export_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(backends, "_export_bytes", broken)
    net = bn_network()
    ckpt = plans_checkpoint(tmp_path / "model.pt", net)
    caplog.set_level(logging.WARNING, logger="pipofan.inference")
    assert prepare_network(net, read_plans(ckpt), ckpt, "auto", "cpu") is net
    # the inferer does not try again with a network its caller prepared
    inferer = SlidingSliceInferer(sw_batch_size=4, backend="auto")
    vol = torch.rand(1, 1, 64, 64, 5)
    with torch.inference_mode():
        out = inferer(vol, net)
    assert out.shape == (1, 4, 64, 64, 5)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(msgs) == 1 and "RuntimeError: exporter crashed" in msgs[0] and "runs with PyTorch" in msgs[0]
    assert not list(tmp_path.glob("*.onnx"))


def test_inferer_backend_on_a_plain_network(tmp_path, caplog, monkeypatch):
    """As MONAI Label calls it: the inferer gets the bundle's network_def with weights loaded, no checkpoint path;
    exported once (key = the weights' hash, in the cache folder), again after the weights change in place."""
    caplog.set_level(logging.INFO, logger="pipofan.inference")
    net = bn_network()
    vol = torch.rand(1, 1, 64, 64, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref_inferer = SlidingSliceInferer(sw_batch_size=4)
    inferer = SlidingSliceInferer(sw_batch_size=4, backend="onnxruntime")
    with torch.inference_mode():
        ref = ref_inferer(vol, net)
        a, b = inferer(vol, net), inferer(vol, net)
    assert float((a - ref).abs().max()) < 1e-4 and torch.equal(a, b) and len(_exports(caplog)) == 1
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    net.load_state_dict(bn_network(2).state_dict())  # new weights, same object (MONAI Label reloads in place)
    with torch.inference_mode():
        c, ref2 = inferer(vol, net), ref_inferer(vol, net)
    assert len(_exports(caplog)) == 2 and float((c - ref2).abs().max()) < 1e-4 and not torch.equal(c, a)
    # the cache folder keeps the most recently used exports only
    monkeypatch.setattr(backends, "CACHE_KEEP", 2)
    net.load_state_dict(bn_network(3).state_dict())
    with torch.inference_mode():
        inferer(vol, net)
    assert len(_exports(caplog)) == 3 and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def _bundle_labels(ckpt: Path, image: Path, out: Path, backend: str) -> np.ndarray:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))
    parser.update({"ckpt_path": str(ckpt), "fold_ckpt_paths": [], "output_dir": str(out), "backend": backend,
                   "device": "$torch.device('cpu')", "save_overlay": False, "sw_batch_size": 4})
    runner = parser.get_parsed_content("runner")
    runner.run([str(image)], str(ckpt))
    return np.asarray(nib.load(str(next(out.glob("*_seg.nii.gz")))).dataobj)


def test_bundle_inference_same_label_maps(tmp_path, caplog):
    """The bundle's runner with backend torch and onnxruntime: identical label maps on a CT; logits within 1e-4."""
    from benchmarks import calibrate_batchnorm, write_synthetic_ct

    torch.manual_seed(0)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=TINY)
    calibrate_batchnorm(net, torch.rand(16, 3, 64, 64) * 2 - 1)  # random weights with non-trivial label maps
    ckpt = plans_checkpoint(tmp_path / "model.pt", net)
    image = tmp_path / "ct.nii.gz"
    write_synthetic_ct(image, tmp_path / "seg.nii.gz", (96, 80, 10), "btcv", seed=0)
    caplog.set_level(logging.INFO, logger="pipofan.inference")
    torch_labels = _bundle_labels(ckpt, image, tmp_path / "torch", "torch")
    assert _exports(caplog) == []
    ort_labels = _bundle_labels(ckpt, image, tmp_path / "ort", "auto")
    assert len(_exports(caplog)) == 1 and (tmp_path / "model.pt.64x64.onnx").is_file()
    assert torch_labels.shape == (96, 80, 10) and len(np.unique(torch_labels)) >= 2
    np.testing.assert_array_equal(ort_labels, torch_labels)
    # the logits on the preprocessed volume
    from pipofan_monai.preprocessing import get_inference_transforms

    vol = get_inference_transforms(read_plans(ckpt)["preprocessing"])({"image": str(image)})["image"][None]
    ort_net = prepare_network(net, read_plans(ckpt), ckpt, "onnxruntime")
    inferer = SlidingSliceInferer(sw_batch_size=4)
    with torch.inference_mode():
        assert float((inferer(vol, ort_net) - inferer(vol, net)).abs().max()) < 1e-4


