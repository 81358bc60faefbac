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
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipofan_monai.utils import atomic_write, atomic_write_json

from .datalist import make_datalist

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
DEFAULT_DEMO_SHAPE: tuple[int, int, int] = (128, 128, 40)
MANIFEST = "demo_manifest.json"

# internal organ ids of the phantom
_LIVER, _SPLEEN, _RKID, _LKID, _GB, _STOMACH, _AORTA, _IVC, _LTUM, _KTUM, _PANC = range(1, 12)
_ORGAN_NAMES = {_LIVER: "liver", _SPLEEN: "spleen", _RKID: "right kidney", _LKID: "left kidney", _GB: "gallbladder",
                _STOMACH: "stomach", _AORTA: "aorta", _IVC: "inferior vena cava", _LTUM: "liver tumour",
                _KTUM: "kidney tumour", _PANC: "pancreas"}
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


class _Grid:
    """World coordinates (mm, RAS, centred on the volume) of a voxel grid, as broadcastable 1D axes."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s) for n, s in zip(self.shape, self.spacing)]
        self.affine = np.diag([*self.spacing, 1.0])
        self.affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing)]

    def box(
        self, center: Sequence[float], radius: Sequence[float]
    ) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index box covering ``center +- radius`` (mm) and its local coordinates relative to ``center``."""
        sl, coords = [], []
        for ax, (c, r, n, s) in enumerate(zip(center, radius, self.shape, self.spacing)):
            lo = max(int(math.floor((c - r) / s + (n - 1) / 2.0)), 0)
            hi = min(int(math.ceil((c + r) / s + (n - 1) / 2.0)) + 1, n)
            if hi <= lo:
                return None
            sl.append(slice(lo, hi))
            shape = [1, 1, 1]
            shape[ax] = hi - lo
            coords.append((self.axes[ax][lo:hi] - c).reshape(shape))
        return tuple(sl), coords


def _ellipsoid_q(coords: list[np.ndarray], semi: Sequence[float], angle: float = 0.0,
                 deform: Sequence[float] | None = None) -> np.ndarray:
    """Normalised squared radius of a (rotated in-plane, smoothly deformed) ellipsoid; inside where q <= 1."""
    x, y, z = coords
    ca, sa = math.cos(angle), math.sin(angle)
    u = (x * ca + y * sa) / semi[0]
    v = (-x * sa + y * ca) / semi[1]
    w = z / semi[2]
    q = u * u + v * v + w * w
    if deform is not None:  # low-order polynomial warp of the level set: bends, tapers and shears the shape
        d = deform
        q = q + d[0] * u * v + d[1] * v * w + d[2] * u * w + d[3] * u + d[4] * v + d[5] * w * w * u
    return q


