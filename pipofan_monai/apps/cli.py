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

"""Command line: ``pipofan <command> ...`` (also ``python -m pipofan_monai <command> ...``).

Commands:
    train      train a model with the bundle (--quick: the quick start); alias of monai.bundle run training
    evaluate   segment a labeled datalist and score it; alias of monai.bundle run evaluate
    segment    segment CT volumes (NIfTI/NRRD files, DICOM series folders, or a folder of them)
    download   fetch a public dataset (MSD spleen / pancreas / liver, KiTS19) into the layout datalist scans, checked;
               for BTCV and LiTS (behind a login) print where to get them and the layout
    verify     check a dataset archive or folder you supply (case count, file names, checksums where published)
    datalist   scan LiTS / KiTS19 / MSD Spleen / BTCV / MSD Pancreas / MSD Liver folders, write a 5-fold datalist
    demo       write the built-in synthetic demo dataset
    crossval   train one model per fold with the bundle and write the Table-V style report
    study      run a study of the paper (datasets / loss / architecture) and write its table
    convert    convert an authors' PIPO-FAN checkpoint to a PIPOFAN state_dict
    benchmark  inference / training / end-to-end throughput, fp32 eager baseline vs optimized path (JSON report)
    preprocess fill the memory-mapped preprocessed cache of a datalist ahead of training (parallel, resumable)
    classes    write a class list into a bundle folder's configs and metadata.json, or check that they agree
    organs     the organ table (components kept, SNOMED CT code) and the datasets that annotate each organ

Run "pipofan <command> --help" for a command's options.
"""

# Light imports only: "--help" must answer without loading torch, MONAI, fire or the command modules. The help
# of a command is read from its source file (signature and docstring, with ``ast``), the command is imported
# only when it runs.
from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from pipofan_monai.apps import bundle_commands
from pipofan_monai.apps.help import command_help, plain_text

__all__ = ["main", "COMMANDS", "crossval", "study", "convert", "benchmark", "preprocess", "classes", "organs"]

HELP_FLAGS = ("-h", "--help")
_HERE = "pipofan_monai.apps.cli"

#: fire commands: name -> (module, function); the module is imported only when the command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("pipofan_monai.apps.dataset_conversion.download", "download_command"),
    "verify": ("pipofan_monai.apps.dataset_conversion.download", "verify_command"),
    "datalist": ("pipofan_monai.apps.dataset_conversion.datalist", "datalist_command"),
    "demo": ("pipofan_monai.apps.dataset_conversion.demo", "demo_command"),
    "crossval": (_HERE, "crossval"),
    "study": (_HERE, "study"),
    "convert": (_HERE, "convert"),
    "benchmark": (_HERE, "benchmark"),
    "preprocess": (_HERE, "preprocess"),
    "classes": (_HERE, "classes"),
    "organs": (_HERE, "organs"),
}
#: commands with their own argument parsing (argv after the command name is passed on unchanged)
ARGV_COMMANDS = ("train", "evaluate", "segment")


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def crossval(config_file=None, num_folds: int = 5, folds=None, ckpt_dir=None, output_dir=None, **override):
    """Alias of `python -m monai.bundle run crossval`: train every fold (or --folds "[0,1]"; --resume True keeps
    finished folds) and write <output_dir>/crossval/crossval.{json,csv,png} (default output_dir: the bundle's runs)."""
    _logging()
    from pipofan_monai.apps.training.crossval import run_crossval
    from pipofan_monai.apps.training.workflow import DEFAULT_CONFIG

    report = run_crossval(config_file or DEFAULT_CONFIG, num_folds, folds, ckpt_dir, output_dir, **override)
    return {k: v for k, v in report["summary"].items()}


def study(name: str, datalist=None, output_dir=None, max_epochs=None, quick: bool = False, **override):
    """Run study ``datasets``, ``loss`` or ``architecture`` and write <output_dir>/<name>.{json,csv,png}."""
    _logging()
    from pipofan_monai.apps.training.studies import run_study

    report = run_study(name, datalist=datalist, output_dir=output_dir, max_epochs=max_epochs, quick=quick, **override)
    return "wrote " + ", ".join(report["files"])


