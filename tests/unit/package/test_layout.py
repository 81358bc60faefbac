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

"""The package's layering: a core that a MONAI user imports alone, applications on top of it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "pipofan_monai"
CORE = ["networks", "losses", "preprocessing", "inference", "evaluation", "postprocessing", "ensembling",
        "vocabulary", "data", "optimizers", "visualize", "plans", "utils"]
APPLICATION_MODULES = ("pipofan_monai.apps", "fire", "pipofan_monai.apps.dataset_conversion.download",
                       "pipofan_monai.apps.dataset_conversion.demo", "pipofan_monai.apps.training")


def test_core_imports_without_the_applications():
    """In a fresh interpreter the core imports none of the applications, and no ignite module beyond the ones
    MONAI itself imports (MONAI's enums import ignite when it is installed)."""
    code = (
        "import sys, json, monai\n"
        "before = set(sys.modules)\n"
        + "import pipofan_monai\n"
        + "".join(f"import pipofan_monai.{m}\n" for m in CORE)
        + "new = sorted(set(sys.modules) - before)\n"
        "print(json.dumps(new))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    new = json.loads(out.strip().splitlines()[-1])
    assert "pipofan_monai.networks" in new and "pipofan_monai.vocabulary.label_space" in new
    leaked = [m for m in new if m.startswith(APPLICATION_MODULES) or m.split(".")[0] in ("ignite", "fire")]
    assert leaked == [], f"the core imports application modules: {leaked}"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_no_core_module_imports_an_application_anywhere():
    """Not even inside a function: a core module that reaches up into the applications makes the layers a cycle.
    The one exception is the package root's lazy ``pipofan_monai.segment`` (resolved on first attribute access, so
    the fresh-interpreter test above still sees no application module after ``import pipofan_monai``)."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("apps", "__main__.py", "__init__.py"):
            continue
        bad = [m for m in _imports(path) if m.startswith("pipofan_monai.apps") or m.split(".")[0] == "fire"]
        if bad:
            offenders[str(rel)] = bad
    assert offenders == {}


def test_dataset_conversion_is_a_leaf():
    """Nothing in the package imports the dataset conversion (download, demo, datalists) except the applications
    that run it; the dataset table it once held is the core's vocabulary."""
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if any(m.startswith("pipofan_monai.apps.dataset_conversion") for m in _imports(p))
             and "dataset_conversion" not in p.parts}
    assert all(u.startswith("apps") or u == "__main__.py" for u in users), users
