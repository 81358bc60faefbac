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

"""The bundle inside MONAI Label 0.8.5: ``BundleInferTask``, ``BundleTrainTask`` and a real ``start_server``.

These tests need the MONAI Label environment (``bash .ci/label_env.sh``, then
``.venv-label/bin/python -m pytest tests/integration/test_monailabel.py``); elsewhere they are skipped. Every test works on
a COPY of ``bundle/`` (MONAI Label overwrites ``models/model.pt``) whose configs are edited to a tiny network
and image size, exactly what a user would change by editing the copied JSON files (MONAI Label cannot pass
overrides to the bundle). Nothing is downloaded: every socket connection to a non-loopback address, in this
process and in the subprocesses (bundle runner, MONAI Label server), is refused and recorded, and the tests
assert that none was attempted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "monailabel",
    reason="MONAI Label is not installed in this environment: create it with `bash .ci/label_env.sh` and run "
    "`.venv-label/bin/python -m pytest tests/integration/test_monailabel.py`",
)

import nibabel as nib  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferType  # noqa: E402
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: E402
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
# MONAI Label infers the model type from the folder name: it must contain "segmentation"
MODEL_NAME = "pipofan_segmentation"
SERVER_START_TIMEOUT = 180  # seconds to wait for /info/
SERVER_STOP_TIMEOUT = 30  # seconds between SIGTERM and SIGKILL
TRAIN_TIMEOUT = 300  # seconds for the 2-epoch training task of the server

# inference.json is served UNEDITED: the network and the preprocessing come from the plans in models/model.pt.
# train.json (MONAI Label's retraining cannot pass overrides) gets size-only edits; the rest is the bundle's own
TINY_COMMON = {"network_channels": [8, 16, 32, 64, 64], "spatial_size": 64, "sw_batch_size": 4}
TINY_INFERENCE: dict = {}
TINY_TRAIN = dict(TINY_COMMON, roi_size=48, samples_per_epoch=8, batch_size=4, num_workers=0, progress_bar=False)

# ------------------------------------------------------------------------------------------- network guard
_GUARD_SOURCE = '''
"""Test guard: refuse and record every socket connection to a non-loopback address."""
import os, socket
_log = os.environ.get("PIPOFAN_NET_GUARD_LOG")
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

def _check(sock, address):
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    host = str(address[0])
    if host == "localhost" or host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1"):
        return
    if _log:
        with open(_log, "a") as f:
            f.write(f"{os.getpid()} {address!r}\\n")
    raise OSError(f"network access refused by the test guard: {address!r}")

def connect(self, address):
    _check(self, address)
    return _connect(self, address)

def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)

socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
'''


@pytest.fixture(scope="module")
def net_guard(tmp_path_factory):
    """Block non-loopback connections here and (via ``sitecustomize``) in subprocesses; yields the env to use."""
    folder = tmp_path_factory.mktemp("netguard")
    (folder / "sitecustomize.py").write_text(_GUARD_SOURCE)
    log = folder / "attempts.log"
    pythonpath = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = dict(os.environ, PYTHONPATH=pythonpath, PIPOFAN_NET_GUARD_LOG=str(log), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=str(torch.get_num_threads()))  # same thread count as here: same float results
    namespace: dict = {}
    orig = socket.socket.connect, socket.socket.connect_ex
    os.environ["PIPOFAN_NET_GUARD_LOG"] = str(log)
    try:
        exec(compile(_GUARD_SOURCE, "netguard", "exec"), namespace)  # patches socket.socket in this process
        yield env
    finally:
        socket.socket.connect, socket.socket.connect_ex = orig
        os.environ.pop("PIPOFAN_NET_GUARD_LOG", None)
    attempts = log.read_text() if log.exists() else ""
    assert not attempts, f"something tried to reach the network during the MONAI Label tests:\n{attempts}"


def _assert_no_network(env: dict) -> None:
    log = Path(env["PIPOFAN_NET_GUARD_LOG"])
    attempts = log.read_text() if log.exists() else ""
    assert not attempts, f"something tried to reach the network:\n{attempts}"


# ------------------------------------------------------------------------------------------------ helpers
def _make_bundle(dst: Path, inputs: list[Path], class_names: list[str] | None = None, model: dict | None = None,
                 train_edits: dict | None = None) -> Path:
    """Copy ``bundle/configs`` to ``dst/configs``, shrink it, and save a fixed-seed checkpoint whose label map is
    not trivial: random weights with BatchNorm statistics calibrated on ``inputs`` (all four classes appear).
    ``class_names``: give the copy another vocabulary with ``python -m pipofan_monai classes`` (as a user would).
    ``model``: the checkpoint's ``network_channels`` and ``spatial_size`` (default TINY_COMMON's);
    ``train_edits``: the edits of train.json (default TINY_TRAIN)."""
    model = dict(TINY_COMMON if model is None else model)
    shutil.copytree(BUNDLE / "configs", dst / "configs")
    if class_names is not None:
        cmd = [sys.executable, "-m", "pipofan_monai", "classes", "--bundle_dir", str(dst), "--class_names",
               repr(class_names)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    train_edits = TINY_TRAIN if train_edits is None else train_edits
    for name, edits in (("inference.json", TINY_INFERENCE), ("train.json", train_edits)):
        path = dst / "configs" / name
        config = json.loads(path.read_text())
        missing = [k for k in edits if k not in config]
        assert not missing, f"bundle/configs/{name} no longer has {missing}: update the test's size edits"
        config.update(edits)
        path.write_text(json.dumps(config, indent=4))
    # a tiny model with its plans, as the bundle's training writes it (no width or size in inference.json)
    from pipofan_monai.networks import PIPOFAN
    from pipofan_monai.plans import DEFAULT_CLASS_NAMES, DEFAULT_PREPROCESSING, make_plans
    from pipofan_monai.preprocessing import get_inference_transforms

    torch.manual_seed(0)
    names = list(class_names) if class_names is not None else list(DEFAULT_CLASS_NAMES)
    net = PIPOFAN(out_channels=len(names), channels=model["network_channels"])
    plans = make_plans(net, names, {**DEFAULT_PREPROCESSING, "spatial_size": model["spatial_size"]})
    pre = get_inference_transforms(plans["preprocessing"])
    context = plans["preprocessing"]["context"]
    slices = []
    for path in inputs:
        image = pre({"image": str(path)})["image"].as_tensor()  # (1, S, S, D)
        padded = torch.nn.functional.pad(image[0], (context, context), mode="replicate")  # (S, S, D + 2 context)
        for z in range(image.shape[-1]):
            slices.append(padded[:, :, z : z + 2 * context + 1].permute(2, 0, 1))
    batch = torch.stack(slices)  # (N, 2 * context + 1, S, S)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(batch)
    (dst / "models").mkdir()
    torch.save({"model": net.eval().state_dict(), "plans": plans}, dst / "models" / "model.pt")
    return dst


def _checkpoint_state(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt.get("model", ckpt)


def _assert_network_holds(net: torch.nn.Module, ckpt_path: Path) -> None:
    """Every tensor of ``net`` equals the checkpoint's tensor of the same name, and the key sets agree."""
    state, ckpt = net.state_dict(), _checkpoint_state(ckpt_path)
    assert set(state) == set(ckpt), (
        f"checkpoint {ckpt_path} keys do not match the network (MONAI Label loads with strict=False and would "
        f"silently keep random weights): only in network {sorted(set(state) - set(ckpt))[:5]}, only in checkpoint "
        f"{sorted(set(ckpt) - set(state))[:5]}"
    )
    differ = [k for k, v in state.items() if not torch.equal(v.cpu(), ckpt[k].cpu())]
    assert not differ, f"the network's weights are not those of {ckpt_path}: {differ[:5]}"


