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

"""What an inference run tells its user: the log lines, the failures, the evaluation reports, the overview
pictures, the per-organ statistics and the run report (``report.json``).

``report.json`` (written atomically whenever a run ends, also when cases failed)::

    {"pipofan_monai": "0.2.0", "monai": ..., "torch": ..., "python": ..., "device": "cpu",
     "started": "2026-12-05 10:00:00", "seconds": 12.3, "class_names": [...],
     "models": [{"path", "sha256", "plans"}], "output_dir": ...,
     "num_ok": 1, "num_skipped": 0, "num_failed": 0,
     "cases": [{"image", "name", "status", "outputs", "shape", "spacing", "seconds",
                "stages": {"load", "network", "postprocess", "write"}, "error"}]}

``stages`` sums the pipeline's stages (:data:`~pipofan_monai.apps.inference.pipeline.STAGES`): ``load`` = reading +
preprocessing, ``network`` = the network passes and the ensemble, ``postprocess`` = inversion to the original
grid, argmax and filtering, ``write`` = the label files (+ overview and statistics).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from typing import Any, Mapping, Sequence

import numpy as np

from pipofan_monai.utils import atomic_write_json

__all__ = ["RunReporter", "file_sha256", "REPORT_STAGES"]

logger = logging.getLogger("pipofan.inference")

#: report stage -> pipeline stages it sums
REPORT_STAGES = {"load": ("load", "preprocess"), "network": ("network", "ensemble"),
                 "postprocess": ("invert", "postprocess"), "write": ("save", "report")}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    import monai
    import torch

    import pipofan_monai

    return {"pipofan_monai": pipofan_monai.__version__, "monai": monai.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


class RunReporter:
    """Collects the cases of one run and reports them (log, failures, report file).

    Args:
        num_items: number of inputs (for ``[i/n]`` in the log).
        output_dir: the run's output folder (named in the closing log line).
        report_file: where ``report.json`` goes (None: no report file).
        device: the compute device (for the report).
        class_names: class names (for the report).
        plans: the run's plans (for the report's models).
    """

    def __init__(self, num_items: int, output_dir: str, report_file: str | os.PathLike | None = None,
                 device: Any = None, class_names: Sequence[str] = (), plans: Mapping | None = None) -> None:
        self.num_items = num_items
        self.output_dir = output_dir
        self.report_file = os.fspath(report_file) if report_file else None
        self.device = str(device) if device is not None else None
        self.class_names = list(class_names)
        self.plans = plans
        self.models: list[dict] = []
        self.cases: list[dict] = []
        self.evaluation: dict | None = None
        self.error: str | None = None
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ cases
    def new_case(self, index: int, image: str, name: str) -> dict:
        case: dict[str, Any] = {"image": image, "name": name, "status": "failed", "outputs": [], "shape": None,
                                "seconds": 0.0, "error": None, "index": index}
        self.cases.append(case)
        return case

    def _tag(self, case: Mapping) -> str:
        return f"[{case['index'] + 1}/{self.num_items}] {case['name']}"

    def add_models(self, paths: Sequence[str]) -> None:
        """The model files of the run, with their SHA-256 and plans (read when the report is written)."""
        for p in paths:
            self.models.append({"path": os.path.abspath(os.fspath(p)), "sha256": None, "plans": None})

    def skipped(self, case: dict, reason: str) -> None:
        case["status"], case["reason"] = "skipped", reason
        logger.info(f"{self._tag(case)}: skipped, {reason}")

    def failed(self, case: dict, error: BaseException, seconds: float) -> None:
        case["error"] = f"{type(error).__name__}: {error}"
        case["seconds"] = round(seconds, 2)
        logger.error(f"{self._tag(case)}: FAILED: {case['error']}")
        logger.debug("traceback", exc_info=True)

    def done(self, case: dict, pred: Any, timer: Any, seconds: float, shown: str) -> None:
        case["status"] = "ok"
        case["shape"] = [int(s) for s in pred.shape[1:]]
        affine = np.asarray(getattr(pred, "affine", np.eye(4)), dtype=float)
        case["spacing"] = [round(float(v), 6) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
        case["seconds"] = round(seconds, 2)
        if timer is not None:
            case["stages"] = {k: round(sum(timer.seconds.get(s, 0.0) for s in v), 3) for k, v in REPORT_STAGES.items()}
        logger.info(f"{self._tag(case)}: shape {tuple(case['shape'])}, {case['seconds']:.1f} s -> {shown}")

    # ------------------------------------------------------------------ end of run
    def summary(self) -> dict:
        cases = [{k: v for k, v in c.items() if k != "index"} for c in self.cases]
        return {
            "cases": cases,
            "num_ok": sum(c["status"] == "ok" for c in cases),
            "num_skipped": sum(c["status"] == "skipped" for c in cases),
            "num_failed": sum(c["status"] == "failed" for c in cases),
            "evaluation": self.evaluation,
        }

    def finish(self) -> tuple[dict, str | None]:
        """Log the closing lines, write the report; returns ``(summary, failure message or None)``."""
        summary = self.summary()
        logger.info(
            f"done in {time.perf_counter() - self._t0:.1f} s: {summary['num_ok']} segmented, "
            f"{summary['num_skipped']} skipped, {summary['num_failed']} failed (outputs in {self.output_dir})"
        )
        self.write()
        failed = [c for c in summary["cases"] if c["status"] == "failed"]
        if not failed:
            return summary, None
        listing = "\n".join(f"  {c['image']}: {c['error']}" for c in failed)
        msg = f"{len(failed)} of {len(summary['cases'])} inputs failed:\n{listing}"
        logger.error(msg)
        return summary, msg

    def report(self) -> dict:
        from pipofan_monai.plans import read_plans

        for m in self.models:
            if m["sha256"] is None and os.path.isfile(m["path"]):
                m["sha256"] = file_sha256(m["path"])
                try:
                    m["plans"] = read_plans(m["path"])
                except Exception as e:  # the report names what it could not read, it does not fail the run
                    m["plans"] = f"unreadable: {e}"
        summary = self.summary()
        return {**_versions(), "device": self.device, "started": self.started,
                "seconds": round(time.perf_counter() - self._t0, 2), "class_names": self.class_names,
                "models": self.models, "output_dir": os.path.abspath(self.output_dir), "error": self.error,
                **summary, "cases": [{k: v for k, v in c.items() if k != "label"} for c in summary["cases"]]}

    def write(self) -> str | None:
        """Write ``report.json`` (atomically) if the run has a report file."""
        if not self.report_file:
            return None
        atomic_write_json(self.report_file, self.report(), default=str)
        logger.info(f"run report: {self.report_file}")
        return self.report_file


class CaseExtras:
    """Per-case products beside the label map: the evaluation against the item's label, the overview PNG and the
    per-organ statistics (each optional), all computed on the final label map on the original grid.

    Args:
        loader: the preprocessing's first transform (reads ``{"image": path}`` on the original grid, in HU).
        label_space: the model's :class:`~pipofan_monai.vocabulary.LabelSpace` (names, colours, the datasets'
            label mapping).
        hu_window: display window of the overview PNG.
        evaluate, save_overlay, statistics: what to produce.
        statistics_organs: the organs whose statistics are reported (None: all).
        image_key: key of the image.
    """

    def __init__(self, loader: Any, label_space: Any, hu_window: Sequence[float], evaluate: bool,
                 save_overlay: bool, statistics: bool, statistics_organs: Sequence[str] | None = None,
                 image_key: str = "image") -> None:
        self.loader = loader
        self.label_space = label_space
        self.class_names = list(label_space.class_names)
        self.hu_window = tuple(hu_window)
        self.evaluate = evaluate
        self.save_overlay = save_overlay
        self.statistics = statistics
        self.statistics_organs = list(statistics_organs) if statistics_organs else None
        self.image_key = image_key
        self.eval_results: list[dict] = []
        self.stats_by_case: dict[str, dict] = {}

    @property
    def active(self) -> bool:
        return self.evaluate or self.save_overlay or self.statistics

    def load_label(self, item: Mapping, pred: Any) -> tuple[tuple | None, list[int] | None]:
        """``((label, pred, reoriented), labeled classes)``: the item's label mapped to the global classes and the
        prediction on one grid (both reoriented to RAS when the files are stored differently), or ``(None, None)``
        without a label."""
        if not isinstance(item.get("label"), str):
            return None, None
        from monai.transforms import Orientation

        from pipofan_monai.vocabulary.masks import get_labeled_mask
        from pipofan_monai.preprocessing import LoadCTd, MapDatasetLabelsd

        n = len(self.class_names)
        d = LoadCTd("label")({"label": item["label"], "dataset": item.get("dataset")})
        space = self.label_space
        if space.named:  # labels mapped by organ name
            mapping = MapDatasetLabelsd("label", label_space=space)
        else:  # placeholder names (``class1`` of a checkpoint without plans): labels mapped by class id
            mapping = MapDatasetLabelsd("label", num_classes=n, datasets=dict(space.dataset_config) or None)
        d = mapping(d)
        label = d["label"]
        mask = get_labeled_mask(label).reshape(-1).tolist()
        labeled = [c for c in range(1, n) if mask[c] > 0]
        if tuple(label.shape) == tuple(pred.shape) and np.allclose(np.asarray(label.affine), np.asarray(pred.affine),
                                                                   atol=1e-3):
            return (label, pred, False), labeled
        ras = Orientation("RAS", labels=None)  # stored differently (orientation): compare both in RAS
        label, pred_ras = ras(label), ras(pred)
        if tuple(label.shape) != tuple(pred_ras.shape) or not np.allclose(
            np.asarray(label.affine), np.asarray(pred_ras.affine), atol=1e-2
        ):
            raise ValueError(f"label {item['label']} (shape {tuple(label.shape)}) is not on the grid of image "
                             f"{item['image']} (shape {tuple(pred_ras.shape)}).")
        return (label, pred_ras, True), labeled

    def __call__(self, item: Mapping, pred: Any, case: dict, overlay_path: str, stats_path: str | None) -> None:
        pair, labeled = self.load_label(item, pred) if (self.evaluate or self.save_overlay) else (None, None)
        if self.evaluate:
            self._evaluate(pair, labeled, case)
        original = None
        if self.save_overlay or self.statistics:
            original = self.loader({self.image_key: item[self.image_key]})[self.image_key]
        if self.statistics:
            self._statistics(pred, original, case, stats_path)
        if self.save_overlay:
            self._overlay(pair, pred, original, case, overlay_path)

    def _evaluate(self, pair: tuple | None, labeled: list[int] | None, case: dict) -> None:
        if pair is None:
            logger.warning(f"{case['name']}: no label given, not evaluated.")
            return
        from pipofan_monai.evaluation import evaluate_case

        label, pred_eval, _ = pair
        res = evaluate_case(pred_eval, label, labeled_classes=labeled, class_names=self.class_names,
                            case_id=case["name"])
        self.eval_results.append(res)
        dice = {k: v["dice"] for k, v in res["organs"].items() if v["applicable"]}
        case["dice"] = dice
        logger.info(f"{case['name']}: Dice " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if v is not None))

    def _statistics(self, pred: Any, original: Any, case: dict, path: str | None) -> None:
        from pipofan_monai.evaluation.statistics import organ_statistics, write_statistics_json

        stats = organ_statistics(pred, original, np.asarray(pred.affine), self.class_names, self.statistics_organs)
        key = case["image"]
        self.stats_by_case[key] = stats
        case["statistics"] = stats
        if path:
            write_statistics_json(stats, path)

    def _overlay(self, pair: tuple | None, pred: Any, original: Any, case: dict, path: str) -> None:
        from monai.transforms import Orientation

        from pipofan_monai.visualize import save_overlay_png

        if pair is not None:
            label, pred_on, reoriented = pair
            if reoriented:  # label and prediction were put in RAS: the image too
                original = Orientation("RAS", labels=None)(original)
        else:
            label, pred_on = None, pred
        save_overlay_png(original, pred_on, path, class_names=self.class_names, ground_truth=label,
                         window=self.hu_window, colors=self.label_space.colors,
                         title=case["name"] + ("  (top: prediction, bottom: ground truth)" if label is not None
                                               else ""))

    def finish(self, report_dir: str, stats_csv: str | None) -> dict | None:
        """Write the run-level files: the evaluation reports (returns their summary) and ``statistics.csv``."""
        if self.statistics and stats_csv and self.stats_by_case:
            from pipofan_monai.evaluation.statistics import write_statistics_csv

            write_statistics_csv(self.stats_by_case, stats_csv)
            logger.info(f"statistics: {stats_csv}")
        if not self.eval_results:
            return None
        from pipofan_monai.evaluation import format_table, summarize, write_reports

        summary = summarize(self.eval_results)
        paths = write_reports({"cases": self.eval_results, "summary": summary}, report_dir)
        logger.info("evaluation (%d cases):\n%s\nreports: %s", len(self.eval_results), format_table(summary),
                    paths["json"])
        return summary
