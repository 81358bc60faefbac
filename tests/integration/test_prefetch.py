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

"""The next case is read while the current one is in the network (stage timestamps of a real run)."""

from __future__ import annotations

import threading
import time

from inference_utils import nifti, random_ct, threshold_ckpt, threshold_runner


def test_next_case_loads_while_the_current_one_is_in_the_network(tmp_path):
    """Stage timestamps: the second case's loading starts before the first case's network pass ends (the network
    sleeps 1 s per call, so this cannot happen by chance in a serial loop), and the models are loaded once."""
    images = [str(nifti(tmp_path / f"c{i}.nii.gz", random_ct(seed=i))) for i in range(3)]
    runner = threshold_runner(tmp_path / "out", delay=1.0)
    spans: list[tuple[str, str, float, float]] = []
    load, process = runner.pipeline.load, runner.pipeline.process

    def timed(kind, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append((kind, threading.current_thread().name, t0, time.perf_counter()))
        return wrapper

    runner.pipeline.load = timed("load", load)
    runner.pipeline.process = timed("process", process)
    loads = []
    import pipofan_monai.apps.inference.runner as runner_module

    orig = runner_module.load_network_weights
    runner_module.load_network_weights = lambda net, p: (loads.append(p), orig(net, p))[1]
    try:
        res = runner.run(images, threshold_ckpt(tmp_path / "t.pt"))
    finally:
        runner_module.load_network_weights = orig
    assert res["num_ok"] == 3 and len(loads) == 1
    load_spans = [s for s in spans if s[0] == "load"]
    process_spans = [s for s in spans if s[0] == "process"]
    assert len(load_spans) == 3 and all(s[1].startswith("pipofan-load") for s in load_spans)
    for k in range(2):  # load of case k+1 starts while case k is in the network
        assert load_spans[k + 1][2] < process_spans[k][3] - 0.5, spans
    # without prefetch the loop is serial
    runner.prefetch, spans[:] = False, []
    runner.outputs.overwrite = True
    runner.run(images, tmp_path / "t.pt")
    load_spans = [s for s in spans if s[0] == "load"]
    process_spans = [s for s in spans if s[0] == "process"]
    assert all(load_spans[k + 1][2] >= process_spans[k][3] for k in range(2))
