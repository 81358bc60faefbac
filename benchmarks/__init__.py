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

"""Throughput and memory benchmarks of PIPO-FAN (``python -m pipofan_monai benchmark`` from a source checkout; not
part of the wheel): network inference, training steps, end-to-end bundle inference of a synthetic CT with a
per-stage breakdown, the training data path, inference memory, the label-map agreement of the optimized path with
the fp32 eager baseline, and the CPU section (torch vs ONNX Runtime vs MONAI's spleen 3D UNet).

Two execution paths of the same network (same weights) are compared:

- ``baseline``: fp32, contiguous (NCHW) memory, eager.
- ``optimized``: on CUDA, autocast in bfloat16 (float16 with gradient scaling on GPUs without bf16),
  ``channels_last``, optionally ``torch.compile``; inputs are copied from pinned host memory with
  ``non_blocking=True``. On the CPU, the candidates ``fp32 + channels_last`` and (where the CPU has native bf16)
  ``bf16 autocast + channels_last`` are measured, and the fastest one whose label maps agree with the baseline's
  (Dice >= 0.99 per organ) is used; if none beats the baseline, the optimized path IS the baseline (reported).

Modules: ``common`` (paths, devices, networks, synthetic CTs, memory), ``network`` (inference / training / label
agreement), ``end_to_end``, ``data_path``, ``memory`` (inference memory), ``cpu`` (the CPU section), ``run`` (the
driver and its table). This package re-exports their public names.
"""

from benchmarks.common import (BASELINE, DEFAULT_CONFIG, ExecutionPath, _cpu_has_bf16, _parse_ints, _phantom,
                               accuracy_slabs, accuracy_volume, calibrate_batchnorm, cpu_candidates,
                               default_amp_dtype, make_network, peak_memory, prepare_network, reset_peak_memory,
                               resolve_device, write_synthetic_ct)
from benchmarks.cpu import CPU_QUICK_SETTINGS, CPU_SETTINGS, format_cpu_report, run_cpu_benchmark, spleen_unet
from benchmarks.data_path import FOUR_DATASETS_SLICES, QUICK_DATA_SETTINGS, benchmark_data_path, format_data_report
from benchmarks.end_to_end import benchmark_end_to_end
from benchmarks.memory import (MEMORY_SLOPE_CHANNELS, QUICK_MEMORY_SETTINGS, _inference_memory_cases,
                               benchmark_inference_memory, format_memory_report)
from benchmarks.network import _dice, benchmark_inference, benchmark_training, label_agreement
from benchmarks.run import QUICK_SETTINGS, SECTIONS, _choose, format_report, run_benchmark

__all__ = [
    "ExecutionPath", "BASELINE", "DEFAULT_CONFIG", "resolve_device", "default_amp_dtype", "cpu_candidates",
    "prepare_network", "make_network", "calibrate_batchnorm", "accuracy_volume", "accuracy_slabs", "peak_memory",
    "reset_peak_memory", "benchmark_inference", "benchmark_training", "label_agreement", "benchmark_end_to_end",
    "run_benchmark", "format_report", "QUICK_SETTINGS", "SECTIONS", "benchmark_data_path", "format_data_report",
    "write_synthetic_ct", "FOUR_DATASETS_SLICES", "QUICK_DATA_SETTINGS", "benchmark_inference_memory",
    "format_memory_report", "QUICK_MEMORY_SETTINGS", "MEMORY_SLOPE_CHANNELS", "_cpu_has_bf16", "_parse_ints",
    "_phantom", "_inference_memory_cases", "_dice", "_choose", "run_cpu_benchmark", "format_cpu_report",
    "CPU_SETTINGS", "CPU_QUICK_SETTINGS", "spleen_unet",
]
