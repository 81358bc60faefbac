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
of ``inference.json``) on one case; :class:`~pipofan_monai.apps.inference.runner.SegmentationRunner` calls it for every
case, and the benchmark calls it too (with a :class:`StageTimer`), so the measured pipeline is the shipped one.

With several checkpoints, the postprocessing chain is split at its first ``AsDiscreted``: the part before it
(softmax, ``Invertd`` back to the original grid) runs per checkpoint, the combination happens on the original grid
(vote: on the argmaxed label maps; mean: on the probabilities), the rest (connected components, saving) runs once.

Memory at real size (``stream_slices``, default on): the inversion and the argmax run slab by slab
(:class:`~pipofan_monai.inference.streaming.SlabInverter`), so the full-resolution probability volume (4 MiB per
512² slice for 4 classes, 8.3 MiB per slice measured with the copies of the whole-volume path) is never built; the
label maps are ``uint8``; the vote is counted slab by slab; the mean ensemble averages the probabilities at the
network's resolution before inverting (resizing is linear: the same mean up to float rounding, so the argmax can
differ only where two classes tie within about 1e-6). Where streaming does not apply (``save_probabilities``,
other postprocessing or preprocessing transforms) or with ``stream_slices=0``, the whole volume is inverted with
``Invertd`` as before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Compose, Invertd, LoadImaged, SaveImaged
from monai.utils import convert_to_dst_type

from pipofan_monai.ensembling import ENSEMBLE_MODES, majority_vote, mean_probabilities
from pipofan_monai.inference.streaming import DEFAULT_STREAM_SLICES, SlabInverter
from pipofan_monai.utils import filename_of

logger = logging.getLogger("pipofan.inference")

__all__ = ["STAGES", "StageTimer", "stage_of", "CasePipeline", "check_network_output"]

