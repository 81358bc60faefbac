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

"""The synthetic abdomen of the demo dataset: a geometric phantom in Hounsfield units with liver, kidneys, spleen and
the organs around them, painted on a RAS grid from a seed (same seed, same volume)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Sequence

import numpy as np

DEFAULT_DEMO_SHAPE: tuple[int, int, int] = (128, 128, 40)

# internal organ ids of the phantom
_LIVER, _SPLEEN, _RKID, _LKID, _GB, _STOMACH, _AORTA, _IVC, _LTUM, _KTUM, _PANC = range(1, 12)
_ORGAN_NAMES = {_LIVER: "liver", _SPLEEN: "spleen", _RKID: "right kidney", _LKID: "left kidney", _GB: "gallbladder",
                _STOMACH: "stomach", _AORTA: "aorta", _IVC: "inferior vena cava", _LTUM: "liver tumour",
                _KTUM: "kidney tumour", _PANC: "pancreas"}


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
        """Paint the whole abdomen, back to front; the order of the random draws is the dataset's definition
        (a change here changes every demo volume), so each part draws in the same order as it always did."""
        o = self._outline()
        self._bowel(o)
        self._stomach()
        hu_liver = self._liver()
        self._spleen()
        kid = self._kidneys()
        if pancreas:
            self._pancreas()
        self._tumour(tumour, hu_liver, kid)
        vb_y, vb_r = self._vessels_and_muscles(o)
        self._spine_and_ribs(o, vb_y, vb_r)
        self._noise()

    def _outline(self) -> SimpleNamespace:
        """Body outline (super-ellipse, slowly varying along z), fat, muscle wall, cavity."""
        x, y, z = self.grid.axes
        X, Y, Z = x[:, None, None], y[None, :, None], z[None, None, :]
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
        return SimpleNamespace(X=X, Y=Y, Z=Z, a=a, b=b, yb=yb, body=body, wall=wall, cav=cav)

    def _bowel(self, o: SimpleNamespace) -> None:
        """Bowel loops (lower, anterior) and colon, painted first so organs override them."""
        rng, y, cav, a0, b0 = self.rng, self.grid.axes[1], o.cav, self.a0, self.b0
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

    def _stomach(self) -> None:
        """Stomach (left, anterior, upper) with a gas cap."""
        y, cav, a0, b0 = self.grid.axes[1], self.cavity, self.a0, self.b0
        c = (-0.3 * a0 + self.u(-10, 10), 0.22 * b0 + self.u(-8, 8), self.u(25, 50))
        semi = (0.22 * a0 * self.u(0.85, 1.15), 0.24 * b0 * self.u(0.85, 1.15), self.u(40, 55))
        got = self.paint(c, semi, 45.0, _STOMACH, angle=self.u(-0.4, 0.4), within=cav, shell=(0.15, 15.0),
                         deform=self.deform())
        if got is not None:
            sl, m = got
            cap = m & (self.img[sl] == 15.0) & (y[sl[1]][None, :, None] > c[1] + 0.3 * semi[1])
            self.img[sl][cap] = -900.0

    def _liver(self) -> float:
        """Liver (right lobe + left lobe, portal vessels) and the gallbladder under it; returns the liver's HU."""
        cav, a0, b0 = self.cavity, self.a0, self.b0
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
        return hu_liver

    def _spleen(self) -> None:
        """Spleen (left, posterior, upper)."""
        cav, a0, b0 = self.cavity, self.a0, self.b0
        sc = (-0.6 * a0 + self.u(-8, 8), -0.3 * b0 + self.u(-8, 8), self.u(25, 55))
        self.paint(sc, (0.15 * a0 * self.u(0.8, 1.2), 0.33 * b0 * self.u(0.8, 1.2), self.u(40, 55)),
                   self.u(50, 70) * (0.85 + 0.15 * self.phase), _SPLEEN, angle=self.u(0.5, 0.9), within=cav,
                   deform=self.deform(0.3))

    def _kidneys(self) -> dict:
        """Kidneys: cortex (contrast), medulla, sinus fat near the medial hilum; returns their centres and axes."""
        cav, a0, b0 = self.cavity, self.a0, self.b0
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
        return kid

    def _pancreas(self) -> None:
        """Pancreas (optional fifth organ): head by the duodenum right of the midline, body anterior to the aorta
        and the left kidney, tail rising posteriorly toward the splenic hilum; fills only unlabeled cavity."""
        cav, a0, b0 = self.cavity, self.a0, self.b0
        pc = (-0.12 * a0 + self.u(-6, 6), -0.02 * b0 + self.u(-4, 4), self.u(-8, 8))
        self.paint(pc, (0.32 * a0 * self.u(0.9, 1.1), self.u(11, 14), self.u(15, 20)),
                   (80.0 + 30.0 * self.phase) + self.u(-8, 8), _PANC, angle=self.u(0.2, 0.4),
                   within=cav & (self.lab == 0), deform=self.deform(0.2))

    def _tumour(self, tumour: str | None, hu_liver: float, kid: dict) -> None:
        """Tumours (only for the LiTS-like and KiTS-like sources)."""
        g, rng, cav = self.grid, self.rng, self.cavity
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

    def _vessels_and_muscles(self, o: SimpleNamespace) -> tuple[float, float]:
        """Aorta, IVC, psoas (growing caudally) and paraspinal muscles; returns the vertebral body's y and radius."""
        g, z, a0, b0, body = self.grid, self.grid.axes[2], self.a0, self.b0, o.body
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
        return vb_y, vb_r

    def _spine_and_ribs(self, o: SimpleNamespace, vb_y: float, vb_r: float) -> None:
        """Vertebral bodies (discs every ~30 mm), canal, spinous process; ribs as oblique bands in the muscle wall."""
        z, a0, b0 = self.grid.axes[2], self.a0, self.b0
        X, Y, Z, a, b, yb, body, wall, cav = o.X, o.Y, o.Z, o.a, o.b, o.yb, o.body, o.wall, o.cav
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

    def _noise(self) -> None:
        """Partial volume, then correlated noise."""
        rng = self.rng
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
