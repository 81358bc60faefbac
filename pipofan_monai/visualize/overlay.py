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

"""PNG overviews of a segmentation: a few axial slices and one coronal slice with the organs coloured
semi-transparently over the windowed CT, and a legend (what a radiologist would glance at).

Display convention (radiological): arrays are read as ``(x, y, z)`` in RAS orientation (what
``Orientationd(axcodes="RAS")`` produces: +x towards the patient's Right, +y Anterior, +z Superior). Axial
slices are shown as seen from the feet: rows run anterior (top) to posterior (bottom) and columns run from the
patient's right (image left) to the patient's left (image right). Coronal slices are shown as seen from the
front: superior at the top, patient's right on the image left. When an affine is given (or the image is a
MetaTensor), the arrays are first reoriented to RAS from that affine, so any input orientation is displayed
the same way; without an affine the arrays must already be RAS. Pixel aspect ratios follow the voxel spacing.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from monai.data.meta_tensor import MetaTensor  # noqa: E402
from monai.utils import convert_to_numpy  # noqa: E402

from pipofan_monai.vocabulary.datasets import CLASS_NAMES  # noqa: E402
from pipofan_monai.utils import atomic_write  # noqa: E402
from pipofan_monai.vocabulary.organs import DEFAULT_CLASS_NAMES, canonical_organ_name, colors_for, organ_table  # noqa: E402

__all__ = ["DEFAULT_COLORS", "class_colors", "save_overlay_png", "to_radiological_axial", "to_radiological_coronal"]

#: RGB colours (0..1) per class id of the default vocabulary (liver orange-red, kidney green, spleen blue), from
#: the organ table; class 0 (background) is never drawn.
DEFAULT_COLORS: dict[int, tuple[float, float, float]] = colors_for(DEFAULT_CLASS_NAMES)


def class_colors(class_names: Sequence[str], organs: Mapping | None = None) -> dict[int, tuple[float, float, float]]:
    """``{class id: (r, g, b)}`` of a vocabulary: each organ's colour from the organ table
    (:py:data:`pipofan_monai.vocabulary.organs.ORGANS`, or ``organs``); names that are not organs of the table get no entry
    (drawn in tab10 colours)."""
    table = organ_table(organs)
    out = {}
    for cid, name in enumerate(class_names):
        if cid == 0:
            continue
        try:
            key = canonical_organ_name(str(name))
        except ValueError:
            continue
        if key in table:
            out[cid] = tuple(float(c) for c in table[key].color)
    return out  # type: ignore[return-value]


def _color(cid: int, colors: dict | None) -> tuple[float, float, float]:
    table = DEFAULT_COLORS if colors is None else colors
    if cid in table:
        return tuple(float(c) for c in table[cid])[:3]  # type: ignore[return-value]
    return tuple(plt.get_cmap("tab10")(cid % 10)[:3])  # type: ignore[return-value]


def _squeeze3d(x, name: str) -> np.ndarray:
    arr = np.asarray(convert_to_numpy(x))
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a volume (H, W, D) or (1, H, W, D), got shape {arr.shape}.")
    return arr


def to_radiological_axial(slice_xy: np.ndarray) -> np.ndarray:
    """``(X, Y[, C])`` RAS axial slice -> ``(Y, X[, C])`` display array: rows anterior->posterior, columns
    patient right->left (radiological convention)."""
    return np.swapaxes(slice_xy, 0, 1)[::-1, ::-1]


def to_radiological_coronal(slice_xz: np.ndarray) -> np.ndarray:
    """``(X, Z[, C])`` RAS coronal slice -> ``(Z, X[, C])`` display array: rows superior->inferior, columns
    patient right->left."""
    return np.swapaxes(slice_xz, 0, 1)[::-1, ::-1]


def _reorient_to_ras(arrays: list[np.ndarray | None], affine) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Reorient (x, y, z) arrays with ``affine`` to RAS; returns them and the RAS voxel spacing."""
    affine = np.asarray(convert_to_numpy(affine), dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}.")
    ornt = nib.orientations.io_orientation(affine)
    xform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
    # views (flips / transposes), not copies: only the displayed slices are read
    out = [None if a is None else nib.orientations.apply_orientation(a, xform) for a in arrays]
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    for i, (axis, _) in enumerate(xform):
        spacing[int(axis)] = zooms[i]
    return out, spacing


