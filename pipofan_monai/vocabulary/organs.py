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

"""The organ vocabulary: one table of organs (what every downstream step needs to know about an organ) and the
checks of a list of global class names (the bundle's ``class_names``, background first, any K >= 2).

An organ entry holds how many connected components post-processing keeps (2 for "kidney", 1 for the liver,
spleen, pancreas, ...; None keeps all, e.g. tumours), the overlay colour, an anatomical code (SNOMED CT, as used
by DICOM Segmentation objects), and two relations used when a dataset's labels are mapped to a vocabulary
(see :py:meth:`pipofan_monai.vocabulary.datasets.DatasetSpec.resolve`):

* ``parent``: a label of this organ counts as the parent when the vocabulary does not list the organ itself
  (right kidney -> kidney, liver tumour -> liver, pancreas tumour -> pancreas);
* ``parts``: the parent is completely annotated by a dataset that annotates all of its parts
  (BTCV labels the right and the left kidney, so it annotates "kidney").

Names are lowercase with underscores (``right_kidney``); spaces, hyphens and a few aliases (``ivc``,
``liver_tumor``) are accepted wherever a name is read and turned into the canonical name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = [
    "BACKGROUND",
    "DEFAULT_CLASS_NAMES",
    "OrganSpec",
    "ORGANS",
    "ORGAN_ALIASES",
    "canonical_organ_name",
    "get_organ",
    "organ_table",
    "validate_class_names",
    "num_components_for",
    "colors_for",
    "channel_def",
    "metric_name",
]

BACKGROUND = "background"

#: the paper's vocabulary (multi-organ PIPO-FAN): 0 background, 1 liver, 2 kidney (left and right), 3 spleen.
DEFAULT_CLASS_NAMES: tuple[str, ...] = ("background", "liver", "kidney", "spleen")

#: SNOMED CT category codes of DICOM SEG (CID 7150): anatomical structure / morphologically altered structure.
_ANATOMY = ("123037004", "SCT", "Anatomical Structure")
_ABNORMAL = ("49755003", "SCT", "Morphologically Altered Structure")


@dataclass(frozen=True)
class OrganSpec:
    """One organ of the vocabulary.

    Args:
        name: canonical name (lowercase, underscores).
        num_components: connected components kept by post-processing (None: keep all, no rule).
        color: overlay colour, RGB in 0..1.
        code: anatomical code ``(value, scheme, meaning)`` (SNOMED CT ``"SCT"``), or None when there is none.
        category: DICOM SEG segmented property category ``(value, scheme, meaning)``.
        parent: the coarser organ a label of this one counts as when the vocabulary lacks it (or None).
        parts: organs that together make up this one (a dataset annotating all of them annotates this one).
        description: free text.
    """

    name: str
    num_components: int | None = 1
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    code: tuple[str, str, str] | None = None
    category: tuple[str, str, str] = _ANATOMY
    parent: str | None = None
    parts: tuple[str, ...] = ()
    description: str = ""


def _o(name, n, color, code=None, **kw) -> OrganSpec:
    return OrganSpec(name, n, color, (code[0], "SCT", code[1]) if code else None, **kw)


# Colours: the three organs of the paper keep the overlay colours they always had; the others are distinct hues.
# Codes: SNOMED CT body-structure concepts (as in DICOM CID 7166/4031), the one table of codes (DICOM SEG output
# reads them here, with a config-level organ_table on top); written out rather than taken from pydicom's code
# dictionary, which spells some meanings differently in pydicom 2 and 3 and lacks some entries.
ORGANS: dict[str, OrganSpec] = {o.name: o for o in (
    _o("liver", 1, (0.90, 0.33, 0.05), ("10200004", "Liver")),
    _o("kidney", 2, (0.19, 0.80, 0.33), ("64033007", "Kidney"), parts=("right_kidney", "left_kidney"),
       description="both kidneys in one class (2 components kept: left and right)"),
    _o("spleen", 1, (0.20, 0.50, 1.00), ("78961009", "Spleen")),
    _o("pancreas", 1, (0.95, 0.85, 0.20), ("15776009", "Pancreas")),
    _o("stomach", 1, (0.85, 0.45, 0.75), ("69695003", "Stomach")),
    _o("gallbladder", 1, (0.30, 0.85, 0.85), ("28231008", "Gallbladder")),
    _o("esophagus", 1, (0.70, 0.55, 0.35), ("32849002", "Esophagus")),
    _o("aorta", 1, (0.90, 0.10, 0.15), ("15825003", "Aorta")),
    _o("inferior_vena_cava", 1, (0.35, 0.25, 0.90), ("64131007", "Inferior vena cava")),
    _o("portal_splenic_vein", 1, (0.55, 0.35, 0.95), ("32764006", "Portal vein"),
       description="portal vein and splenic vein (BTCV label 10); SNOMED CT has no concept for the pair: coded as "
                   "the portal vein (a DICOM SEG segment keeps the full name as its label)"),
    _o("portal_vein", 1, (0.45, 0.30, 0.85), ("32764006", "Portal vein")),
    _o("splenic_vein", 1, (0.65, 0.45, 1.00), ("35819009", "Splenic vein")),
    _o("duodenum", 1, (0.80, 0.60, 0.40), ("38848004", "Duodenum")),
    _o("bladder", 1, (1.00, 1.00, 0.50), ("89837001", "Urinary bladder")),
    _o("colon", 1, (0.60, 0.40, 0.20), ("71854001", "Colon")),
    _o("small_intestine", None, (0.95, 0.75, 0.55), ("30315005", "Small intestine")),
    _o("lung", 2, (0.55, 0.80, 0.95), ("39607008", "Lung"), description="both lungs in one class"),
    _o("heart", 1, (0.80, 0.10, 0.40), ("80891009", "Heart")),
    _o("prostate", 1, (0.50, 0.70, 0.70), ("41216001", "Prostate")),
    _o("right_kidney", 1, (0.10, 0.65, 0.25), ("9846003", "Right kidney"), parent="kidney"),
    _o("left_kidney", 1, (0.45, 0.90, 0.45), ("18639004", "Left kidney"), parent="kidney"),
    _o("adrenal_gland", 2, (0.95, 0.60, 0.60), ("23451007", "Adrenal gland"),
       parts=("right_adrenal_gland", "left_adrenal_gland")),
    _o("right_adrenal_gland", 1, (0.85, 0.50, 0.50), None, parent="adrenal_gland"),
    _o("left_adrenal_gland", 1, (1.00, 0.70, 0.70), None, parent="adrenal_gland"),
    _o("liver_tumour", None, (1.00, 1.00, 0.00), ("108369006", "Neoplasm"), category=_ABNORMAL, parent="liver"),
    _o("kidney_tumour", None, (0.00, 1.00, 0.60), ("108369006", "Neoplasm"), category=_ABNORMAL, parent="kidney"),
    _o("pancreas_tumour", None, (1.00, 0.55, 0.00), ("108369006", "Neoplasm"), category=_ABNORMAL,
       parent="pancreas"),
)}

ORGAN_ALIASES: dict[str, str] = {
    "ivc": "inferior_vena_cava",
    "postcava": "inferior_vena_cava",
    "oesophagus": "esophagus",
    "gall_bladder": "gallbladder",
    "portal_vein_and_splenic_vein": "portal_splenic_vein",
    "portal_and_splenic_vein": "portal_splenic_vein",
    "portal_and_splenic_veins": "portal_splenic_vein",
    "vena_cava_inferior": "inferior_vena_cava",
    "urinary_bladder": "bladder",
    "kidneys": "kidney",
    "lungs": "lung",
    "right_adrenal": "right_adrenal_gland",
    "left_adrenal": "left_adrenal_gland",
    "adrenal": "adrenal_gland",
    "kidney_left": "left_kidney",
    "kidney_right": "right_kidney",
    "liver_tumor": "liver_tumour",
    "kidney_tumor": "kidney_tumour",
    "pancreas_tumor": "pancreas_tumour",
    "bg": BACKGROUND,
}


def canonical_organ_name(name: str) -> str:
    """Lowercase, spaces/hyphens/``&`` to underscores, aliases resolved: ``"Right Kidney"`` -> ``"right_kidney"``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"organ names must be non-empty strings, got {name!r}.")
    key = re.sub(r"[\s\-&/]+", "_", name.strip().lower())
    key = re.sub(r"_+", "_", key).strip("_")
    return ORGAN_ALIASES.get(key, key)


