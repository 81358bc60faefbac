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

"""Pictures: segmentation overlays, training curves and cross-validation charts (matplotlib, Agg backend)."""

from __future__ import annotations

from pipofan_monai.visualize.curves import (
    crossval_table,
    load_metrics_rows,
    plot_crossval,
    plot_dice_bars,
    plot_training_curves,
)
from pipofan_monai.visualize.overlay import (
    DEFAULT_COLORS,
    save_overlay_png,
    to_radiological_axial,
    to_radiological_coronal,
)

__all__ = [
    "DEFAULT_COLORS",
    "crossval_table",
    "load_metrics_rows",
    "plot_crossval",
    "plot_dice_bars",
    "plot_training_curves",
    "save_overlay_png",
    "to_radiological_axial",
    "to_radiological_coronal",
]
