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

"""The one writer of Dice tables (cross-validation folds, study rows): ``<name>.json``, ``<name>.csv`` and a bar
chart ``<name>.png``, each replaced atomically, and the table in the log."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipofan_monai.evaluation.metrics import _json_safe, mean_std
from pipofan_monai.utils import atomic_write, atomic_write_json

__all__ = ["dice_summary", "write_dice_table"]

logger = logging.getLogger(__name__)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cell(v: Any) -> str:
    return f"{v:.4f}" if _finite(v) else "n/a"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if _finite(v) else "n/a"


def dice_summary(rows: Sequence[Mapping], columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{column: {"mean", "std", "num_folds"}}`` over the rows' finite ``dice[column]`` values (std with ddof=1;
    0 for one value; None when there is none)."""
    out = {}
    for c in columns:
        values = [float(r["dice"][c]) for r in rows if _finite(r["dice"].get(c))]
        mean, std = mean_std(values)
        out[c] = {"mean": mean, "std": std, "num_folds": len(values)}
    return out


def write_dice_table(
    name: str,
    rows: Sequence[Mapping],
    output_dir: str | os.PathLike,
    label: str = "row",
    extra_columns: Sequence[str] = ("best_epoch", "seconds"),
    summary: bool = False,
    title: str | None = None,
    report: Mapping[str, Any] | None = None,
    rows_key: str = "rows",
) -> dict[str, Any]:
    """Write a Dice table as ``<output_dir>/<name>.json``, ``.csv`` and ``.png`` and log it.

    Args:
        name: file stem (``crossval``, ``loss``, ...).
        rows: per row ``{"name": label, "dice": {organ: value or None, ..., "mean": value}, <extra columns>}``.
        output_dir: folder for the files (created).
        label: header of the first CSV column (``fold``, ``row``).
        extra_columns: keys of the rows written as further columns when some row has them.
        summary: add mean and std rows over the rows (cross-validation, Table V).
        title: chart and log title.
        report: further entries of the JSON report (``settings``, ``metric``, ...).
        rows_key: key of the rows in the report (``folds`` for cross-validation).

    Returns:
        the report written to JSON: ``{**report, "name", "columns", <rows_key>, "summary"?, "table", "files"}``.
    """
    organs = [k for k in (rows[0]["dice"] if rows else {}) if k != "mean"] + ["mean"]
    extra = [k for k in extra_columns if any(k in r for r in rows)]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {**dict(report or {}), "name": name, "columns": organs + extra, rows_key: [dict(r) for r in rows]}
    if summary:
        result["summary"] = dice_summary(rows, organs)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([label] + [f"dice_{o}" for o in organs] + extra)
    for r in rows:
        w.writerow([r["name"]] + [_cell(r["dice"].get(o)) for o in organs] + [r.get(k, "") for k in extra])
    if summary:
        for stat in ("mean", "std"):
            w.writerow([stat] + [_cell(result["summary"][o][stat]) for o in organs] + [""] * len(extra))
    width = max([len(str(r["name"])) for r in rows] + [len(label), 4])
    lines = [f"{label:<{width}} " + " ".join(f"{o:>13}" for o in organs) + "".join(f" {k:>12}" for k in extra)]
    for r in rows:
        lines.append(f"{str(r['name']):<{width}} " + " ".join(f"{_pct(r['dice'].get(o)):>13}" for o in organs)
                     + "".join(f" {str(r.get(k, '')):>12}" for k in extra))
    if summary:
        s = result["summary"]
        lines.append(f"{'mean':<{width}} " + " ".join(
            f"{(_pct(s[o]['mean']) + ' +- ' + _pct(s[o]['std'])) if _finite(s[o]['mean']) else 'n/a':>13}"
            for o in organs))
    result["table"] = "\n".join(lines)
    result["files"] = [str(out / f"{name}.{ext}") for ext in ("json", "csv", "png")]

    with atomic_write(out / f"{name}.csv", "w") as f:
        f.write(buf.getvalue())
    atomic_write_json(out / f"{name}.json", _json_safe(result))
    try:
        import numpy as np

        from pipofan_monai.visualize import plot_dice_bars

        dice = np.array([[float(r["dice"][o]) if _finite(r["dice"].get(o)) else np.nan for o in organs[:-1]]
                         for r in rows], dtype=np.float64).reshape(len(rows), len(organs) - 1)
        names = [str(r["name"]) if label == "row" else f"{label} {r['name']}" for r in rows]
        plot_dice_bars(names, organs[:-1], dice, out / f"{name}.png",
                       title or f"{name}: Dice", with_mean=summary)
    except Exception as e:  # the numbers matter more than the picture
        logger.warning(f"could not draw {out / f'{name}.png'}: {e}")
    logger.info(f"{title or name} -- Dice (%)\n{result['table']}")
    return result