def convert(src: str, dst: str, transpose_kernels: bool = False):
    """Convert the authors' checkpoint ``src`` and save ``{"model": state_dict, "config": ...}`` to ``dst``."""
    import torch

    from pipofan_monai.networks import convert_original_state_dict
    from pipofan_monai.utils import atomic_torch_save

    state = torch.load(src, map_location="cpu", weights_only=False)
    converted, config = convert_original_state_dict(state, transpose_kernels, return_config=True)
    atomic_torch_save({"model": converted, "config": config}, dst)
    return f"wrote {dst}: PIPOFAN(legacy_projections=True, **{config})"


def benchmark(device: str = "auto", size: int = 256, batch: int = 32, channels="[64,128,256,512,512]",
              compile: bool = False, volume_shape="[512,512,200]", output: str = "benchmark.json", quick: bool = False,
              cpu: bool = False, **kwargs):
    """Print the throughput table (inference, training, end-to-end, memory, accuracy) and write ``output`` (JSON);
    with ``--cpu``, the CPU section instead (bundle inference with torch and with ONNX Runtime, the bare network,
    MONAI's spleen 3D UNet as the peer; ``--quick`` for small sizes). The benchmark ships with the source checkout
    only (``benchmarks/`` beside ``pipofan_monai/``), not in the wheel.

    Other options of ``benchmarks.run_benchmark``: ``--compile_mode``, ``--e2e_spatial_size``,
    ``--train_batch``, ``--train_size``, ``--iters``, ``--train_steps``, ``--accuracy_slices``, ``--ckpt``,
    ``--sections``, ``--threads``, ``--seed``; of ``benchmarks.cpu.run_cpu_benchmark``: ``--threads``, ``--depth``.
    """
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__init__.py").is_file():
        raise SystemExit("pipofan_monai benchmark: the benchmark ships only with the source, not with the installed "
                         f"package ({root}): run it from a source checkout (python -m pipofan_monai benchmark).")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    bench = importlib.import_module("benchmarks")
    if cpu:
        report = bench.run_cpu_benchmark(quick=quick, output=output or None, **kwargs)
    else:
        report = bench.run_benchmark(device=device, size=size, batch=batch, channels=channels, compile=compile,
                                     volume_shape=volume_shape, output=output or None, quick=quick, **kwargs)
    print(report["table"])


# explicit options, not **kwargs: fire would pass --help on to a **kwargs function and run it
def preprocess(datalist=None, cache_dir=None, num_workers: int = 0, dataset_dir=None,
               config_file="bundle/configs/train.json", progress: bool = True, spatial_size=None, hu_window=None,
               intensity=None, num_classes=None, dataset_table=None, output_dir=None, ct_check=None):
    """Preprocess every labeled item of ``datalist`` into the memory-mapped cache that training (``cache: mmap``)
    reads, with ``num_workers`` processes and a progress bar; interrupt and rerun at will (finished volumes are
    kept, stale or corrupt ones rebuilt).

    The preprocessing settings (spatial_size, hu_window, intensity, num_classes, dataset_table) and the default
    ``cache_dir`` (``<output_dir>/cache``) are read from ``config_file`` (the bundle's train.json), so that
    training finds the entries; pass ``--spatial_size``, ``--hu_window``, ``--intensity``, ``--num_classes``,
    ``--dataset_table`` or ``--output_dir`` to override them exactly as for training; ``--ct_check warn|off``
    relaxes the CT plausibility check as in training.

    Example: ``python -m pipofan_monai preprocess --datalist datalist.json --cache_dir /data/cache --num_workers 8``
    """
    _logging()
    import time

    from pipofan_monai.preprocessing.cache import preprocessed_cache_from_config

    t0 = time.perf_counter()
    override = {k: v for k, v in (("spatial_size", spatial_size), ("hu_window", hu_window), ("intensity", intensity),
                                  ("num_classes", num_classes), ("dataset_table", dataset_table),
                                  ("output_dir", output_dir), ("ct_check", ct_check)) if v is not None}
    cache, items = preprocessed_cache_from_config(config_file, datalist=datalist, dataset_dir=dataset_dir,
                                                  cache_dir=cache_dir, **override)
    entries = cache.fill(items, num_workers=int(num_workers), progress=bool(progress))
    nbytes = sum(os.path.getsize(e.path / n) for e in entries for n in ("image.npy", "label.npy", "meta.json"))
    slices = sum(e.shape[0] for e in entries)
    return (f"{len(entries)} volumes ({slices} slices, {nbytes / 1e9:.2f} GB) ready in {cache.cache_dir} "
            f"after {time.perf_counter() - t0:.1f} s")


