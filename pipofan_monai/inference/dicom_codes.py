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

"""The codes of DICOM SEG segments: SNOMED CT property categories and types of the organ names of a vocabulary
(:func:`segment_code_for`, from the organ table, with laterality and tumour variants) and the segments' display
colours in DICOM's CIE L*a*b* encoding (:func:`rgb_to_dicom_lab`).

Separate from the writer (:mod:`pipofan_monai.inference.dicom_seg`) because it needs neither pydicom nor
highdicom: a bundle checks at construction that every class has a code, before any DICOM library is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pipofan_monai.vocabulary.organs import get_organ, organ_table

__all__ = ["Code3", "SegmentCode", "SEGMENT_CATEGORY_ANATOMY", "SEGMENT_CATEGORY_ALTERED", "segment_code_for",
           "rgb_to_dicom_lab"]

Code3 = tuple  # (code value, coding scheme designator, code meaning), e.g. ("10200004", "SCT", "Liver")

#: CID 7150 (Segmentation Property Categories)
SEGMENT_CATEGORY_ANATOMY: Code3 = ("123037004", "SCT", "Anatomical Structure")
SEGMENT_CATEGORY_ALTERED: Code3 = ("49755003", "SCT", "Morphologically Altered Structure")
_LATERALITY = {"left": ("7771000", "SCT", "Left"), "right": ("24028007", "SCT", "Right")}
_LESION_WORDS = {"tumour", "tumor", "tumours", "tumors", "lesion", "lesions", "cancer", "neoplasm", "mass"}
_NEOPLASM: Code3 = ("108369006", "SCT", "Neoplasm")
_AI_FAMILY: Code3 = ("123110", "DCM", "Artificial Intelligence")  # CID 7162 (Algorithm Family)


@dataclass(frozen=True)
class SegmentCode:
    """The codes of one segment.

    Args:
        category: segmented property category (CID 7150), e.g. ``SEGMENT_CATEGORY_ANATOMY``.
        property_type: segmented property type (CID 7151/7166), e.g. ``("10200004", "SCT", "Liver")``.
        modifier: property type modifier, e.g. laterality ``("7771000", "SCT", "Left")``, or None.
        anatomic_region: where the structure lies (for lesions: the organ), or None.
        anatomic_region_modifier: laterality of ``anatomic_region``, or None.
    """

    category: Code3
    property_type: Code3
    modifier: Code3 | None = None
    anatomic_region: Code3 | None = None
    anatomic_region_modifier: Code3 | None = None


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()


def segment_code_for(name: str, segment_codes: Mapping[str, SegmentCode | Code3] | None = None,
                     organs: Mapping[str, Any] | None = None) -> SegmentCode:
    """The SNOMED CT codes of an organ name of ``class_names``, from the organ table
    (:data:`pipofan_monai.vocabulary.organs.ORGANS`, with ``organs`` on top: the codes are defined there only).

    Names are matched case-insensitively with ``_``/``-``/spaces alike; ``left``/``right`` anywhere in the name is
    laterality on the organ's code (``"kidney_left"``, ``"Right kidney"``: Kidney, modifier Left / Right), a lesion
    word (tumour, tumor, lesion, cancer, neoplasm, mass) makes a "Neoplasm" in the named organ (``"liver tumour"``;
    ``"tumour"`` alone has no organ).

    Args:
        name: the class name.
        segment_codes: user codes that take precedence, by class name (as written in ``class_names``): a
            :class:`SegmentCode`, or a ``(value, scheme, meaning)`` property type in the anatomical structure
            category.
        organs: the config's ``organ_table`` (its ``code`` and ``category`` fields are used here).

    Returns:
        the :class:`SegmentCode`.

    Raises:
        ValueError: the name is not in the table and not in ``segment_codes`` (the message lists the known organs).
    """
    if segment_codes:
        for key, code in segment_codes.items():
            if _normalise(key) == _normalise(name):
                if isinstance(code, SegmentCode):
                    return code
                if isinstance(code, (tuple, list)) and len(code) == 3 and all(isinstance(c, str) for c in code):
                    return SegmentCode(SEGMENT_CATEGORY_ANATOMY, tuple(code))
                raise ValueError(f"segment_codes[{key!r}] must be a SegmentCode or (value, scheme, meaning), "
                                 f"got {code!r}.")
    words = _normalise(name).split()
    side = [w for w in words if w in _LATERALITY]
    lesion = any(w in _LESION_WORDS for w in words)
    rest = " ".join(w for w in words if w not in _LATERALITY and w not in _LESION_WORDS)
    modifier = _LATERALITY[side[0]] if len(side) == 1 else None
    organ = _coded_organ(rest, organs) if rest else None
    if lesion:
        if rest and organ is None:
            raise ValueError(_unknown(name, organs))
        return SegmentCode(SEGMENT_CATEGORY_ALTERED, _NEOPLASM, anatomic_region=organ.code if organ else None,
                           anatomic_region_modifier=modifier if rest else None)
    if organ is None or len(side) > 1:
        raise ValueError(_unknown(name, organs))
    return SegmentCode(tuple(organ.category), tuple(organ.code), modifier=modifier)


def _coded_organ(name: str, organs: Mapping[str, Any] | None) -> Any:
    """The organ table's entry of ``name`` if it has a code, else None."""
    try:
        spec = get_organ(name, organs)
    except (KeyError, ValueError):
        return None
    return spec if spec.code is not None else None


def _unknown(name: str, organs: Mapping[str, Any] | None) -> str:
    known = sorted(n for n, o in organ_table(organs).items() if o.code is not None)
    return (f"no standard code known for class {name!r} (DICOM SEG output): organs with a code are {known} "
            "(with left/right and tumour variants); give its SNOMED CT code in the organ_table "
            f"({{{name!r}: {{'code': [value, 'SCT', meaning]}}}}) or with "
            "segment_codes={name: (value, 'SCT', meaning)}.")


def rgb_to_dicom_lab(rgb: Sequence[float]) -> list[int]:
    """sRGB (0..1) to DICOM's RecommendedDisplayCIELabValue: CIE L*a*b* (D65) scaled to 0..65535 (L* 0..100,
    a*/b* -128..127), as PS3.3 C.10.7.1.1 specifies.

    Args:
        rgb: red, green, blue in 0..1.

    Returns:
        ``[L, a, b]`` as unsigned 16-bit integers.
    """
    c = np.clip(np.asarray(rgb, dtype=np.float64)[:3], 0.0, 1.0)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    lab = (116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2]))
    scaled = (lab[0] / 100.0 * 65535.0, (lab[1] + 128.0) / 255.0 * 65535.0, (lab[2] + 128.0) / 255.0 * 65535.0)
    return [int(round(min(max(v, 0.0), 65535.0))) for v in scaled]
