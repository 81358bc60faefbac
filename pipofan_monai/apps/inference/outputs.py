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

"""The output plan of an inference run: which files each case writes, whether a case is computed, skipped or
refused, and the claim that keeps two runs from computing one case.

Names come from the postprocessing's own writers (``SaveImaged`` / ``SaveDicomSegd``) so that the plan and the
writers cannot disagree. Layout: inputs with distinct names give ``<output_dir>/<name>_seg.nii.gz``; when two
inputs in different folders share a name, the run mirrors the input folders under ``output_dir`` relative to the
inputs' common parent (``patientA/ct.nii.gz`` and ``patientB/ct.nii.gz`` give ``<output_dir>/patientA/ct_seg.nii.gz``
and ``<output_dir>/patientB/ct_seg.nii.gz``); a DICOM series folder counts as a file in its parent folder. Two
inputs that still map to one output (``ct.nii.gz`` and ``ct.nrrd`` in one folder, or one file given twice) are
refused. Mirroring is the ``pipofan segment`` default; the bundle's ``inference.json`` turns it on with
``mirror_folders`` (off by default there: a run that refused such inputs before still refuses them).

Claims: before a case is computed, the plan creates ``.<first output name>.claim`` beside its outputs
exclusively (:func:`pipofan_monai.utils.claim_file`); a second run into the same folder finds the claim of a live
process and skips that case (reported as claimed by that process); a claim of a killed run is taken over.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

from monai.data.folder_layout import FolderLayout

from pipofan_monai.inference.dicom_seg import check_dicom_seg_input
from pipofan_monai.inference.writers import output_is_complete, remove_stale_temp_files
from pipofan_monai.utils import claim_file, release_claim

__all__ = ["OutputPlan", "CaseSkipped", "parse_overwrite", "common_parent", "class_ids"]

logger = logging.getLogger("pipofan.inference")


class CaseSkipped(Exception):
    """A case that is not computed, with the reason (its outputs exist, or another run claimed it)."""


def parse_overwrite(overwrite: Any) -> bool | str:
    """``True``, ``False`` or ``"skip"`` from a bool or its spelling on the command line."""
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


def common_parent(paths: Sequence[str]) -> str:
    """The folder under which the output folders mirror the inputs: the common parent of the inputs' folders when
    two inputs in different folders share a name (``patientA/ct.nii.gz``, ``patientB/ct.nii.gz``), else ``""``
    (every output directly in the output folder)."""
    from pipofan_monai.apps.inference.inputs import case_name

    folders_by_name: dict[str, set[str]] = {}
    for p in paths:
        p = os.path.normpath(p)
        folders_by_name.setdefault(case_name(p), set()).add(os.path.dirname(p))
    if all(len(f) < 2 for f in folders_by_name.values()):
        return ""
    return os.path.commonpath(sorted({os.path.dirname(os.path.normpath(p)) for p in paths}))


def class_ids(label_space: Any, organs: str | Sequence[str] | None) -> list[int] | None:
    """Class ids of ``organs`` (names, or one comma-separated string) in the model's
    :class:`~pipofan_monai.vocabulary.LabelSpace` (or its class names); None for all.

    Raises:
        ValueError: a name that is not a class (the message lists the classes).
    """
    class_names: Sequence[str] = getattr(label_space, "class_names", label_space)
    if organs in (None, "", []):
        return None
    names = [n.strip() for n in organs.split(",")] if isinstance(organs, str) else [str(n).strip() for n in organs]
    names = [n for n in names if n]
    lower = [c.lower() for c in class_names]
    unknown = [n for n in names if n.lower() not in lower[1:]]
    if unknown:
        raise ValueError(f"organs {unknown} are not classes of the model; its classes are {list(class_names[1:])}.")
    return sorted({lower.index(n.lower()) for n in names})


class OutputPlan:
    """Output names, overwrite / skip rules, DICOM SEG pre-checks and claims of a run.

    Args:
        savers: the postprocessing's ``SaveImaged`` transforms.
        seg_writers: its ``SaveDicomSegd`` transforms.
        output_dir: the run's output folder (overview PNGs, reports).
        overwrite: ``False``: an existing output fails the case (``FileExistsError``); ``True``: replace;
            ``"skip"``: a case whose outputs all exist and are complete is skipped.
        save_overlay: whether the overview PNG is an output.
        mirror_folders: mirror the input folders under ``output_dir`` when names repeat (see the module docstring);
            False: such inputs are refused as clashes.
        image_key: key of the image path in an item.
    """

    def __init__(self, savers: Sequence[Any], seg_writers: Sequence[Any], output_dir: str, overwrite: bool | str,
                 save_overlay: bool, mirror_folders: bool = False, image_key: str = "image") -> None:
        self.savers = list(savers)
        self.seg_writers = list(seg_writers)
        self.output_dir = output_dir
        self.overwrite = parse_overwrite(overwrite)
        self.save_overlay = save_overlay
        self.image_key = image_key
        self.mirror_folders = bool(mirror_folders)
        self.root = ""
        self._planned: dict[str, str] = {}
        self._claims: set[str] = set()

    # ------------------------------------------------------------------ names
    def start(self, items: Sequence[Mapping]) -> None:
        """Begin a run over ``items``: the mirroring root, and with DICOM SEG output a check that every input is a
        DICOM series (all refusals in one ``ValueError`` before anything is computed)."""
        self._planned.clear()
        self.root = common_parent([item[self.image_key] for item in items]) if self.mirror_folders else ""
        for t in self.savers:
            t.saver.folder_layout.data_root_dir = self.root
        for t in self.seg_writers:
            t.data_root_dir = self.root
        if self.seg_writers:
            bad = []
            for item in items:
                try:
                    check_dicom_seg_input(item[self.image_key])
                except (ValueError, FileNotFoundError) as e:
                    bad.append(str(e))
            if bad:
                raise ValueError(f"{len(bad)} of {len(items)} inputs cannot get a DICOM SEG output:\n  "
                                 + "\n  ".join(bad))

    def case_dir(self, image_path: str) -> str:
        """The output folder of a case (``output_dir``, or its mirrored sub-folder)."""
        if not self.root:
            return str(self.output_dir)
        rel = os.path.relpath(os.path.dirname(os.path.normpath(image_path)), self.root)
        return os.path.normpath(os.path.join(str(self.output_dir), rel))

    def overlay_path(self, image_path: str) -> str:
        """``<case folder>/<name>_overview.png``."""
        layout = FolderLayout(self.case_dir(image_path), postfix="overview", extension=".png")
        return str(layout.filename(subject=image_path))

    def paths(self, image_path: str) -> list[str]:
        """Files the writers write for ``image_path`` (+ the overview PNG)."""
        paths = []
        for t in self.savers:
            saver = t.saver
            kw = saver.fname_formatter({"filename_or_obj": image_path}, saver)
            paths.append(os.path.normpath(str(saver.folder_layout.filename(**kw))))
        paths.extend(os.path.normpath(t.output_path(image_path)) for t in self.seg_writers)
        if self.save_overlay:
            paths.append(self.overlay_path(image_path))
        return paths

    # ------------------------------------------------------------------ decisions
    def claim_path(self, outputs: Sequence[str]) -> str:
        first = outputs[0]
        return os.path.join(os.path.dirname(first), f".{os.path.basename(first)}.claim")

    def decide(self, image_path: str, outputs: Sequence[str]) -> None:
        """Claim the case's outputs and apply the overwrite rule; returns when the case is to be computed.

        Raises:
            ValueError: an output clashes with another input's of this run.
            CaseSkipped: another live run holds the claim, or (``overwrite="skip"``) the outputs are complete.
            FileExistsError: an output exists and ``overwrite`` is False.
        """
        clash = [(o, self._planned[o]) for o in outputs if o in self._planned]
        if clash:
            raise ValueError(
                f"output {clash[0][0]} would also be written for input {clash[0][1]} (same file name): "
                + ("two inputs in one folder map to one output, or one input is given twice; segment them in "
                   "separate runs or output folders." if self.mirror_folders else "segment these inputs in separate "
                   "runs or output folders, or mirror the input folders (mirror_folders True).")
            )
        self._planned.update({o: image_path for o in outputs})
        if outputs:
            claim = self.claim_path(outputs)
            holder = claim_file(claim, input=image_path)
            if holder is not None:
                raise CaseSkipped(f"claimed by process {holder.get('pid')} (another run writing {outputs[0]}; "
                                  f"claim file {claim})")
            self._claims.add(claim)
        try:
            self._check_existing(outputs)
        except BaseException:
            self.release(outputs)
            raise

    def _check_existing(self, outputs: Sequence[str]) -> None:
        remove_stale_temp_files(outputs)  # left by a write that was killed in an earlier run
        existing = [o for o in outputs if os.path.exists(o)]
        if self.overwrite == "skip":
            # only a case whose outputs all exist and are complete is done; a truncated file (full disk or kill in
            # an earlier version) or a missing one means the case is segmented again
            redo = [o for o in outputs if not output_is_complete(o)]
            if not redo:
                raise CaseSkipped(f"outputs exist: {outputs[0]}")
            if existing:
                logger.warning(f"output {redo[0]} is " + ("incomplete" if os.path.exists(redo[0]) else "missing")
                               + ", segmenting again")
        elif existing and self.overwrite is not True:
            broken = [o for o in existing if not output_is_complete(o)]
            raise FileExistsError(
                f"output file exists: {existing[0]} (pass --overwrite True to replace it, or --overwrite skip to keep "
                "complete outputs)." + (f" {broken[0]} is incomplete (an interrupted earlier run)." if broken else "")
            )

    def release(self, outputs: Sequence[str]) -> None:
        """Give up the claim of a case (done, failed or skipped)."""
        if outputs:
            claim = self.claim_path(outputs)
            if claim in self._claims:
                self._claims.discard(claim)
                release_claim(claim)

    def release_all(self) -> None:
        for claim in list(self._claims):
            release_claim(claim)
        self._claims.clear()