def _spec_from_entry(name: str, entry: Any) -> OrganSpec:
    """An :class:`OrganSpec` from a config entry ``{"num_components": 1, "color": [r, g, b], "code": [...], ...}``."""
    if isinstance(entry, OrganSpec):
        return entry
    if not isinstance(entry, Mapping):
        raise ValueError(f"organ_table entry {name!r} must be a mapping, got {type(entry).__name__}.")
    unknown = set(entry) - {"num_components", "color", "code", "category", "parent", "parts", "description"}
    if unknown:
        raise ValueError(f"organ_table entry {name!r} has unknown keys {sorted(unknown)}.")
    base = ORGANS.get(name)
    n = entry.get("num_components", base.num_components if base else 1)
    if n is not None and (int(n) != n or int(n) < 1):
        raise ValueError(f"organ_table[{name!r}].num_components must be an integer >= 1 or null, got {n!r}.")
    color = tuple(float(c) for c in entry.get("color", base.color if base else (0.5, 0.5, 0.5)))
    if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
        raise ValueError(f"organ_table[{name!r}].color must be 3 values in 0..1, got {entry.get('color')!r}.")
    code = entry.get("code", base.code if base else None)
    code = tuple(str(c) for c in code) if code is not None else None
    if code is not None and len(code) != 3:
        raise ValueError(f"organ_table[{name!r}].code must be [value, scheme, meaning], got {entry.get('code')!r}.")
    category = tuple(str(c) for c in entry.get("category", base.category if base else _ANATOMY))
    parent = entry.get("parent", base.parent if base else None)
    parts = tuple(canonical_organ_name(p) for p in entry.get("parts", base.parts if base else ()))
    return OrganSpec(name, None if n is None else int(n), color, code, category,  # type: ignore[arg-type]
                     canonical_organ_name(parent) if parent else None, parts,
                     str(entry.get("description", base.description if base else "")))


