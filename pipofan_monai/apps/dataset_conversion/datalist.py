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

"""Datalists for the paper's public datasets in their native download layouts, so that
the downloads are used as they are, without renaming.

:func:`make_datalist` scans any subset of LiTS, KiTS19, MSD Task09 Spleen, BTCV, MSD Task07 Pancreas and MSD
Task03 Liver, pairs images with labels,
assigns five seeded, per-dataset balanced cross-validation folds, records the paper's BTCV split (cases
0032-0040 validation) and writes one JSON file::

    {
      "name": ..., "description": ..., "num_folds": 5, "seed": 0,
      "class_names": ["background", "liver", "kidney", "spleen"],
      "datasets": {"lits": {"root": "LiTS", "num_cases": 131, "num_test": 70}, ...},
      "training": [{"image": "LiTS/volume-0.nii", "label": "LiTS/segmentation-0.nii", "dataset": "lits",
                    "fold": 3, "case_id": "0"}, ...],
      "test": [{"image": "KiTS19/case_00210/imaging.nii.gz", "dataset": "kits19", "case_id": "case_00210"}, ...],
      "splits": {"btcv_paper": {"dataset": "btcv", "training": ["0001", ...], "validation": ["0032", ...]}}
    }

Paths are stored relative to ``relative_to`` (default: the folder of the JSON file, using ``..`` where needed,
POSIX separators), so a datalist can be moved together with the data or re-rooted with
``load_datalist(path, dataset_dir=...)``. ``case_id`` is the dataset's own id (unique within a dataset).
The file is also readable with ``monai.data.load_decathlon_datalist(path, data_list_key="training",
base_dir=...)`` (it prefixes only ``image``/``label``); do not use ``monai.auto3dseg.utils.datafold_read``,
which prefixes every string field (the dataset names too).

Problems (a dataset folder missing or empty, an image without label or label without image, duplicated cases,
a missing ``dataset.json``, unreadable headers, image/label shape or affine mismatch) are never skipped
silently: ``strict=True`` (default) raises one ``ValueError`` listing all of them by file name; ``strict=False``
logs them as warnings and leaves the affected cases out.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipofan_monai.utils import atomic_write_json

from pipofan_monai.vocabulary.datasets import CLASS_NAMES
from .layouts import _SCANNERS, _check_headers, _natural_key

__all__ = [
    "SOURCE_DATASETS",
    "BTCV_PAPER_VALIDATION",
    "make_datalist",
    "load_datalist",
    "select_fold",
    "select_split",
    "assign_folds",
    "header_shape",
    "check_training_items",
    "check_dataset_ids",
    "datalist_command",
]

logger = logging.getLogger(__name__)

SOURCE_DATASETS: tuple[str, ...] = ("lits", "kits19", "msd_spleen", "btcv", "msd_pancreas", "msd_liver")
"""Datasets :func:`make_datalist` can scan, in output order."""

BTCV_PAPER_VALIDATION: tuple[str, ...] = tuple(f"{i:04d}" for i in range(32, 41))
"""BTCV cases the authors used for validation (0032-0040); the other 21 labeled cases train."""

def assign_folds(case_ids: Sequence[str], num_folds: int = 5, seed: int = 0, salt: str = "") -> dict[str, int]:
    """Seeded, balanced fold assignment: fold sizes differ by at most one.

    Args:
        case_ids: unique case ids of ONE dataset (order does not matter: they are sorted first).
        num_folds: number of folds (>= 1).
        seed: random seed; the same ``(case_ids, num_folds, seed, salt)`` always gives the same folds.
        salt: mixed into the seed (the dataset name), so datasets get independent permutations.

    Returns:
        ``{case_id: fold}`` with folds in ``0..num_folds-1``.
    """
    if int(num_folds) < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}.")
    ids = sorted(set(case_ids), key=_natural_key)
    if len(ids) != len(case_ids):
        raise ValueError(f"case ids are not unique: {sorted(case_ids)}.")
    rng = np.random.default_rng([int(seed), zlib.crc32(salt.encode())])
    perm = rng.permutation(len(ids))
    return {ids[p]: i % int(num_folds) for i, p in enumerate(perm)}


def _rel(path: Path, base: Path | None) -> str:
    if base is None:
        return Path(os.path.abspath(path)).as_posix()
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()
    except ValueError:  # different drive on Windows
        return Path(os.path.abspath(path)).as_posix()


def make_datalist(
    output: str | os.PathLike | None,
    lits: str | os.PathLike | None = None,
    kits19: str | os.PathLike | None = None,
    msd_spleen: str | os.PathLike | None = None,
    btcv: str | os.PathLike | None = None,
    num_folds: int = 5,
    seed: int = 0,
    relative_to: str | os.PathLike | None = None,
    strict: bool = True,
    check_headers: bool = True,
    msd_pancreas: str | os.PathLike | None = None,
    msd_liver: str | os.PathLike | None = None,
    btcv_validation: Sequence[str] | None = None,
    name: str = "pipofan_monai datalist",
    description: str | None = None,
) -> dict:
    """Scan the given dataset roots, assign folds, write and return the datalist (format in the module doc).

    Args:
        output: JSON file to write (parent folders are created; written atomically); None: write nothing.
        lits: LiTS root (``volume-N.nii[.gz]`` / ``segmentation-N.nii[.gz]`` anywhere below it, e.g. in the
            two "Training Batch" folders; ``test-volume-N`` files become test items).
        kits19: KiTS19 root (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` anywhere below it; cases
            without a segmentation are the challenge's test cases and become test items, reported in the log).
        msd_spleen: MSD Task09 root (``dataset.json``, ``imagesTr/``, ``labelsTr/``; ``._*`` files ignored).
            The ``training`` list of ``dataset.json`` is used when present.
        btcv: BTCV root (``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz`` anywhere below it; unlabeled images
            in a folder whose name contains "test" become test items).
        num_folds: folds per dataset. Default 5.
        seed: fold seed. Default 0.
        relative_to: folder that paths are stored relative to; default the folder of ``output`` (absolute paths
            when ``output`` is None).
        strict: raise ``ValueError`` listing every problem (default), or log warnings and leave the affected
            cases out.
        check_headers: compare image/label NIfTI header shapes and affines (reads headers only). Default True.
        msd_pancreas: MSD Task07 Pancreas root (layout as ``msd_spleen``; labels 1 pancreas, 2 tumour).
        msd_liver: MSD Task03 Liver root (layout as ``msd_spleen``; labels 1 liver, 2 tumour).
        btcv_validation: BTCV case ids of the ``btcv_paper`` split's validation set; default 0032-0040.
            Missing ones are reported as a warning (a user may hold a subset of BTCV).
        name: datalist name.
        description: free text; a default one names the datasets, folds and seed.

    Returns:
        the datalist dict, exactly as written.

    Raises:
        ValueError: no dataset given, bad ``num_folds``, or (``strict``) any problem in the trees.
    """
    roots = _given_roots({"lits": lits, "kits19": kits19, "msd_spleen": msd_spleen, "btcv": btcv,
                          "msd_pancreas": msd_pancreas, "msd_liver": msd_liver})
    if int(num_folds) < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}.")
    out_path = Path(output).expanduser() if output not in (None, "") else None
    base = Path(relative_to).expanduser() if relative_to not in (None, "") else (out_path.parent if out_path else None)
    problems, training, test, datasets, splits = _scan_datasets(roots, base, num_folds, seed, check_headers,
                                                                btcv_validation)
    _report_problems(problems, strict)
    if description is None:
        description = _default_description(datasets, num_folds, seed, out_path, base)
    datalist = {"name": name, "description": description, "num_folds": int(num_folds), "seed": int(seed),
                "class_names": list(CLASS_NAMES), "datasets": datasets, "training": training, "test": test,
                "splits": splits}
    if out_path is not None:
        atomic_write_json(out_path, datalist)
        logger.info("wrote %s: %d training and %d test items", out_path, len(training), len(test))
    return datalist


def _given_roots(roots: Mapping[str, Any]) -> dict[str, Path]:
    """The dataset roots that were given (not None or ""), as paths; at least one."""
    roots = {k: Path(v).expanduser() for k, v in roots.items() if v not in (None, "")}
    if not roots:
        raise ValueError("give at least one dataset root (lits=, kits19=, msd_spleen=, btcv=, msd_pancreas=, "
                         "msd_liver=).")
    return roots


def _scan_datasets(roots: Mapping[str, Path], base: Path | None, num_folds: int, seed: int, check_headers: bool,
                   btcv_validation: Sequence[str] | None) -> tuple[list[str], list[dict], list[dict], dict, dict]:
    """``(problems, training items, test items, datasets, splits)`` of :func:`make_datalist`: every given dataset
    scanned in :data:`SOURCE_DATASETS` order, its cases in folds, the BTCV split when BTCV is given."""
    problems: list[str] = []
    training: list[dict] = []
    test: list[dict] = []
    datasets: dict[str, dict] = {}
    splits: dict[str, dict] = {}
    for ds in SOURCE_DATASETS:
        if ds not in roots:
            continue
        root = roots[ds]
        if not root.is_dir():
            problems.append(f"{ds} root is not a folder: {root}")
            continue
        ds_training, ds_test = _scan_dataset(ds, root, base, num_folds, seed, check_headers, problems)
        training += ds_training
        test += ds_test
        datasets[ds] = {"root": _rel(root, base), "num_cases": len(ds_training), "num_test": len(ds_test)}
        if ds == "btcv":
            splits["btcv_paper"] = _btcv_paper_split([it["case_id"] for it in ds_training], btcv_validation, root)
    return problems, training, test, datasets, splits


def _scan_dataset(ds: str, root: Path, base: Path | None, num_folds: int, seed: int, check_headers: bool,
                  problems: list[str]) -> tuple[list[dict], list[dict]]:
    """``(training items, test items)`` of one dataset's tree, with its folds; its problems are added to
    ``problems``."""
    ds_problems: list[str] = []
    cases, test_cases = _SCANNERS[ds](root, ds_problems)
    if check_headers:
        cases = _check_headers(ds, cases, ds_problems)
    if not cases:
        ds_problems.append(f"{ds}: no labeled cases found under {root}")
    problems += ds_problems
    folds = assign_folds([c.case_id for c in cases], num_folds, seed, salt=ds)
    if 0 < len(cases) < num_folds:
        logger.warning("%s has %d labeled cases for %d folds: some folds are empty.", ds, len(cases), num_folds)
    training = [{"image": _rel(c.image, base), "label": _rel(c.label, base), "dataset": ds,
                 "fold": folds[c.case_id], "case_id": c.case_id} for c in cases]
    test = [{"image": _rel(c.image, base), "dataset": ds, "case_id": c.case_id} for c in test_cases]
    return training, test


def _btcv_paper_split(ids: Sequence[str], btcv_validation: Sequence[str] | None, root: Path) -> dict:
    """The ``btcv_paper`` split of the BTCV case ``ids``: validation ``btcv_validation`` (default the paper's
    0032-0040), training the others; validation cases not among ``ids`` are named in a warning."""
    wanted = [str(v) for v in (btcv_validation if btcv_validation is not None else BTCV_PAPER_VALIDATION)]
    wanted_int = {int(v) for v in wanted}
    val = [i for i in ids if int(i) in wanted_int]
    missing = sorted(wanted_int - {int(i) for i in ids})
    if missing:
        logger.warning("BTCV split 'btcv_paper': validation case(s) %s not found under %s.",
                       ", ".join(f"{m:04d}" for m in missing), root)
    return {"dataset": "btcv", "training": [i for i in ids if int(i) not in wanted_int], "validation": val}


def _report_problems(problems: Sequence[str], strict: bool) -> None:
    """Raise one ``ValueError`` listing every problem (``strict``), or log them as one warning."""
    if problems:
        msg = f"{len(problems)} problem(s) while scanning the datasets:\n  " + "\n  ".join(problems)
        if strict:
            raise ValueError(msg + "\n(pass strict=False to leave these cases out with a warning)")
        logger.warning(msg)


def _default_description(datasets: Mapping[str, dict], num_folds: int, seed: int, out_path: Path | None,
                         base: Path | None) -> str:
    """The datalist's description when none is given: its datasets and case counts, folds, seed and path base."""
    counts = ", ".join(f"{k} ({v['num_cases']} cases)" for k, v in datasets.items())
    where = "the folder of this file" if out_path is not None and base == out_path.parent else str(base or "/")
    return (f"PIPO-FAN datalist: {counts}; {num_folds} folds per dataset, seed {seed}; "
            f"paths relative to {where}")


_PATH_KEYS = ("image", "label")


def load_datalist(
    path_or_dict: str | os.PathLike | Mapping,
    dataset_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> dict:
    """Read a datalist and resolve its paths.

    Args:
        path_or_dict: JSON file written by :func:`make_datalist` (or the demo generator), or such a dict.
        dataset_dir: folder the relative paths are resolved against; default the JSON file's folder (the
            current directory for a dict).
        check_files: raise ``FileNotFoundError`` listing missing image/label files. Default True.

    Returns:
        a new dict with absolute ``image``/``label`` paths in ``training`` and ``test`` items and absolute
        dataset roots.

    Raises:
        ValueError: malformed datalist (missing ``training``, items without ``image``/``label``, bad folds).
        FileNotFoundError: missing files (with ``check_files``).
    """
    if isinstance(path_or_dict, Mapping):
        dl = copy.deepcopy(dict(path_or_dict))
        base = Path(dataset_dir).expanduser() if dataset_dir else Path.cwd()
        src = "<dict>"
    else:
        src = str(path_or_dict)
        p = Path(path_or_dict).expanduser()
        try:
            dl = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"datalist not found: {p}") from None
        except ValueError as e:
            raise ValueError(f"datalist {p} is not valid JSON: {e}") from e
        base = Path(dataset_dir).expanduser() if dataset_dir else p.parent
    if not isinstance(dl, dict) or not isinstance(dl.get("training"), list):
        found = sorted(dl) if isinstance(dl, dict) else type(dl)
        raise ValueError(f"datalist {src} needs a 'training' list; keys found: {found}.")
    num_folds = int(dl.get("num_folds", 5))
    for i, item in enumerate(dl["training"]):
        if not isinstance(item, dict) or any(not isinstance(item.get(k), str) for k in _PATH_KEYS):
            raise ValueError(f"datalist {src}: training item {i} needs string 'image' and 'label' paths, got {item!r}.")
        if "fold" in item and (not isinstance(item["fold"], int) or not 0 <= item["fold"] < num_folds):
            raise ValueError(f"datalist {src}: training item {i} ({item.get('case_id')}) has fold {item['fold']!r} "
                             f"outside 0..{num_folds - 1}.")
    test = dl.get("test", [])
    if not isinstance(test, list) or any(not isinstance(t, dict) or not isinstance(t.get("image"), str) for t in test):
        raise ValueError(f"datalist {src}: 'test' must be a list of items with an 'image' path.")

    def resolve(s: str) -> str:
        q = Path(s).expanduser()
        return str(q if q.is_absolute() else Path(os.path.normpath(base / q)))

    missing = []
    for item in dl["training"] + test:
        for k in _PATH_KEYS:
            if isinstance(item.get(k), str):
                item[k] = resolve(item[k])
                if check_files and not os.path.exists(item[k]):
                    missing.append(item[k])
    for entry in (dl.get("datasets") or {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("root"), str):
            entry["root"] = resolve(entry["root"])
    if missing:
        raise FileNotFoundError(f"datalist {src}: {len(missing)} file(s) missing under {base}, e.g.:\n  "
                                + "\n  ".join(missing[:10]) + "\n(pass dataset_dir= to re-root the datalist)")
    return dl


def _items(items: Sequence[Mapping] | Mapping) -> list:
    if isinstance(items, Mapping):
        if "training" not in items:
            raise ValueError(
                f"expected a datalist with a 'training' list or a list of items, got keys {sorted(items)}."
            )
        return list(items["training"])
    return list(items)


def select_fold(
    items: Sequence[Mapping] | Mapping, fold: int, num_folds: int = 5, datasets: Sequence[str] | None = None
) -> tuple[list, list]:
    """Cross-validation split: items of fold ``fold`` validate, all others train (each dataset has its own folds).

    Args:
        items: training items (each with an integer ``fold``) or a datalist dict (its ``training`` list).
        fold: validation fold, ``0..num_folds-1``.
        num_folds: number of folds. Default 5.
        datasets: keep only items of these datasets (by ``dataset``); None keeps all.

    Returns:
        ``(train, val)`` lists in datalist order.

    Raises:
        ValueError: ``fold`` out of range, or an item without a valid ``fold``.
    """
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < int(num_folds):
        raise ValueError(f"fold must be an integer in 0..{int(num_folds) - 1}, got {fold!r}.")
    train, val = [], []
    for item in _items(items):
        if datasets is not None and item.get("dataset") not in datasets:
            continue
        f = item.get("fold")
        if not isinstance(f, (int, np.integer)) or not 0 <= int(f) < int(num_folds):
            name = item.get("case_id", item.get("image"))
            raise ValueError(f"item {name} has fold {f!r}, expected 0..{int(num_folds) - 1}.")
        (val if int(f) == int(fold) else train).append(item)
    return train, val


def select_split(
    datalist: Mapping, split: str = "btcv_paper", datasets: Sequence[str] | None = None
) -> tuple[list, list]:
    """Named split (e.g. the paper's BTCV 21/9 split): the split dataset's cases go to train/validation as
    listed; items of the other datasets all go to training (the paper's "BTCV + LiTS + ..." setting).

    Args:
        datalist: datalist dict with ``splits`` and ``training``.
        split: split name. Default ``"btcv_paper"``.
        datasets: keep only these datasets (e.g. ``["btcv"]`` for BTCV alone); None keeps all.

    Returns:
        ``(train, val)`` lists in datalist order.

    Raises:
        ValueError: unknown split name (the message lists the available ones).
    """
    splits = datalist.get("splits") or {}
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; available: {sorted(splits)}.")
    spec = splits[split]
    ds = spec.get("dataset")
    tr_ids, val_ids = set(map(str, spec.get("training", []))), set(map(str, spec.get("validation", [])))
    train, val = [], []
    for item in _items(datalist):
        name = item.get("dataset")
        if datasets is not None and name not in datasets:
            continue
        if name != ds:
            train.append(item)
        elif str(item.get("case_id")) in val_ids:
            val.append(item)
        elif str(item.get("case_id")) in tr_ids:
            train.append(item)
    return train, val


def header_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The voxel grid shape of an image file from its header only (no voxel data read), or None when it cannot be
    told cheaply (a DICOM series folder, another format, an unreadable header: those are checked when loaded).

    Reads NIfTI (nibabel header), NRRD/NHDR (``sizes:``) and MetaImage MHA/MHD (``DimSize``) headers.
    """
    p = os.fspath(path)
    low = p.lower()
    try:
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            return tuple(int(v) for v in nib.load(p).header.get_data_shape())
        if low.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
            key = b"sizes:" if low.endswith((".nrrd", ".nhdr")) else b"dimsize"
            with open(p, "rb") as f:
                for _ in range(200):  # header lines; the data follow an empty line (NRRD) or ElementDataFile
                    line = f.readline(4096)
                    if not line or not line.strip():
                        break
                    low_line = line.strip().lower()
                    if low_line.startswith(key):
                        values = low_line.split(b"=", 1)[1] if key == b"dimsize" else low_line[len(key):]
                        return tuple(int(v) for v in values.split())
    except Exception:  # unreadable header: LoadCTd reports it with the file name when the item is loaded
        return None
    return None


def check_dataset_ids(
    datasets: Sequence[str] | str | None, items: Sequence[Mapping], dataset_key: str = "dataset"
) -> list[str] | None:
    """Validate a dataset selection (``--datasets``) against the datalist's items.

    Every requested id must name a dataset of the datalist (aliases of the built-in datasets, e.g. ``"kits"`` for
    ``"kits19"``, are resolved); a single string is one id.

    Args:
        datasets: the selection, or None (all datasets).
        items: the datalist's items.
        dataset_key: item key of the dataset id.

    Returns:
        the selection as canonical ids in the datalist, or None.

    Raises:
        ValueError: an id that no item has, listing the datalist's datasets and the known dataset ids.
    """
    if datasets is None:
        return None
    from pipofan_monai.vocabulary.datasets import BUILTIN_DATASETS, DATASET_ALIASES

    requested = [datasets] if isinstance(datasets, str) else list(datasets)
    present = sorted({str(it.get(dataset_key)) for it in items if it.get(dataset_key) not in (None, "")})
    out, unknown = [], []
    for name in requested:
        key = str(name)
        if key not in present:
            key = DATASET_ALIASES.get(key.lower(), key.lower())
        if key in present:
            out.append(key)
        else:
            unknown.append(name)
    if unknown or not requested:
        known = sorted(set(BUILTIN_DATASETS) | set(DATASET_ALIASES))
        raise ValueError(
            f"unknown dataset id(s) {unknown} in datasets={requested!r}: the datalist has {present}"
            + (f" (known dataset ids: {known})" if unknown else "") + "."
        )
    return out


def check_training_items(
    items: Sequence[Mapping],
    min_slices: int = 1,
    dataset_key: str = "dataset",
    what: str = "training",
) -> None:
    """Start-up checks of the items a training uses, so that problems are reported before caching and epoch 1.

    - ``dataset`` key: either every item names its source dataset or none does. Items without one are fully
      labeled data in the global convention (0 background, 1 liver, 2 kidney, 3 spleen), as
      :class:`pipofan_monai.preprocessing.MapDatasetLabelsd` documents; a list that mixes both is refused (it also
      cannot be collated into batches): give those items their dataset id, or a ``dataset_table`` entry of
      their own.
    - size: every image whose header can be read cheaply (NIfTI, NRRD, MHA; see :func:`header_shape`) has at
      least ``min_slices`` voxels along each spatial axis (the 2.5D slab needs ``2 * context + 1`` slices).

    Args:
        items: item dicts with ``image`` (and ``label``) paths.
        min_slices: the fewest slices a volume may have. Default 1.
        dataset_key: item key of the dataset id. Default ``"dataset"``.
        what: name of the list for messages. Default ``"training"``.

    Raises:
        ValueError: listing every offending item by index and file.
    """
    def describe(i: int, item: Mapping) -> str:
        return f"item {i} ({item.get('case_id', item.get('image'))})"

    missing = [i for i, it in enumerate(items) if it.get(dataset_key) in (None, "")]
    if missing and len(missing) < len(items):
        shown = ", ".join(describe(i, items[i]) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{len(missing)} of {len(items)} {what} items have no {dataset_key!r} key: {shown}. Either every item "
            f"names its source dataset (e.g. 'lits', 'btcv') or none does (then all are fully labeled in the global "
            "convention 0 background, 1 liver, 2 kidney, 3 spleen); add the key, or a dataset_table entry for "
            "your own data."
        )
    if int(min_slices) > 1:
        thin = []
        for i, item in enumerate(items):
            shape = header_shape(item["image"]) if isinstance(item.get("image"), (str, os.PathLike)) else None
            if shape is not None and len(shape) >= 3 and min(shape[:3]) < int(min_slices):
                thin.append(f"{item['image']} (shape {shape})")
            elif shape is not None and len(shape) < 3:
                thin.append(f"{item['image']} (shape {shape}, not a 3D volume)")
        if thin:
            raise ValueError(
                f"{len(thin)} {what} volume(s) have fewer than {int(min_slices)} slices along an axis (a 2.5D "
                f"sample needs {int(min_slices)} adjacent slices): " + "; ".join(thin[:10])
                + ("; ..." if len(thin) > 10 else "") + ". Remove them from the datalist."
            )


def datalist_command(
    output: str = "datalist.json",
    lits: str | None = None,
    kits19: str | None = None,
    msd_spleen: str | None = None,
    btcv: str | None = None,
    num_folds: int = 5,
    seed: int = 0,
    relative_to: str | None = None,
    strict: bool = True,
    msd_pancreas: str | None = None,
    msd_liver: str | None = None,
) -> str:
    """CLI entry (``python -m pipofan_monai datalist --btcv /data/BTCV/RawData/Training --lits /data/LiTS ...``):
    scan the datasets, write the datalist JSON and print a summary. Arguments as in :func:`make_datalist`.

    Returns:
        a one-line summary (fire prints it).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dl = make_datalist(output, lits=lits, kits19=kits19, msd_spleen=msd_spleen, btcv=btcv, num_folds=num_folds,
                       seed=seed, relative_to=relative_to, strict=strict, msd_pancreas=msd_pancreas,
                       msd_liver=msd_liver)
    counts = ", ".join(f"{k}: {v['num_cases']} labeled + {v['num_test']} test" for k, v in dl["datasets"].items())
    return f"wrote {output} ({counts}; {dl['num_folds']} folds, seed {dl['seed']})"
