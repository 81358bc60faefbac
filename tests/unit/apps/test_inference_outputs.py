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

"""The inference run's parts: plans only from the checkpoints a run uses (a user's bundle/models/model.pt does
not matter), mirrored output folders for repeated names, per-case claims between runs, the run report, the
background loading of the next case, the organ filter and the statistics of the final label map."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_utils import NAMES, TINY, inference_parser, nifti, random_ct, threshold_ckpt, threshold_runner

from pipofan_monai.networks import PIPOFAN
from pipofan_monai.plans import DEFAULT_PREPROCESSING, PlansMismatchError, make_plans

REPO = Path(__file__).resolve().parents[3]


def _ckpt(path: Path, spatial_size: int = 32, channels=TINY, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = PIPOFAN(spatial_dims=2, in_channels=3, out_channels=4, channels=channels)
    plans = make_plans(net, NAMES, {**DEFAULT_PREPROCESSING, "spatial_size": spatial_size})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "plans": plans}, path)
    return path


# ---------------------------------------------------------------------------------------------- plans
def test_default_model_of_the_bundle_does_not_decide_the_plans(tmp_path):
    """A bundle whose models/model.pt (a quick-start model: 256, other widths) disagrees with the run: a run with
    explicit checkpoints and settings is unaffected (the failure users saw after the quick start), and so is the
    ensemble run id (its plans come from the fold models, not from models/model.pt)."""
    bundle = tmp_path / "bundle"
    _ckpt(bundle / "models" / "model.pt", spatial_size=256, channels=[16, 32, 64, 128, 128])
    folds = [_ckpt(bundle / "models" / f"fold{k}" / "model.pt", seed=k) for k in range(2)]
    image = nifti(tmp_path / "case.nii.gz", random_ct())
    # a script that parses the config and runs with its own checkpoint (as the test suite does: weights only)
    plain = tmp_path / "weights.pt"
    torch.save(torch.load(folds[0], weights_only=True)["model"], plain)
    runner = inference_parser(bundle_root=str(bundle), output_dir=str(tmp_path / "a"), network_channels=TINY,
                              spatial_size=32).get_parsed_content("runner")
    assert runner.plans["preprocessing"]["spatial_size"] == 32
    res = runner.run([str(image)], plain)
    assert res["num_ok"] == 1 and (tmp_path / "a" / "case_seg.nii.gz").is_file()
    # parsed without settings or a run id (as MONAI Label serves the bundle): built from models/model.pt
    net = inference_parser(bundle_root=str(bundle)).get_parsed_content("network_def")
    assert net.get_config()["channels"] == [16, 32, 64, 128, 128]
    # the bundle's run ids: the plans come from the checkpoints they run
    parser = inference_parser(bundle_root=str(bundle), output_dir=str(tmp_path / "b"), input_files=[str(image)],
                              num_folds=2)
    results = [parser.get_parsed_content(f"ensemble#{i}") for i in range(len(parser.config["ensemble"]))]
    assert results[-1]["num_ok"] == 1
    assert parser.get_parsed_content("plans")["network"]["channels"] == TINY
    assert parser.get_parsed_content("run_ckpt_paths") == [str(f) for f in folds]
    # the inference run id with that default model and a conflicting explicit setting: named, not silent
    parser = inference_parser(bundle_root=str(bundle), output_dir=str(tmp_path / "c"), input_files=[str(image)],
                              spatial_size=32)
    parser.get_parsed_content("run#0")
    with pytest.raises(RuntimeError) as err:  # MONAI's expression error, caused by the plans' own error
        parser.get_parsed_content("run#1")
    cause = err.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, PlansMismatchError) and "spatial_size: checkpoint 256, given 32" in str(cause)


# ---------------------------------------------------------------------------------------------- output layout
def test_same_names_in_different_folders_are_mirrored_and_real_clashes_refused(tmp_path):
    a = nifti(tmp_path / "in" / "patientA" / "ct.nii.gz", random_ct(seed=1))
    b = nifti(tmp_path / "in" / "patientB" / "ct.nii.gz", random_ct(seed=2))
    out = tmp_path / "out"
    res = threshold_runner(out, mirror_folders=True).run([str(a), str(b)], threshold_ckpt(tmp_path / "t.pt"))
    assert res["num_ok"] == 2, res
    for src in (a, b):
        seg = nib.load(str(out / src.parent.name / "ct_seg.nii.gz"))
        ct = np.asarray(nib.load(str(src)).dataobj)
        np.testing.assert_array_equal(np.asarray(seg.dataobj), np.where(ct > 100, 1, np.where(ct < -100, 2, 0)))
    # a real clash: two inputs of one folder with one name
    c = nifti(tmp_path / "in" / "patientA" / "ct.nii", random_ct(seed=3))
    res = threshold_runner(tmp_path / "out2", mirror_folders=True, fail_on_error=False).run(
        [str(a), str(c)], tmp_path / "t.pt")
    assert [x["status"] for x in res["cases"]] == ["ok", "failed"]
    assert "would also be written for input" in res["cases"][1]["error"] and str(a) in res["cases"][1]["error"]


# ---------------------------------------------------------------------------------------------- claims
def test_a_case_claimed_by_another_live_process_is_skipped_and_a_dead_claim_taken_over(tmp_path):
    from pipofan_monai.utils import process_start_time

    image = nifti(tmp_path / "case.nii.gz", random_ct())
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim = out / ".case_seg.nii.gz.claim"
        claim.write_text(json.dumps({"pid": other.pid, "start": process_start_time(other.pid)}))
        res = threshold_runner(out).run([str(image)], threshold_ckpt(tmp_path / "t.pt"))
        assert res["cases"][0]["status"] == "skipped"
        assert f"claimed by process {other.pid}" in res["cases"][0]["reason"]
        assert not (out / "case_seg.nii.gz").exists() and claim.is_file()
    finally:
        other.kill()
        other.wait()
    res = threshold_runner(out).run([str(image)], tmp_path / "t.pt")  # its process is gone: taken over
    assert res["num_ok"] == 1 and (out / "case_seg.nii.gz").is_file() and not claim.exists()


_TWO_RUNS = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    from inference_utils import threshold_runner
    from pathlib import Path
    runner = threshold_runner(Path({out!r}), delay=1.5)
    Path({ready!r} + str(os.getpid())).touch()
    while len([p for p in os.listdir({tmp!r}) if p.startswith("ready")]) < 2:
        time.sleep(0.01)
    res = runner.run([{image!r}], {ckpt!r})
    print("RESULT" + json.dumps([c["status"] + ":" + str(c.get("reason")) for c in res["cases"]]))
""")


