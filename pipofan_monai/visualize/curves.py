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

"""Training curves and cross-validation bar charts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pipofan_monai.utils import atomic_path  # noqa: E402

__all__ = ["load_metrics_rows", "plot_training_curves", "crossval_table", "plot_crossval", "plot_dice_bars"]


def _to_float(v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v).strip()) if str(v).strip() not in ("", "n/a", "nan", "None", "null") else math.nan
    except ValueError:
        return math.nan


def load_metrics_rows(metrics: str | os.PathLike | Sequence[Mapping] | Mapping) -> list[dict[str, Any]]:
    """Read per-epoch metric rows from a CSV, JSON or JSON-lines file, or take them as given.

    Accepted JSON layouts: a list of row dicts; a dict with a list under ``"epochs"``, ``"history"`` or
    ``"rows"``; a dict of columns (``{"epoch": [...], "loss": [...]}``). JSON lines: one row dict per line.

    Args:
        metrics: file path or rows.

    Returns:
        list of row dicts (values as read).

    Raises:
        ValueError: unreadable layout. FileNotFoundError: missing file.
    """
    if isinstance(metrics, (str, os.PathLike)):
        path = os.fspath(metrics)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"metrics file {path!r} does not exist.")
        if path.lower().endswith(".csv"):
            with open(path, newline="") as f:
                return [dict(r) for r in csv.DictReader(f)]
        with open(path) as f:
            text = f.read()
        try:
            metrics = json.loads(text)
        except json.JSONDecodeError:
            try:
                metrics = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise ValueError(f"{path!r} is neither CSV, JSON nor JSON lines: {err}.") from err
    if isinstance(metrics, Mapping):
        for key in ("epochs", "history", "rows"):
            if isinstance(metrics.get(key), list):
                return [dict(r) for r in metrics[key]]
        cols = {k: v for k, v in metrics.items() if isinstance(v, list)}
        if cols:
            n = max(len(v) for v in cols.values())
            return [{k: (v[i] if i < len(v) else None) for k, v in cols.items()} for i in range(n)]
        raise ValueError(f"cannot read metric rows from a dict with keys {sorted(metrics)}.")
    rows = list(metrics)
    if not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("metric rows must be dicts.")
    return [dict(r) for r in rows]


def plot_training_curves(
    metrics: str | os.PathLike | Sequence[Mapping] | Mapping, path: str | os.PathLike, title: str | None = None
) -> str:
    """Plot training loss, per-organ validation Dice and the learning rate against the epoch.

    Rows are per-epoch dicts with any of ``epoch``, ``loss``, ``val_dice_<organ>``, ``val_mean_dice``, ``lr``,
    ``stage`` (missing columns and empty values, e.g. on epochs without validation, are skipped; without
    ``epoch`` the row number is used). Stage changes (e.g. "dps" -> "fused") are marked with a vertical line.
    Panels without data are left out; with no data at all an empty "no data" figure is written.

    Args:
        metrics: CSV/JSON/JSON-lines file or rows (see :py:func:`load_metrics_rows`).
        path: output PNG path.
        title: figure title.

    Returns:
        The written path.
    """
    rows = load_metrics_rows(metrics)
    epochs = np.asarray([_to_float(r.get("epoch", i)) for i, r in enumerate(rows)], dtype=np.float64)
    epochs = np.where(np.isnan(epochs), np.arange(len(rows)), epochs)

    def column(key: str) -> np.ndarray:
        return np.asarray([_to_float(r.get(key)) for r in rows], dtype=np.float64)

    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    dice_keys = [k for k in keys if k.startswith("val_dice_")]
    if "val_mean_dice" in keys:
        dice_keys.append("val_mean_dice")
    panels = []
    if "loss" in keys and np.isfinite(column("loss")).any():
        panels.append("loss")
    if any(np.isfinite(column(k)).any() for k in dice_keys):
        panels.append("dice")
    if "lr" in keys and np.isfinite(column("lr")).any():
        panels.append("lr")

    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(7, 2.6 * max(len(panels), 1) + 0.4), squeeze=False)
    axes = axes[:, 0]
    if not panels:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            y = column("loss")
            ok = np.isfinite(y)
            ax.plot(epochs[ok], y[ok], color="black", lw=1.2, label="training loss")
            if np.all(y[ok] > 0) and y[ok].max() / max(y[ok].min(), 1e-12) > 20:
                ax.set_yscale("log")
            ax.set_ylabel("loss")
        elif panel == "dice":
            for k in dice_keys:
                y = column(k)
                ok = np.isfinite(y)
                if not ok.any():
                    continue
                name = "mean" if k == "val_mean_dice" else k[len("val_dice_") :]
                style = dict(color="black", lw=2.0, ls="--") if name == "mean" else dict(lw=1.3)
                ax.plot(epochs[ok], y[ok], marker="o", ms=3, label=name, **style)
            ax.set_ylabel("validation Dice")
            ax.set_ylim(0.0, 1.0)
            ax.grid(alpha=0.3)
        else:
            y = column("lr")
            ok = np.isfinite(y)
            ax.plot(epochs[ok], y[ok], color="tab:purple", lw=1.2, label="learning rate")
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.legend(loc="best", fontsize=8)
    if panels:
        stages = [r.get("stage") for r in rows]
        for i in range(1, len(rows)):
            if stages[i] not in (None, "") and stages[i - 1] not in (None, "") and stages[i] != stages[i - 1]:
                for ax in axes:
                    ax.axvline(epochs[i], color="gray", ls=":", lw=1.0)
                axes[0].text(epochs[i], 1.0, f" {stages[i]}", transform=axes[0].get_xaxis_transform(),
                             fontsize=8, color="gray", va="bottom")
        axes[-1].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the format comes from the extension, which the temporary name keeps
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return os.fspath(path)


def crossval_table(report: str | os.PathLike | Mapping) -> tuple[list[str], list[str], np.ndarray]:
    """Normalise a cross-validation report to ``(fold labels, organ names, Dice array (folds, organs))``.

    Accepted layouts (a dict or a JSON file holding one):

    * ``{"folds": [{"fold": 0, "dice": {"liver": 0.95, ...}}, ...]}`` (canonical); a fold entry may instead hold
      the organ values directly (``{"fold": 0, "liver": 0.95}``), as ``val_dice_<organ>`` keys, or a
      :py:func:`pipofan_monai.evaluation.summarize` result under ``"summary"`` (its ``dice_mean`` is used);
    * ``{"liver": [fold values...], ...}`` (organ -> list over folds).

    Missing values are NaN. Keys named ``mean``/``val_mean_dice`` and non-numeric entries are ignored.
    """
    if isinstance(report, (str, os.PathLike)):
        with open(os.fspath(report)) as f:
            report = json.load(f)
    if not isinstance(report, Mapping):
        raise ValueError(f"cross-validation report must be a dict, got {type(report).__name__}.")
    skip = {"fold", "mean", "val_mean_dice", "epoch", "n_cases", "best_epoch", "checkpoint", "stage", "std"}
    if isinstance(report.get("folds"), list):
        labels, values = [], []
        for i, entry in enumerate(report["folds"]):
            labels.append(f"fold {entry.get('fold', i)}")
            if isinstance(entry.get("dice"), Mapping):
                vals = dict(entry["dice"])
            elif isinstance(entry.get("summary"), Mapping) and "organs" in entry["summary"]:
                vals = {k: v.get("dice_mean") for k, v in entry["summary"]["organs"].items()}
            else:
                vals = {(k[len("val_dice_") :] if k.startswith("val_dice_") else k): v for k, v in entry.items()}
            values.append(
                {k: _to_float(v) for k, v in vals.items() if k not in skip and not isinstance(v, (Mapping, list))}
            )
        organs: list[str] = []
        for v in values:
            organs.extend(k for k in v if k not in organs)
        arr = np.asarray([[v.get(o, math.nan) for o in organs] for v in values], dtype=np.float64)
        return labels, organs, arr.reshape(len(values), len(organs))
    cols = {k: v for k, v in report.items() if isinstance(v, list) and k not in skip}
    if not cols:
        raise ValueError(f"cannot read per-fold Dice from a report with keys {sorted(report)}.")
    organs = list(cols)
    n = max(len(v) for v in cols.values())
    arr = np.asarray([[_to_float(cols[o][i]) if i < len(cols[o]) else math.nan for o in organs] for i in range(n)])
    return [f"fold {i}" for i in range(n)], organs, arr.reshape(n, len(organs))


def plot_crossval(report: str | os.PathLike | Mapping, path: str | os.PathLike, title: str | None = None) -> str:
    """Bar chart of Dice per organ and fold, with a mean ± std bar per organ (the form of Table V).

    Args:
        report: cross-validation report (see :py:func:`crossval_table` for the accepted layouts).
        path: output PNG path.
        title: figure title (default "Cross-validation Dice").

    Returns:
        The written path.

    Raises:
        ValueError: the report holds no Dice values.
    """
    folds, organs, arr = crossval_table(report)
    return plot_dice_bars(folds, organs, arr, path, title or "Cross-validation Dice", with_mean=True)


def plot_dice_bars(
    labels: Sequence[str],
    organs: Sequence[str],
    dice: np.ndarray,
    path: str | os.PathLike,
    title: str,
    with_mean: bool = False,
) -> str:
    """Grouped bar chart of Dice (%): one group per organ, one bar per row (fold, study row), optionally a
    mean ± std bar per organ. The one chart of the cross-validation and study reports.

    Args:
        labels: row names, ``len(labels) == dice.shape[0]``.
        organs: organ (column) names, ``len(organs) == dice.shape[1]``.
        dice: ``(rows, organs)`` Dice in [0, 1]; NaN where missing.
        path: output PNG path (written atomically).
        title: figure title.
        with_mean: add a mean ± std bar per organ (and the values under the organ names).

    Raises:
        ValueError: no finite value, or shapes that do not match.
    """
    arr = np.asarray(dice, dtype=np.float64).reshape(len(labels), len(organs))
    if arr.size == 0 or not np.isfinite(arr).any():
        raise ValueError("the report holds no Dice values.")
    n_f, n_o = arr.shape
    slots = n_f + int(with_mean)
    width = 0.8 / slots
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + n_o * slots * 0.45), 4.2 + 0.2 * ((n_f + 1) // 2)))
    x = np.arange(n_o)
    cmap = plt.get_cmap("tab10")
    for f in range(n_f):
        heights = np.nan_to_num(arr[f] * 100, nan=0.0)
        ax.bar(x + (f - (slots - 1) / 2) * width, heights, width, label=labels[f], color=cmap(f % 10))
    ticks = list(organs)
    if with_mean:
        counts = np.isfinite(arr).sum(0)
        mean = np.array([np.nanmean(arr[:, o]) if counts[o] else np.nan for o in range(n_o)])
        std = np.array([np.nanstd(arr[:, o], ddof=1) if counts[o] > 1 else 0.0 for o in range(n_o)])
        xm = x + (n_f - (slots - 1) / 2) * width
        ax.bar(xm, np.nan_to_num(mean * 100), width, yerr=std * 100, capsize=3, color="0.3", label="mean ± std")
        ticks = [f"{o}\n{mean[i] * 100:.1f} ± {std[i] * 100:.1f}" if np.isfinite(mean[i]) else o
                 for i, o in enumerate(organs)]
    finite = arr[np.isfinite(arr)] * 100
    low = max(0.0, math.floor((finite.min() - 10) / 10) * 10) if finite.size else 0.0
    ax.set_ylim(low, 101)
    ax.set_xticks(x)
    ax.set_xticklabels(ticks)
    ax.set_ylabel("Dice (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(slots, 3), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return os.fspath(path)
