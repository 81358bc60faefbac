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

"""``pipofan train`` and ``pipofan evaluate``: the bundle's workflows under a short name.

Each is exactly one call of MONAI's bundle runner: ``pipofan train --max_epochs 10`` runs what
``python -m monai.bundle run training --config_file <bundle>/configs/train.json --max_epochs 10`` runs (same
configs, same parsing of the overrides by fire, same outputs); only the config files are filled in. ``--quick``
adds ``quickstart.json`` (the quick start). ``--config_file`` replaces the default config files, as for the runner.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

__all__ = ["WORKFLOWS", "bundle_argv", "run", "workflow_help"]

#: command -> (bundle run id, default config files, config file that --quick adds or None)
WORKFLOWS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "train": ("training", ("train.json",), "quickstart.json"),
    "evaluate": ("evaluate", ("inference.json", "evaluate.json"), None),
}

_HELP = {
    "train": """usage: pipofan train [--quick] [--config_file FILE_OR_LIST] [--KEY VALUE ...]

Train a model with the bundle's training workflow (train.json). The same as the bundle runner's
    python -m monai.bundle run training --config_file "['{configs}/train.json'(,'{configs}/quickstart.json')]" [--KEY VALUE ...]

--quick        add quickstart.json: the quick start (16..128-wide network at 128x128, 80 short epochs)
--config_file  config file(s) to use instead of train.json (one path, or "['a.json','b.json']" merged in order)
--KEY VALUE    any config id of train.json, parsed as the bundle runner parses it, e.g. --datalist data/dl.json
               --fold 2 --max_epochs 400 --resume True --network_def#block conv --class_names "['background','liver']"

Writes the best model to <ckpt_dir>/model.pt (default bundle/models, or ./models outside a checkout) and the run
(last.pt, metrics.json, TensorBoard) to <output_dir> (default bundle/runs); the last log line names the model and
the pipofan segment command that uses it.

Settings of train.json (default{quick_note}):
""",
    "evaluate": """usage: pipofan evaluate [--config_file FILE_OR_LIST] [--KEY VALUE ...]

Segment the labeled items of a datalist with a trained model and score them against their labels. The same as the bundle runner's
    python -m monai.bundle run evaluate --config_file "['{configs}/inference.json','{configs}/evaluate.json']" [--KEY VALUE ...]

--config_file  config file(s) to use instead of inference.json + evaluate.json
--KEY VALUE    any config id of inference.json / evaluate.json, e.g. --datalist data/dl.json --ckpt_path models/model.pt
               --output_dir eval

Settings (default):
""",
}


def _configs_dir() -> Path:
    from pipofan_monai import bundle_dir

    return bundle_dir() / "configs"


def _split_options(name: str, argv: Sequence[str]) -> tuple[bool, str | None, list[str]]:
    """``(quick, config_file, rest)``: the two options of the alias taken out, everything else kept in order."""
    quick, config_file, rest = False, None, []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--quick" and WORKFLOWS[name][2] is not None:
            quick = True
            if i + 1 < len(args) and args[i + 1] in ("True", "False", "true", "false"):
                quick = args[i + 1].lower() == "true"
                i += 1
        elif a == "--config_file" or a.startswith("--config_file="):
            if "=" in a:
                config_file = a.split("=", 1)[1]
            elif i + 1 < len(args):
                config_file, i = args[i + 1], i + 1
            else:
                raise SystemExit(f"pipofan {name}: --config_file needs a value")
        else:
            rest.append(a)
        i += 1
    return quick, config_file, rest


def _as_list(config_file: str) -> list[str]:
    """A ``--config_file`` value as the runner reads it: one path, or a Python list of paths."""
    import ast

    text = config_file.strip()
    if text.startswith(("[", "(")):
        value = ast.literal_eval(text)
        return [str(v) for v in value]
    return [config_file]


def bundle_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The ``python -m monai.bundle`` arguments that ``pipofan <name> <argv>`` stands for.

    >>> bundle_argv("train", ["--quick", "--max_epochs", "2"])[:2]
    ['run', 'training']
    """
    run_id, defaults, quick_file = WORKFLOWS[name]
    quick, config_file, rest = _split_options(name, argv)
    configs = _as_list(config_file) if config_file is not None else [str(_configs_dir() / c) for c in defaults]
    if quick:
        configs.append(str(_configs_dir() / quick_file))
    config_arg = configs[0] if len(configs) == 1 else repr(configs)
    return ["run", run_id, "--config_file", config_arg] + rest


def _settings_table(files: Sequence[Path], quick_file: Path | None) -> str:
    """The top-level plain settings (numbers, strings, lists, null) of ``files`` with their values."""
    merged: dict = {}
    for f in files:
        merged.update(json.loads(f.read_text()))
    quick = json.loads(quick_file.read_text()) if quick_file is not None else {}
    lines = []
    for key, value in merged.items():
        if isinstance(value, dict) or key in ("imports", "help", "initialize", "run", "finalize", "start_plans", "network"):
            continue
        if isinstance(value, list) and any(isinstance(v, (dict, list)) or str(v).startswith("$") for v in value):
            continue
        if isinstance(value, str) and value.startswith(("$", "%", "@")):
            if "@start_plans" in value and " else " in value:  # "$<from the plans> if @start_plans else <default>"
                shown = value.rsplit(" else ", 1)[1] + "   (--pretrained: from its plans)"
            elif value.startswith("$") and len(value) <= 70 and "os." not in value and "torch." not in value:
                shown = value[1:]
            else:
                continue
        else:
            shown = json.dumps(value)
        extra = f"   (--quick: {json.dumps(quick[key])})" if key in quick else ""
        lines.append(f"  --{key:<26} {shown}{extra}")
    return "\n".join(lines)


def workflow_help(name: str) -> str:
    """The help of ``pipofan train`` / ``pipofan evaluate`` (read from the config files; imports nothing heavy)."""
    run_id, defaults, quick_file = WORKFLOWS[name]
    configs = _configs_dir()
    quick = configs / quick_file if quick_file else None
    shown = os.path.relpath(configs) if str(configs).startswith(os.getcwd() + os.sep) else str(configs)
    text = _HELP[name].format(configs=shown, quick_note=", --quick value" if quick else "")
    return text + _settings_table([configs / c for c in defaults], quick)


def run(name: str, argv: Sequence[str]) -> int:
    """Run ``pipofan <name> <argv>`` (``name``: train or evaluate) through MONAI's bundle runner."""
    if any(a in ("-h", "--help") for a in argv):
        print(workflow_help(name))
        return 0
    command = bundle_argv(name, argv)
    import fire
    from monai.bundle import scripts

    # fire parses the overrides exactly as `python -m monai.bundle` (fire.Fire() over monai.bundle's names) does
    fire.Fire({"run": scripts.run}, command=command)
    return 0

