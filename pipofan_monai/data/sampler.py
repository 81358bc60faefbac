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

"""Samplers that decide which source dataset each training epoch draws from (the authors train the datasets
alternately, one per epoch, and the default follows them)."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

__all__ = ["PartialLabelSampler"]


class PartialLabelSampler(DistributedSampler):
    """Sampler over training items from several partially labeled source datasets.

    - ``mode="round_robin"`` (the paper: datasets "trained alternately, one at a time"): epoch e draws only from
      dataset ``e mod N`` (datasets in order of first appearance). The authors' epoch is one random crop of every
      volume of that dataset; here every epoch has the same length (``samples_per_epoch``, default the size of the
      largest dataset), drawing the dataset's volumes in shuffled order and cycling when it is smaller, because
      ignite engines need a fixed epoch length.
    - ``mode="mixed"``: every epoch is a shuffled pass over all items (mixed-dataset batches; the loss takes a
      label set per sample).

    It subclasses ``DistributedSampler`` so that MONAI workflows call :meth:`set_epoch` at every epoch and, under
    ``torch.distributed``, each rank gets its own shard of the epoch (``samples_per_epoch`` is per epoch in total).
    Without an initialised process group it behaves as a single-process sampler.

    Args:
        dataset_ids: the source dataset of every item, in dataset order (e.g. ``[d.get("dataset") for d in data]``).
        mode: "round_robin" or "mixed".
        samples_per_epoch: items per epoch (all ranks together); default: largest dataset (round robin) or all
            items (mixed).
        shuffle: shuffle items within an epoch.
        seed: base seed; the order of epoch e depends only on (seed, e), so resumed runs continue identically.
        num_replicas: world size (default: from torch.distributed, else 1).
        rank: this rank (default: from torch.distributed, else 0).
        item_seeds: yield ``(index, seed)`` pairs instead of indices, the seed of each draw also a function of
            (seed, epoch) only; wrap the dataset in :class:`~pipofan_monai.apps.training.SeededItemDataset` so that every
            item's random crop and flip follow from its seed. Then an epoch's data does not depend on earlier
            epochs, on the number of workers or on a resume in between (bitwise-equal resumed runs).
    """

    def __init__(
        self,
        dataset_ids: Sequence,
        mode: str = "round_robin",
        samples_per_epoch: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        item_seeds: bool = False,
    ):
        if mode not in ("round_robin", "mixed"):
            raise ValueError(f"mode must be 'round_robin' or 'mixed', got {mode!r}.")
        if len(dataset_ids) == 0:
            raise ValueError("PartialLabelSampler needs at least one training item.")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}.")
        # deliberately not calling DistributedSampler.__init__ (it needs a dataset); set what set_epoch uses
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = False
        self.mode = mode
        self.item_seeds = bool(item_seeds)
        keys = [str(d) if d is not None else "(fully labeled)" for d in dataset_ids]
        self.datasets: list[str] = list(dict.fromkeys(keys))
        self.groups = [np.array([i for i, k in enumerate(keys) if k == name], dtype=np.int64) for name in self.datasets]
        if samples_per_epoch is None:
            samples_per_epoch = max(len(g) for g in self.groups) if mode == "round_robin" else len(keys)
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive, got {samples_per_epoch}.")
        self.total_size = int(math.ceil(samples_per_epoch / num_replicas)) * num_replicas
        self.num_samples = self.total_size // num_replicas

    def dataset_for_epoch(self, epoch: int) -> str | None:
        """Name of the dataset epoch ``epoch`` (1-based, as ignite counts) draws from; None in mixed mode."""
        if self.mode == "mixed":
            return None
        return self.datasets[(epoch - 1) % len(self.datasets)]

    def _epoch_draws(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, item seeds) of the whole epoch (all ranks), both functions of (seed, epoch) only."""
        rng = np.random.default_rng([self.seed, self.epoch])
        pool = self.groups[(self.epoch - 1) % len(self.groups)] if self.mode == "round_robin" else np.concatenate(
            self.groups
        )
        reps = int(math.ceil(self.total_size / len(pool)))
        order = [rng.permutation(pool) if self.shuffle else pool for _ in range(reps)]
        indices = np.concatenate(order)[: self.total_size]
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(0, 2**31 - 1, size=self.total_size)
        return indices, seeds

    def _epoch_indices(self) -> np.ndarray:
        return self._epoch_draws()[0]

    def __iter__(self) -> Iterator:
        indices, seeds = self._epoch_draws()
        mine = indices[self.rank : self.total_size : self.num_replicas].tolist()
        if not self.item_seeds:
            return iter(mine)
        return iter(zip(mine, seeds[self.rank : self.total_size : self.num_replicas].tolist()))

    def __len__(self) -> int:
        return self.num_samples
