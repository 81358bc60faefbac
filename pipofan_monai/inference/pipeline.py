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

"""The one inference case pipeline: load -> 2.5D inference per checkpoint -> ensemble -> invert -> post-process
-> save, with every transform timed by stage.

:class:`CasePipeline` runs the bundle's own components (the ``preprocessing``, ``inferer`` and ``postprocessing``
of ``inference.json``) on one case; :class:`~pipofan_monai.inference.runner.SegmentationRunner` calls it for every
case, and the benchmark calls it too (with a :class:`StageTimer`), so the measured pipeline is the shipped one.

With several checkpoints, the postprocessing chain is split at its first ``AsDiscreted``: the part before it
(softmax, ``Invertd`` back to the original grid) runs per checkpoint, the combination happens on the original grid
(vote: on the argmaxed label maps; mean: on the probabilities), the rest (connected components, saving) runs once.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, Invertd, LoadImaged, SaveImaged
from monai.utils import convert_to_dst_type

from pipofan_monai.ensembling import ENSEMBLE_MODES, majority_vote, mean_probabilities
from pipofan_monai.utils import filename_of

__all__ = ["STAGES", "StageTimer", "stage_of", "CasePipeline", "check_network_output"]

#: the stages of a case, in order
STAGES = ("load", "preprocess", "network", "ensemble", "invert", "postprocess", "save")


def stage_of(transform: Any) -> str:
    """The stage a bundle transform belongs to (for timing)."""
    from pipofan_monai.preprocessing import CheckAffined, CheckCTIntensityd, CheckVolumed

    if isinstance(transform, (LoadImaged, CheckVolumed, CheckAffined, CheckCTIntensityd)):
        return "load"
    if isinstance(transform, Invertd):
        return "invert"
    from pipofan_monai.inference.dicom_seg import SaveDicomSegd

    if isinstance(transform, (SaveImaged, SaveDicomSegd)):
        return "save"
    return "postprocess" if getattr(transform, "_pipofan_post", False) else "preprocess"


class StageTimer:
    """Accumulates wall time per stage and per transform (``[name, stage, seconds]``), synchronising the CUDA
    device around each measurement so that asynchronous kernels are charged to their own stage.

    Args:
        device: the compute device (synchronised when it is a CUDA device).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = {s: 0.0 for s in STAGES}
        self.transforms: list[list] = []

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, stage: str, name: str | None = None) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t0
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
            self.transforms.append([name or stage, stage, dt])

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


@contextlib.contextmanager
def _no_timer(stage: str, name: str | None = None) -> Iterator[None]:
    yield


