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

"""``pipofan segment``: segment CT volumes with one command, and :func:`segment`, the same as a Python function.

Both build the bundle's own inference pipeline (``configs/inference.json`` through MONAI's ``ConfigParser``, with
the options below as overrides), so they give the label maps ``python -m monai.bundle run inference`` gives. The
model(s) are loaded once for the whole run; the next case is read while the current one is in the network.

torch and MONAI are imported inside the functions only: ``pipofan segment --help`` answers without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

__all__ = ["main", "segment", "build_parser", "expand_inputs"]

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_NOT_DICOM = (".json", ".txt", ".csv", ".md", ".png", ".jpg", ".pdf", ".xml", ".html", ".py", ".zip")

_DESCRIPTION = """Segment abdominal CT volumes (liver, kidney, spleen, ... as the model's classes) with a PIPO-FAN
model; the same pipeline as `python -m monai.bundle run inference`.

Inputs are NIfTI / NRRD / MHA files, DICOM series folders, or folders of them (searched recursively). Outputs go
to OUT: <name>_seg.nii.gz (and/or <name>_seg.dcm, a DICOM SEG), <name>_overview.png with --preview,
<name>_statistics.json and statistics.csv with --statistics, and report.json (versions, device, models with
SHA-256, per case the input, outputs, shape, spacing, time per stage, failures). Inputs with the same name in
different folders (patientA/ct.nii.gz, patientB/ct.nii.gz) get the same sub-folders under OUT."""

_EPILOG = """examples:
  pipofan segment ct.nii.gz -o out --model bundle/models/model.pt
  pipofan segment scans/ -o out --model models/fold0/model.pt models/fold1/model.pt --statistics
  pipofan segment dicom_series/ -o out --model models/ --output_type nifti dicom_seg --organs liver,spleen

exit status: 0 all cases segmented or skipped, 1 some case failed (listed at the end), 2 bad options."""


def build_parser() -> argparse.ArgumentParser:
    """The ``pipofan segment`` options."""
    p = argparse.ArgumentParser(prog="pipofan segment", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="CT files, DICOM series folders, or folders of them")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created)")
    p.add_argument("--model", nargs="+", metavar="CKPT",
                   help="checkpoint(s): one file, several (an ensemble), or a folder of fold models "
                        "(fold*/model.pt); default: the bundle's models/model.pt")
    p.add_argument("--ensemble_mode", choices=("vote", "mean"), default="vote",
                   help="how an ensemble combines its models (default: vote, the paper's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda:0 if available, else cpu)")
    p.add_argument("--output_type", nargs="+", default=["nifti"], choices=("nifti", "dicom_seg"),
                   help="nifti (default), dicom_seg (DICOM series inputs), or both")
    p.add_argument("--organs", default=None, metavar="LIST",
                   help="write only these organs, comma-separated (e.g. liver,spleen); default: all")
    p.add_argument("--statistics", action="store_true",
                   help="per-organ volume (ml), HU mean/std/median, bounding box, pieces, cut off by the edge")
    p.add_argument("--preview", action="store_true", help="write <name>_overview.png per case")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: a case whose output exists fails, naming the file)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    return p


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Input paths: files as given; a folder that holds a DICOM series (files that are not images) as one input;
    other folders searched recursively for image files and DICOM series folders, in sorted order.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: nothing to segment under a folder (names it).
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: list[str] = []
    for p in map(os.fspath, paths):
        if os.path.isfile(p):
            found.append(os.path.abspath(p))
        elif os.path.isdir(p):
            under = _search(p)
            if not under:
                raise ValueError(f"folder {p} holds no CT files ({', '.join(_IMAGE_SUFFIXES)}) or DICOM series.")
            found.extend(under)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return found


def _search(folder: str) -> list[str]:
    entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    files = [e for e in entries if e.is_file()]
    images = [e.path for e in files if e.name.lower().endswith(_IMAGE_SUFFIXES)]
    others = [e for e in files if not e.name.lower().endswith(_IMAGE_SUFFIXES + _NOT_DICOM)]
    if others and not images:
        return [os.path.abspath(folder)]  # a DICOM series folder
    found = [os.path.abspath(x) for x in images]
    for e in entries:
        if e.is_dir():
            found.extend(_search(e.path))
    return found


def _config(output: str, files: list[str], device: str | None, output_type: Sequence[str], organs: Any,
            statistics: bool, preview: bool, overwrite: bool, ensemble_mode: str, keep: bool,
            overrides: dict | None) -> Any:
    """The bundle's inference config with this run's settings (MONAI ``ConfigParser``)."""
    import torch
    from monai.bundle import ConfigParser

    from pipofan_monai import bundle_dir

    parser = ConfigParser()
    parser.read_config(str(bundle_dir() / "configs" / "inference.json"))
    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    parser.update({
        "bundle_root": str(bundle_dir()),
        "output_dir": os.path.abspath(output),
        "run_ckpt_paths": files,  # the plans come from these checkpoints
        "ckpt_path": files[0],
        "device": f"$torch.device({device!r})",
        "amp": str(device).startswith("cuda"),
        "output_format": list(output_type),
        "organs": organs,
        "statistics": bool(statistics),
        "save_overlay": bool(preview),
        "overwrite": bool(overwrite),
        "ensemble_mode": ensemble_mode,
        "mirror_folders": True,
        "report_file": None if keep else os.path.join(os.path.abspath(output), "report.json"),
        "fail_on_error": False,
        "runner#keep_results": bool(keep),
    })
    if overrides:
        parser.update(dict(overrides))
    return parser


def segment(
    input: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike | None = None,
    model: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    device: str | None = None,
    output_type: str | Sequence[str] = "nifti",
    organs: str | Sequence[str] | None = None,
    statistics: bool = False,
    preview: bool = False,
    overwrite: bool = False,
    ensemble_mode: str = "vote",
    overrides: dict | None = None,
) -> dict:
    """Segment CT volumes with the bundle's inference pipeline (what ``pipofan segment`` runs).

    Args:
        input: a CT file, a DICOM series folder, a folder of them, or a list of these.
        output: output folder; None: nothing is kept on disk and the results come back in memory.
        model: checkpoint file(s) or a folder of fold models (default: the bundle's ``models/model.pt``).
        device: ``"cpu"``, ``"cuda:0"``, ... (default: the first GPU if there is one).
        output_type: ``"nifti"``, ``"dicom_seg"`` or both (a list).
        organs: write (and report) only these organs: names, or one comma-separated string.
        statistics: per-organ statistics (:mod:`pipofan_monai.evaluation.statistics`).
        preview: write the overview PNG per case.
        overwrite: replace existing outputs.
        ensemble_mode: ``"vote"`` or ``"mean"`` for several models.
        overrides: further ``inference.json`` keys (e.g. ``{"sw_batch_size": 8}``).

    Returns:
        the run summary (``cases``, ``num_ok``, ``num_skipped``, ``num_failed``). With ``output=None`` each case
        also holds ``label``: the label map ``(X, Y, Z)`` uint8 numpy array on the input's grid, ``affine``: its
        4x4 affine (RAS, mm), and with ``statistics`` its per-organ ``statistics``.
    """
    import tempfile

    from pipofan_monai.inference.checkpoints import model_files

    if model is None:
        from pipofan_monai import bundle_dir

        model = str(bundle_dir() / "models" / "model.pt")
    files = model_files(model)
    items = expand_inputs(input)
    types = [output_type] if isinstance(output_type, str) else list(output_type)
    with tempfile.TemporaryDirectory(prefix="pipofan-segment-") as tmp:
        out = os.fspath(output) if output is not None else tmp
        parser = _config(out, files, device, types, organs, statistics, preview, overwrite, ensemble_mode,
                         output is None, overrides)
        runner = parser.get_parsed_content("runner")
        summary = runner.run(items, files)
        if output is None:
            for case in summary["cases"]:
                label = case.pop("label", None)
                if label is not None:
                    case["affine"] = label.affine.numpy() if hasattr(label.affine, "numpy") else label.affine
                    case["label"] = label.numpy()[0] if hasattr(label, "numpy") else label[0]
                case["outputs"] = []
    return summary


def main(argv: list[str] | None = None) -> int:
    """``pipofan segment``; returns the exit status (0 ok, 1 some case failed, 2 bad options)."""
    args = build_parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("pipofan").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        summary = segment(args.inputs, args.output, model=args.model, device=args.device,
                          output_type=args.output_type, organs=args.organs, statistics=args.statistics,
                          preview=args.preview, overwrite=args.overwrite, ensemble_mode=args.ensemble_mode)
    except (ValueError, FileNotFoundError) as e:
        print(f"pipofan segment: error: {e}", file=sys.stderr)
        return 2
    return 1 if summary["num_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