def _task_network(task: BundleInferTask) -> torch.nn.Module:
    """The network MONAI Label runs for a default request (same model_filename choice as an infer request)."""
    return task._get_network("cpu", {"device": "cpu", "model_filename": task._config.get("model_filename")})


def _infer(task: BundleInferTask, image: Path, labels: dict | None = None) -> nib.Nifti1Image:
    label_file, result = task({"image": str(image), "device": "cpu", "logging": "WARNING"})
    assert result["label_names"] == (labels or {"liver": 1, "kidney": 2, "spleen": 3})
    img = nib.load(label_file)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)  # into memory: MONAI Label's temp file goes away
    os.remove(label_file)
    return img


def _run_bundle_inference(bundle: Path, inputs: list[Path], out: Path, env: dict) -> dict[Path, nib.Nifti1Image]:
    """``python -m monai.bundle run inference`` of the bundle copy, this interpreter; label map per input."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--bundle_root", str(bundle),
        "--input_files", repr([str(p) for p in inputs]),
        "--output_dir", str(out),
        "--device", "cpu",
        "--save_overlay", "False",
    ]
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bundle runner failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = {}
    for p in inputs:
        seg = out / (p.name[: -len(".nii.gz")] + "_seg.nii.gz")
        assert seg.is_file(), f"bundle runner wrote no {seg.name}: {sorted(os.listdir(out))}"
        results[p] = nib.load(seg)
    return results


def _assert_same_label_map(got: nib.Nifti1Image, expected: nib.Nifti1Image, image: Path) -> None:
    src = nib.load(image)
    a, b = np.asarray(got.dataobj), np.asarray(expected.dataobj)
    assert a.shape == b.shape == src.shape, (a.shape, b.shape, src.shape)
    np.testing.assert_allclose(got.affine, src.affine, atol=1e-4)
    np.testing.assert_allclose(expected.affine, src.affine, atol=1e-4)
    diff = int((a != b).sum())
    assert diff == 0, f"{image.name}: {diff} of {a.size} voxels differ between MONAI Label and the bundle runner"


def _studies(root: Path, cases: list[tuple[Path, Path | None]]) -> Path:
    """A MONAI Label studies folder: images, and final labels in ``labels/final`` under the same names."""
    (root / "labels" / "final").mkdir(parents=True)
    for image, label in cases:
        shutil.copy(image, root / image.name)
        if label is not None:
            shutil.copy(label, root / "labels" / "final" / image.name)
    return root


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from pipofan_monai.apps.dataset_conversion import generate_demo_dataset

    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", num_cases_per_source=2, num_test=2,
                                 shape=(64, 64, 12)).parent


@pytest.fixture(scope="module")
def inputs(demo, tmp_path_factory) -> list[Path]:
    """Three CT volumes stored differently: RAS 64x64x12, slice-axis-first (KiTS19 style, IPL) and LPS 80x72x12
    (exercises orientation and resize inversion)."""
    src = nib.load(demo / "test" / "imagesTs" / "demo_002.nii.gz")
    arr = np.pad(np.asarray(src.dataobj), ((8, 8), (4, 4), (0, 0)), mode="edge")[::-1, ::-1, :]
    affine = src.affine.copy()
    affine[:2] *= -1  # flip x and y: LPS storage, same physical position of voxel (0, 0, 0) as the flipped array
    lps = tmp_path_factory.mktemp("lps") / "lps_case.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr).astype(np.int16), affine), lps)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    kits = demo / "kits19" / "case_00000" / "imaging.nii.gz"
    assert nib.aff2axcodes(nib.load(kits).affine)[0] in ("S", "I")
    return [demo / "test" / "imagesTs" / "demo_001.nii.gz", kits, lps]


@pytest.fixture(scope="module")
def bundle(inputs, tmp_path_factory, net_guard) -> Path:
    return _make_bundle(tmp_path_factory.mktemp("bundle") / MODEL_NAME, inputs)


@pytest.fixture(scope="module")
def runner_labels(bundle, inputs, tmp_path_factory, net_guard) -> dict[Path, nib.Nifti1Image]:
    return _run_bundle_inference(bundle, inputs, tmp_path_factory.mktemp("runner_out"), net_guard)


# ------------------------------------------------------------------------------------------------ inference
def test_infer_task_lists_labels(bundle):
    task = BundleInferTask(str(bundle), {"preload": "false"})
    assert task.is_valid()
    assert task.labels == {"liver": 1, "kidney": 2, "spleen": 3}
    assert task.type == InferType.SEGMENTATION
    info = task.info()
    assert info["labels"] == {"liver": 1, "kidney": 2, "spleen": 3} and info["version"]
    assert task._config["model_filename"] == ["model.pt"]
    # served with the bundle's own inference.json: widths and size come from the checkpoint's plans
    assert json.loads((bundle / "configs" / "inference.json").read_text()) == json.loads(
        (BUNDLE / "configs" / "inference.json").read_text())
    assert _task_network(task).get_config()["channels"] == TINY_COMMON["network_channels"]


def test_infer_task_matches_bundle_runner(bundle, inputs, runner_labels):
    task = BundleInferTask(str(bundle), {"preload": "false"})
    seen: set = set()
    for image in inputs:
        got = _infer(task, image)
        _assert_same_label_map(got, runner_labels[image], image)
        values, counts = np.unique(np.asarray(got.dataobj), return_counts=True)
        assert set(values.tolist()) <= {0, 1, 2, 3}
        assert len(values) >= 3 and counts.min() >= 10, f"trivial label map for {image.name}: {values} {counts}"
        seen |= set(values.tolist())
    assert seen == {0, 1, 2, 3}  # the calibrated checkpoint gives every class (see _make_bundle)


def test_infer_task_loads_checkpoint_weights(bundle, inputs, runner_labels, tmp_path):
    task = BundleInferTask(str(bundle), {"preload": "false"})
    _assert_network_holds(_task_network(task), bundle / "models" / "model.pt")

    # a checkpoint whose keys do not match: MONAI Label (strict=False) keeps random weights; the check catches it
    renamed = tmp_path / MODEL_NAME
    shutil.copytree(bundle, renamed)
    state = _checkpoint_state(bundle / "models" / "model.pt")
    torch.save({"model": {f"net.{k}": v for k, v in state.items()}}, renamed / "models" / "model.pt")
    bad = BundleInferTask(str(renamed), {"preload": "false"})
    with pytest.raises(AssertionError, match="keys do not match"):
        _assert_network_holds(_task_network(bad), renamed / "models" / "model.pt")
    got = np.asarray(_infer(bad, inputs[0]).dataobj)
    assert (got != np.asarray(runner_labels[inputs[0]].dataobj)).any()


# ------------------------------------------------------------------------------------------------- training
def test_train_task_writes_model_used_by_next_inference(bundle, demo, inputs, tmp_path, net_guard):
    trained = tmp_path / MODEL_NAME
    shutil.copytree(bundle, trained)
    ckpt = trained / "models" / "model.pt"
    before_state = {k: v.clone() for k, v in _checkpoint_state(ckpt).items()}
    before_mtime = ckpt.stat().st_mtime_ns
    infer = BundleInferTask(str(trained), {"preload": "false"})
    before_label = np.asarray(_infer(infer, inputs[0]).dataobj)

    cases = [(demo / "test" / "imagesTs" / f"{n}.nii.gz", demo / "test" / "labelsTs" / f"{n}.nii.gz")
             for n in ("demo_001", "demo_002")]
    datastore = LocalDatastore(str(_studies(tmp_path / "studies", cases)), extensions=("*.nii.gz",),
                               auto_reload=False)
    assert [sorted(d) for d in datastore.datalist()] == [["image", "label"]] * 2

    train = BundleTrainTask(str(trained), {})
    assert train.is_valid()
    train({"model": MODEL_NAME, "max_epochs": 2, "val_split": 0.5, "device": "cpu", "multi_gpu": False}, datastore)

    assert ckpt.stat().st_mtime_ns != before_mtime, (
        "MONAI Label trained 2 epochs but models/model.pt was not rewritten: the bundle must validate (and save "
        "model.pt) at least once however few epochs MONAI Label asks for"
    )
    after_state = _checkpoint_state(ckpt)
    assert set(after_state) == set(before_state)
    assert any(not torch.equal(before_state[k], v) for k, v in after_state.items() if v.is_floating_point())

    # the inference task created before training reloads the new file; a fresh one (server restart) uses it too
    _assert_network_holds(_task_network(infer), ckpt)
    fresh = BundleInferTask(str(trained), {"preload": "false"})
    assert fresh._config["model_filename"][0] == "model.pt", (
        f"MONAI Label's default checkpoint is {fresh._config['model_filename'][0]!r}, not model.pt: keep other *.pt "
        "files whose names are not longer than 'model.pt' out of models/"
    )
    _assert_network_holds(_task_network(fresh), ckpt)
    after_label = _infer(fresh, inputs[0])
    expected = _run_bundle_inference(trained, inputs[:1], tmp_path / "runner_out", net_guard)[inputs[0]]
    _assert_same_label_map(after_label, expected, inputs[0])
    assert (np.asarray(after_label.dataobj) != before_label).any(), "inference after training gives the old map"


def test_train_task_retrains_a_quick_start_model(demo, inputs, tmp_path, net_guard):
    """A quick-start model (16..128 wide, 128x128) served with the bundle's own train.json (paper widths and size;
    only the amount of work is edited): MONAI Label's Train builds the network of the model's plans, loads it and
    writes a model of the same widths and preprocessing."""
    quick = {"network_channels": [16, 32, 64, 128, 128], "spatial_size": 128}
    work_only = {"samples_per_epoch": 8, "batch_size": 4, "num_workers": 0, "progress_bar": False, "sw_batch_size": 4}
    bundle = _make_bundle(tmp_path / MODEL_NAME, inputs, model=quick, train_edits=work_only)
    config = json.loads((bundle / "configs" / "train.json").read_text())
    assert config["network_channels"] == [64, 128, 256, 512, 512]  # the paper's widths stay in train.json
    ckpt = bundle / "models" / "model.pt"
    before = torch.load(ckpt, map_location="cpu", weights_only=True)

    cases = [(demo / "test" / "imagesTs" / f"{n}.nii.gz", demo / "test" / "labelsTs" / f"{n}.nii.gz")
             for n in ("demo_001", "demo_002")]
    datastore = LocalDatastore(str(_studies(tmp_path / "studies", cases)), extensions=("*.nii.gz",),
                               auto_reload=False)
    train = BundleTrainTask(str(bundle), {})
    train({"model": MODEL_NAME, "max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False}, datastore)

    after = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert after["plans"]["network"] == before["plans"]["network"]
    assert after["plans"]["network"]["channels"] == quick["network_channels"]
    assert after["plans"]["preprocessing"] == before["plans"]["preprocessing"]
    assert after["plans"]["preprocessing"]["spatial_size"] == quick["spatial_size"]
    assert set(after["model"]) == set(before["model"])
    assert any(not torch.equal(before["model"][k], v) for k, v in after["model"].items() if v.is_floating_point())
    _assert_network_holds(_task_network(BundleInferTask(str(bundle), {"preload": "false"})), ckpt)
    _assert_no_network(net_guard)


# --------------------------------------------------------------------------------------------------- server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL after SERVER_STOP_TIMEOUT seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(SERVER_STOP_TIMEOUT)


def _post(url: str, body: bytes = b"", timeout: float = 300) -> bytes:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200, r.status
        return r.read()


def _server_infer(base: str, image: Path, out: Path) -> nib.Nifti1Image:
    """POST /infer/<model>?image=<id>&output=image and load the returned label file."""
    image_id = image.name[: -len(".nii.gz")]
    out.write_bytes(_post(f"{base}/infer/{MODEL_NAME}?image={image_id}&output=image"))
    label = nib.load(out)
    assert label.shape == nib.load(image).shape
    return nib.Nifti1Image(np.asarray(label.dataobj), label.affine)


def test_server_infer_and_train(bundle, demo, inputs, runner_labels, tmp_path, net_guard):
    apps = tmp_path / "apps"
    proc = subprocess.run([sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
                           "--output", str(apps)], env=net_guard, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    app = apps / "monaibundle"
    assert (app / "main.py").is_file()
    model_dir = app / "model" / MODEL_NAME
    shutil.copytree(bundle, model_dir)
    labeled = [(demo / "test" / "imagesTs" / f"{n}.nii.gz", demo / "test" / "labelsTs" / f"{n}.nii.gz")
               for n in ("demo_001", "demo_002")]
    studies = _studies(tmp_path / "studies", labeled + [(inputs[2], None)])  # + the LPS volume, unlabeled
    targets = [inputs[0], inputs[2]]  # demo_001 (RAS 64^2), lps_case (LPS 80x72)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
           "--conf", "models", MODEL_NAME, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
           "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=net_guard, start_new_session=True)
    try:
        info, deadline = None, time.monotonic() + SERVER_START_TIMEOUT
        while info is None:
            assert server.poll() is None, f"server exited with {server.returncode}:\n{log_path.read_text()[-5000:]}"
            assert time.monotonic() < deadline, (
                f"no /info/ after {SERVER_START_TIMEOUT} s:\n{log_path.read_text()[-5000:]}")
            try:
                with urllib.request.urlopen(f"{base}/info/", timeout=5) as r:
                    info = json.load(r)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        model = info["models"][MODEL_NAME]
        assert model["type"] == "segmentation"
        assert model["labels"] == {"liver": 1, "kidney": 2, "spleen": 3}
        assert MODEL_NAME in info["trainers"]

        # auto-segmentation: the label maps of the bundle runner, voxel for voxel
        before = {}
        for image in targets:
            before[image] = _server_infer(base, image, tmp_path / f"{image.name}.before.nii.gz")
            _assert_same_label_map(before[image], runner_labels[image], image)

        # retrain from the app (as 3D Slicer's "Train" button: a background task), then auto-segment again
        ckpt = model_dir / "models" / "model.pt"
        mtime = ckpt.stat().st_mtime_ns
        params = {"max_epochs": 2, "val_split": 0.5, "device": "cpu", "multi_gpu": False}
        task = json.loads(_post(f"{base}/train/{MODEL_NAME}", json.dumps(params).encode()))
        assert task["status"] in ("SUBMITTED", "RUNNING"), task
        deadline = time.monotonic() + TRAIN_TIMEOUT
        while task["status"] in ("SUBMITTED", "RUNNING"):
            assert time.monotonic() < deadline, f"training not finished after {TRAIN_TIMEOUT} s"
            time.sleep(2)
            with urllib.request.urlopen(f"{base}/train/", timeout=30) as r:
                task = json.load(r)
        assert task["status"] == "DONE", f"{task}\n{log_path.read_text()[-5000:]}"
        assert ckpt.stat().st_mtime_ns != mtime, "training from the app did not rewrite models/model.pt"
        after = _server_infer(base, inputs[0], tmp_path / "after.nii.gz")
    finally:
        _stop(server)
    assert server.returncode is not None

    local = BundleInferTask(str(model_dir), {"preload": "false"})
    _assert_network_holds(_task_network(local), ckpt)
    _assert_same_label_map(after, _infer(local, inputs[0]), inputs[0])
    assert (np.asarray(after.dataobj) != np.asarray(before[inputs[0]].dataobj)).any(), (
        "the server still segments with the weights it had before training")
    _assert_no_network(net_guard)


# ------------------------------------------------------------------------------------ another vocabulary
def test_five_class_bundle_lists_five_organs(inputs, tmp_path, net_guard):
    """A bundle copy given five classes (``python -m pipofan_monai classes``) lists them in MONAI Label, and its
    label maps hold the fifth class id."""
    five = ["background", "liver", "kidney", "spleen", "pancreas"]
    bundle5 = _make_bundle(tmp_path / MODEL_NAME, inputs, class_names=five)
    task = BundleInferTask(str(bundle5), {"preload": "false"})
    assert task.is_valid()
    expected = {"liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4}
    assert task.labels == expected and task.info()["labels"] == expected
    _assert_network_holds(_task_network(task), bundle5 / "models" / "model.pt")
    got = _infer(task, inputs[0], labels=expected)
    values = set(np.unique(np.asarray(got.dataobj)).tolist())
    assert values <= {0, 1, 2, 3, 4} and len(values) >= 3 and 4 in values, values
    _assert_no_network(net_guard)
