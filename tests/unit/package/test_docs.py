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

"""The documentation says only what exists: every relative link and ``#anchor`` in README.md, CHANGELOG.md and
docs/ resolves (GitHub's heading slugs), every ``pipofan <command>`` answers ``--help``, every
``monai.bundle run <id>`` names a run id of the configs it names, the README's Python code runs, and the README's
test and quick-start commands are the ones CI and the test suite run."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
DOCS = sorted([README, REPO / "CHANGELOG.md", *(REPO / "docs").rglob("*.md")])
USER_DOCS = [p for p in DOCS if p.name != "CHANGELOG.md"]

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
PIPOFAN_CMD = re.compile(r"(?:(?<![\w/.-])pipofan|python -m pipofan_monai)[ \t]+([a-z][a-z_]*)")
BUNDLE_RUN = re.compile(r"-m monai\.bundle run ([A-Za-z_]\w*)(.*)")
CONFIG_ARG = re.compile(r"--config_file\s+(\"[^\"]*\"|'[^']*'|\S+)")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links and headings in code are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _code(text: str) -> list[str]:
    """Fenced blocks and inline code spans, with shell line continuations joined."""
    spans = [m.group(0).split("\n", 1)[1].rsplit("```", 1)[0] for m in FENCE.finditer(text)]
    spans += [m.group(0)[1:-1] for m in INLINE_CODE.finditer(FENCE.sub("", text))]
    return [re.sub(r"\\\n\s*", " ", s) for s in spans]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped (letters, digits, marks,
    ``_``, ``-`` and spaces kept), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"[`*]", "", text).strip().lower()
    keep = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return keep.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def test_github_slug_rules():
    assert github_slug("Keys of train.json") == "keys-of-trainjson"
    assert github_slug("### `pipofan segment`".lstrip("# ")) == "pipofan-segment"
    assert github_slug("The authors' checkpoints") == "the-authors-checkpoints"
    assert github_slug("A bundle copy with other organs (MONAI Label)") == "a-bundle-copy-with-other-organs-monai-label"
    assert github_slug("Résultats à 2 mm") == "résultats-à-2-mm"


def _links():
    for doc in DOCS:
        for m in LINK.finditer(_prose(doc.read_text(encoding="utf-8"))):
            target = m.group(1)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked
                yield doc, target


def test_docs_exist_and_are_linked_from_the_readme():
    assert len(DOCS) >= 20, [_rel(p) for p in DOCS]
    linked = {(README.parent / t.split("#")[0]).resolve() for d, t in _links() if d == README}
    unlinked = [_rel(p) for p in DOCS if _rel(p).startswith("docs/") and p.resolve() not in linked]
    assert not unlinked, f"docs pages missing from the README's index: {unlinked}"


def test_relative_links_and_anchors_resolve():
    bad = []
    for doc, target in _links():
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc.resolve()
        if not dest.exists():
            bad.append(f"{_rel(doc)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{_rel(doc)}: {target} (no heading with this anchor in {_rel(dest)})")
    assert not bad, "\n".join(bad)


def test_user_docs_carry_no_notebook_residue():
    """No test ids, CI data paths, issue numbers or history in the user docs (history is CHANGELOG.md), and no
    module that does not exist."""
    rules = {r"\bissue \d": "issue number", r"shared/data": "CI data path", r"\.py::\w": "pytest test id",
             r"\bused to\b|\bfirst release\b": "history (CHANGELOG.md)",
             r"pipofan_monai\.transforms\b": "no such module"}
    bad = [f"{_rel(d)}:{i}: {why}: {line.strip()[:80]}" for d in USER_DOCS
           for i, line in enumerate(d.read_text(encoding="utf-8").splitlines(), 1)
           for pat, why in rules.items() if re.search(pat, line, re.IGNORECASE)]
    assert not bad, "\n".join(bad)


def named_pipofan_commands() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for code in _code(doc.read_text(encoding="utf-8")):
            for m in PIPOFAN_CMD.finditer(code):
                found.setdefault(m.group(1), []).append(_rel(doc))
    return found


def _help(command: str) -> str:
    """What ``python -m pipofan_monai <command> --help`` prints, run in this process (an interpreter per command
    would cost seconds each); a non-zero exit raises."""
    from pipofan_monai.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main([command, "--help"])
        except SystemExit as e:
            if e.code not in (0, None):
                raise AssertionError(f"`pipofan {command} --help` exited {e.code}: {out.getvalue()[-500:]}") from e
    return out.getvalue()


def test_named_pipofan_commands_answer_help():
    named = named_pipofan_commands()
    assert {"download", "datalist", "preprocess", "organs"} <= set(named), sorted(named)
    for command in sorted(named):
        text = _help(command)
        assert f"pipofan_monai {command}" in text or f"pipofan {command}" in text, (command, named[command], text[:300])
    # an unknown command must not pass as "answers --help"
    with pytest.raises(AssertionError, match="exited"):
        _help("no_such_command")


def _config_files(arg: str) -> list[str]:
    arg = arg.strip("\"'")
    return list(ast.literal_eval(arg)) if arg.startswith("[") else [arg]


def named_bundle_runs() -> list[tuple[str, str, list[str]]]:
    """(doc, run id, config files) for every ``monai.bundle run`` with a ``--config_file`` in the docs."""
    runs = []
    for doc in DOCS:
        for code in _code(doc.read_text(encoding="utf-8")):
            for line in code.splitlines():
                for m in BUNDLE_RUN.finditer(line):
                    cfg = CONFIG_ARG.search(m.group(2))
                    if cfg:
                        runs.append((_rel(doc), m.group(1), _config_files(cfg.group(1))))
    return runs


def test_named_bundle_run_ids_are_defined_in_their_configs():
    runs = named_bundle_runs()
    assert {r[1] for r in runs} >= {"training", "crossval", "inference", "ensemble", "evaluate"}, runs
    bad = []
    for doc, run_id, files in runs:
        keys = set()
        for f in files:
            if not (REPO / f).is_file():
                bad.append(f"{doc}: run {run_id}: no config {f}")
                continue
            keys |= set(json.loads((REPO / f).read_text(encoding="utf-8")))
        if run_id not in keys:
            bad.append(f"{doc}: run {run_id} is not a key of {files}")
    assert not bad, "\n".join(bad)


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```", path.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


def test_readme_python_code_runs():
    blocks = _blocks(README, "python")
    assert blocks, "the README shows the network and the loss in Python"
    for code in blocks:
        assert len(code.strip().splitlines()) <= 15, "the README's library snippet is at most 15 lines"
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                             check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        for expected in re.findall(r"print\(.*\)\s*#\s*(torch\.Size\(\[[\d, ]+\]\))", code):
            assert expected in out.stdout, (expected, out.stdout)


def test_docs_python_code_parses():
    bad = []
    for doc in DOCS:
        for code in _blocks(doc, "python"):
            try:
                ast.parse(code)
            except SyntaxError as e:
                bad.append(f"{_rel(doc)}: {e}")
    assert not bad, "\n".join(bad)


def _command_tokens(line: str) -> list[str]:
    """A shell command as tokens without output-only flags (``-q``, ``--durations``, ``-p no:cacheprovider``) and
    without a leading ``python -m`` before pip, cut at a pipe or redirection."""
    tokens = shlex.split(line.split(" 2>&1")[0].split(" | ")[0])
    if tokens[:3] == ["python", "-m", "pip"]:
        tokens = tokens[2:]
    out, skip = [], False
    for t in tokens:
        if skip:
            skip = False
        elif t == "-p":
            skip = True
        elif t != "-q" and not t.startswith("--durations"):
            out.append(t)
    return out


def test_readme_test_command_is_what_ci_runs():
    cmds = [c for b in _blocks(README, "bash") for c in b.splitlines() if "pytest" in c and "pip install" in c]
    assert len(cmds) == 1, cmds
    install, run = (part.strip() for part in cmds[0].split("&&"))
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if not line.lstrip().startswith("#")]
    ci_install = [_command_tokens(x) for x in ci if "pip install" in x and ".[test]" in x]
    ci_run = [_command_tokens(x) for x in ci if x.startswith("python -m pytest")]
    assert ci_install == [_command_tokens(install)], (install, ci_install)
    assert ci_run == [_command_tokens(run)], (run, ci_run)


def readme_quickstart_config() -> str:
    runs = [c for b in _blocks(README, "bash") for c in b.splitlines() if "quickstart.json" in c and " run " in c]
    assert len(runs) == 1, runs
    assert BUNDLE_RUN.search(runs[0]).group(1) == "training"
    return CONFIG_ARG.search(runs[0]).group(1).strip("\"")


def test_readme_quickstart_names_the_bundle_configs():
    assert _config_files(readme_quickstart_config()) == ["bundle/configs/train.json", "bundle/configs/quickstart.json"]


def test_readme_quickstart_is_what_the_tests_run():
    """tests/integration/test_bundle_train.py runs the README's quick-start bundle command."""
    assert readme_quickstart_config() in (REPO / "tests" / "integration" / "test_bundle_train.py").read_text(encoding="utf-8")


def test_bundle_config_reference_equals_the_model_card():
    """docs/reference/bundle-config.md repeats the key tables of the bundle's model card (shipped in the wheel):
    they must not drift apart."""
    card = (REPO / "bundle" / "docs" / "README.md").read_text(encoding="utf-8")
    rows = [r for r in card[card.index("## Top-level keys of train.json"):].splitlines() if r.startswith("| `")]
    ref = set((REPO / "docs" / "reference" / "bundle-config.md").read_text(encoding="utf-8").splitlines())
    assert len(rows) > 20 and [r for r in rows if r not in ref] == []


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    order = ["## Install", "## Three commands", "## Tests", "## The network and the loss", "## Documentation",
             "## Citation", "## Licence"]
    positions = [text.index(h) for h in order]
    assert positions == sorted(positions) and text.index("**Status") < positions[0]
