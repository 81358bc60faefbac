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

"""Built-in synthetic demo dataset: abdominal CT phantoms split into four partially labeled "sources" that
mirror the paper's datasets, each written in that dataset's own file layout and label convention.

.. warning::
    The volumes are SYNTHETIC (geometric phantoms with realistic Hounsfield units and noise). They exist so that
    the bundle, the CLI and the tests run on a fresh machine with no data configured: smoke tests, demos,
    tutorials. They say nothing about accuracy on real CT; never report numbers obtained on them as results.

Anatomy (RAS arrays: x index grows toward the patient's Right, y toward Anterior, z toward Superior): air
outside the body (-1000 HU), body outline varying along z with subcutaneous fat (~-100) and an abdominal
wall muscle layer (~+50), intraperitoneal fat (~-90), vertebral body with cortex, spinal canal and spinous
process, ribs in the upper slices (+450..+700), paraspinal and psoas muscles, aorta (contrast, ~+200) and
IVC, liver (+70..+100, patient's right, right and left lobes, brighter portal vessels), gallbladder (~+10),
spleen (+50..+70, patient's left, posterior), stomach with a gas cap, both kidneys posterior beside the spine
with a contrast cortex (~+180), medulla (~+35) and sinus fat, bowel loops with gas (-900) or fluid, Gaussian
correlated noise (sigma 10-18 HU) and a slight partial-volume blur. Sizes, positions, shapes (smooth
low-order deformations), contrast phase and body habitus vary with the seed.

Sources (folder, layout and label convention of the real dataset they mimic):

============  ==========================================  ===============================================
source        layout                                      labels
============  ==========================================  ===============================================
btcv          ``btcv/img/imgNNNN.nii.gz``, ``label/...``  1 spleen, 2 R kidney, 3 L kidney, 4 gallbladder,
                                                          6 liver, 7 stomach, 8 aorta, 9 IVC (all organs)
lits          ``lits/volume-N.nii.gz``, ``segmentation``  1 liver, 2 liver tumour (hypodense blobs)
kits19        ``kits19/case_NNNNN/imaging.nii.gz`` (slice  1 kidney, 2 kidney tumour
              axis first, as KiTS19)
msd_spleen    ``msd_spleen/imagesTr``, ``labelsTr``,       1 spleen
              ``dataset.json`` (LPS-like storage)
test          ``test/imagesTs``, ``test/labelsTs``        global classes: 1 liver, 2 kidney, 3 spleen
                                                          (+ 4 pancreas with ``pancreas=True``)
msd_pancreas  ``msd_pancreas/imagesTr``, ``labelsTr``,     1 pancreas (only with ``pancreas=True``)
              ``dataset.json`` (MSD Task07 layout)
============  ==========================================  ===============================================

``pancreas=True`` adds a fifth organ: a pancreas (~+100 HU, anterior to the left kidney and the aorta, from
the duodenum to the splenic hilum) is painted into every phantom, labeled by the ``msd_pancreas`` source and by
btcv (value 11, as in BTCV), and the test labels and the datalist's ``class_names`` use the five-class
vocabulary ``background, liver, kidney, spleen, pancreas`` -- a K = 5 run end to end. Without it the output is
byte-identical to the four-source dataset.

The datalist (``datalist.json``, same format as :func:`pipofan_monai.apps.dataset_conversion.datalist.make_datalist`) has
five folds per source, a ``btcv_paper`` split analogue (the last third of the btcv cases validate) and a ``test``
list of fully labeled held-out cases in the global convention (no ``dataset`` key).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipofan_monai.utils import atomic_write, atomic_write_json

from .datalist import make_datalist
from .phantom import (
    _AORTA,
    _GB,
    _IVC,
    _KTUM,
    _LIVER,
    _LKID,
    _LTUM,
    _PANC,
    _RKID,
    _SPLEEN,
    _STOMACH,
    DEFAULT_DEMO_SHAPE,
    synthesize_case,
)

__all__ = [
    "DEMO_SOURCES",
    "DEMO_VERSION",
    "DEFAULT_DEMO_SHAPE",
    "DEFAULT_NUM_CASES",
    "PANCREAS_SOURCE",
    "PANCREAS_CLASS_NAMES",
    "synthesize_case",
    "generate_demo_dataset",
    "ensure_demo_dataset",
    "default_demo_dir",
    "demo_command",
]

logger = logging.getLogger(__name__)

DEMO_VERSION = 1
"""Generator version; part of the manifest, so cached datasets of an older generator are regenerated."""

DEMO_SOURCES: tuple[str, ...] = ("btcv", "lits", "kits19", "msd_spleen")
DEFAULT_NUM_CASES: dict[str, int] = {"btcv": 8, "lits": 8, "kits19": 8, "msd_spleen": 8}
MANIFEST = "demo_manifest.json"
# the generator's id in the manifest is this module's name; the names it had in earlier layouts (same generator,
# same data) are accepted, so a demo folder written by an earlier version is recognised instead of refused
_GENERATOR_NAMES = (__name__, "pipofan_monai.apps.dataset_conversion.demo", "pipofan_monai.data.demo")

#: the optional fifth-organ source (``pancreas=True``) and the five-class vocabulary of its datalist
PANCREAS_SOURCE = "msd_pancreas"
PANCREAS_CLASS_NAMES: tuple[str, ...] = ("background", "liver", "kidney", "spleen", "pancreas")
# seed stream index per source ([seed, index, case]); fixed so that adding a source changes no other case
_SOURCE_INDEX = {"btcv": 0, "lits": 1, "kits19": 2, "msd_spleen": 3, "test": 4, PANCREAS_SOURCE: 5}
# internal id -> label value, per source convention
_CONVENTIONS: dict[str, dict[int, int]] = {
    "btcv": {_SPLEEN: 1, _RKID: 2, _LKID: 3, _GB: 4, _LIVER: 6, _STOMACH: 7, _AORTA: 8, _IVC: 9, _LTUM: 6, _PANC: 11},
    "lits": {_LIVER: 1, _LTUM: 2},
    "kits19": {_RKID: 1, _LKID: 1, _KTUM: 2},
    "msd_spleen": {_SPLEEN: 1},
    "test": {_LIVER: 1, _LTUM: 1, _RKID: 2, _LKID: 2, _KTUM: 2, _SPLEEN: 3, _PANC: 4},
    PANCREAS_SOURCE: {_PANC: 1},
}
# storage orientation per source (arrays are generated in RAS)
_AXCODES = {"btcv": ("R", "A", "S"), "lits": ("R", "A", "S"), "kits19": ("I", "P", "L"),
            "msd_spleen": ("L", "P", "S"), "test": ("R", "A", "S"), PANCREAS_SOURCE: ("L", "P", "S")}
_TUMOURS = {"lits": "liver", "kits19": "kidney"}

_README = """SYNTHETIC DEMO DATA -- pipofan_monai built-in demo dataset
=========================================================

