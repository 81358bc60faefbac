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

Each case goes through :class:`~pipofan_monai.inference.pipeline.CasePipeline` (load -> 2.5D inference per
checkpoint -> ensemble -> invert -> post-process -> save). The network and the preprocessing come from the
checkpoint's plans (:mod:`pipofan_monai.plans`); every checkpoint of an ensemble must carry the same plans.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data.folder_layout import FolderLayout
from monai.transforms import Compose, Orientation

from pipofan_monai.dataset_conversion.datasets import CLASS_NAMES
from pipofan_monai.inference.backends import prepare_network
from pipofan_monai.inference.dicom_seg import SaveDicomSegd, check_dicom_seg_input
from pipofan_monai.inference.inputs import as_items, case_name, resolve_inputs
from pipofan_monai.inference.pipeline import CasePipeline
from pipofan_monai.inference.writers import output_is_complete, remove_stale_temp_files
from pipofan_monai.partial_labels import get_labeled_mask
from pipofan_monai.plans import check_plans_match, load_network_weights, read_plans
from pipofan_monai.preprocessing.io import check_dicom_folder
from pipofan_monai.organs import validate_class_names
from pipofan_monai.utils import as_bool, root_error

__all__ = ["InferenceError", "SegmentationRunner", "resolve_inputs"]

logger = logging.getLogger("pipofan.inference")


class InferenceError(RuntimeError):
    """Raised at the end of a run in which some inputs failed; the message lists every failure."""


