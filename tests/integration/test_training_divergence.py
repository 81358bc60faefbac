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

"""A training that blows up stops with its epoch, iteration and learning rate named, and keeps the last good
checkpoints; resuming with another network width is refused by the plans before any weight is touched. The
bundle's training workflow in-process, tiny network on the tiny synthetic dataset."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from training_utils import tiny_workflow
from pipofan_monai.plans import PlansMismatchError
from pipofan_monai.apps.training import DivergenceGuard, TrainingDivergedError

def _root_cause(e: BaseException) -> BaseException:
    """The error behind MONAI's "Failed to evaluate ConfigExpression" wrappers (as the traceback shows it)."""
    while True:
        nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
        if nxt is None:
            return e
        e = nxt


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _engine_with(net: torch.nn.Module, losses: list[float], guard: DivergenceGuard) -> Engine:
    def step(engine, batch):
        return {"loss": losses[engine.state.iteration - 1]}

    engine = Engine(step)
    guard.attach(engine)
    return engine


@pytest.mark.parametrize("loss, weight, expected", [
    (2e6, 1.0, r"loss 2e\+06"),
    (float("nan"), 1.0, r"loss nan"),
    (0.5, 3e6, r"largest weight 3e\+06"),
    (0.5, float("inf"), r"largest weight inf"),
])
def test_guard_stops_on_a_blown_loss_or_weight(loss, weight, expected):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.125)
    engine = _engine_with(net, [0.7, 0.6, 0.5, loss], DivergenceGuard(net, opt, limit=1e6))
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: net.bias.data.fill_(weight))
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, iteration 2/2 \(iteration 4 overall\), "
                                                    r"learning rate 0\.125: " + expected):
        engine.run(range(2), max_epochs=2)


def test_guard_passes_a_healthy_run_and_null_checks_finiteness_only():
    net = torch.nn.Linear(2, 2)
    net.weight.data.fill_(1e7)
    _engine_with(net, [5e8] * 4, DivergenceGuard(net, limit=None)).run(range(2), max_epochs=2)  # finite: fine
    assert DivergenceGuard(net, limit=None).largest_weight() == 1e7
    net.weight.data[0, 0] = math.nan
    assert math.isnan(DivergenceGuard(net).largest_weight())
    with pytest.raises(ValueError, match="divergence_limit must be > 0"):
        DivergenceGuard(net, limit=0)


def test_huge_learning_rate_stops_in_the_first_epoch_and_saves_nothing(demo, tmp_path):
    """The reported case: ``--learning_rate 1e6`` trained to loss 1.7e14, weights 4e33, and saved model.pt."""
    wf = tiny_workflow(tmp_path, demo, max_epochs=2, learning_rate=1e6)
    with pytest.raises(Exception) as err:
        wf.run()
    cause = _root_cause(err.value)
    assert isinstance(cause, TrainingDivergedError), repr(cause)
    # the authors' schedule decays the rate from the first epoch on: 1e6 * 0.99
    assert re.search(r"epoch 1, iteration 1/2 \(iteration 1 overall\), learning rate 9\.9e\+05: .*largest weight",
                     str(cause)), str(cause)
    assert not (tmp_path / "models" / "model.pt").exists()
    assert not (tmp_path / "runs" / "last.pt").exists()


def test_divergence_in_epoch_two_keeps_epoch_one_checkpoints(demo, tmp_path):
    wf = tiny_workflow(tmp_path, demo, max_epochs=3)
    trainer = wf.parser.get_parsed_content("train#trainer")
    optimizer = wf.parser.get_parsed_content("optimizer")
    saved = {}

    def blow_up(engine):  # after epoch 1 is complete: its checkpoints are written, then the lr explodes
        saved.update(best=_digest(tmp_path / "models" / "model.pt"), last=_digest(tmp_path / "runs" / "last.pt"))
        for group in optimizer.param_groups:
            group["lr"] = 1e6

    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), blow_up)
    with pytest.raises(Exception) as err:
        wf.run()
    cause = _root_cause(err.value)
    assert isinstance(cause, TrainingDivergedError), repr(cause)
    assert "epoch 2, iteration 1/2 (iteration 3 overall), learning rate 1e+06" in str(cause)
    assert _digest(tmp_path / "models" / "model.pt") == saved["best"]
    assert _digest(tmp_path / "runs" / "last.pt") == saved["last"]
    last = torch.load(tmp_path / "runs" / "last.pt", map_location="cpu", weights_only=False)
    assert last["engine"]["epoch"] == 1
    assert max(float(v.abs().max()) for v in last["model"].values() if v.is_floating_point()) < 1e3
    assert [r["epoch"] for r in json.loads((tmp_path / "runs" / "metrics.json").read_text())] == [1]


def test_resume_with_another_width_names_the_setting_and_both_values(demo, tmp_path):
    wf = tiny_workflow(tmp_path, demo, max_epochs=1)
    wf.run()
    wf.finalize()
    before = _digest(tmp_path / "runs" / "last.pt")
    wf = tiny_workflow(tmp_path, demo, max_epochs=2, resume=True, network_channels=[8, 16, 32, 64, 64])
    with pytest.raises(Exception) as err:
        wf.run()
    cause = _root_cause(err.value)
    msg = str(cause)
    assert isinstance(cause, PlansMismatchError), repr(cause)
    assert f"cannot resume from {tmp_path / 'runs' / 'last.pt'}" in msg
    assert "network_channels: last.pt [4, 8, 16, 32, 32], this run [8, 16, 32, 64, 64]" in msg
    assert "size mismatch" not in msg and len(msg) < 1000
    assert _digest(tmp_path / "runs" / "last.pt") == before
    # a last.pt without plans (written before they existed): the weights' mismatch, in three lines, not hundreds
    last = torch.load(tmp_path / "runs" / "last.pt", map_location="cpu", weights_only=False)
    del last["plans"]
    torch.save(last, tmp_path / "runs" / "last.pt")
    wf = tiny_workflow(tmp_path, demo, max_epochs=2, resume=True, network_channels=[8, 16, 32, 64, 64])
    with pytest.raises(Exception) as err:
        wf.run()
    msg = str(_root_cause(err.value))
    assert msg.startswith(f"cannot resume from {tmp_path / 'runs' / 'last.pt'}: its 'model' does not fit this run: ")
    assert "size mismatch for" in msg and "more lines)" in msg and len(msg) < 1500