def _window_range(image: np.ndarray, window: Sequence[float] | None) -> tuple[float, float]:
    """``(low, high)`` of the display window: ``window``, or the image's own min..max when it is None."""
    if window is None:
        return float(np.nanmin(image)), float(np.nanmax(image))
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window}.")
    return lo, hi


def _window(image: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """``image`` (a displayed slice) scaled from ``limits`` to [0, 1] (zeros when the range is empty)."""
    img = image.astype(np.float32)
    lo, hi = limits
    if hi <= lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _blend(gray: np.ndarray, label: np.ndarray | None, alpha: float, class_ids: Sequence[int], colors) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if label is None:
        return rgb
    for cid in class_ids:
        m = label == cid
        if m.any():
            rgb[m] = (1.0 - alpha) * rgb[m] + alpha * np.asarray(_color(cid, colors))
    return rgb


def _values(label: np.ndarray, slices: int = 32) -> set[int]:
    """The distinct values of an integer label volume ``(X, Y, Z)``, counted ``slices`` axial slices at a time
    (``np.unique`` of the whole volume sorts a copy of it)."""
    out: set[int] = set()
    for z in range(0, label.shape[2], slices):
        out.update(np.unique(label[:, :, z:z + slices]).tolist())
    return {int(v) for v in out}


def _foreground_axes(label: np.ndarray, ground_truth: np.ndarray | None,
                     slices: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(any foreground per axial slice (Z,), any foreground per coronal row (Y,))`` of ``label`` or
    ``ground_truth`` ``(X, Y, Z)``, ``slices`` axial slices at a time (no whole-volume mask)."""
    fg_z = np.zeros(label.shape[2], dtype=bool)
    fg_y = np.zeros(label.shape[1], dtype=bool)
    for z in range(0, label.shape[2], slices):
        fg = label[:, :, z:z + slices] > 0
        if ground_truth is not None:
            fg |= ground_truth[:, :, z:z + slices] > 0
        fg_z[z:z + slices] = fg.any(axis=(0, 1))
        fg_y |= fg.any(axis=(0, 2))
    return fg_z, fg_y


def _spread(indices: np.ndarray, n: int) -> list[int]:
    """``n`` values spread through ``indices`` (sorted unique), at the quantiles (i + 1) / (n + 1)."""
    if indices.size == 0 or n <= 0:
        return []
    pos = [int(round((i + 1) / (n + 1) * (indices.size - 1))) for i in range(n)]
    return sorted({int(indices[p]) for p in pos})


def save_overlay_png(
    image,
    label,
    path: str | os.PathLike,
    class_names: Sequence[str] = CLASS_NAMES,
    num_axial: int = 4,
    coronal: bool = True,
    ground_truth=None,
    window: Sequence[float] | None = (-200.0, 200.0),
    affine=None,
    spacing: Sequence[float] | None = None,
    axial_slices: Sequence[int] | None = None,
    coronal_slice: int | None = None,
    alpha: float = 0.45,
    colors: dict[int, Sequence[float]] | None = None,
    title: str | None = None,
    panel_size: float = 3.0,
    dpi: int = 100,
) -> str:
    """Write a PNG overview of a segmentation over its CT.

    Axial slices are chosen where the organs are: ``num_axial`` slices spread through the slices that contain
    foreground (in ``label`` or ``ground_truth``), or through the whole volume when there is none. The coronal
    slice passes through the centre of the foreground (the volume centre without foreground). With
    ``ground_truth`` the figure has two rows, prediction (top) and ground truth (bottom), on the same slices.
    Orientation: see the module docstring (radiological, anterior at the top, patient's right on the left).

    Args:
        image: CT volume ``(H, W, D)`` or ``(1, H, W, D)`` (numpy, torch or MetaTensor), in HU or already windowed.
        label: predicted label map, same spatial shape, global class ids (0 = background).
        path: output PNG path (folders are created).
        class_names: class names, index = class id; the legend lists classes ``1 ..``.
        num_axial: number of axial panels (0 allowed when ``coronal``).
        coronal: add one coronal panel.
        ground_truth: optional reference label map (same shape): adds a second row.
        window: display window ``(low, high)`` in image units (HU, default ``(-200, 200)``, the training
            window); ``None`` stretches the image's own min..max (for already-windowed images).
        affine: 4x4 voxel-to-world (RAS) affine: arrays are reoriented to RAS and the spacing is read from it.
            Taken from ``image`` (then ``label``) when it is a MetaTensor and ``affine`` is None. Without any
            affine the arrays must be in RAS ``(x, y, z)`` order.
        spacing: voxel size ``(sx, sy, sz)`` in mm of the RAS arrays for the aspect ratio when no affine is
            available (default isotropic).
        axial_slices: explicit axial slice indices (RAS z), overriding the automatic choice.
        coronal_slice: explicit coronal slice index (RAS y).
        alpha: opacity of the organ colours (0..1).
        colors: ``{class id: (r, g, b)}`` in 0..1; default the organ colours of ``class_names``
            (:py:func:`class_colors`; tab10 for ids without one).
        title: figure title.
        panel_size: panel size in inches.
        dpi: resolution.

    Returns:
        The written path.

    Raises:
        ValueError: shapes differ, a volume is not 3D, or bad options.
    """
    img, lab, gt, sp = _checked_volumes(image, label, ground_truth, affine, spacing, num_axial, coronal, alpha)
    # no whole-volume copies (a 1,000-slice CT is 1 GiB as float32): the label maps keep their dtype, the window
    # is applied to the displayed slices only (with ``window=None`` its range is the volume's min..max)
    if colors is None:
        colors = class_colors(class_names)
    limits = _window_range(img, window)
    axial, coronal_slice = _overlay_slices(img.shape, lab, gt, num_axial, axial_slices, coronal, coronal_slice)
    class_ids = [c for c in range(1, len(class_names))]
    extra = sorted(_values(lab) - {0, *class_ids})
    rows = [("prediction", lab)] if gt is None else [("prediction", lab), ("ground truth", gt)]
    fig = _draw_panels(img, rows, axial, coronal_slice if coronal else None, sp, limits, alpha, class_ids + extra,
                       colors, panel_size)
    legend = _add_legend(fig, class_names, class_ids, extra, colors, alpha)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 0.95 if title else 1))
    _save_figure(fig, path, dpi)
    return os.fspath(path)


def _checked_volumes(image, label, ground_truth, affine, spacing: Sequence[float] | None, num_axial: int,
                     coronal: bool, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """``(image, label, ground truth or None, spacing)`` of :func:`save_overlay_png`'s inputs as RAS ``(x, y, z)``
    arrays (views, no copies) and their voxel size, after checking the shapes and the panel options; the affine is
    ``affine``, else the first MetaTensor's, else none (the arrays are RAS already and ``spacing`` applies)."""
    if affine is None:
        for x in (image, label, ground_truth):
            if isinstance(x, MetaTensor):
                affine = x.affine
                break
    img = _squeeze3d(image, "image")
    lab = _squeeze3d(label, "label")
    gt = None if ground_truth is None else _squeeze3d(ground_truth, "ground_truth")
    for name, arr in (("label", lab), ("ground_truth", gt)):
        if arr is not None and arr.shape != img.shape:
            raise ValueError(f"{name} shape {arr.shape} differs from the image shape {img.shape}.")
    if num_axial < 0 or (num_axial == 0 and not coronal):
        raise ValueError(f"need at least one panel: num_axial={num_axial}, coronal={coronal}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if affine is not None:
        (img, lab, gt), sp = _reorient_to_ras([img, lab, gt], affine)
    else:
        sp = np.ones(3) if spacing is None else np.asarray([float(s) for s in spacing])
        if sp.shape != (3,) or np.any(sp <= 0):
            raise ValueError(f"spacing must be three positive values, got {spacing}.")
    return img, lab, gt, sp


def _overlay_slices(shape: tuple[int, ...], label: np.ndarray, ground_truth: np.ndarray | None, num_axial: int,
                    axial_slices: Sequence[int] | None, coronal: bool,
                    coronal_slice: int | None) -> tuple[list[int], int | None]:
    """``(axial slice indices, coronal slice index)`` to draw for RAS volumes of ``shape``: the given ones
    (checked), else axial slices spread through the foreground and the coronal one through its centre (the whole
    volume, its centre, without foreground). The coronal index is returned as given when there is one."""
    depth = shape[2]
    fg_z, fg_y = _foreground_axes(label, ground_truth)
    if axial_slices is None:
        organ_z = np.nonzero(fg_z)[0]
        axial = _spread(organ_z if organ_z.size else np.arange(depth), num_axial)
    else:
        axial = [int(z) for z in axial_slices]
        bad = [z for z in axial if not 0 <= z < depth]
        if bad:
            raise ValueError(f"axial_slices {bad} are outside 0..{depth - 1}.")
    if coronal and coronal_slice is None:
        ys = np.nonzero(fg_y)[0]
        coronal_slice = int(round(ys.mean())) if ys.size else shape[1] // 2
    if coronal and not 0 <= int(coronal_slice) < shape[1]:
        raise ValueError(f"coronal_slice {coronal_slice} is outside 0..{shape[1] - 1}.")
    return axial, coronal_slice


def _draw_panels(img: np.ndarray, rows: Sequence[tuple[str, np.ndarray]], axial: Sequence[int], coronal_slice: int | None,
                 sp: np.ndarray, limits: tuple[float, float], alpha: float, class_ids: Sequence[int], colors,
                 panel_size: float):
    """A figure with one row per ``(name, label map)`` of ``rows``: the ``axial`` slices, then the coronal slice
    (none when ``coronal_slice`` is None), organs blended over the windowed CT, in radiological orientation with
    the voxel aspect ratio; the first row's axial panels are marked R(ight) and A(nterior)."""
    depth = img.shape[2]
    coronal = coronal_slice is not None
    ncols = len(axial) + (1 if coronal else 0)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(panel_size * ncols, panel_size * len(rows) + 0.8), squeeze=False
    )
    for r, (row_name, row_lab) in enumerate(rows):
        for c, z in enumerate(axial):
            ax = axes[r][c]
            rgb = _blend(_window(img[:, :, z], limits), row_lab[:, :, z], alpha, class_ids, colors)
            ax.imshow(to_radiological_axial(rgb), aspect=float(sp[1] / sp[0]), interpolation="nearest")
            ax.set_title(f"axial z={z}/{depth - 1}", fontsize=9)
        if coronal:
            ax = axes[r][ncols - 1]
            y = int(coronal_slice)
            rgb = _blend(_window(img[:, y, :], limits), row_lab[:, y, :], alpha, class_ids, colors)
            ax.imshow(to_radiological_coronal(rgb), aspect=float(sp[2] / sp[0]), interpolation="nearest")
            ax.set_title(f"coronal y={y}/{img.shape[1] - 1}", fontsize=9)
        for c in range(ncols):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        if len(rows) > 1:
            axes[r][0].set_ylabel(row_name, fontsize=10)
    for ax in axes[0][: len(axial)]:
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="yellow", fontsize=8, va="center")
        ax.text(0.5, 0.97, "A", transform=ax.transAxes, color="yellow", fontsize=8, ha="center", va="top")
    return fig


def _add_legend(fig, class_names: Sequence[str], class_ids: Sequence[int], extra: Sequence[int], colors,
                alpha: float) -> bool:
    """A legend below the panels: the vocabulary's classes by name, then ``extra`` label values (not in the
    vocabulary) as "class N". Returns whether there is one (no classes to list: none)."""
    handles = [Patch(facecolor=_color(c, colors), alpha=max(alpha, 0.6), label=str(class_names[c])) for c in class_ids]
    handles += [Patch(facecolor=_color(c, colors), alpha=max(alpha, 0.6), label=f"class {c}") for c in extra]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    return bool(handles)


def _save_figure(fig, path: str | os.PathLike, dpi: int) -> None:
    """Write ``fig`` to ``path`` in the format of its extension (PNG without one), then close it."""
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    try:
        with atomic_write(path) as f:  # complete or absent: a full disk or a kill never leaves a truncated PNG
            fig.savefig(f, format=ext, dpi=dpi)
    finally:
        plt.close(fig)