# ---------------------------------------------------------------------------------------------- runner
def _parse_overwrite(overwrite: Any) -> bool | str:
    if isinstance(overwrite, str):
        low = overwrite.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no", ""):
            return False
        if low == "skip":
            return "skip"
        raise ValueError(f"overwrite must be true, false or 'skip', got {overwrite!r}.")
    return bool(overwrite)


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
        class_names: class names, index = class id.
        datasets: extra dataset table for label mapping (as ``MapDatasetLabelsd(datasets=...)``).
        hu_window: display window of the overview PNGs.
        fail_on_error: raise :class:`InferenceError` at the end when some case failed (the bundle runner then
            exits non-zero); otherwise only log the failures.
        pred_key: key of the prediction. Default ``"pred"``.
        image_key: key of the image. Default ``"image"``.
        plans: the plans the network and preprocessing were built from (:func:`pipofan_monai.plans.resolve_plans`);
            each checkpoint that carries plans must match them (clear error naming both otherwise).
        organs: optional config-level ``organ_table`` (new organs, colours); labels are mapped by organ name.
        stream_slices: slices per slab of the streamed inversion + argmax (``None``: the default, 16); ``0``:
            invert the whole volume with ``Invertd`` (full-resolution probabilities in memory). See
            :class:`~pipofan_monai.inference.CasePipeline`.
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
        class_names: Sequence[str] = CLASS_NAMES,
        datasets: Mapping[str, Any] | None = None,
        hu_window: Sequence[float] = (-200.0, 200.0),
        fail_on_error: bool = True,
        pred_key: str = "pred",
        image_key: str = "image",
        plans: Mapping[str, Any] | None = None,
        organs: Mapping[str, Any] | None = None,
        stream_slices: int | None = None,
    ) -> None:
        self.network = network
        self.preprocessing = preprocessing if isinstance(preprocessing, Compose) else Compose(preprocessing)
        self.inferer = inferer
        self.postprocessing = postprocessing if isinstance(postprocessing, Compose) else Compose(postprocessing)
        self.ensemble_mode = str(ensemble_mode).lower()
        self.overwrite = _parse_overwrite(overwrite)
        self.save_overlay = as_bool(save_overlay, "save_overlay")
        self.evaluate = as_bool(evaluate, "evaluate")
        self.report_dir = report_dir
        self.class_names = list(class_names)
        self.organs = dict(organs) if organs else None
        self.datasets = datasets
        self.hu_window = tuple(float(v) for v in hu_window)
        self.fail_on_error = as_bool(fail_on_error, "fail_on_error")
        self.pred_key = pred_key
        self.image_key = image_key
        self.plans = dict(plans) if plans is not None else None
        self.pipeline = CasePipeline(self.preprocessing, inferer, self.postprocessing, len(self.class_names),
                                     self.ensemble_mode, pred_key, image_key, stream_slices)
        #: optional :class:`~pipofan_monai.inference.pipeline.StageTimer` (per-stage times of every case)
        self.timer = None
        self.savers = self.pipeline.savers
        #: DICOM SEG writers of the postprocessing (bundle option ``output_format``: "dicom_seg")
        self.seg_writers = [t for t in self.pipeline.post if isinstance(t, SaveDicomSegd)]
        label_savers = [t for t in self.savers if self.pred_key in t.keys]
        if label_savers:
            self.output_dir = str(label_savers[0].saver.folder_layout.output_dir)
        else:
            self.output_dir = str(self.seg_writers[0].output_dir if self.seg_writers else (report_dir or "."))

    # ------------------------------------------------------------------ helpers
    def _label_names(self) -> list[str] | None:
        """The vocabulary for mapping labels by organ name, or None when the names are not organs of the table
        (e.g. ``class1`` placeholders of a checkpoint without plans): labels are then mapped by class id."""
        try:
            return list(validate_class_names(self.class_names, self.organs))
        except ValueError:
            return None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def output_paths(self, image_path: str) -> list[str]:
        """Files the postprocessing's ``SaveImaged`` / ``SaveDicomSegd`` transforms write for ``image_path`` (+ the
        overview PNG)."""
        paths = []
        for t in self.savers:
            saver = t.saver
            kw = saver.fname_formatter({"filename_or_obj": image_path}, saver)
            paths.append(str(saver.folder_layout.filename(**kw)))
        paths.extend(t.output_path(image_path) for t in self.seg_writers)
        if self.save_overlay:
            paths.append(self.overlay_path(image_path))
        return paths

    def overlay_path(self, image_path: str) -> str:
        """``<output_dir>/<name>_overview.png``."""
        return str(FolderLayout(self.output_dir, postfix="overview", extension=".png").filename(subject=image_path))

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

    def _load_label(self, item: Mapping, pred: Any) -> tuple[tuple | None, list[int] | None]:
        """``((label, pred, reoriented), labeled classes)``: the item's label mapped to the global classes and the
        prediction on one grid (both reoriented to RAS when the files are stored differently), or ``(None, None)``
        without a label."""
        if not isinstance(item.get("label"), str):
            return None, None
        from pipofan_monai.preprocessing import LoadCTd, MapDatasetLabelsd

        d = LoadCTd("label")({"label": item["label"], "dataset": item.get("dataset")})
        names = self._label_names()
        d = MapDatasetLabelsd("label", num_classes=None if names else self.num_classes, datasets=self.datasets,
                              class_names=names, organs=self.organs)(d)
        label = d["label"]
        mask = get_labeled_mask(label).reshape(-1).tolist()
        labeled = [c for c in range(1, self.num_classes) if mask[c] > 0]
        if tuple(label.shape) != tuple(pred.shape) or not np.allclose(
            np.asarray(label.affine), np.asarray(pred.affine), atol=1e-3
        ):
            # stored differently (orientation): compare both in RAS
            ras = Orientation("RAS", labels=None)
            label, pred_ras = ras(label), ras(pred)
            if tuple(label.shape) != tuple(pred_ras.shape) or not np.allclose(
                np.asarray(label.affine), np.asarray(pred_ras.affine), atol=1e-2
            ):
                raise ValueError(
                    f"label {item['label']} (shape {tuple(label.shape)}) is not on the grid of image {item['image']} "
                    f"(shape {tuple(pred_ras.shape)})."
                )
            return (label, pred_ras, True), labeled
        return (label, pred, False), labeled

    def _segment(self, item: Mapping, nets: Sequence[torch.nn.Module]) -> dict:
        image_path = item[self.image_key]
        if os.path.isdir(image_path):
            check_dicom_folder(image_path)
        return self.pipeline(item, nets, self.timer, getattr(self, "_ckpt_names", None))

    # ------------------------------------------------------------------ main
    def run(self, items: Sequence[Mapping | str] | str, ckpt_path: str | os.PathLike | Sequence) -> dict:
        """Segment every item; see the class docstring.

        Args:
            items: paths or item dicts (``{"image": path, "label": path?, "dataset": id?}``), e.g. from
                :py:func:`resolve_inputs`.
            ckpt_path: one checkpoint, or a list of checkpoints (ensemble, combined with ``ensemble_mode``).

        Returns:
            ``{"cases": [{"image", "name", "status" ("ok" | "skipped" | "failed"), "outputs", "shape", "seconds",
            "error"}], "num_ok", "num_skipped", "num_failed", "evaluation": summary or None}``.

        Raises:
            FileNotFoundError, ValueError: checkpoint problems, or with DICOM SEG output an input that is not a
                DICOM series (before any case is processed).
            InferenceError: at the end, when some cases failed and ``fail_on_error``.
        """
        items = as_items(items)
        if self.seg_writers:  # DICOM SEG output needs DICOM inputs: refuse others by name before any inference
            bad = []
            for item in items:
                try:
                    check_dicom_seg_input(item[self.image_key])
                except (ValueError, FileNotFoundError) as e:
                    bad.append(str(e))
            if bad:
                raise ValueError(f"{len(bad)} of {len(items)} inputs cannot get a DICOM SEG output:\n  "
                                 + "\n  ".join(bad))
        nets = self._networks(ckpt_path)
        planned: dict[str, str] = {}
        cases: list[dict] = []
        eval_results: list[dict] = []
        t_start = time.perf_counter()
        for i, item in enumerate(items):
            path = item[self.image_key]
            name = case_name(path)
            case: dict[str, Any] = {"image": path, "name": name, "status": "failed", "outputs": [], "shape": None,
                                    "seconds": 0.0, "error": None}
            cases.append(case)
            t0 = time.perf_counter()
            try:
                outputs = self.output_paths(path)
                case["outputs"] = outputs
                clash = [(o, planned[o]) for o in outputs if o in planned]
                if clash:
                    raise ValueError(
                        f"output {clash[0][0]} would also be written for input {clash[0][1]} (same file name): "
                        "segment these inputs in separate runs or output folders."
                    )
                planned.update({o: path for o in outputs})
                remove_stale_temp_files(outputs)  # left by a write that was killed in an earlier run
                existing = [o for o in outputs if os.path.exists(o)]
                if self.overwrite == "skip":
                    # only a case whose outputs all exist and are complete is done; a truncated file (full disk
                    # or kill in an earlier version) or a missing one means the case is segmented again
                    redo = [o for o in outputs if not output_is_complete(o)]
                    if not redo:
                        case["status"] = "skipped"
                        logger.info(f"[{i + 1}/{len(items)}] {name}: skipped, outputs exist: {outputs[0]}")
                        continue
                    if existing:
                        logger.warning(
                            f"[{i + 1}/{len(items)}] {name}: output {redo[0]} is "
                            + ("incomplete" if os.path.exists(redo[0]) else "missing") + ", segmenting again"
                        )
                elif existing and self.overwrite is not True:
                    broken = [o for o in existing if not output_is_complete(o)]
                    raise FileExistsError(
                        f"output file exists: {existing[0]} (pass --overwrite True to replace it, or --overwrite "
                        "skip to keep complete outputs)."
                        + (f" {broken[0]} is incomplete (an interrupted earlier run)." if broken else "")
                    )
                d = self._segment(item, nets)
                pred = d[self.pred_key]
                case["shape"] = list(pred.shape[1:])
                if self.save_overlay or self.evaluate:
                    self._report_case(item, d, case, eval_results)
                case["status"] = "ok"
                case["seconds"] = round(time.perf_counter() - t0, 2)
                logger.info(
                    f"[{i + 1}/{len(items)}] {name}: shape {tuple(case['shape'])}, {case['seconds']:.1f} s -> "
                    f"{outputs[-1] if not self.save_overlay or len(outputs) < 2 else outputs[-2]}"
                )
            except Exception as exc:  # one bad case must not stop the others; every failure is listed at the end
                e = root_error(exc)
                case["error"] = f"{type(e).__name__}: {e}"
                case["seconds"] = round(time.perf_counter() - t0, 2)
                logger.error(f"[{i + 1}/{len(items)}] {name}: FAILED: {case['error']}")
                logger.debug("traceback", exc_info=True)
        summary = {
            "cases": cases,
            "num_ok": sum(c["status"] == "ok" for c in cases),
            "num_skipped": sum(c["status"] == "skipped" for c in cases),
            "num_failed": sum(c["status"] == "failed" for c in cases),
            "evaluation": None,
        }
        if eval_results:
            summary["evaluation"] = self._write_evaluation(eval_results)
        logger.info(
            f"done in {time.perf_counter() - t_start:.1f} s: {summary['num_ok']} segmented, {summary['num_skipped']} "
            f"skipped, {summary['num_failed']} failed (outputs in {self.output_dir})"
        )
        failed = [c for c in cases if c["status"] == "failed"]
        if failed:
            listing = "\n".join(f"  {c['image']}: {c['error']}" for c in failed)
            msg = f"{len(failed)} of {len(cases)} inputs failed:\n{listing}"
            logger.error(msg)
            if self.fail_on_error:
                raise InferenceError(msg)
        return summary

    def _report_case(self, item: Mapping, d: Mapping, case: dict, eval_results: list) -> None:
        pred = d[self.pred_key]
        pair, labeled = self._load_label(item, pred)
        if self.evaluate and pair is None:
            logger.warning(f"{case['name']}: no label given, not evaluated.")
        if self.evaluate and pair is not None:
            from pipofan_monai.evaluation import evaluate_case

            label, pred_eval, _ = pair
            res = evaluate_case(pred_eval, label, labeled_classes=labeled, class_names=self.class_names,
                                case_id=case["name"])
            eval_results.append(res)
            dice = {k: v["dice"] for k, v in res["organs"].items() if v["applicable"]}
            case["dice"] = dice
            logger.info(f"{case['name']}: Dice " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if v is not None))
        if self.save_overlay:
            from pipofan_monai.visualize import save_overlay_png
            from pipofan_monai.visualize.overlay import class_colors

            original = self.pipeline.pre[0]({self.image_key: item[self.image_key]})[self.image_key]  # the loader
            if pair is not None:
                label, pred_on, reoriented = pair
                if reoriented:  # label and prediction were put in RAS: the image too
                    original = Orientation("RAS", labels=None)(original)
            else:
                label, pred_on = None, pred
            save_overlay_png(original, pred_on, self.overlay_path(item[self.image_key]),
                             class_names=self.class_names, ground_truth=label, window=self.hu_window,
                             colors=class_colors(self.class_names, self.organs),
                             title=case["name"] + ("  (top: prediction, bottom: ground truth)" if label is not None
                                                   else ""))

    def _write_evaluation(self, results: list) -> dict:
        from pipofan_monai.evaluation import format_table, summarize, write_reports

        summary = summarize(results)
        out_dir = str(self.report_dir or self.output_dir)
        paths = write_reports({"cases": results, "summary": summary}, out_dir)
        logger.info("evaluation (%d cases):\n%s\nreports: %s", len(results), format_table(summary), paths["json"])
        return summary
