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

"""The CPU cores of a training run on a CPU: torch's intra-op threads and the DataLoader workers share them.

torch starts one intra-op (OpenMP) thread per core. Every operator then waits for all of them at its end, the
waiting thread spinning, so when anything else runs on those cores (the training's own DataLoader worker
processes, or another program) each operator takes as long as its descheduled thread. Measured on the project's
2-core machine at load about 3 (docs/results/quickstart.md): one quick-start training iteration took 3 to 12 s
with 2 threads and 0.51 to 0.60 s with 1 thread. :func:`share_cpu_cores` gives torch the cores the workers leave.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

__all__ = ["available_cores", "share_cpu_cores"]

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (``os.sched_getaffinity``) where the platform has it,
    else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def share_cpu_cores(device: Any, num_workers: int) -> int:
    """On a CPU device, set torch's intra-op threads to the cores left by ``num_workers`` DataLoader workers (at
    least 1), so that the training's processes never ask for more cores than there are. Nothing changes on a GPU
    device (the network does not run on the cores) or where the user chose the thread count
    (``OMP_NUM_THREADS`` set).

    Args:
        device: the training device (``torch.device`` or its name).
        num_workers: DataLoader worker processes of the training.

    Returns:
        torch's intra-op thread count after the call.
    """
    if torch.device(device).type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = available_cores()
    threads = max(1, cores - max(0, int(num_workers)))
    if threads != torch.get_num_threads():
        logger.info(f"training on the CPU: {threads} torch thread(s) for {cores} core(s) and {int(num_workers)} "
                    "DataLoader worker(s)")
        torch.set_num_threads(threads)
    return threads