def test_two_processes_into_one_folder_compute_each_case_once(tmp_path):
    """Two real processes start one run each on the same input and folder (overwrite False) at the same moment:
    one segments the case, the other skips it as claimed by the first (it used to write it a second time)."""
    image = nifti(tmp_path / "case.nii.gz", random_ct())
    ckpt = threshold_ckpt(tmp_path / "t.pt")
    code = _TWO_RUNS.format(tests=str(Path(__file__).resolve().parents[2]), out=str(tmp_path / "out"),
                            ready=str(tmp_path / "ready"), tmp=str(tmp_path), image=str(image), ckpt=str(ckpt))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    statuses = []
    for (stdout, stderr), p in zip(outs, procs):
        assert p.returncode == 0, stderr[-3000:]
        statuses.append(json.loads(stdout.split("RESULT", 1)[1])[0])
    assert sorted(s.split(":")[0] for s in statuses) == ["ok", "skipped"], statuses
    skipped = next(s for s in statuses if s.startswith("skipped"))
    assert "claimed by process" in skipped and str(procs[0].pid if "ok" in statuses[0] else procs[1].pid) in skipped
    assert not list((tmp_path / "out").glob(".*.claim"))


# ---------------------------------------------------------------------------------------------- report, prefetch
def test_report_json_lists_models_cases_stages_and_failures(tmp_path):
    good = nifti(tmp_path / "good.nii.gz", random_ct((20, 18, 3)), spacing=(1.5, 1.25, 3.0))
    flat = nifti(tmp_path / "flat.nii.gz", random_ct((20, 18)))
    ckpt = threshold_ckpt(tmp_path / "t.pt")
    report = tmp_path / "out" / "report.json"
    res = threshold_runner(tmp_path / "out", report_file=str(report), fail_on_error=False).run(
        [str(good), str(flat)], ckpt)
    assert res["num_ok"] == 1 and res["num_failed"] == 1
    rep = json.loads(report.read_text())
    import monai

    assert rep["monai"] == monai.__version__ and rep["torch"] == torch.__version__ and rep["device"] is None
    assert rep["models"] == [{"path": str(ckpt), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
                              "plans": None}]
    assert rep["class_names"] == NAMES and rep["num_ok"] == 1 and rep["num_failed"] == 1
    ok, bad = rep["cases"]
    assert ok["status"] == "ok" and ok["shape"] == [20, 18, 3] and ok["spacing"] == [1.5, 1.25, 3.0]
    assert ok["outputs"] == [str(tmp_path / "out" / "good_seg.nii.gz")]
    assert set(ok["stages"]) == {"load", "network", "postprocess", "write"} and ok["stages"]["network"] > 0
    assert ok["stages"]["write"] > 0 and abs(sum(ok["stages"].values()) - ok["seconds"]) < 0.05
    assert bad["status"] == "failed" and "2D image" in bad["error"] and bad["image"] == str(flat)
    # a run that stops before its first case (no such checkpoint) still leaves its report, saying why
    early = tmp_path / "o3" / "report.json"
    with pytest.raises(FileNotFoundError):
        threshold_runner(tmp_path / "o3", report_file=str(early)).run([str(good)], tmp_path / "missing.pt")
    rep = json.loads(early.read_text())
    assert rep["error"].startswith("FileNotFoundError: checkpoint not found") and rep["cases"] == []



