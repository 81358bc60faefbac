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

"""Evaluation: per-organ metrics, summaries, reports, a partial-label validation metric and per-organ statistics
(volume, HU) of a segmentation."""

from __future__ import annotations

from pipofan_monai.evaluation.metrics import (
    METRIC_NAMES,
    PartialDiceMetric,
    evaluate_case,
    format_table,
    mean_std,
    organ_metrics,
    partial_dice,
    per_class_dice_metrics,
    summarize,
    write_reports,
)
from pipofan_monai.evaluation.statistics import organ_statistics, write_statistics_csv, write_statistics_json

__all__ = [
    "METRIC_NAMES",
    "PartialDiceMetric",
    "evaluate_case",
    "format_table",
    "mean_std",
    "organ_metrics",
    "organ_statistics",
    "partial_dice",
    "per_class_dice_metrics",
    "summarize",
    "write_reports",
    "write_statistics_csv",
    "write_statistics_json",
]
