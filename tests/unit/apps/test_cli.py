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

"""The ``pipofan`` command line: light ``--help``, the train / evaluate aliases of the bundle runner, the
segment dispatch, and the training's last log line."""

from __future__ import annotations

import configparser
import importlib.util
import inspect
import json
import os
import runpy
import subprocess
import sys
import time
import types

import pytest
from bundle_utils import REPO

CONFIGS = REPO / "bundle" / "configs"
HEAVY = ("torch", "monai", "fire", "ignite", "numpy")

# run main() in a fresh interpreter, then report which heavy modules the help loaded
_PROBE = """
import json, sys, time
t0 = time.perf_counter()
from pipofan_monai.apps.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("\\n@@PROBE@@" + json.dumps({"code": code, "seconds": time.perf_counter() - t0,
      "loaded": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _commands() -> list[str]:
    from pipofan_monai.apps.cli import COMMANDS

    names = ["train", "evaluate"] + list(COMMANDS)
    if importlib.util.find_spec("pipofan_monai.apps.segment") is not None:
        names.append("segment")
    return names


def _probe(args: list[str]) -> tuple[dict, str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _PROBE] + args, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    text, _, result = p.stdout.rpartition("\n@@PROBE@@")
    return json.loads(result), text, wall


@pytest.mark.parametrize("args", [["--help"], ["help"], []] + [[c, "--help"] for c in _commands()])
def test_help_loads_neither_torch_nor_monai(args):
    result, text, wall = _probe(args)
    assert result["code"] in (0, None), (args, result)
    assert result["loaded"] == [], f"pipofan {' '.join(args)} imported {result['loaded']}"
    assert "usage" in text.lower() or "Commands:" in text
    # the target is 2 s on a quiet machine (measured ~0.2 s); the bound only catches a gross regression
    assert wall < 10, f"pipofan {' '.join(args)} took {wall:.1f} s"


def test_top_level_help_lists_every_command():
    from pipofan_monai.apps.cli import main

    result, text, _ = _probe(["--help"])
    for name in _commands() + ["segment"]:
        assert f"\n    {name} " in text, name
    assert main(["--help"]) == 0


def test_help_read_from_source_equals_the_imported_signature(capsys):
    """The usage line built with ast is the one inspect gives for the imported function (defaults included)."""
    import importlib

    from pipofan_monai.apps.cli import COMMANDS, main
    from pipofan_monai.apps.help import plain_text

    for name, (module, attr) in COMMANDS.items():
        fn = getattr(importlib.import_module(module), attr)
        parts = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                parts.append("[--KEY VALUE ...]")
            elif p.default is p.empty:
                parts.append(p.name.upper())
            else:
                parts.append(f"[--{p.name} {p.default!r}]")
        expected = f"usage: python -m pipofan_monai {name} " + " ".join(parts) + "\n\n" + plain_text(inspect.getdoc(fn))
        assert main([name, "--help"]) == 0
        assert capsys.readouterr().out == expected + "\n", name


def test_console_script_points_at_the_cli():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["options.entry_points"]["console_scripts"].strip() == "pipofan = pipofan_monai.apps.cli:main"
    shim = (REPO / "pipofan_monai" / "__main__.py").read_text().splitlines()
    assert len(shim) == 3 and "pipofan_monai.apps.cli" in shim[1]


def test_unknown_command_is_refused(capsys):
    from pipofan_monai.apps.cli import main

    with pytest.raises(SystemExit) as e:
        main(["segmnet", "ct.nii.gz"])
    assert e.value.code == 2
    assert "unknown command 'segmnet'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ segment
def test_segment_passes_its_arguments_unchanged(monkeypatch):
    from pipofan_monai.apps.cli import main

    seen = []
    fake = types.ModuleType("pipofan_monai.apps.segment")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "pipofan_monai.apps.segment", fake)
    argv = ["a b/ct.nii.gz", "dicom/", "-o", "out", "--model", "m1.pt", "m2.pt", "--organs", "liver,spleen", "--help"]
    assert main(["segment"] + argv) == 3
    assert seen == [argv]
    fake.main = lambda argv: None
    assert main(["segment"]) == 0


def test_segment_missing_says_how_to_segment(monkeypatch, capsys):
    from pipofan_monai.apps.cli import main

    monkeypatch.setitem(sys.modules, "pipofan_monai.apps.segment", None)  # import raises ModuleNotFoundError
    assert main(["segment", "ct.nii.gz"]) == 2
    assert "monai.bundle run inference" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- train / evaluate
def _runner_kwargs(monkeypatch, argv: list[str], bundle_runner: bool) -> dict:
    """The keyword arguments MONAI's ``monai.bundle.scripts.run`` receives from ``pipofan <argv>`` or from
    ``python -m monai.bundle <argv>`` (run as ``__main__``, as the shell runs it)."""
    from monai.bundle import scripts

    seen: list[dict] = []
    monkeypatch.setattr(scripts, "run", lambda *a, **kw: seen.append({"args": a, **kw}))
    if bundle_runner:
        monkeypatch.setattr(sys, "argv", ["monai.bundle"] + argv)
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=False)
    else:
        from pipofan_monai.apps.cli import main

        assert main(argv) == 0
    assert len(seen) == 1
    return seen[0]


OVERRIDES = ["--datalist", "data/dl.json", "--max_epochs", "2", "--network_def#block", "conv", "--resume", "True",
             "--class_names", "['background','liver']", "--hu_window", "[-100,300]", "--fold", "2"]


def test_train_is_the_bundle_runners_training(monkeypatch):
    quick = [str(CONFIGS / "train.json"), str(CONFIGS / "quickstart.json")]
    ours = _runner_kwargs(monkeypatch, ["train", "--quick"] + OVERRIDES, bundle_runner=False)
    theirs = _runner_kwargs(monkeypatch, ["run", "training", "--config_file", repr(quick)] + OVERRIDES, True)
    assert ours == theirs
    assert ours["args"] == ("training",) and ours["config_file"] == quick
    assert ours["max_epochs"] == 2 and ours["fold"] == 2 and ours["resume"] is True
    assert ours["network_def#block"] == "conv" and ours["class_names"] == ["background", "liver"]
    assert ours["hu_window"] == [-100, 300] and ours["datalist"] == "data/dl.json"

    plain = _runner_kwargs(monkeypatch, ["train", "--max_epochs", "3"], bundle_runner=False)
    assert plain == {"args": ("training",), "config_file": str(CONFIGS / "train.json"), "max_epochs": 3}
    own = _runner_kwargs(monkeypatch, ["train", "--config_file=my.json", "--quick"], bundle_runner=False)
    assert own["config_file"] == ["my.json", str(CONFIGS / "quickstart.json")]
    both = _runner_kwargs(monkeypatch, ["train", "--config_file", "['a.json','b.json']"], bundle_runner=False)
    assert both["config_file"] == ["a.json", "b.json"]


def test_evaluate_is_the_bundle_runners_evaluate(monkeypatch):
    files = [str(CONFIGS / "inference.json"), str(CONFIGS / "evaluate.json")]
    over = ["--datalist", "data/dl.json", "--ckpt_path", "models/model.pt", "--output_dir", "eval"]
    ours = _runner_kwargs(monkeypatch, ["evaluate"] + over, bundle_runner=False)
    theirs = _runner_kwargs(monkeypatch, ["run", "evaluate", "--config_file", repr(files)] + over, True)
    assert ours == theirs == {"args": ("evaluate",), "config_file": files, "datalist": "data/dl.json",
                              "ckpt_path": "models/model.pt", "output_dir": "eval"}


def test_train_help_lists_the_config_settings(capsys):
    from pipofan_monai.apps.cli import main

    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "python -m monai.bundle run training" in text
    assert "  --max_epochs                 4000   (--quick: 80)" in text
    assert "  --network_channels           [64, 128, 256, 512, 512]   (--quick: [16, 32, 64, 128, 128])" in text


# ------------------------------------------------------------------------------------------- last log line
def test_log_trained_model_names_the_model_and_the_command(tmp_path, caplog):
    from pipofan_monai.apps.training import log_trained_model

    caplog.set_level("INFO")
    ckpt, runs = tmp_path / "my models", tmp_path / "runs"
    ckpt.mkdir()
    runs.mkdir()
    assert log_trained_model(ckpt, runs, enabled=False) is None
    msg = log_trained_model(ckpt, runs)
    assert msg.startswith("training finished without a model") and caplog.records[-1].levelname == "WARNING"
    (ckpt / "model.pt").write_bytes(b"x")
    (runs / "metrics.json").write_text(json.dumps([{"epoch": 1, "val_mean_dice": 0.5},
                                                   {"epoch": 2, "val_mean_dice": 0.75}, {"epoch": 3}]))
    msg = log_trained_model(ckpt, runs)
    model = ckpt.resolve() / "model.pt"
    assert msg == (f"training finished; best model (epoch 2, val_mean_dice 0.7500): {model}; segment a CT with it: "
                   f"pipofan segment CT.nii.gz -o segmentations --model '{model}'")
    assert caplog.records[-1].getMessage() == msg