class _Phantom:
    """Paints one synthetic abdomen (image in HU, internal organ ids) on a RAS grid."""

    def __init__(self, rng: np.random.Generator, shape: Sequence[int]) -> None:
        self.rng = rng
        nx, ny, nz = shape
        s = rng.uniform(0.88, 1.12)  # body habitus
        self.a0, self.b0 = 150.0 * s * rng.uniform(0.95, 1.05), 108.0 * s * rng.uniform(0.93, 1.07)
        fov = 2.0 * self.a0 * 1.16
        sxy = fov / max(nx, ny)
        self.grid = _Grid(shape, (sxy, sxy, 200.0 / nz))
        self.img = np.full(shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(shape, dtype=np.uint8)
        self.phase = rng.uniform(0.75, 1.25)  # contrast enhancement factor

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def deform(self, amp: float = 0.25) -> np.ndarray:
        return self.rng.uniform(-amp, amp, size=6).astype(np.float32)

    def paint(self, center, semi, hu, organ=0, angle=0.0, deform=None, within=None, margin=1.35, shell=None):
        """Paint an ellipsoid; returns (box, mask) or None. ``within``: full-size bool mask to intersect with.
        ``shell``: (thickness fraction, hu_inner) paints the inside ``q < (1-t)^2`` with ``hu_inner`` (no label
        change)."""
        r = [m * margin for m in semi]
        rmax = max(r[0], r[1])
        got = self.grid.box(center, (rmax, rmax, r[2]))
        if got is None:
            return None
        sl, coords = got
        q = _ellipsoid_q(coords, semi, angle, deform)
        mask = q <= 1.0
        if within is not None:
            mask &= within[sl]
        if not mask.any():
            return None
        view = self.img[sl]
        view[mask] = hu
        if organ:
            self.lab[sl][mask] = organ
        if shell is not None:
            inner = mask & (q < (1.0 - shell[0]) ** 2)
            view[inner] = shell[1]
        return sl, mask

    def build(self, tumour: str | None = None, pancreas: bool = False) -> None:
        g, rng = self.grid, self.rng
        x, y, z = g.axes
        X, Y, Z = x[:, None, None], y[None, :, None], z[None, None, :]
        # --- body outline (super-ellipse, slowly varying along z), fat, muscle wall, cavity
        ph = self.u(0, 2 * math.pi)
        a = self.a0 * (1 + 0.04 * np.sin(2 * math.pi * Z / 260.0 + ph))
        b = self.b0 * (1 + 0.03 * np.cos(2 * math.pi * Z / 300.0 + ph))
        p = self.u(2.1, 2.6)
        fat = self.u(12.0, 28.0)
        mus = self.u(8.0, 13.0)
        yb = Y + 0.0 * X  # broadcast helper
        rr = (np.abs(X) / a) ** p + (np.abs(yb) / b) ** p
        body = rr <= 1.0
        wall = ((np.abs(X) / (a - fat)) ** p + (np.abs(yb) / (b - fat)) ** p) <= 1.0
        cav = ((np.abs(X) / (a - fat - mus)) ** p + (np.abs(yb) / (b - fat - mus)) ** p) <= 1.0
        self.img[body] = -100.0 + self.u(-10, 10)
        self.img[wall] = 50.0 + self.u(-5, 8)
        self.img[cav] = -90.0 + self.u(-8, 8)
        self.cavity = cav
        a0, b0 = self.a0, self.b0
        # --- bowel loops (lower, anterior) and colon, painted first so organs override them
        for _ in range(int(rng.integers(10, 18))):
            c = (self.u(-0.55, 0.55) * a0, self.u(-0.05, 0.6) * b0, self.u(-100, 10))
            r = self.u(9, 16)
            kind = rng.random()
            lumen = -900.0 if kind < 0.45 else 15.0
            got = self.paint(c, (r, r * self.u(0.7, 1.3), r * self.u(1.0, 2.5)), 40.0, within=cav,
                             shell=(0.25, lumen), deform=self.deform(0.2))
            if got is not None and 0.45 <= kind < 0.7:  # air-fluid level: gas anteriorly
                sl, m = got
                inner = m & (self.img[sl] == 15.0) & (y[sl[1]][None, :, None] > c[1])
                self.img[sl][inner] = -900.0
        for side in (1.0, -1.0):  # ascending (right) / descending (left) colon
            c = (side * 0.62 * a0, self.u(-0.15, 0.15) * b0, self.u(-60, -20))
            self.paint(c, (18.0, 18.0, 70.0), 40.0, within=cav, shell=(0.2, -900.0 if rng.random() < 0.7 else 20.0),
                       deform=self.deform(0.15))
        # --- stomach (left, anterior, upper) with a gas cap
        c = (-0.3 * a0 + self.u(-10, 10), 0.22 * b0 + self.u(-8, 8), self.u(25, 50))
        semi = (0.22 * a0 * self.u(0.85, 1.15), 0.24 * b0 * self.u(0.85, 1.15), self.u(40, 55))
        got = self.paint(c, semi, 45.0, _STOMACH, angle=self.u(-0.4, 0.4), within=cav, shell=(0.15, 15.0),
                         deform=self.deform())
        if got is not None:
            sl, m = got
            cap = m & (self.img[sl] == 15.0) & (y[sl[1]][None, :, None] > c[1] + 0.3 * semi[1])
            self.img[sl][cap] = -900.0
        # --- liver: right lobe + left lobe, portal vessels
        hu_liver = (60.0 + 25.0 * self.phase) + self.u(-6, 6)
        lc = (0.42 * a0 + self.u(-8, 8), 0.03 * b0 + self.u(-8, 8), self.u(25, 45))
        lsemi = (0.40 * a0 * self.u(0.9, 1.1), 0.60 * b0 * self.u(0.9, 1.1), self.u(65, 85))
        self.paint(lc, lsemi, hu_liver, _LIVER, angle=self.u(-0.2, 0.2), within=cav, deform=self.deform(0.3))
        llc = (-0.05 * a0 + self.u(-8, 8), 0.36 * b0 + self.u(-6, 6), lc[2] + self.u(0, 15))
        self.paint(llc, (0.32 * a0 * self.u(0.8, 1.2), 0.24 * b0, self.u(35, 50)), hu_liver, _LIVER,
                   angle=self.u(-0.3, 0.3), within=cav, deform=self.deform(0.3))
        liver = self.lab == _LIVER
        for _ in range(3):  # portal vessel branches (labelled liver, as in real annotations)
            c = (lc[0] + self.u(-30, 10), lc[1] + self.u(-20, 20), lc[2] + self.u(-25, 15))
            self.paint(c, (self.u(3, 5), self.u(3, 5), self.u(30, 60)), hu_liver + 60 * self.phase,
                       angle=self.u(0, math.pi), within=liver, deform=self.deform(0.1))
        # --- gallbladder under the liver, anterior
        gc = (0.28 * a0 + self.u(-10, 10), 0.42 * b0 + self.u(-8, 5), lc[2] - lsemi[2] * self.u(0.45, 0.65))
        self.paint(gc, (self.u(12, 18), self.u(14, 22), self.u(22, 32)), self.u(0, 20), _GB,
                   angle=self.u(-0.5, 0.5), within=cav, deform=self.deform(0.2))
        # --- spleen (left, posterior, upper)
        sc = (-0.6 * a0 + self.u(-8, 8), -0.3 * b0 + self.u(-8, 8), self.u(25, 55))
        self.paint(sc, (0.15 * a0 * self.u(0.8, 1.2), 0.33 * b0 * self.u(0.8, 1.2), self.u(40, 55)),
                   self.u(50, 70) * (0.85 + 0.15 * self.phase), _SPLEEN, angle=self.u(0.5, 0.9), within=cav,
                   deform=self.deform(0.3))
        # --- kidneys: cortex (contrast), medulla, sinus fat near the medial hilum
        cortex = (120.0 + 60.0 * self.phase) + self.u(-10, 10)
        medulla = self.u(25, 45)
        zr = self.u(-50, -25)
        kid = {}
        for organ, side, zc in ((_RKID, 1.0, zr), (_LKID, -1.0, zr + self.u(8, 22))):
            kc = (side * 0.36 * a0 + self.u(-6, 6), -0.42 * b0 + self.u(-6, 6), zc)
            semi = (self.u(21, 27), self.u(26, 32), self.u(45, 60))
            ang = side * self.u(0.35, 0.7)
            self.paint(kc, semi, cortex, organ, angle=ang, within=cav, shell=(0.3, medulla), deform=self.deform(0.15))
            kid[organ] = (kc, semi)
            hc = (kc[0] - side * 0.45 * semi[0], kc[1] + 0.25 * semi[1], kc[2])
            self.paint(hc, (semi[0] * 0.35, semi[1] * 0.35, semi[2] * 0.4), -60.0, within=self.lab == organ)
        # --- pancreas (optional fifth organ): head by the duodenum right of the midline, body anterior to the aorta
        # and the left kidney, tail rising posteriorly toward the splenic hilum; fills only unlabeled cavity
        if pancreas:
            pc = (-0.12 * a0 + self.u(-6, 6), -0.02 * b0 + self.u(-4, 4), self.u(-8, 8))
            self.paint(pc, (0.32 * a0 * self.u(0.9, 1.1), self.u(11, 14), self.u(15, 20)),
                       (80.0 + 30.0 * self.phase) + self.u(-8, 8), _PANC, angle=self.u(0.2, 0.4),
                       within=cav & (self.lab == 0), deform=self.deform(0.2))
        # --- tumours (only for the LiTS-like and KiTS-like sources)
        if tumour == "liver":
            idx = np.argwhere(self.lab == _LIVER)
            for _ in range(int(rng.integers(1, 4))):
                if len(idx) == 0:
                    break
                i = idx[int(rng.integers(len(idx)))]
                c = tuple(float(g.axes[k][i[k]]) for k in range(3))
                r = self.u(7, 18)
                self.paint(c, (r, r * self.u(0.8, 1.2), r * self.u(0.8, 1.2)), hu_liver - self.u(35, 60), _LTUM,
                           within=(self.lab == _LIVER) | (self.lab == _LTUM), deform=self.deform(0.2))
        elif tumour == "kidney":
            organ = _RKID if rng.random() < 0.5 else _LKID
            kc, semi = kid[organ]
            sgn = 1.0 if organ == _RKID else -1.0
            c = (kc[0] + sgn * semi[0] * self.u(0.3, 0.8), kc[1] + semi[1] * self.u(-0.6, 0.2),
                 kc[2] + semi[2] * self.u(-0.6, 0.6))
            r = self.u(12, 24)
            self.paint(c, (r, r * self.u(0.8, 1.2), r * self.u(0.8, 1.2)), self.u(70, 120), _KTUM, within=cav,
                       shell=(0.4, self.u(20, 40)), deform=self.deform(0.2))
        # --- vessels
        vb_y = -0.45 * b0 + self.u(-4, 4)
        vb_r = 0.16 * b0
        self.paint((-0.08 * a0, vb_y + vb_r + self.u(9, 14), 0.0), (self.u(9, 12), self.u(9, 12), 200.0),
                   (120.0 + 100.0 * self.phase), _AORTA, margin=1.05)
        self.paint((0.14 * a0, vb_y + vb_r + self.u(8, 14), 0.0), (self.u(11, 15), self.u(8, 11), 200.0),
                   self.u(90, 130), _IVC, margin=1.05)
        # --- muscles: psoas (growing caudally), paraspinal
        for side in (1.0, -1.0):
            for k, zc in enumerate(z):
                if zc < -10:
                    grow = min(1.0, (-10 - zc) / 80.0)
                    self.paint((side * 0.15 * a0, vb_y + 0.3 * vb_r, zc),
                               (8 + 14 * grow, 8 + 10 * grow, g.spacing[2] / 2),
                               50.0, margin=1.0)
            self.paint((side * 0.17 * a0, -0.74 * b0, 0.0), (0.12 * a0, 0.16 * b0, 200.0), 55.0, within=body,
                       margin=1.05)
        # --- spine: vertebral bodies (discs every ~30 mm), canal, spinous process
        disc_phase = self.u(0, 30)
        zdisc = (np.mod(z - disc_phase, 30.0) < 5.0)
        got = self.paint((0.0, vb_y, 0.0), (vb_r, vb_r * 0.95, 200.0), 700.0, margin=1.05,
                         shell=(0.2, self.u(180, 280)))
        if got is not None:
            sl, m = got
            disc = m & zdisc[None, None, sl[2]]
            self.img[sl][disc] = 90.0
        canal_y = vb_y - vb_r - 0.08 * b0
        self.paint((0.0, canal_y, 0.0), (0.07 * b0, 0.06 * b0, 200.0), 25.0, margin=1.05)
        spin = (np.abs(X) < 0.03 * a0) & (Y < canal_y - 0.05 * b0) & (Y > -0.9 * b0) & ~zdisc[None, None, :]
        self.img[spin & body] = 600.0
        rim = (np.abs(X) < 0.09 * a0) & (np.abs(Y - canal_y) < 0.09 * b0) & ~cav & ~(np.abs(Y - canal_y) < 0.06 * b0)
        self.img[rim & (np.abs(X) > 0.05 * a0) & body] = 650.0  # pedicles / laminae
        # --- ribs: oblique bands in the muscle wall, upper abdomen only
        theta = np.arctan2(yb / b, X / a)
        zlim = self.u(-70, -40)
        ribs = wall & ~cav & (np.cos(2 * math.pi * (Z - self.u(0, 30)) / 32.0 + 9.0 * theta) > 0.6)
        ribs &= Z > zlim + 40.0 * np.sin(theta)
        ribs &= (np.abs(theta - math.pi / 2) > 0.45) & (np.abs(theta + math.pi / 2) > 0.3)
        self.img[ribs] = 520.0 + self.u(-60, 120)
        self.lab[ribs] = 0
        # --- partial volume, then correlated noise
        from scipy.ndimage import gaussian_filter

        self.img = gaussian_filter(self.img, sigma=(0.6, 0.6, 0.3), mode="nearest")
        noise = rng.standard_normal(self.img.shape, dtype=np.float32)
        noise = gaussian_filter(noise, sigma=(0.7, 0.7, 0.0), mode="wrap")
        noise *= self.u(10, 18) / max(float(noise.std()), 1e-6)
        self.img += noise


def synthesize_case(seed: int | Sequence[int], shape: Sequence[int] = DEFAULT_DEMO_SHAPE,
                    tumour: str | None = None, pancreas: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT phantom in RAS.

    Args:
        seed: integer or sequence of integers (``numpy.random.default_rng`` seed); same seed -> identical arrays.
        shape: ``(X, Y, Z)`` voxels (x toward patient right, y anterior, z superior). The field of view fits the
            body in-plane and covers 200 mm along z (5 mm slices for Z = 40).
        tumour: ``None``, ``"liver"`` (1-3 hypodense liver lesions) or ``"kidney"`` (one exophytic renal mass).
        pancreas: also paint a pancreas (internal id 11). Default False (the arrays are then unchanged).

    Returns:
        ``(image, organs, affine)``: int16 HU ``(X, Y, Z)``, uint8 internal organ ids ``(X, Y, Z)`` (1 liver,
        2 spleen, 3 right kidney, 4 left kidney, 5 gallbladder, 6 stomach, 7 aorta, 8 IVC, 9 liver tumour,
        10 kidney tumour, 11 pancreas) and the 4x4 RAS affine (mm).
    """
    if len(shape) != 3 or min(int(s) for s in shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {shape}.")
    if tumour not in (None, "liver", "kidney"):
        raise ValueError(f"tumour must be None, 'liver' or 'kidney', got {tumour!r}.")
    ph = _Phantom(np.random.default_rng(seed), [int(s) for s in shape])
    ph.build(tumour, bool(pancreas))
    img = np.clip(np.rint(ph.img), -1024, 3071).astype(np.int16)
    return img, ph.lab, ph.grid.affine


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
    # "pipofan_monai.data.demo": this module's name before the stage layout (same generator, same data)
    return m if isinstance(m, dict) and m.get("generator") in (__name__, "pipofan_monai.data.demo") else None


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
