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

"""Filling many preprocessed cache entries at once: a pool of builder processes, and the sharing of the work with
other processes that fill the same cache (DDP ranks, ``pipofan preprocess`` beside a training run).

:meth:`~pipofan_monai.preprocessing.cache.PreprocessedCache.fill` finds what is missing; this module builds it.
A first pass builds every entry nobody else holds the lock of, a second one waits for the locked entries (and
builds those whose builder failed or died). Build errors are collected and named together at the end, except a
full disk, which stops the fill at once. It is apart from ``cache.py`` because the process pool, its worker setup
and the two passes are scheduling, not what an entry is or how one is built and published.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any

import torch

from pipofan_monai.utils import end_with_parent, is_disk_full, root_error

if TYPE_CHECKING:
    from pipofan_monai.preprocessing.cache import CacheEntry, PreprocessedCache

__all__ = ["build_missing"]

# the cache's logger: a fill logs under one name, whichever of its modules speaks (log filters and tests rely on it)
logger = logging.getLogger("pipofan_monai.preprocessing.cache")

_BUILD_ERRORS = (OSError, ValueError, RuntimeError, KeyError)


def build_missing(
    cache: PreprocessedCache,
    items: Sequence[Mapping[str, Any]],
    todo: Sequence[int],
    entries: list[CacheEntry | None],
    num_workers: int,
    progress: bool,
) -> list[str]:
    """Build the entries of ``items[i]`` for ``i`` in ``todo`` (not empty) into ``entries[i]``, counting them in
    ``cache.last_fill``, with ``num_workers`` processes and a tqdm bar if ``progress``.

    Returns:
        one line per item that could not be preprocessed (its file and error); the others are built.

    Raises:
        OSError: the disk is full (ENOSPC, naming the folder); the fill stops at once.
    """
    n_proc = min(max(1, int(num_workers)), len(todo))
    logger.info(f"cache: preprocessing {len(todo)} of {len(items)} volumes into {cache.cache_dir} "
                f"({n_proc} processes)")
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="preprocessing", unit="volume", disable=not progress, dynamic_ncols=True)
    failures: list[str] = []

    def record(i: int, result: Any) -> None:
        if is_disk_full(result):
            raise result  # no other entry fits either: stop now, naming the folder and its free space
        if isinstance(result, BaseException):
            failures.append(_failure(items[i].get(cache.image_key), result))
        else:
            entries[i] = result[0]
            cache.last_fill["built" if result[1] else "by_others"] += 1
        bar.update(1)

    try:
        with _Builders(cache, n_proc) as builders:
            busy = []  # locked by other processes: their entries are taken (or built) in the second pass
            for i, result in builders.run(items, todo, wait=False):
                if not isinstance(result, BaseException) and result[0] is None:
                    busy.append(i)
                    bar.set_postfix_str(f"{len(busy)} being built by other processes")
                else:
                    record(i, result)
            if busy:
                logger.info(f"cache: waiting for {len(busy)} volumes being preprocessed by other processes")
            for i, result in builders.run(items, busy, wait=True):
                record(i, result)
    finally:
        bar.close()
    return failures


class _Builders:
    """Runs :meth:`PreprocessedCache.build_unless_locked` over items, in this process (``n`` = 1) or in one pool of
    ``n`` processes kept for both passes of :meth:`PreprocessedCache.fill`. :meth:`run` yields ``(index, result)``
    as they finish, ``result`` being ``(entry, built_here)`` or the build error."""

    def __init__(self, cache: PreprocessedCache, n: int) -> None:
        self.cache, self.n, self.pool = cache, int(n), None

    def __enter__(self) -> _Builders:
        if self.n > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            threads = max(1, (os.cpu_count() or 1) // self.n)
            self.pool = ProcessPoolExecutor(self.n, mp_context=ctx, initializer=_worker_init,
                                            initargs=(threads, os.getpid()))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.pool is not None:  # Ctrl-C: finished entries stay, the rest is cancelled
            self.pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)

    def run(self, items: Sequence[Mapping[str, Any]], indices: Sequence[int], wait: bool) -> Iterator[tuple[int, Any]]:
        if self.pool is None:
            for i in indices:
                try:
                    result: Any = self.cache.build_unless_locked(items[i], wait=wait)
                except _BUILD_ERRORS as e:
                    result = e
                yield i, result
            return
        pending = {self.pool.submit(_build_one, self.cache, dict(items[i]), wait): i for i in indices}
        while pending:
            done, _ = wait_futures(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                try:
                    result = fut.result()
                except _BUILD_ERRORS as e:
                    result = e
                yield i, result


def _build_one(cache: PreprocessedCache, item: dict, wait: bool) -> tuple[CacheEntry | None, bool]:
    try:
        return cache.build_unless_locked(item, wait=wait)
    except RuntimeError as e:  # the chained cause does not survive pickling back to the parent: send the root
        raise root_error(e) from None


def _failure(name: Any, e: BaseException) -> str:
    e = root_error(e)
    return f"{name}: {type(e).__name__}: {e}"


def _worker_init(threads: int, parent_pid: int | None = None) -> None:
    end_with_parent(parent_pid)  # a killed fill (or training) never leaves its builders behind
    torch.set_num_threads(threads)

