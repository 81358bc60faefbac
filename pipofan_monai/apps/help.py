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

"""Help text of a command read from its source file, without importing it.

The command modules import torch and MONAI (seconds); ``--help`` has to answer at once, so the signature and the
docstring are read with :mod:`ast`. The output is what :func:`inspect.signature` and :func:`inspect.getdoc`
would give for the imported function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

__all__ = ["command_help", "plain_text", "source_function"]

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the pipofan_monai folder


def _module_file(module: str) -> Path:
    """The source file of ``module`` (a ``pipofan_monai.*`` module name), found without importing it."""
    parts = module.split(".")
    if parts[0] != "pipofan_monai":
        raise ValueError(f"not a pipofan_monai module: {module!r}")
    base = _PACKAGE_ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no source file for {module!r} under {_PACKAGE_ROOT}")


def _assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """Top-level ``NAME = value`` / ``NAME: type = value`` of a module."""
    out: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


def source_function(module: str, name: str) -> tuple[ast.FunctionDef, dict[str, ast.expr]]:
    """The top-level ``def name`` of ``module``'s source file, and the module constants its defaults may name:
    the module's top-level assignments, and those it imports by name from another ``pipofan_monai`` module (one
    level, so a constant defined beside the code that uses it still shows its value)."""
    path = _module_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    constants: dict[str, ast.expr] = {}
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pipofan_monai")):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            source = f"{base}.{node.module}" if node.level else node.module
            try:
                imported = _assignments(ast.parse(_module_file(source).read_text(encoding="utf-8")))
            except (FileNotFoundError, ValueError, SyntaxError):
                continue
            constants.update({a.asname or a.name: imported[a.name] for a in node.names if a.name in imported})
    constants.update(_assignments(tree))
    if fn is None:
        raise LookupError(f"{path}: no top-level function {name!r}")
    return fn, constants


def _default_text(node: ast.expr, constants: dict[str, ast.expr]) -> str:
    """``repr`` of a default value: a literal, or a module constant bound to a literal; else its source text."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    try:
        return repr(ast.literal_eval(node))
    except ValueError:
        return ast.unparse(node)


def _usage_parts(fn: ast.FunctionDef, constants: dict[str, ast.expr]) -> list[str]:
    """``NAME`` for a required argument, ``[--name default]`` for an optional one, in signature order."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults: list = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    parts = [p.arg.upper() if d is None else f"[--{p.arg} {_default_text(d, constants)}]"
             for p, d in zip(positional, defaults)]
    if a.vararg is not None:
        parts.append(a.vararg.arg.upper())
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        parts.append(p.arg.upper() if d is None else f"[--{p.arg} {_default_text(d, constants)}]")
    if a.kwarg is not None:
        parts.append("[--KEY VALUE ...]")
    return parts


def command_help(name: str, module: str, function: str) -> str:
    """Usage line (the command's arguments as ``--name default``) and the command's docstring, as terminal text."""
    fn, constants = source_function(module, function)
    usage = f"usage: python -m pipofan_monai {name} " + " ".join(_usage_parts(fn, constants))
    return usage + "\n\n" + plain_text(ast.get_docstring(fn) or "")


def plain_text(doc: str) -> str:
    """A docstring as terminal text: reST roles (``:class:`~a.b.C```) become their last name, double backquotes
    (````x````) plain text."""
    doc = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`<>]+?)`", r"\1", doc)
    return doc.replace("``", "")