# ---------------------------------------------------------------------------------------------- organs, statistics
def test_organ_filter_and_statistics_of_the_final_label_map(tmp_path):
    ct = random_ct((20, 18, 4), seed=5)
    image = nifti(tmp_path / "case.nii.gz", ct, spacing=(1.5, 1.25, 3.0))
    out = tmp_path / "out"
    res = threshold_runner(out, organs="kidney", statistics=True).run([str(image)], threshold_ckpt(tmp_path / "t.pt"))
    assert res["num_ok"] == 1
    seg = np.asarray(nib.load(str(out / "case_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg, np.where(ct < -100, 2, 0))  # liver (HU > 100) not written
    stats = json.loads((out / "case_statistics.json").read_text())
    assert list(stats) == ["kidney"]
    kidney = ct[ct < -100].astype(float)
    assert stats["kidney"]["voxels"] == kidney.size
    assert stats["kidney"]["volume_ml"] == pytest.approx(kidney.size * 1.5 * 1.25 * 3.0 / 1000, rel=1e-6)
    assert stats["kidney"]["hu_mean"] == pytest.approx(kidney.mean(), rel=1e-5)
    assert stats["kidney"]["hu_median"] == pytest.approx(np.median(kidney), rel=1e-5)
    csv = (out / "statistics.csv").read_text().splitlines()
    assert len(csv) == 2 and csv[1].startswith(f"{image},kidney,{kidney.size},")
    with pytest.raises(RuntimeError) as err:  # MONAI's expression error, caused by the organ check's
        threshold_runner(tmp_path / "o2", organs="liver,pancreas")
    assert "organs ['pancreas'] are not classes of the model" in str(err.value.__cause__)