#: the stages of a case, in order
STAGES = ("load", "preprocess", "network", "ensemble", "invert", "postprocess", "save")
#: stages that run on the host only (timed without synchronising the device)
_HOST_STAGES = ("load", "preprocess")


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
        #: ``(stage, name, start, end)`` per measurement (``time.perf_counter`` seconds): when each stage ran
        self.spans: list[tuple[str, str, float, float]] = []

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, stage: str, name: str | None = None) -> Iterator[None]:
        # reading and preprocessing run on the CPU, possibly in the runner's prefetch thread while the network runs:
        # a device synchronisation there would make the loading wait for the network
        sync = stage not in _HOST_STAGES
        if sync:
            self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                self._sync()
            t1 = time.perf_counter()
            dt = t1 - t0
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt
            self.transforms.append([name or stage, stage, dt])
            self.spans.append((stage, name or stage, t0, t1))

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
        stream_slices: slices per slab of the streamed inversion + argmax (``None``: the default,
            :data:`~pipofan_monai.inference.streaming.DEFAULT_STREAM_SLICES`); ``0``: invert the whole volume with
            ``Invertd`` (MONAI's way; the full-resolution probabilities are materialised).
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
        stream_slices: int | None = None,
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
        slices = DEFAULT_STREAM_SLICES if stream_slices is None else int(stream_slices)
        if slices < 0:
            raise ValueError(f"stream_slices must be >= 0 (0: invert the whole volume), got {stream_slices}.")
        self.stream_slices = slices
        #: the slab-by-slab inversion + argmax, or None (``stream_reason`` says why): the whole volume is inverted
        self.streamer: SlabInverter | None = None
        self.stream_reason: str | None = "stream_slices is 0"
        if slices and split is None:
            self.stream_reason = "no AsDiscreted (argmax) in the postprocessing"
        elif slices and any(isinstance(t, SaveImaged) and any(k != pred_key for k in t.keys) for t in self.post):
            self.stream_reason = "the postprocessing saves more than the label map (probabilities)"
        elif slices:
            self.streamer, self.stream_reason = SlabInverter.from_postprocessing(
                self.post[:split], self.post[split], slices, self.num_classes, pred_key, image_key)

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
        path = item if isinstance(item, str) else item[self.image_key]
        return self.process(self.load(path, timer or _no_timer), nets, timer, names)

    def process(self, d: dict, nets: Sequence[torch.nn.Module], timer: Callable | None = None,
                names: Sequence[str] | None = None) -> dict:
        """Segment a case loaded by :py:meth:`load` (the rest of :py:meth:`__call__`: network, ensemble, inversion,
        post-processing, saving); the runner loads the next case in the background while this runs."""
        timer = timer or _no_timer
        names = list(names) if names else [f"network {i}" for i in range(len(nets))]
        streamer = self.streamer
        if streamer is not None:
            reason = streamer.why_not(d[self.image_key])
            if reason is not None:
                logger.debug(f"{filename_of(d[self.image_key])}: inverting the whole volume: {reason}")
                streamer = None
        if streamer is not None:
            return self._streamed(d, nets, timer, names, streamer)
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

    # ------------------------------------------------------------------ streamed (slab by slab) path
    def _probabilities(self, d: Mapping, net: torch.nn.Module, timer: Callable, name: str,
                       streamer: SlabInverter) -> dict:
        """``d`` with ``pred``: the activated network output ``(K, h, w, D)`` on the preprocessed grid (the logits
        are dropped as soon as the activation has run)."""
        return self._probabilities_of(d, self.infer(d, net, timer, name), timer, streamer)

    def _stream_labels(self, d: Mapping, net: torch.nn.Module, timer: Callable, name: str,
                       streamer: SlabInverter) -> dict:
        """One network's ``uint8`` label map on the original grid (``d`` with ``pred``): the activation runs slab by
        slab with the inversion where that is bitwise the whole-volume activation (then only the network output,
        not a second volume of probabilities, is held), else on the whole output first."""
        logits = self.infer(d, net, timer, name)
        split = streamer.activates_slabs(logits.shape)
        dk = {**d, self.pred_key: logits} if split else self._probabilities_of(d, logits, timer, streamer)
        del logits
        with timer("invert", type(streamer.invertd).__name__):
            out = streamer.labels(dk, activate=split)
        return out

    def _probabilities_of(self, d: Mapping, logits: Any, timer: Callable, streamer: SlabInverter) -> dict:
        dk = dict(d)
        dk[self.pred_key] = logits
        return self._apply(streamer.activation, dk, timer)

    def _streamed(self, d: dict, nets: Sequence[torch.nn.Module], timer: Callable, names: Sequence[str],
                  streamer: SlabInverter) -> dict:
        """The case with the slab-by-slab inversion + argmax (the ``invert`` stage includes the argmax)."""
        tail = self.post[self.split + 1 :]
        if len(nets) == 1:
            out = self._stream_labels(d, nets[0], timer, names[0], streamer)
            return self._apply(tail, out, timer)
        if self.ensemble_mode == "mean":  # the mean of the probabilities at the network's resolution, then inverted
            last: dict = {}

            def low_resolution_probabilities() -> Iterator[Any]:
                for net, name in zip(nets, names):  # one checkpoint at a time: two low-resolution probability maps
                    dk = self._probabilities(d, net, timer, name, streamer)
                    p = dk.pop(self.pred_key)
                    last.clear()
                    last.update(dk)
                    yield p

            # not timed as a whole: it pulls the per-checkpoint stages, which time themselves
            mean = mean_probabilities(low_resolution_probabilities())
            with timer("invert", type(streamer.invertd).__name__):
                out = streamer.labels(last, probabilities=mean)
            del mean
            return self._apply(tail, out, timer)
        labels: list = []
        out = {}
        for net, name in zip(nets, names):
            out = self._stream_labels(d, net, timer, name, streamer)
            labels.append(out[self.pred_key])
        with timer("ensemble", "vote"):
            out = dict(out)
            out[self.pred_key] = self._slab_vote(labels, streamer.slices)
        del labels
        return self._apply(tail, out, timer)

    def _slab_vote(self, maps: Sequence[Any], slices: int) -> Any:
        """:func:`~pipofan_monai.ensembling.majority_vote` of ``uint8`` label maps ``(1, H, W, D)``, ``slices``
        slices at a time (its int16 vote counts are ``K x 2`` bytes per voxel: 2 MiB per 512² slice for 4 classes,
        only for one slab here); metadata of the last map, as the whole-volume vote."""
        plain = [m.as_tensor() if isinstance(m, MetaTensor) else torch.as_tensor(m) for m in maps]
        shapes = {tuple(m.shape) for m in plain}
        if len(shapes) != 1:
            raise ValueError(f"the label maps of the ensemble have different shapes: {sorted(shapes)}.")
        voted = torch.empty_like(plain[0])
        depth = plain[0].shape[-1]
        for z0 in range(0, depth, slices):
            z1 = min(depth, z0 + slices)
            voted[..., z0:z1] = majority_vote([m[..., z0:z1] for m in plain], self.num_classes)
        return convert_to_dst_type(voted, maps[-1])[0]


def check_network_output(logits: torch.Tensor, ckpt_name: str, image_name: str) -> None:
    """Raise ``ValueError`` naming the checkpoint and the image when the network output holds NaN or inf
    (an argmax over NaN is class 0: an all-background result that would otherwise pass as a real one).

    Args:
        logits: the network output ``(B, K, ...)``.
        ckpt_name: the checkpoint that produced it.
        image_name: the input image.
    """
    from pipofan_monai.preprocessing.intensity import all_finite

    t = logits.as_tensor() if isinstance(logits, MetaTensor) else torch.as_tensor(logits)
    if not all_finite(t):  # chunk by chunk: no abs copy and boolean volumes of the whole output
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise ValueError(
            f"the network output of checkpoint {ckpt_name!r} on {image_name} holds {n_nan} NaN and {n_inf} inf "
            f"values (of {t.numel()}): the checkpoint's weights are broken, or the computation overflowed (try "
            "amp=False)."
        )
