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

"""PIPO-FAN (Fang & Yan, IEEE TMI 2020) for MONAI: pyramid-input pyramid-output network with adaptive fusion,
the target adaptive loss for partially labeled datasets, 2.5D transforms and inferers, and a MONAI bundle."""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["bundle_dir", "segment", "__version__"]


def bundle_dir():
    """The MONAI bundle folder (``configs/``, ``docs/``, ``LICENSE``): the repository's ``bundle/`` in a source
    checkout, or the copy installed inside the package (``pipofan_monai/bundle``, package data of the wheel).

    Returns:
        ``pathlib.Path`` of the folder.
    """
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "bundle", here / "bundle"):
        if (candidate / "configs" / "train.json").is_file():
            return candidate
    raise FileNotFoundError(f"the bundle folder was found neither at {here.parent / 'bundle'} nor at {here / 'bundle'}.")


def __getattr__(name: str):
    """``pipofan_monai.segment`` (:func:`pipofan_monai.apps.segment.segment`) imported on first use, so that
    ``import pipofan_monai`` stays light (no torch, no MONAI)."""
    if name == "segment":
        from pipofan_monai.apps.segment import segment

        return segment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
