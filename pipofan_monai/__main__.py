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
    datalist   scan LiTS / KiTS19 / MSD Spleen / BTCV folders and write a datalist with five folds
    demo       write the built-in synthetic demo dataset
    crossval   train one model per fold with the bundle and write the Table-V style report
    convert    convert an authors' PIPO-FAN checkpoint to a PIPOFAN state_dict
"""

from __future__ import annotations

import logging
import sys

__all__ = ["main"]


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s: %(message)s")


def crossval(config_file="bundle/configs/train.json", num_folds: int = 5, folds=None, ckpt_dir=None, output_dir=None, **override):
    """Train every fold (or ``--folds "[0,1]"``) and write <output_dir>/crossval.{json,csv,png}."""
    _logging()
    from pipofan_monai.engines.crossval import run_crossval

    report = run_crossval(config_file, num_folds, folds, ckpt_dir, output_dir, **override)
    return {k: v for k, v in report["summary"].items()}


def convert(src: str, dst: str, transpose_kernels: bool = False):
    """Convert the authors' checkpoint ``src`` and save ``{"model": state_dict, "config": ...}`` to ``dst``."""
    import torch

    from pipofan_monai.handlers import atomic_torch_save
    from pipofan_monai.networks import convert_original_state_dict

    state = torch.load(src, map_location="cpu", weights_only=False)
    converted, config = convert_original_state_dict(state, transpose_kernels, return_config=True)
    atomic_torch_save({"model": converted, "config": config}, dst)
    return f"wrote {dst}: PIPOFAN(legacy_projections=True, **{config})"


def main() -> None:
    import fire

    from pipofan_monai.data import datalist_command, demo_command

    _logging()
    fire.Fire({"datalist": datalist_command, "demo": demo_command, "crossval": crossval, "convert": convert})


if __name__ == "__main__":
    main()