Everything in this folder was generated by pipofan_monai.apps.dataset_conversion.demo (generator version {version}, seed {seed}).
The CT volumes are geometric phantoms of the abdomen with realistic Hounsfield units and noise; they are NOT
patient data.

Use them for smoke tests, demos and tutorials only (checking that training, inference, export and the
tooling run end to end). Results on this data say nothing about segmentation accuracy on real CT: never
report them as such.

Layout: each "source" folder mimics one public dataset of the PIPO-FAN paper in its own file layout and
label convention (btcv: fully labeled, 13-label convention; lits: liver + tumour; kits19: kidney + tumour;
msd_spleen: spleen); test/ holds fully labeled held-out cases in the global convention
(0 background, 1 liver, 2 kidney, 3 spleen). datalist.json lists everything with five folds per source.
Regenerate with: python -m pipofan_monai demo --root <folder> --overwrite
"""


def _convert(organs: np.ndarray, source: str) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for k, v in _CONVENTIONS[source].items():
        lut[k] = v
    return lut[organs]


def _save(arr: np.ndarray, affine: np.ndarray, axcodes: Sequence[str], path: Path) -> None:
    import nibabel as nib

    cur = nib.orientations.io_orientation(affine)
    xform = nib.orientations.ornt_transform(cur, nib.orientations.axcodes2ornt(tuple(axcodes)))
    data = np.ascontiguousarray(nib.orientations.apply_orientation(arr, xform))
    aff = affine @ nib.orientations.inv_ornt_aff(xform, arr.shape)
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _case_paths(root: Path, source: str, i: int) -> tuple[Path, Path]:
    if source == "btcv":
        return root / "btcv" / "img" / f"img{i + 1:04d}.nii.gz", root / "btcv" / "label" / f"label{i + 1:04d}.nii.gz"
    if source == "lits":
        return root / "lits" / f"volume-{i}.nii.gz", root / "lits" / f"segmentation-{i}.nii.gz"
    if source == "kits19":
        d = root / "kits19" / f"case_{i:05d}"
        return d / "imaging.nii.gz", d / "segmentation.nii.gz"
    if source == "msd_spleen":
        return (root / "msd_spleen" / "imagesTr" / f"spleen_{i + 1}.nii.gz",
                root / "msd_spleen" / "labelsTr" / f"spleen_{i + 1}.nii.gz")
    if source == PANCREAS_SOURCE:
        return (root / PANCREAS_SOURCE / "imagesTr" / f"pancreas_{i + 1:03d}.nii.gz",
                root / PANCREAS_SOURCE / "labelsTr" / f"pancreas_{i + 1:03d}.nii.gz")
    name = f"demo_{i + 1:03d}.nii.gz"
    return root / "test" / "imagesTs" / name, root / "test" / "labelsTs" / name


def _num_cases(num_cases_per_source: int | Sequence[int] | Mapping[str, int] | None,
               pancreas: bool = False) -> dict[str, int]:
    sources = DEMO_SOURCES + ((PANCREAS_SOURCE,) if pancreas else ())
    if num_cases_per_source is None:
        out = {s: DEFAULT_NUM_CASES.get(s, 8) for s in sources}
    elif isinstance(num_cases_per_source, Mapping):
        unknown = set(num_cases_per_source) - set(sources)
        if unknown:
            hint = f" ({PANCREAS_SOURCE} needs pancreas=True)" if PANCREAS_SOURCE in unknown else ""
            raise ValueError(f"unknown demo sources {sorted(unknown)}; known: {sources}{hint}.")
        out = {s: int(num_cases_per_source.get(s, 0)) for s in sources}
    elif isinstance(num_cases_per_source, (int, np.integer)):
        out = {s: int(num_cases_per_source) for s in sources}
    else:
        vals = list(num_cases_per_source)
        if len(vals) != len(sources):
            raise ValueError(f"num_cases_per_source needs {len(sources)} values {sources}, got {vals}.")
        out = dict(zip(sources, (int(v) for v in vals)))
    if any(v < 0 for v in out.values()) or not any(out.values()):
        raise ValueError(f"case counts must be >= 0 with at least one case, got {out}.")
    return out


def _params(counts: Mapping[str, int], num_test: int, shape: Sequence[int], seed: int, pancreas: bool = False) -> dict:
    params = {"version": DEMO_VERSION, "num_cases_per_source": dict(counts), "num_test": int(num_test),
              "shape": [int(s) for s in shape], "seed": int(seed)}
    if pancreas:  # recorded only when set, so existing four-source datasets stay valid caches
        params["pancreas"] = True
    return params


def _read_manifest(root: Path) -> dict | None:
    try:
        m = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("generator") in _GENERATOR_NAMES else None


def _write_tree(root: Path, params: dict) -> None:
    """Generate every case of the dataset described by ``params`` into ``root`` (must be empty)."""
    counts, shape, seed = params["num_cases_per_source"], params["shape"], params["seed"]
    pancreas = bool(params.get("pancreas", False))
    for source in list(DEMO_SOURCES) + ["test"] + ([PANCREAS_SOURCE] if pancreas else []):
        n = params["num_test"] if source == "test" else counts[source]
        for i in range(n):
            img, organs, affine = synthesize_case([seed, _SOURCE_INDEX[source], i], shape,
                                                  tumour=_TUMOURS.get(source), pancreas=pancreas)
            ip, lp = _case_paths(root, source, i)
            _save(img, affine, _AXCODES[source], ip)
            _save(_convert(organs, source), affine, _AXCODES[source], lp)
    if counts["msd_spleen"]:
        atomic_write_json(root / "msd_spleen" / "dataset.json", {
            "name": "Spleen (synthetic demo)", "description": "SYNTHETIC phantom, MSD Task09 layout",
            "labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"},
            "numTraining": counts["msd_spleen"], "numTest": 0, "test": [],
            "training": [{"image": f"./imagesTr/spleen_{i + 1}.nii.gz", "label": f"./labelsTr/spleen_{i + 1}.nii.gz"}
                         for i in range(counts["msd_spleen"])],
        })
    if counts.get(PANCREAS_SOURCE):
        n = counts[PANCREAS_SOURCE]
        atomic_write_json(root / PANCREAS_SOURCE / "dataset.json", {
            "name": "Pancreas (synthetic demo)", "description": "SYNTHETIC phantom, MSD Task07 layout",
            "labels": {"0": "background", "1": "pancreas", "2": "cancer"}, "modality": {"0": "CT"},
            "numTraining": n, "numTest": 0, "test": [],
            "training": [{"image": f"./imagesTr/pancreas_{i + 1:03d}.nii.gz",
                          "label": f"./labelsTr/pancreas_{i + 1:03d}.nii.gz"} for i in range(n)],
        })
    roots = {s: (root / s if counts.get(s) else None) for s in list(DEMO_SOURCES) + [PANCREAS_SOURCE]}
    nb = counts["btcv"]
    btcv_val = [f"{i + 1:04d}" for i in range(nb - (nb // 3), nb)] if nb else []
    dl = make_datalist(
        root / "datalist.json", lits=roots["lits"], kits19=roots["kits19"], msd_spleen=roots["msd_spleen"],
        btcv=roots["btcv"], msd_pancreas=roots[PANCREAS_SOURCE], num_folds=5, seed=seed, strict=True,
        btcv_validation=btcv_val,
        name="pipofan_monai synthetic demo",
        description=("SYNTHETIC abdominal CT phantoms for smoke tests and demos only -- not for accuracy claims. "
                     "Four partially labeled sources in the label conventions of BTCV, LiTS, KiTS19 and MSD Spleen; "
                     "'test' items are fully labeled in the global convention (no 'dataset' key); the 'btcv_paper' "
                     "split is an analogue (last third of the btcv cases validate). Paths are relative to this file."),
    )
    dl["test"] = [{"image": _case_paths(Path("."), "test", i)[0].as_posix(),
                   "label": _case_paths(Path("."), "test", i)[1].as_posix(), "case_id": f"demo_{i + 1:03d}"}
                  for i in range(params["num_test"])]
    if pancreas:
        dl["class_names"] = list(PANCREAS_CLASS_NAMES)
        dl["description"] += (" With a fifth organ, the pancreas (msd_pancreas source and btcv label 11); "
                              "test labels in the five-class vocabulary " + ", ".join(PANCREAS_CLASS_NAMES) + ".")
    dl["synthetic"] = True
    atomic_write_json(root / "datalist.json", dl)
    with atomic_write(root / "README.txt", "w") as f:
        f.write(_README.format(version=DEMO_VERSION, seed=seed))
    atomic_write_json(root / MANIFEST, {"generator": __name__, "complete": True, "params": params,
                                  "synthetic": True, "note": "synthetic demo data; not for accuracy claims"})


def generate_demo_dataset(
    root: str | os.PathLike,
    num_cases_per_source: int | Sequence[int] | Mapping[str, int] | None = None,
    num_test: int = 4,
    shape: Sequence[int] = DEFAULT_DEMO_SHAPE,
    seed: int = 0,
    overwrite: bool = False,
    pancreas: bool = False,
) -> Path:
    """Generate the synthetic demo dataset into ``root`` and return the path of its ``datalist.json``.

    The tree is written into a temporary sibling folder and renamed into place once complete, so ``root`` never
    holds a half-written dataset (a concurrent generator of the same parameters is tolerated).

    Args:
        root: target folder; must not exist, be empty, or (with ``overwrite``) hold a demo dataset written by
            this generator. A folder with other content is never touched.
        num_cases_per_source: cases per source: an int for all, a 4-sequence in :data:`DEMO_SOURCES` order
            (btcv, lits, kits19, msd_spleen) or a mapping; default 8 each.
        num_test: fully labeled held-out cases (global convention). Default 4.
        shape: ``(X, Y, Z)`` voxels per volume (RAS). Default (128, 128, 40): about 2.7 mm in-plane, 5 mm slices.
        seed: random seed; the same parameters give byte-identical arrays.
        overwrite: replace an existing demo dataset in ``root``.
        pancreas: add the fifth organ (see the module doc): a pancreas in every phantom and an ``msd_pancreas``
            source (its case count from ``num_cases_per_source``: a 5-sequence, a mapping key, or the int).

    Raises:
        ValueError: bad parameters, or ``root`` holds other files / an existing dataset without ``overwrite``.
    """
    root = Path(root).expanduser()
    counts = _num_cases(num_cases_per_source, pancreas)
    if int(num_test) < 0:
        raise ValueError(f"num_test must be >= 0, got {num_test}.")
    params = _params(counts, num_test, shape, seed, pancreas)
    if len(shape) != 3 or min(int(s) for s in shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {shape}.")
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"demo root {root} exists and is not a folder.")
        if any(root.iterdir()):
            if _read_manifest(root) is None:
                raise ValueError(
                    f"refusing to write the demo dataset into {root}: the folder holds files that were not "
                    "written by the demo generator. Choose an empty or new folder."
                )
            if not overwrite:
                raise ValueError(f"{root} already holds a demo dataset; pass overwrite=True to regenerate it.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_tree(tmp, params)
        if root.exists():
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(root, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # someone else finished first
            m = _read_manifest(root)
            if m is None or m.get("params") != params:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("generated the synthetic demo dataset in %s", root)
    return root / "datalist.json"


def default_demo_dir() -> Path:
    """``$PIPOFAN_DEMO_DIR`` if set, else ``~/.cache/pipofan_monai/demo``."""
    env = os.environ.get("PIPOFAN_DEMO_DIR", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pipofan_monai" / "demo"


def ensure_demo_dataset(
    root: str | os.PathLike | None = None,
    num_cases_per_source: int | Sequence[int] | Mapping[str, int] | None = None,
    num_test: int = 4,
    shape: Sequence[int] = DEFAULT_DEMO_SHAPE,
    seed: int = 0,
    pancreas: bool = False,
) -> Path:
    """Return the demo ``datalist.json``, generating the dataset on first use.

    Reuses ``root`` when its manifest records a complete dataset with the same parameters and generator version;
    regenerates it (atomically) when the folder holds a demo dataset with other parameters; refuses (``ValueError``)
    a non-empty folder not written by the generator.

    Args:
        root: dataset folder; default :func:`default_demo_dir` (``$PIPOFAN_DEMO_DIR`` or
            ``~/.cache/pipofan_monai/demo``).
        num_cases_per_source, num_test, shape, seed, pancreas: as in :func:`generate_demo_dataset`.
    """
    root = Path(root).expanduser() if root not in (None, "") else default_demo_dir()
    params = _params(_num_cases(num_cases_per_source, pancreas), num_test, shape, seed, pancreas)
    m = _read_manifest(root)
    if m is not None and m.get("complete") and m.get("params") == params and (root / "datalist.json").is_file():
        return root / "datalist.json"
    return generate_demo_dataset(root, num_cases_per_source, num_test, shape, seed, overwrite=m is not None,
                                 pancreas=pancreas)


def demo_command(
    root: str | None = None,
    num_cases: int = 8,
    num_test: int = 4,
    shape: Sequence[int] = DEFAULT_DEMO_SHAPE,
    seed: int = 0,
    overwrite: bool = False,
    pancreas: bool = False,
) -> str:
    """CLI entry (``python -m pipofan_monai demo --root /tmp/demo``): generate (or reuse) the synthetic demo
    dataset and return the path of its datalist. ``overwrite`` forces regeneration of an existing demo folder;
    ``--pancreas`` adds the fifth organ (an ``msd_pancreas`` source; five-class test labels)."""
    if overwrite:
        root_path = Path(root).expanduser() if root else default_demo_dir()
        return str(generate_demo_dataset(root_path, num_cases, num_test, tuple(shape), seed, overwrite=True,
                                         pancreas=pancreas))
    return str(ensure_demo_dataset(root, num_cases, num_test, tuple(shape), seed, pancreas=pancreas))
