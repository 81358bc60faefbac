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

"""Whole-volume inference driver of the bundle (``configs/inference.json``; every slice segmented with its
neighbours as channels), fold ensembles and evaluation against labels.

The bundle config defines the MONAI components (``network_def``, ``preprocessing``, ``inferer``,
``postprocessing``) exactly as MONAI Label expects them; :class:`SegmentationRunner` drives them case by case,
so that one bad input (a 2D image, a 4D series, an unreadable file, a folder without a DICOM series, NaNs) is
reported with its name and does not stop the other cases, existing outputs are not overwritten unless asked,
and several checkpoints can be combined (majority vote of label maps, the paper, or mean of probabilities).

The run is split in three parts: the output plan (:mod:`pipofan_monai.apps.inference.outputs`: names, mirrored
folders, overwrite / skip, DICOM SEG pre-checks, claims), the reporter (:mod:`pipofan_monai.apps.inference.report`:
log, failures, evaluation, overview pictures, statistics, ``report.json``) and the loop here, which loads the
next case in a background thread while the current one is in the network.

Each case goes through :class:`~pipofan_monai.apps.inference.pipeline.CasePipeline` (load -> 2.5D inference per
checkpoint -> ensemble -> invert -> post-process -> save). The network and the preprocessing come from the
checkpoint's plans (:mod:`pipofan_monai.plans`); every checkpoint of an ensemble must carry the same plans.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from monai.transforms import Compose

from pipofan_monai.vocabulary import LabelSpace
from pipofan_monai.vocabulary.datasets import CLASS_NAMES
from pipofan_monai.inference.backends import prepare_network
from pipofan_monai.inference.dicom_seg import SaveDicomSegd
from pipofan_monai.apps.inference.inputs import as_items, case_name, resolve_inputs
from pipofan_monai.apps.inference.outputs import CaseSkipped, OutputPlan, parse_overwrite
from pipofan_monai.apps.inference.pipeline import CasePipeline, StageTimer
from pipofan_monai.apps.inference.report import CaseExtras, RunReporter
from pipofan_monai.plans import check_plans_match, load_network_weights, read_plans
from pipofan_monai.utils import as_bool, root_error

__all__ = ["InferenceError", "SegmentationRunner", "resolve_inputs"]

logger = logging.getLogger("pipofan.inference")

_parse_overwrite = parse_overwrite  # the name earlier code imported


class InferenceError(RuntimeError):
    """Raised at the end of a run in which some inputs failed; the message lists every failure."""


class SegmentationRunner:
    """Run the bundle's components over many volumes, robustly, with optional ensembles and evaluation.

    Args:
        network: the instantiated network (``network_def``, moved to the compute device); weights are loaded by
            :py:meth:`run` (a deep copy per extra checkpoint for ensembles).
        preprocessing: ``Compose`` whose first transform loads ``{"image": path}`` (the config's
            ``preprocessing``); gives ``image`` ``(1, H', W', D)`` with its applied operations.
        inferer: volume inferer, ``(1, 1, H', W', D)`` -> ``(1, K, H', W', D)`` logits (``SlidingSliceInferer``).
        postprocessing: ``Compose`` on ``{"image", "pred"}``: activation, ``Invertd``, ``AsDiscreted(argmax)``,
            filtering and ``SaveImaged`` (the config's ``postprocessing``). Output paths and the overwrite check
            use its ``SaveImaged`` transforms; ensembles split it at the first ``AsDiscreted``.
        ensemble_mode: ``"vote"`` (majority vote of the per-checkpoint label maps on the original grid, ties to the
            lowest class id; the paper) or ``"mean"`` (mean of the probabilities, then argmax). Used when several
            checkpoints are given.
        overwrite: ``False`` (default): a case whose output file exists fails with ``FileExistsError`` naming the
            file, other cases go on; ``True``: replace; ``"skip"``: leave a case whose outputs all exist and are
            complete (reported as skipped; see :func:`pipofan_monai.inference.writers.output_is_complete`), segment
            the others again. Temporary files of writes killed in an earlier run are removed first.
        save_overlay: write ``<output_dir>/<name>_overview.png`` per case (axial + coronal slices, organs over
            the windowed CT; with a label, prediction vs ground truth).
        evaluate: compare with the item's ``label`` (mapped to the global classes with its ``dataset`` id) and
            write ``evaluation.json`` / CSV reports into ``report_dir``.
        report_dir: folder for the evaluation reports (default: the output folder of the label ``SaveImaged``).
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace` (class names, organ and dataset
            tables: names and colours of the outputs, label mapping of the evaluation); the bundle passes
            ``@label_space``, made from the checkpoint's plans.
        class_names: instead of ``label_space``, only class names (index = class id; default the paper's four).
        hu_window: display window of the overview PNGs (None: the plans' HU window, else -200..200).
        fail_on_error: raise :class:`InferenceError` at the end when some case failed (the bundle runner then
            exits non-zero); otherwise only log the failures.
        pred_key: key of the prediction. Default ``"pred"``.
        image_key: key of the image. Default ``"image"``.
        plans: the plans the network and preprocessing were built from (:func:`pipofan_monai.plans.resolve_plans`);
            each checkpoint that carries plans must match them (clear error naming both otherwise).
        statistics: write ``<name>_statistics.json`` per case beside its label map and ``statistics.csv`` for the
            run (:mod:`pipofan_monai.evaluation.statistics`: volume, HU, bounding box per organ, on the final label
            map on the original grid with the original CT's HU).
        statistics_organs: organs whose statistics are reported (None: every class).
        report_file: write the run report (``report.json``, see :mod:`pipofan_monai.apps.inference.report`) there
            (None: no report file).
        prefetch: load and preprocess the next case in a background thread while the current one is in the
            network (holds two preprocessed cases in memory).
        device: the compute device (for the report).
        keep_results: keep each case's final label map (``case["label"]``) in the returned summary (the Python
            API's in-memory results).
        mirror_folders: when two inputs in different folders share a name, mirror the input folders under the
            output folder (relative to the inputs' common parent) instead of refusing the second as a clash (see
            :mod:`pipofan_monai.apps.inference.outputs`).
        stream_slices: slices per slab of the streamed inversion + argmax (``None``: the default, 16); ``0``:
            invert the whole volume with ``Invertd`` (full-resolution probabilities in memory). See
            :class:`~pipofan_monai.apps.inference.CasePipeline`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        ensemble_mode: str = "vote",
        overwrite: bool | str = False,
        save_overlay: bool = False,
        evaluate: bool = False,
        report_dir: str | os.PathLike | None = None,
        label_space: LabelSpace | None = None,
        class_names: Sequence[str] | None = None,
        hu_window: Sequence[float] | None = None,
        fail_on_error: bool = True,
        pred_key: str = "pred",
        image_key: str = "image",
        plans: Mapping[str, Any] | None = None,
        stream_slices: int | None = None,
        statistics: bool = False,
        statistics_organs: Sequence[str] | None = None,
        report_file: str | os.PathLike | None = None,
        prefetch: bool = True,
        device: Any = None,
        keep_results: bool = False,
        mirror_folders: bool = False,
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing if isinstance(preprocessing, Compose) else Compose(preprocessing)
        self.inferer = inferer
        self.postprocessing = postprocessing if isinstance(postprocessing, Compose) else Compose(postprocessing)
        self.ensemble_mode = str(ensemble_mode).lower()
        if label_space is not None and class_names is not None:
            raise ValueError("SegmentationRunner takes label_space or class_names, not both (they could disagree).")
        if label_space is None:
            label_space = LabelSpace.create(CLASS_NAMES if class_names is None else class_names, strict=False)
        self.label_space = label_space
        self.class_names = list(label_space.class_names)
        self.fail_on_error = as_bool(fail_on_error, "fail_on_error")
        self.pred_key = pred_key
        self.image_key = image_key
        self.plans = dict(plans) if plans is not None else None
        self.report_dir = report_dir
        self.report_file = report_file
        self.prefetch = as_bool(prefetch, "prefetch")
        self.device = device
        self.keep_results = bool(keep_results)
        self.pipeline = CasePipeline(self.preprocessing, inferer, self.postprocessing, len(self.class_names),
                                     self.ensemble_mode, pred_key, image_key, stream_slices)
        #: optional :class:`~pipofan_monai.apps.inference.pipeline.StageTimer` for callers that drive the pipeline
        self.timer = None
        self.savers = self.pipeline.savers
        #: DICOM SEG writers of the postprocessing (bundle option ``output_format``: "dicom_seg")
        self.seg_writers = [t for t in self.pipeline.post if isinstance(t, SaveDicomSegd)]
        label_savers = [t for t in self.savers if self.pred_key in t.keys]
        if label_savers:
            self.output_dir = str(label_savers[0].saver.folder_layout.output_dir)
        else:
            self.output_dir = str(self.seg_writers[0].output_dir if self.seg_writers else (report_dir or "."))
        self.statistics = as_bool(statistics, "statistics")
        self.outputs = OutputPlan(self.savers, self.seg_writers, self.output_dir, overwrite,
                                  as_bool(save_overlay, "save_overlay"), as_bool(mirror_folders, "mirror_folders"),
                                  image_key)
        # its own copy of the loader: the overview and the statistics re-read a case in the main thread while the
        # prefetch thread reads the next one
        if hu_window is None:
            hu_window = self.plans["preprocessing"]["hu_window"] if self.plans else (-200.0, 200.0)
        self.extras = CaseExtras(copy.deepcopy(self.pipeline.pre[0]), label_space,
                                 tuple(float(v) for v in hu_window), as_bool(evaluate, "evaluate"),
                                 self.outputs.save_overlay, self.statistics, statistics_organs, image_key)

    @property
    def overwrite(self) -> bool | str:
        return self.outputs.overwrite

    @property
    def save_overlay(self) -> bool:
        return self.outputs.save_overlay

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def output_paths(self, image_path: str) -> list[str]:
        """Files the postprocessing's ``SaveImaged`` / ``SaveDicomSegd`` transforms write for ``image_path`` (+ the
        overview PNG and the statistics)."""
        paths = self.outputs.paths(image_path)
        if self.statistics:
            paths.append(self.statistics_path(image_path))
        return paths

    def overlay_path(self, image_path: str) -> str:
        """``<case folder>/<name>_overview.png``."""
        return self.outputs.overlay_path(image_path)

    def statistics_path(self, image_path: str) -> str:
        """``<case folder>/<name>_statistics.json``."""
        return os.path.join(self.outputs.case_dir(image_path), f"{case_name(image_path)}_statistics.json")

    def _networks(self, ckpt_path: str | os.PathLike | Sequence) -> list[torch.nn.Module]:
        paths = [ckpt_path] if isinstance(ckpt_path, (str, os.PathLike)) else list(ckpt_path)
        if not paths:
            raise ValueError("ckpt_path is empty: give a checkpoint file or a list of checkpoint files.")
        self._ckpt_names = [os.fspath(p) for p in paths]
        nets = []
        for i, p in enumerate(paths):
            if self.plans is not None:
                stored = read_plans(p)
                if stored is not None:
                    check_plans_match(self.plans, stored, f"checkpoint {os.fspath(p)} and the bundle's plans (from "
                                                          f"{self.plans.get('source', 'the config')})")
            net = self.network if i == 0 else copy.deepcopy(self.network)
            load_network_weights(net, p)
            # the inferer's backend (torch, or ONNX Runtime on a CPU): exported once per checkpoint, cached beside it
            nets.append(prepare_network(net.eval(), self.plans, p, getattr(self.inferer, "backend", "torch"),
                                        getattr(self.inferer, "sw_device", None)))
            logger.info(f"loaded checkpoint {os.fspath(p)}")
        if len(nets) > 1:
            if self.pipeline.split is None:
                raise ValueError("an ensemble needs an AsDiscreted (argmax) transform in postprocessing.")
            logger.info(f"ensemble of {len(nets)} checkpoints, mode {self.ensemble_mode!r}")
        return nets

    # ------------------------------------------------------------------ one case
    def _load(self, item: Mapping, timer: StageTimer) -> dict:
        """Read and preprocess a case (runs in the prefetch thread); a DICOM folder's geometry is checked by the
        loader (LoadCTd), once."""
        return self.pipeline.load(item[self.image_key], timer)

    def _jobs(self, items: Sequence[Mapping], reporter: RunReporter) -> Iterator[tuple[dict, Mapping, list]]:
        """``(case, item, outputs)`` of every case to compute, in order; skipped and refused cases are reported
        here (and not yielded)."""
        for i, item in enumerate(items):
            path = item[self.image_key]
            case = reporter.new_case(i, path, case_name(path))
            t0 = time.perf_counter()
            try:
                case["outputs"] = outputs = self.output_paths(path)
                self.outputs.decide(path, outputs)
            except CaseSkipped as skip:
                reporter.skipped(case, str(skip))
                continue
            except Exception as exc:  # one bad case must not stop the others; every failure is listed at the end
                reporter.failed(case, root_error(exc), time.perf_counter() - t0)
                continue
            yield case, item, outputs

    def _compute(self, job: tuple[dict, Mapping, list], loaded: Future, timer: StageTimer, t0: float,
                 nets: Sequence[torch.nn.Module], reporter: RunReporter) -> None:
        case, item, outputs = job
        path = item[self.image_key]
        try:
            d = self.pipeline.process(loaded.result(), nets, timer, getattr(self, "_ckpt_names", None))
            pred = d[self.pred_key]
            if self.extras.active:
                with timer("report", "overview/statistics/evaluation"):
                    self.extras(item, pred, case, self.overlay_path(path),
                                self.statistics_path(path) if self.statistics else None)
            if self.keep_results:
                case["label"] = pred
            shown = outputs[-1] if not self.save_overlay or len(outputs) < 2 else outputs[-2]
            reporter.done(case, pred, timer, timer.total, shown)  # the stages, also those run ahead in the background
        except Exception as exc:  # one bad case must not stop the others; every failure is listed at the end
            reporter.failed(case, root_error(exc), time.perf_counter() - t0)
        finally:
            self.outputs.release(outputs)

    # ------------------------------------------------------------------ main
    def run(self, items: Sequence[Mapping | str] | str, ckpt_path: str | os.PathLike | Sequence) -> dict:
        """Segment every item; see the class docstring.

        Args:
            items: paths or item dicts (``{"image": path, "label": path?, "dataset": id?}``), e.g. from
                :py:func:`resolve_inputs`.
            ckpt_path: one checkpoint, or a list of checkpoints (ensemble, combined with ``ensemble_mode``).

        Returns:
            ``{"cases": [{"image", "name", "status" ("ok" | "skipped" | "failed"), "outputs", "shape", "spacing",
            "seconds", "stages", "error"}], "num_ok", "num_skipped", "num_failed", "evaluation": summary or None}``.

        Raises:
            FileNotFoundError, ValueError: checkpoint problems, or with DICOM SEG output an input that is not a
                DICOM series (before any case is processed).
            InferenceError: at the end, when some cases failed and ``fail_on_error``.
        """
        items = as_items(items)
        reporter = RunReporter(len(items), self.output_dir, self.report_file, self.device, self.class_names,
                               self.plans)
        reporter.add_models([ckpt_path] if isinstance(ckpt_path, (str, os.PathLike)) else list(ckpt_path))
        try:
            self.outputs.start(items)
            nets = self._networks(ckpt_path)
            self._loop(items, nets, reporter)
        except BaseException as exc:
            reporter.error = f"{type(root_error(exc)).__name__}: {root_error(exc)}"
            reporter.write()
            raise
        finally:
            self.outputs.release_all()
        reporter.evaluation = self.extras.finish(str(self.report_dir or self.output_dir),
                                                 os.path.join(self.output_dir, "statistics.csv"))
        summary, failure = reporter.finish()
        if failure and self.fail_on_error:
            raise InferenceError(failure)
        return summary

    def _loop(self, items: Sequence[Mapping], nets: Sequence[torch.nn.Module], reporter: RunReporter) -> None:
        """Compute the cases in order; with ``prefetch`` the next case is read and preprocessed in a background
        thread while the current one is in the network (one case ahead)."""
        jobs = self._jobs(items, reporter)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipofan-load") as pool:

            def submit(job: tuple | None) -> tuple | None:
                if job is None:
                    return None
                timer = StageTimer(self.device)
                t0 = time.perf_counter()
                return job, pool.submit(self._load, job[1], timer), timer, t0

            current = submit(next(jobs, None))
            while current is not None:
                job, loaded, timer, t0 = current
                ahead = submit(next(jobs, None)) if self.prefetch else None
                self._compute(job, loaded, timer, t0, nets, reporter)
                current = ahead if self.prefetch else submit(next(jobs, None))
