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

"""Plans: everything needed to use a trained model, saved beside its weights (the idea of nnU-Net's plans file).

Every checkpoint the bundle writes (``models/model.pt``, ``runs/last.pt``, fold models) is a dict
``{"model": state_dict, "plans": plans, ...}``. The plans are plain JSON-like values (they load with
``torch.load(weights_only=True)``)::

    {
      "format": 1,
      "network": {"_target_": "pipofan_monai.networks.PIPOFAN", "spatial_dims": 2, "in_channels": 3, ...},
      "class_names": ["background", "liver", "kidney", "spleen"],
      "preprocessing": {"spatial_size": 256, "hu_window": [-200.0, 200.0], "intensity": "scale", "context": 1,
                        "image_mode": "trilinear"},
      "dataset_table": null,
      "organ_table": null,
      "partial_labels": true,
      "versions": {"pipofan_monai": "0.1.0", "monai": "1.6.1", "torch": "2.13.0"}
    }

Inference, evaluation, ensembles, the benchmark and MONAI Label take the network arguments, the class names and
the preprocessing from here (:func:`resolve_plans`); a setting given explicitly that contradicts the checkpoint is
an error naming both values. A checkpoint without plans (a plain state dict, the authors' converted weights, files
written before plans existed) still loads: then the explicit settings, or the paper's defaults
(:data:`DEFAULT_PREPROCESSING`, full-width network), are used, as before.

:data:`DEFAULT_PREPROCESSING` is the one definition of the preprocessing defaults; the pipelines in
:mod:`pipofan_monai.preprocessing.pipelines` consume a ``preprocessing`` dict of exactly these keys.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import torch

__all__ = [
    "PLANS_KEY",
    "PLANS_FORMAT",
    "DEFAULT_CLASS_NAMES",
    "DEFAULT_PREPROCESSING",
    "PREPROCESSING_KEYS",
    "PlansMismatchError",
    "make_plans",
    "preprocessing_settings",
    "network_from_plans",
    "read_checkpoint",
    "read_plans",
    "resolve_plans",
    "check_plans_match",
    "plans_differences",
    "load_network_weights",
    "PlansState",
    "check_state_dict_values",
]

logger = logging.getLogger(__name__)

#: key of the plans in a checkpoint dict
PLANS_KEY = "plans"
#: version of the plans layout
PLANS_FORMAT = 1
#: the paper's global classes
DEFAULT_CLASS_NAMES = ("background", "liver", "kidney", "spleen")
#: the paper's preprocessing (PIPO-FAN §III-A and the authors' code): in-plane resize to 256, HU window
#: [-200, 200] scaled to [-1, 1], one neighbour slice each side, trilinear image resampling
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "spatial_size": 256,
    "hu_window": [-200.0, 200.0],
    "intensity": "scale",
    "context": 1,
    "image_mode": "trilinear",
}
PREPROCESSING_KEYS = tuple(DEFAULT_PREPROCESSING)
_NETWORK_TARGET = "pipofan_monai.networks.PIPOFAN"


class PlansMismatchError(ValueError):
    """An explicit setting contradicts the plans stored in a checkpoint (or two checkpoints disagree)."""


def _plain(value: Any) -> Any:
    """JSON-like copy of ``value`` (tuples -> lists, tensors/numpy scalars -> Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def preprocessing_settings(
    spatial_size: int | None = DEFAULT_PREPROCESSING["spatial_size"],
    hu_window: Sequence[float] = DEFAULT_PREPROCESSING["hu_window"],
    intensity: str = DEFAULT_PREPROCESSING["intensity"],
    context: int = DEFAULT_PREPROCESSING["context"],
    image_mode: str = DEFAULT_PREPROCESSING["image_mode"],
) -> dict[str, Any]:
    """The preprocessing dict of the plans, validated.

    Args:
        spatial_size: in-plane size after resizing (a multiple of 16); 0 or None keep the original size.
        hu_window: ``(low, high)`` HU clip range, low < high.
        intensity: ``"scale"`` (window to [-1, 1]) or ``"zscore"``.
        context: neighbour slices each side (the network sees ``2 * context + 1`` slices).
        image_mode: image interpolation of the in-plane resize ("trilinear", "area", "nearest").

    Raises:
        ValueError: a value out of range, naming it.
    """
    if spatial_size is not None and int(spatial_size) == 0:
        spatial_size = None  # 0: keep the original in-plane size (null means "from the checkpoint" in the configs)
    if spatial_size is not None and (int(spatial_size) < 16 or int(spatial_size) % 16):
        raise ValueError(f"spatial_size must be a multiple of 16 (or 0 to keep the size), got {spatial_size}.")
    window = [float(v) for v in hu_window]
    if len(window) != 2 or not window[0] < window[1]:
        raise ValueError(f"hu_window must be [low, high] with low < high, got {hu_window}.")
    if intensity not in ("scale", "zscore"):
        raise ValueError(f"intensity must be 'scale' or 'zscore', got {intensity!r}.")
    if int(context) < 0:
        raise ValueError(f"context must be >= 0, got {context}.")
    if image_mode not in ("trilinear", "area", "nearest", "bilinear"):
        raise ValueError(f"image_mode must be trilinear, area, bilinear or nearest, got {image_mode!r}.")
    return {
        "spatial_size": None if spatial_size is None else int(spatial_size),
        "hu_window": window,
        "intensity": str(intensity),
        "context": int(context),
        "image_mode": str(image_mode),
    }


def _versions() -> dict[str, str]:
    import monai

    import pipofan_monai

    return {"pipofan_monai": str(pipofan_monai.__version__), "monai": str(monai.__version__), "torch": str(torch.__version__)}


def make_plans(
    network: torch.nn.Module | Mapping[str, Any],
    class_names: Sequence[str],
    preprocessing: Mapping[str, Any],
    dataset_table: Mapping[str, Any] | None = None,
    partial_labels: bool = True,
    organ_table: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the plans stored with a trained model.

    Args:
        network: the network (a :class:`~pipofan_monai.networks.PIPOFAN`, its constructor arguments are read from
            ``network.get_config()``) or its constructor arguments.
        class_names: global class names, background first; ``len`` must equal the network's ``out_channels``.
            Or the model's :class:`~pipofan_monai.vocabulary.LabelSpace`, which then also gives ``dataset_table``,
            ``organ_table`` and ``partial_labels`` (leave those unset).
        preprocessing: the preprocessing settings (keys of :data:`DEFAULT_PREPROCESSING`; missing keys take the
            defaults).
        dataset_table: the user-defined dataset entries the training used (None: built-in only).
        partial_labels: whether the training used the datasets' labeled-class masks (False: naive baseline).
        organ_table: the user-defined organ entries the training used (None: built-in only); stored so that
            :meth:`~pipofan_monai.vocabulary.LabelSpace.from_plans` rebuilds the whole label space from the checkpoint.

    Raises:
        ValueError: class count differs from the network's outputs, or the in_channels differ from the context.
    """
    if hasattr(class_names, "to_config"):  # a LabelSpace: the one source of the vocabulary
        if dataset_table is not None or organ_table is not None or not partial_labels:
            raise ValueError("make_plans takes a LabelSpace or class_names with tables, not both.")
        space = class_names.to_config()
        class_names, dataset_table, organ_table = space["class_names"], space["dataset_table"], space["organ_table"]
        partial_labels = space["partial_labels"]
    args = dict(network.get_config() if hasattr(network, "get_config") else network)
    args.pop("_target_", None)
    prep = preprocessing_settings(**{**DEFAULT_PREPROCESSING, **{k: v for k, v in preprocessing.items() if k in PREPROCESSING_KEYS}})
    names = [str(n) for n in class_names]
    if "out_channels" in args and int(args["out_channels"]) != len(names):
        raise ValueError(f"{len(names)} class_names {names} but the network has {args['out_channels']} outputs.")
    if "in_channels" in args and int(args["in_channels"]) != 2 * prep["context"] + 1:
        raise ValueError(
            f"the network takes {args['in_channels']} input slices but context={prep['context']} gives "
            f"{2 * prep['context'] + 1}."
        )
    return _plain({
        "format": PLANS_FORMAT,
        "network": {"_target_": _NETWORK_TARGET, **args},
        "class_names": names,
        "preprocessing": prep,
        "dataset_table": dataset_table,
        "organ_table": organ_table,
        "partial_labels": bool(partial_labels),
        "versions": _versions(),
    })


def network_from_plans(plans: Mapping[str, Any]) -> torch.nn.Module:
    """Instantiate the network described by ``plans["network"]``."""
    from monai.utils.module import instantiate

    args = dict(plans["network"])
    target = args.pop("_target_", _NETWORK_TARGET)
    return instantiate(target, "default", **args)


_CACHE: dict[tuple, Any] = {}


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` a checkpoint (``weights_only=True``), remembering the last file read so that reading the
    plans and then the weights of one file loads it once.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as a checkpoint (names the file and the reason).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r} (train the bundle first, or pass --ckpt_path <file>).")
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, str(map_location))
    if key not in _CACHE:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
            raise ValueError(f"could not read checkpoint {path!r}: {type(e).__name__}: {e}") from e
        _CACHE.clear()  # one file at a time: a checkpoint can be hundreds of MB
        _CACHE[key] = ckpt
    return _CACHE[key]


def read_plans(path: str | os.PathLike) -> dict[str, Any] | None:
    """The plans stored in checkpoint ``path``, or None for a checkpoint without plans."""
    ckpt = read_checkpoint(path)
    plans = ckpt.get(PLANS_KEY) if isinstance(ckpt, Mapping) else None
    if plans is None:
        return None
    if not isinstance(plans, Mapping) or "network" not in plans or "preprocessing" not in plans:
        raise ValueError(f"checkpoint {os.fspath(path)!r} has malformed plans: {type(plans).__name__}.")
    return dict(plans)


def _class_names_difference(have: Sequence[str], given: Sequence[str]) -> str | None:
    """None when two vocabularies name the same organs in the same order, else ``class_names: checkpoint ...,
    given ... (K=.. vs ..)``.

    Names are compared as organs (:func:`pipofan_monai.vocabulary.organs.canonical_organ_name`: case, spaces, hyphens and
    aliases do not matter), the rule the dataset label mapping uses: ``Liver`` and ``liver`` are one organ. When
    the two lists differ only in such spelling, a warning names both and the checkpoint's names are used.
    """
    from pipofan_monai.vocabulary.organs import canonical_organ_name

    have, given = [str(n) for n in have], [str(n) for n in given]
    if have == given:
        return None
    if [canonical_organ_name(n) for n in have] == [canonical_organ_name(n) for n in given]:
        logger.warning(f"class_names {given} differ from the checkpoint's {have} only in spelling (case, spaces, "
                       "aliases): the same organs; using the checkpoint's names.")
        return None
    return f"class_names: checkpoint {have!r}, given {given!r} (K={len(have)} vs {len(given)})"


def _differences(plans: Mapping[str, Any], explicit: Mapping[str, Any]) -> list[str]:
    """Human-readable ``name: checkpoint X, given Y`` for every explicit (non-None) setting that differs."""
    out = []
    for name, value in explicit.items():
        if value is None:
            continue
        value = _plain(value)
        if name == "class_names":
            diff = _class_names_difference(plans["class_names"], value)
            out += [diff] if diff else []
            continue
        if name == "network_channels":
            have = plans["network"].get("channels")
        elif name == "num_classes":
            have = len(plans["class_names"])
        else:
            have = plans["preprocessing"].get(name)
            if name == "hu_window":
                value = [float(v) for v in value]
            if name == "spatial_size":  # 0 = keep the original size = None in the plans
                have, value = have or 0, int(value)
        if _plain(have) != value:
            out.append(f"{name}: checkpoint {have!r}, given {value!r}")
    return out


def _setting_name(group: str, key: str) -> str:
    """The config setting behind a plans entry: ``network_channels``, ``network_def#block``, ``spatial_size``..."""
    if group == "network":
        return "network_channels" if key == "channels" else f"network_def#{key}"
    return key


def plans_differences(reference: Mapping[str, Any], other: Mapping[str, Any],
                      labels: tuple[str, str] | None = None) -> list[str]:
    """Every setting in which two plans differ, one ``setting: A vs B`` each (``setting: label0 A, label1 B``
    with ``labels``): the network's arguments, the class names and the preprocessing, named as the config names
    them (``network_channels``, ``network_def#<argument>``, ``class_names``, ``spatial_size``, ...)."""

    def show(a: Any, b: Any) -> str:
        return f"{a!r} vs {b!r}" if labels is None else f"{labels[0]} {a!r}, {labels[1]} {b!r}"

    out = []
    for group in ("network", "class_names", "preprocessing"):
        a, b = _plain(reference.get(group)), _plain(other.get(group))
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in [*a, *(k for k in b if k not in a)]:
                if a.get(key) != b.get(key):
                    out.append(f"{_setting_name(group, key)}: {show(a.get(key), b.get(key))}")
        else:
            out.append(f"{group}: {show(a, b)}")
    return out


def check_plans_match(reference: Mapping[str, Any], other: Mapping[str, Any], what: str,
                      labels: tuple[str, str] | None = None) -> None:
    """Raise :class:`PlansMismatchError` when two plans differ in network, classes or preprocessing, naming every
    differing setting with both values (:func:`plans_differences`)."""
    diffs = plans_differences(reference, other, labels)
    if diffs:
        raise PlansMismatchError(f"{what} were trained with different settings: " + "; ".join(diffs))


def resolve_plans(
    ckpt_paths: str | os.PathLike | Sequence[str | os.PathLike] | None,
    network_channels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    spatial_size: int | None = None,
    hu_window: Sequence[float] | None = None,
    intensity: str | None = None,
    context: int | None = None,
    image_mode: str | None = None,
    network_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plans to run with: from the checkpoint(s) when they carry plans, else from the explicit settings.

    Args:
        ckpt_paths: a checkpoint, or candidates in order of preference (e.g. ``models/model.pt`` then the fold
            models); the first existing file with plans is used. Missing files are skipped; None or no existing
            file uses the explicit settings (e.g. to build a network before training).
        network_channels, class_names, num_classes, spatial_size, hu_window, intensity, context, image_mode:
            explicit settings; None means "from the checkpoint" (or the default for a checkpoint without plans);
            ``spatial_size=0`` keeps the original in-plane size.
            An explicit value that differs from the checkpoint's plans raises :class:`PlansMismatchError` naming
            both values.
        network_args: other PIPOFAN arguments for checkpoints without plans (e.g. ``num_scales_out``).

    Returns:
        plans as described in the module docstring (``"source"`` says which file they came from, or
        ``"explicit settings"``).
    """
    explicit = {
        "network_channels": network_channels, "class_names": class_names, "num_classes": num_classes,
        "spatial_size": spatial_size, "hu_window": hu_window, "intensity": intensity, "context": context,
        "image_mode": image_mode,
    }
    if ckpt_paths is None:
        candidates: list = []
    elif isinstance(ckpt_paths, (str, os.PathLike)):
        candidates = [ckpt_paths]
    else:
        candidates = list(ckpt_paths)
    for path in candidates:
        if not os.path.isfile(os.fspath(path)):
            continue
        plans = read_plans(path)
        if plans is None:
            break  # a checkpoint without plans: explicit settings, as before plans existed
        diffs = _differences(plans, explicit)
        if diffs:
            raise PlansMismatchError(
                f"checkpoint {os.fspath(path)!r} was trained with other settings than given: " + "; ".join(diffs)
                + ". Leave these settings out (they are read from the checkpoint) or use the matching checkpoint."
            )
        return {**plans, "source": os.fspath(path)}
    names = list(class_names) if class_names is not None else list(DEFAULT_CLASS_NAMES)
    if num_classes is not None and class_names is None and int(num_classes) != len(names):
        names = ["background"] + [f"class{i}" for i in range(1, int(num_classes))]
    prep = preprocessing_settings(**{
        **DEFAULT_PREPROCESSING,
        **{k: v for k, v in explicit.items() if k in PREPROCESSING_KEYS and v is not None},
    })
    args: dict[str, Any] = {"spatial_dims": 2, **dict(network_args or {})}
    args.update(in_channels=2 * prep["context"] + 1, out_channels=len(names))
    if network_channels is not None:
        args["channels"] = [int(c) for c in network_channels]
    plans = make_plans(args, names, prep)
    plans["source"] = "explicit settings"
    return plans


def load_network_weights(
    network: torch.nn.Module, ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Load a checkpoint into ``network`` strictly, with an error naming every mismatch.

    Accepts a plain ``state_dict`` (MONAI ``CheckpointSaver`` with one object), ``{"model": state_dict, ...}``
    (e.g. the training's ``last.pt``) or ``{"state_dict": ...}``; a ``module.`` prefix (DataParallel/DDP) is
    removed.

    Args:
        network: the instantiated network (``network_def``).
        ckpt_path: checkpoint file.
        map_location: where the tensors are loaded before copying. Default CPU.

    Returns:
        ``network`` with the weights loaded.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, no state dict inside, or keys/shapes that differ from the network (the
            message lists missing and unexpected keys and shape mismatches: a checkpoint of another architecture,
            e.g. other ``network_channels`` or ``num_classes``), or broken values (NaN/inf weights, negative
            BatchNorm variances; see :func:`check_state_dict_values`).
    """
    path = os.fspath(ckpt_path)
    ckpt = read_checkpoint(path, map_location)
    state = ckpt
    if isinstance(ckpt, Mapping):
        for key in ("model", "state_dict", "network"):
            if isinstance(ckpt.get(key), Mapping):
                state = ckpt[key]
                break
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        top = sorted(map(str, ckpt))[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(f"checkpoint {path!r} holds no model state_dict (found: {top}).")
    net_state = network.state_dict()
    if all(str(k).startswith("module.") for k in state) and not any(k.startswith("module.") for k in net_state):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in net_state if k not in state]
    unexpected = [k for k in state if k not in net_state]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in net_state.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches, e.g. " + "; ".join(shapes[:5]))
        raise ValueError(
            f"checkpoint {path!r} does not match the network ({type(network).__name__}): " + "; ".join(parts)
            + ". It was trained with another architecture: set network_channels / num_classes / context as in "
            "training."
        )
    check_state_dict_values(state, path)
    network.load_state_dict(state, strict=True)
    return network


class PlansState:
    """Carries the plans into checkpoints written by ignite/MONAI savers, which store ``obj.state_dict()`` for every
    entry of their ``save_dict``: ``save_dict={"model": network, "plans": PlansState(plans)}`` writes
    ``{"model": state_dict, "plans": plans}``.

    Args:
        plans: the plans (:func:`make_plans`).
    """

    def __init__(self, plans: Mapping[str, Any]) -> None:
        self.plans = dict(plans)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.plans)

    def check_compatible(self, state: Mapping[str, Any], source: str | os.PathLike = "the checkpoint") -> None:
        """Raise :class:`PlansMismatchError` when the plans ``state`` saved in ``source`` differ from this run's,
        naming every differing setting with the checkpoint's and this run's value. :class:`ResumableCheckpoint`
        calls it before it loads any weights, so a resume with another width or class list names the setting
        instead of failing on the first mismatching tensor."""
        name = os.path.basename(os.fspath(source)) or "the checkpoint"
        check_plans_match(state, self.plans, f"{name} and this run", labels=(name, "this run"))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restoring a resumed run keeps the current plans; a resume with other settings is an error."""
        self.check_compatible(state)


def check_state_dict_values(state: Mapping[str, torch.Tensor], ckpt_name: str = "<checkpoint>") -> None:
    """Refuse weights that cannot give a meaningful result: NaN/inf in any floating tensor, or a negative
    BatchNorm/InstanceNorm ``running_var`` (its square root is NaN, so every output would be NaN).

    Args:
        state: a state dict.
        ckpt_name: the checkpoint's name for the message.

    Raises:
        ValueError: naming the checkpoint, how many tensors are bad and the first of them.
    """
    bad, negative = [], []
    for k, v in state.items():
        if not torch.is_tensor(v) or not v.is_floating_point() or v.numel() == 0:
            continue
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            bad.append(f"{k} ({int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} inf of {v.numel()})")
        elif str(k).endswith("running_var") and bool((v < 0).any()):
            negative.append(f"{k} (min {float(v.min()):.4g})")
    if bad or negative:
        parts = []
        if bad:
            parts.append(f"{len(bad)} tensor(s) with non-finite values, e.g. " + "; ".join(bad[:3]))
        if negative:
            parts.append(f"{len(negative)} negative normalisation variance(s), e.g. " + "; ".join(negative[:3]))
        raise ValueError(
            f"checkpoint {ckpt_name!r} holds broken weights: " + "; ".join(parts) + ". The training that wrote it "
            "diverged or the file is damaged: use an earlier checkpoint (e.g. the best model.pt, not last.pt)."
        )