def organ_table(extra: Mapping[str, Any] | None = None) -> dict[str, OrganSpec]:
    """The built-in :data:`ORGANS` updated with a config-level ``organ_table`` (``{name: {field: value}}``;
    fields not given keep the built-in entry's values, so ``{"kidney": {"num_components": 1}}`` changes one rule).

    Raises:
        ValueError: malformed entries (naming the organ and the field).
    """
    table = dict(ORGANS)
    for raw, entry in dict(extra or {}).items():
        name = canonical_organ_name(str(raw))
        if name == BACKGROUND:
            raise ValueError("organ_table must not define 'background' (class 0 is always background).")
        table[name] = _spec_from_entry(name, entry)
    return table


def get_organ(name: str, organs: Mapping[str, Any] | None = None) -> OrganSpec:
    """The entry of one organ (built-in, or from ``organs``, a config-level ``organ_table``).

    Raises:
        KeyError: unknown organ, listing the known ones.
    """
    table = organ_table(organs)
    key = canonical_organ_name(name)
    if key not in table:
        raise KeyError(f"unknown organ {name!r}; known organs: {sorted(table)} (add your own with organ_table).")
    return table[key]


def validate_class_names(class_names: Sequence[str], organs: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Check a vocabulary and return it with canonical names.

    Args:
        class_names: K >= 2 names, ``"background"`` first, then known organs (built-in or in ``organs``), each
            once.
        organs: optional config-level ``organ_table``.

    Raises:
        ValueError: not a list of >= 2 names, background not first, duplicates, or unknown organs (listing the
            known ones).
    """
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"class_names must be a list of names (background first), got {class_names!r}.")
    names = tuple(canonical_organ_name(str(n)) for n in class_names)
    if len(names) < 2:
        raise ValueError(f"class_names needs background and at least one organ (K >= 2), got {list(class_names)}.")
    if names[0] != BACKGROUND:
        raise ValueError(f"class_names must start with 'background', got {list(class_names)}.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"class_names lists {dup} more than once: {list(class_names)}.")
    table = organ_table(organs)
    unknown = [n for n in names[1:] if n not in table]
    if unknown:
        raise ValueError(
            f"class_names has unknown organs {unknown}; known organs: {sorted(table)}. "
            "Define new ones in the config's organ_table."
        )
    return names


def num_components_for(
    class_names: Sequence[str], organs: Mapping[str, Any] | None = None, strict: bool = True
) -> dict[int, int]:
    """``{class id: N}`` connected-component rules of a vocabulary (organs with ``num_components=None`` are left
    out, i.e. untouched): ``["background", "liver", "kidney", "spleen"]`` -> ``{1: 1, 2: 2, 3: 1}``.
    ``strict=False`` leaves names that are not organs of the table untouched instead of raising (placeholder
    names of a checkpoint without plans)."""
    table = organ_table(organs)
    if strict:
        names = validate_class_names(class_names, organs)
    else:
        names = tuple(canonical_organ_name(str(n)) for n in class_names)
    return {i: table[n].num_components for i, n in enumerate(names)
            if i and n in table and table[n].num_components is not None}


def colors_for(class_names: Sequence[str], organs: Mapping[str, Any] | None = None) -> dict[int, tuple]:
    """``{class id: (r, g, b)}`` overlay colours of a vocabulary (background not drawn)."""
    names = validate_class_names(class_names, organs)
    table = organ_table(organs)
    return {i: table[n].color for i, n in enumerate(names) if i}


def channel_def(class_names: Sequence[str]) -> dict[str, str]:
    """``{"0": "background", "1": "liver", ...}``: the ``channel_def`` of the bundle's ``metadata.json`` (MONAI
    Label reads its label list from there)."""
    return {str(i): str(n) for i, n in enumerate(class_names)}


def metric_name(class_name: str) -> str:
    """Validation metric key of one class: ``"val_dice_<name>"`` (``val_dice_right_kidney``)."""
    return f"val_dice_{canonical_organ_name(class_name)}"