def classes(bundle_dir: str = "bundle", class_names=None, organ_table=None, dataset_table=None):
    """Write ``--class_names "['background','liver','kidney','spleen','pancreas']"`` into a bundle folder's
    configs and metadata.json (MONAI Label's label list); without ``--class_names`` check that they agree."""
    from pipofan_monai.apps.bundle_vocabulary import classes_command

    return classes_command(bundle_dir, class_names, organ_table, dataset_table)


def organs():
    """The organ table (components kept, SNOMED CT code) and which built-in datasets annotate each organ."""
    from pipofan_monai.vocabulary.datasets import BUILTIN_DATASETS
    from pipofan_monai.vocabulary.organs import ORGANS

    lines = [f"{'organ':<22} {'components':>10}  {'code':<10} datasets (label values)"]
    for name, o in ORGANS.items():
        ds = []
        for spec in BUILTIN_DATASETS.values():
            label_map, labeled = spec.resolve(["background", name])  # the organ as a vocabulary of its own
            if labeled:
                ds.append(f"{spec.name} ({','.join(str(v) for v, c in label_map.items() if c == 1)})")
        comp = "all" if o.num_components is None else str(o.num_components)
        lines.append(f"{name:<22} {comp:>10}  {(o.code[0] if o.code else '-'):<10} {', '.join(ds) or '-'}")
    print("\n".join(lines))


def _segment(argv: Sequence[str]) -> int:
    """``pipofan segment ...``: the segmentation application parses its own options (argparse)."""
    import importlib

    try:
        app = importlib.import_module("pipofan_monai.apps.segment")
    except ModuleNotFoundError as e:
        if e.name != "pipofan_monai.apps.segment":
            raise
        print("pipofan: the segment command is not part of this installation (pipofan_monai.apps.segment is "
              "missing); segment with: python -m monai.bundle run inference --config_file "
              "bundle/configs/inference.json --input_files \"['ct.nii.gz']\"", file=sys.stderr)
        return 2
    return int(app.main(list(argv)) or 0)


def _run_fire(name: str, args: list[str]) -> None:
    import importlib

    import fire

    module, attr = COMMANDS[name]
    fire.Fire({name: getattr(importlib.import_module(module), attr)}, command=[name] + args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command and return its exit status; ``--help`` (or ``-h``) anywhere prints the command's help and
    runs nothing (fire would pass it on as a keyword argument to commands that take ``**override``, and start a
    cross-validation)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_FLAGS + ("help",):
        print(plain_text(__doc__ or ""))
        return 0
    name, rest = args[0], args[1:]
    if name == "segment":
        return _segment(rest)
    if name in ("train", "evaluate"):
        return bundle_commands.run(name, rest)
    if name not in COMMANDS:
        print(f"pipofan: unknown command {name!r}; the commands are: {', '.join(ARGV_COMMANDS + tuple(COMMANDS))} "
              "(every bundle workflow also runs with python -m monai.bundle run ...; see docs/reference/cli.md).",
              file=sys.stderr)
        raise SystemExit(2)
    if any(a in HELP_FLAGS for a in rest):
        print(command_help(name, *COMMANDS[name]))
        return 0
    _logging()
    _run_fire(name, rest)
    return 0
