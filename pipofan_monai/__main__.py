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

"""Command line: ``python -m pipofan_monai <command> ...`` (also installed as ``pipofan``).

Commands:
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

Run "python -m pipofan_monai <command> --help" for a command's options.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["main"]


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

    from pipofan_monai.utils import atomic_torch_save
    from pipofan_monai.networks import convert_original_state_dict

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

    root = Path(__file__).resolve().parents[1]
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


HELP_FLAGS = ("-h", "--help")


def _commands() -> dict:
    from pipofan_monai.apps.dataset_conversion import datalist_command, demo_command
    from pipofan_monai.apps.dataset_conversion.download import download_command, verify_command

    return {"download": download_command, "verify": verify_command, "datalist": datalist_command,
            "demo": demo_command, "crossval": crossval, "study": study, "convert": convert, "benchmark": benchmark,
            "preprocess": preprocess, "classes": classes, "organs": organs}


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


def command_help(name: str, fn) -> str:
    """Usage line (the command's arguments as ``--name default``) and the command's docstring."""
    import inspect

    parts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            parts.append("[--KEY VALUE ...]")
        elif p.default is p.empty:
            parts.append(p.name.upper())
        else:
            parts.append(f"[--{p.name} {p.default!r}]")
    return f"usage: python -m pipofan_monai {name} " + " ".join(parts) + "\n\n" + plain_text(inspect.getdoc(fn) or "")


def plain_text(doc: str) -> str:
    """A docstring as terminal text: reST roles (``:class:`~a.b.C```) become their last name, double backquotes
    (````x````) plain text."""
    import re

    doc = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`<>]+?)`", r"\1", doc)
    return doc.replace("``", "")


def main(argv=None) -> None:
    """Run a command; ``--help`` (or ``-h``) anywhere prints the command's help and runs nothing (fire would
    pass it on as a keyword argument to commands that take ``**override``, and start a cross-validation)."""
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not args or args[0] in HELP_FLAGS + ("help",):
        print(plain_text(__doc__ or ""))
        return
    if args[0] not in commands:
        print(f"pipofan_monai: unknown command {args[0]!r}; the commands are: {', '.join(commands)} "
              "(training, inference and evaluation run with python -m monai.bundle run ...: docs/reference/cli.md).",
              file=sys.stderr)
        raise SystemExit(2)
    if any(a in HELP_FLAGS for a in args[1:]):
        print(command_help(args[0], commands[args[0]]))
        return
    _logging()
    fire.Fire(commands, command=args)


if __name__ == "__main__":
    main()