class CasePipeline:
    """Segment one case with the bundle's components.

    Args:
        preprocessing: ``Compose`` whose first transform loads ``{"image": path}``; gives ``image`` ``(1, H', W', D)``
            with its applied operations (for ``Invertd``).
        inferer: volume inferer, ``(1, 1, H', W', D)`` -> ``(1, K, H', W', D)`` logits (``SlidingSliceInferer``).
        postprocessing: ``Compose`` on ``{"image", "pred"}``: activation, ``Invertd``, ``AsDiscreted(argmax)``,
            filtering, ``SaveImaged``.
        num_classes: K (for the vote).
        ensemble_mode: ``"vote"`` or ``"mean"`` (see :mod:`pipofan_monai.ensembling`).
        pred_key, image_key: keys of the prediction and the image.
    """

    def __init__(
        self,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        num_classes: int,
        ensemble_mode: str = "vote",
        pred_key: str = "pred",
        image_key: str = "image",
    ) -> None:
        mode = str(ensemble_mode).lower()
        if mode not in ENSEMBLE_MODES:
            raise ValueError("ensemble_mode must be " + " or ".join(map(repr, ENSEMBLE_MODES)) + f", got {ensemble_mode!r}.")
        self.preprocessing = preprocessing if isinstance(preprocessing, Compose) else Compose(preprocessing)
        self.inferer = inferer
        self.postprocessing = postprocessing if isinstance(postprocessing, Compose) else Compose(postprocessing)
        self.num_classes = int(num_classes)
        self.ensemble_mode = mode
        self.pred_key = pred_key
        self.image_key = image_key
        self.pre = list(self.preprocessing.flatten().transforms)
        self.post = list(self.postprocessing.flatten().transforms)
        for t in self.post:
            with contextlib.suppress(AttributeError):
                t._pipofan_post = True  # timing: unknown postprocessing transforms count as "postprocess"
        split = next((i for i, t in enumerate(self.post) if isinstance(t, AsDiscreted)), None)
        self.split = split
        self.savers = [t for t in self.post if isinstance(t, SaveImaged)]

    def load(self, path: str, timer: Callable = _no_timer) -> dict:
        """Run the preprocessing on ``{"image": path}``."""
        d: Any = {self.image_key: path}
        for t in self.pre:
            with timer(stage_of(t), type(t).__name__):
                d = t(d)
        return d

    def _apply(self, transforms: Sequence[Callable], d: Any, timer: Callable) -> Any:
        for t in transforms:
            with timer(stage_of(t), type(t).__name__):
                d = t(d)
        return d

    def infer(self, d: Mapping, net: torch.nn.Module, timer: Callable = _no_timer, name: str = "network") -> torch.Tensor:
        """Logits ``(K, H', W', D)`` of one network on the preprocessed image, checked finite (``name``: the
        checkpoint, for the message)."""
        with timer("network", type(self.inferer).__name__), torch.no_grad():
            logits = self.inferer(d[self.image_key][None], net)[0]
        check_network_output(logits, name, filename_of(d[self.image_key]))
        return logits

    def __call__(self, item: Mapping | str, nets: Sequence[torch.nn.Module], timer: Callable | None = None,
                 names: Sequence[str] | None = None) -> dict:
        """Segment ``item`` (a path or ``{"image": path, ...}``) with one network or an ensemble (``names``: the
        checkpoints, for messages).

        Returns:
            the final data dict (``pred`` on the original grid, after the postprocessing, saved by its savers).
        """
        timer = timer or _no_timer
        names = list(names) if names else [f"network {i}" for i in range(len(nets))]
        path = item if isinstance(item, str) else item[self.image_key]
        d = self.load(path, timer)
        if len(nets) == 1:
            d[self.pred_key] = self.infer(d, nets[0], timer, names[0])
            return self._apply(self.post, d, timer)
        if self.split is None:
            raise ValueError("an ensemble needs an AsDiscreted (argmax) transform in postprocessing.")
        head, argmax, tail = self.post[: self.split], self.post[self.split], self.post[self.split + 1 :]
        labels: list = []
        last: dict = {}

        def per_checkpoint_probabilities() -> Iterator[Any]:
            for net, name in zip(nets, names):  # one checkpoint at a time: memory stays at two probability maps
                dk = self._apply(head, {**d, self.pred_key: self.infer(d, net, timer, name)}, timer)
                last.clear()
                last.update(dk)
                if self.ensemble_mode == "vote":
                    with timer("ensemble", "argmax"):
                        labels.append(argmax(dict(dk))[self.pred_key].to(torch.uint8))
                yield dk[self.pred_key]

        probs = per_checkpoint_probabilities()
        need_mean = self.ensemble_mode == "mean" or any(isinstance(t, SaveImaged) and "prob" in t.keys for t in tail)
        if need_mean:  # not timed as a whole: it pulls the per-checkpoint stages, which time themselves
            mean = mean_probabilities(probs)
        else:
            for _ in probs:
                pass
        with timer("ensemble", self.ensemble_mode):
            out = dict(last)
            if need_mean and "prob" in out:
                out["prob"] = mean
            if self.ensemble_mode == "mean":
                out[self.pred_key] = mean
                out = argmax(out)
            else:
                voted = majority_vote(labels, self.num_classes)
                out[self.pred_key] = convert_to_dst_type(voted, last[self.pred_key], dtype=torch.float32)[0]
        return self._apply(tail, out, timer)


def check_network_output(logits: torch.Tensor, ckpt_name: str, image_name: str) -> None:
    """Raise ``ValueError`` naming the checkpoint and the image when the network output holds NaN or inf
    (an argmax over NaN is class 0: an all-background result that would otherwise pass as a real one).

    Args:
        logits: the network output ``(B, K, ...)``.
        ckpt_name: the checkpoint that produced it.
        image_name: the input image.
    """
    t = logits.as_tensor() if isinstance(logits, MetaTensor) else torch.as_tensor(logits)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise ValueError(
            f"the network output of checkpoint {ckpt_name!r} on {image_name} holds {n_nan} NaN and {n_inf} inf "
            f"values (of {t.numel()}): the checkpoint's weights are broken, or the computation overflowed (try "
            "amp=False)."
        )
