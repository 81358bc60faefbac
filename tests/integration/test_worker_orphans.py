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

"""The cache's preprocessing workers end when their parent ends: a fill (``pipofan preprocess``) or a training
filling its cache is killed (SIGKILL or SIGTERM) while its two workers build entries; the workers must be gone
within seconds (they used to live on with parent 1, blocked on a pipe). Processes are found through /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipofan_monai.apps.dataset_conversion import generate_demo_dataset
from pipofan_monai.utils import end_with_parent

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc to find the workers")

# the child fills a cache with 2 workers whose preprocessing blocks (sleeps), so the kill lands mid-fill
_CHILD = textwrap.dedent("""
    import sys, time
    from pipofan_monai.apps.dataset_conversion import load_datalist
    from pipofan_monai.preprocessing.cache import PreprocessedCache
    from pipofan_monai.apps.training.cached_data import CachedSliceDataset

    def slow(self, item):
        print("building", flush=True)
        time.sleep(120)
        raise RuntimeError("not reached")

    PreprocessedCache.preprocess = slow
    items = load_datalist(sys.argv[1])["training"]
    if sys.argv[3] == "fill":
        PreprocessedCache(sys.argv[2], spatial_size=32).fill(items, num_workers=2, progress=False)
    else:  # what a training does: its Dataset fills the cache
        CachedSliceDataset(items, sys.argv[2], spatial_size=32, roi_size=32, num_workers=2, progress=False)
""")


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        state, ppid = _state(int(name))
        if ppid == pid and state not in ("Z", "X", None):
            out.add(int(name))
    return out


def _state(pid: int) -> tuple[str | None, int | None]:
    """``(state letter, parent pid)`` from ``/proc/<pid>/stat``, ``(None, None)`` when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None, None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces: fields after it
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    return _state(pid)[0] not in (None, "Z", "X")  # a zombie has ended (init reaps it, or not in a container)


@pytest.mark.parametrize("how,sig", [("fill", signal.SIGKILL), ("dataset", signal.SIGTERM)])
def test_workers_end_with_their_parent(tmp_path, how, sig):
    datalist = generate_demo_dataset(tmp_path / "demo", num_cases_per_source=1, num_test=0, shape=(24, 24, 8), seed=0)
    script = tmp_path / "fill.py"
    script.write_text(_CHILD)
    parent = subprocess.Popen([sys.executable, str(script), str(datalist), str(tmp_path / "cache"), how], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = _children(parent.pid)
        said = parent.stdout.read() if parent.poll() is not None else ""
        assert len(workers) == 2, f"expected 2 workers, got {workers}; the fill said:\n{said}"
        time.sleep(1.0)  # both are building (sleeping in preprocess), the parent waits on them
        os.kill(parent.pid, sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = sorted(p for p in workers if _alive(p))
        parents = [_state(p)[1] for p in left]
        assert not left, f"workers {left} outlived their parent (killed by {sig.name}); now children of {parents}"
    finally:
        for p in workers:  # ours: never leave them behind when the test fails
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()


def test_end_with_parent_in_a_forked_child(tmp_path):
    """A process that called ``end_with_parent`` ends when its parent exits normally (the parent-death signal and
    the pid watch both apply; either ends it within seconds)."""
    marker = tmp_path / "grandchild.pid"
    mid = os.fork()
    if mid == 0:  # middle process: starts a grandchild that watches it, then exits
        try:
            gc = os.fork()
            if gc == 0:
                try:
                    end_with_parent(os.getppid(), poll_s=0.1)
                    marker.write_text(str(os.getpid()))
                    time.sleep(60)
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 10
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os._exit(0)
    os.waitpid(mid, 0)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(pid), "the grandchild outlived its parent"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
