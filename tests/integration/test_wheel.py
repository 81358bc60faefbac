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

"""A built wheel (a non-editable install) runs the bundle, cross-validation and the studies from any
folder: the configs are package data, found through ``pipofan_monai.bundle_dir()``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundle_utils import REPO, TINY_TRAIN, make_tiny_demo

pytestmark = pytest.mark.slow


def _source_copy(dest: Path) -> Path:
    """The files git would ship (tracked and new, not ignored), copied with their symlinks: the wheel is built from
    this copy so that building writes nothing into the checkout."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src, dst = REPO / name, dest / name
        if not os.path.lexists(src) or src.is_dir() and not src.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wheel")
    src = _source_copy(root / "src")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("pipofan_monai-*.whl")
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    work = root / "work"  # not the checkout: nothing there can shadow the installed package
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return {"wheel": wheel, "target": target, "work": work, "env": env, "demo": make_tiny_demo(root / "demo")}


def _run(installed: dict, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable] + args, cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_wheel_ships_the_bundle(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for f in ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json", "metadata.json",
              "logging.conf", "quickstart.json", "studies/demo.json", "studies/quick.json"):
        assert f"pipofan_monai/bundle/configs/{f}" in names, f
    assert "pipofan_monai/bundle/LICENSE" in names and "pipofan_monai/bundle/docs/README.md" in names
    proc = _run(installed, ["-c", "import pipofan_monai; print(pipofan_monai.__file__); print(pipofan_monai.bundle_dir())"])
    module, bundle = proc.stdout.split()
    assert Path(module).is_relative_to(installed["target"]) and Path(bundle) == installed["target"] / "pipofan_monai" / "bundle"


def test_installed_bundle_trains_crossvalidates_and_segments(installed, tmp_path):
    configs = installed["target"] / "pipofan_monai" / "bundle" / "configs"
    common = ["--datalist", str(installed["demo"]), "--max_epochs", "1", "--dps_epochs", "1", "--val_interval", "1",
              "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "runs")] + TINY_TRAIN
    _run(installed, ["-m", "monai.bundle", "run", "training", "--config_file", str(configs / "train.json")] + common)
    assert (tmp_path / "models" / "model.pt").is_file()
    _run(installed, ["-m", "monai.bundle", "run", "crossval", "--config_file", str(configs / "train.json"),
                     "--folds", "[2]"] + common)
    report = json.loads((tmp_path / "runs" / "crossval" / "crossval.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [2] and (tmp_path / "models" / "fold2" / "model.pt").is_file()
    test_image = json.loads(Path(installed["demo"]).read_text())["test"][0]
    test_image = test_image["image"] if isinstance(test_image, dict) else test_image
    test_image = str(Path(installed["demo"]).parent / test_image) if not Path(test_image).is_absolute() else test_image
    _run(installed, ["-m", "monai.bundle", "run", "inference", "--config_file", str(configs / "inference.json"),
                     "--ckpt_path", str(tmp_path / "models" / "model.pt"), "--input_files", f"['{test_image}']",
                     "--output_dir", str(tmp_path / "seg")])
    assert len(list((tmp_path / "seg").rglob("*.nii.gz"))) == 1


def test_installed_study_and_benchmark(installed, tmp_path):
    _run(installed, ["-m", "pipofan_monai", "study", "loss", "--quick", "True", "--rows", "['Fully labeled only (BTCV)']",
                     "--output_dir", str(tmp_path / "study")])
    report = json.loads((tmp_path / "study" / "loss.json").read_text())
    assert report["settings"]["max_epochs"] == 2 and report["settings"]["network_channels"] == [2, 4, 4, 8, 8]
    assert all(Path(f).is_relative_to(installed["target"]) for f in report["settings"]["config_file"])
    # the benchmark ships with the source only: from the wheel the command says so and writes nothing
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "pipofan_monai", "benchmark", "--quick", "--device", "cpu",
                           "--output", str(out)], cwd=installed["work"], env=installed["env"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "the benchmark ships only with the source" in proc.stderr
    assert "benchmarks" not in " ".join(zipfile.ZipFile(installed["wheel"]).namelist()) and not out.exists()
