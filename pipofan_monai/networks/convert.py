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

"""Conversion of the authors' released PIPO-FAN checkpoints (the fused ``resnet.*`` + ``att.*`` model or the bare
PIPO model, with or without DataParallel's ``module.`` prefix) to :class:`PIPOFAN` state dicts, so that their
trained weights can be used, and compared with, in MONAI's layout."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Mapping

import torch

from .pipofan import PIPOFAN

__all__ = ["convert_original_state_dict", "original_module_map", "pipofan_from_original"]

_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Sequential indices inside the authors' modules -> our layer names
_P_LAYERS = {"0": "norm1", "2": "conv1", "3": "norm2", "5": "conv2"}  # pre-activation double conv
_Q_LAYERS = {"0": "norm", "2": "conv"}  # projection (bridge), also the head
_STEM_LAYERS = {"0": "conv1", "1": "norm", "3": "conv2"}
_AF_LAYERS = {"0": "norm1", "2": "conv1", "3": "norm2", "5": "conv2"}
_P_ROLES = ("mpconv", "conv1", "conv")


def original_module_map(num_scales_out: int = 5) -> dict[str, str]:
    """The authors' top-level module names -> the matching :class:`PIPOFAN` module paths.

    ``inc`` stem; ``down1..4`` encoder blocks of levels 2..5; ``dbconv1`` level-3 ECD block; ``dbconv2, 3``
    level-4 ECD blocks; ``dbconv4..6`` level-5 ECD blocks; ``up1..4`` decoder blocks of levels 4..1;
    ``dbup1..4`` level-5 output chain; ``dbup5..7`` level 4; ``dbup8, 9`` level 3; ``dbup10`` level 2;
    ``outc1..4`` heads of levels 5..2; ``outc`` head of level 1; ``att`` adaptive fusion.
    """
    m = {"inc": "stem", "outc": "outputs.0.head", "att": "fusion"}
    for i in range(4):
        m[f"down{i + 1}"] = f"encoder.{i}.block"
        m[f"up{i + 1}"] = f"decoder.{i}.block"
    ecd = {1: (1, 0), 2: (2, 0), 3: (2, 1), 4: (3, 0), 5: (3, 1), 6: (3, 2)}
    for k, (lvl, j) in ecd.items():
        m[f"dbconv{k}"] = f"encoder.{lvl}.ecd.{j}"
    chains = {5: range(1, 5), 4: range(5, 8), 3: range(8, 10), 2: range(10, 11)}
    for level, ids in chains.items():
        if level <= num_scales_out:
            for j, k in enumerate(ids):
                m[f"dbup{k}"] = f"outputs.{level - 1}.chain.{j}"
    for k in range(1, 5):
        level = 6 - k
        if level <= num_scales_out:
            m[f"outc{k}"] = f"outputs.{level - 1}.head"
    return m


def _strip(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module.") :]
    if key.startswith("resnet."):
        key = key[len("resnet.") :]
        while key.startswith("module."):
            key = key[len("module.") :]
    return key


def _infer_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    def get(name: str) -> torch.Tensor:
        for k, v in sd.items():
            if re.fullmatch(name, k):
                return v
        raise KeyError(f"the checkpoint has no key matching {name!r}; is it a PIPO/PIPO-FAN state_dict?")

    stem_w = get(r"inc\.(.*\.)?0\.weight")
    head_w = get(r"outc\.(.*\.)?2\.weight")
    widths = [int(stem_w.shape[0])]
    level_in = []
    for i in range(1, 5):
        level_in.append(int(get(rf"down{i}\.({'|'.join(_P_ROLES)})\.(.*\.)?0\.weight").shape[0]))
        widths.append(int(get(rf"down{i}\.({'|'.join(_P_ROLES)})\.(.*\.)?5\.weight").shape[0]))
    num_in = 1
    for i in range(4):  # a level with a pyramid branch has a wider input than the pooled main path
        if level_in[i] > widths[i]:
            num_in = i + 2
    levels_out = {1} | {6 - k for k in range(1, 5) if any(key.startswith(f"outc{k}.") for key in sd)}
    num_out = max(levels_out)
    if levels_out != set(range(1, num_out + 1)):
        raise KeyError(f"the checkpoint's output heads are not contiguous from the finest level: {sorted(levels_out)}.")
    return {
        "in_channels": int(stem_w.shape[1]),
        "out_channels": int(head_w.shape[0]),
        "channels": tuple(widths),
        "num_scales_in": num_in,
        "num_scales_out": num_out,
        "adaptive_fusion": any(k.startswith("att.") for k in sd),
        "block": "res" if any(".bridge." in k for k in sd) else "conv",
    }


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], transpose_kernels: bool = False, return_config: bool = False
) -> Any:
    """Convert a state_dict of the authors' PIPO-FAN (or bare PIPO) model to :class:`PIPOFAN` keys.

    Accepts the fused model's keys (``resnet.*`` + ``att.*``) or the bare PIPO model's, with or without a
    DataParallel ``module.`` prefix. The result loads with ``strict=True`` into
    ``PIPOFAN(legacy_projections=True, **config)``, where ``config`` (in_channels, out_channels, channels,
    scales, fusion, block) is inferred from the tensors and returned with ``return_config=True``.

    In-plane layout: the authors feed slabs as (slice, y, x), i.e. transposed in-plane relative to MONAI's
    (x, y) arrays after loading a NIfTI file. With ``transpose_kernels=False`` (default) the converted model is
    exactly the authors' model: feed it what their code feeds (``x.transpose(-1, -2)`` of a MONAI slab) and
    transpose the output back. With ``transpose_kernels=True`` every convolution kernel is transposed in-plane,
    which gives a model that takes MONAI-layout slabs directly: since pooling, bilinear upsampling, batch norm and
    the global fusion pooling commute with the transpose, ``converted_T(x) == converted(x^T)^T`` exactly.

    Args:
        state_dict: the authors' checkpoint (a state_dict, or a dict with a ``state_dict``/``model`` entry).
        transpose_kernels: transpose conv kernels for MONAI's in-plane layout (see above).
        return_config: also return the inferred constructor arguments.

    Raises:
        KeyError: keys that do not belong to the authors' layout, or keys the target model needs that are missing
            (each listed).
        ValueError: a tensor whose shape does not match the inferred architecture.
    """
    for wrapper in ("state_dict", "model", "net"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]  # type: ignore[assignment]
    src = OrderedDict((_strip(k), v) for k, v in state_dict.items())
    config = _infer_config(src)
    modules = original_module_map(config["num_scales_out"])
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    unknown = []
    for key, value in src.items():
        parts = key.split(".")
        target = modules.get(parts[0])
        if target is None or len(parts) < 3 or parts[-1] not in _PARAMS:
            unknown.append(key)
            continue
        idx, param = parts[-2], parts[-1]
        if parts[0] == "inc":
            layer = _STEM_LAYERS.get(idx)
        elif parts[0] == "att":
            layer = _AF_LAYERS.get(idx)
        elif parts[0].startswith("outc"):
            layer = _Q_LAYERS.get(idx)
        elif parts[1] == "bridge":
            layer = "proj." + _Q_LAYERS[idx] if idx in _Q_LAYERS else None
        elif parts[1] in _P_ROLES:
            layer = _P_LAYERS.get(idx)
            if layer is not None and config["block"] == "res":
                layer = "conv." + layer
        else:
            layer = None
        if layer is None:
            unknown.append(key)
            continue
        if transpose_kernels and param == "weight" and value.dim() == 4:
            value = value.transpose(-1, -2).contiguous()
        out[f"{target}.{layer}.{param}"] = value

    with torch.device("meta"):
        reference = PIPOFAN(legacy_projections=True, **config).state_dict()
    missing = [k for k in reference if k not in out]
    unknown += [k for k in out if k not in reference]
    if unknown or missing:
        raise KeyError(
            "cannot convert the checkpoint: "
            + (f"unknown keys {sorted(unknown)}" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"missing keys (PIPOFAN names) {sorted(missing)}" if missing else "")
        )
    bad = [f"{k}: {tuple(out[k].shape)} vs {tuple(v.shape)}" for k, v in reference.items() if out[k].shape != v.shape]
    if bad:
        raise ValueError(f"tensor shapes do not match the inferred architecture {config}: {bad}")
    out = OrderedDict((k, out[k]) for k in reference)
    return (out, config) if return_config else out


def pipofan_from_original(state_dict: Mapping[str, torch.Tensor] | str, transpose_kernels: bool = False) -> PIPOFAN:
    """Build a ``PIPOFAN(legacy_projections=True, ...)`` and load the authors' weights into it (strictly).

    Args:
        state_dict: the authors' state_dict or the path of a checkpoint file holding one.
        transpose_kernels: see :func:`convert_original_state_dict`.
    """
    if isinstance(state_dict, str):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    converted, config = convert_original_state_dict(state_dict, transpose_kernels, return_config=True)
    net = PIPOFAN(legacy_projections=True, **config)
    net.load_state_dict(converted, strict=True)
    return net
