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

"""Whole-volume inference driver of the bundle (``configs/inference.json``, PIPOFAN.md §5), fold ensembles and
evaluation against labels.

The bundle config defines the MONAI components (``network_def``, ``preprocessing``, ``inferer``,
``postprocessing``) exactly as MONAI Label expects them; :class:`SegmentationRunner` drives them case by case,
so that one bad input (a 2D image, a 4D series, an unreadable file, a folder without a DICOM series, NaNs) is
reported with its name and does not stop the other cases, existing outputs are not overwritten unless asked,
and several checkpoints can be combined (majority vote of label maps, the paper, or mean of probabilities).

Per case: preprocessing (load, orientation RAS, HU window, in-plane resize) -> sliding-slice inference with each
checkpoint -> ``postprocessing``: softmax -> ``Invertd`` (probabilities resampled back to the ORIGINAL grid) ->
``AsDiscreted(argmax)`` -> connected-component filtering -> ``SaveImaged`` (uint8 NIfTI with the input's shape
and affine). With several checkpoints, the postprocessing chain is split at its first ``AsDiscreted``: the part
before it runs per checkpoint, the combination happens on the original grid (vote: on the argmaxed label maps;
mean: on the probabilities), the rest runs once.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.data.folder_layout import FolderLayout
from monai.transforms import AsDiscreted, Compose, MapTransform, Orientation, SaveImaged
from monai.utils import convert_to_dst_type

from pipofan_monai.dataset_conversion.datasets import CLASS_NAMES
from pipofan_monai.utils import as_bool, filename_of
from pipofan_monai.organs import check_class_names, validate_class_names

__all__ = [
    "InferenceError",
    "CheckVolumed",
    "LabelNiftiWriter",
    "check_dicom_folder",
    "resolve_inputs",
    "load_network_weights",
    "checkpoint_class_names",
    "majority_vote",
    "mean_probabilities",
    "SegmentationRunner",
]

logger = logging.getLogger("pipofan.inference")

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class InferenceError(RuntimeError):
    """Raised at the end of a run in which some inputs failed; the message lists every failure."""


# ---------------------------------------------------------------------------------------------- transforms
class CheckVolumed(MapTransform):
    """Check that loaded images are single 3D volumes ``(1, H, W, D)`` (``D >= 1`` slices).

    Place right after loading (channel first). A 2D image (``(1, H, W)``), a multi-channel or 4D series with
    more than one volume (``(T, H, W, D)``, e.g. a 4D NIfTI) and empty images are rejected with a
    ``ValueError`` naming the file and its shape. A 4D file with a single volume (``T == 1``) is accepted.

    Args:
        keys: image key(s). Default ``"image"``.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            shape = tuple(img.shape)
            name = filename_of(img)
            if len(shape) < 4:
                raise ValueError(
                    f"{key} {name} is a {len(shape) - 1}D image (channel-first shape {shape}); PIPO-FAN segments 3D "
                    "CT volumes (H, W, D) with D >= 1 axial slices."
                )
            if len(shape) > 4:
                raise ValueError(
                    f"{key} {name} has {len(shape) - 1} spatial dimensions (channel-first shape {shape}); expected "
                    "one 3D CT volume."
                )
            if shape[0] != 1:
                raise ValueError(
                    f"{key} {name} holds {shape[0]} volumes or channels (channel-first shape {shape}, e.g. a 4D "
                    "series); expected one 3D CT volume: split the series and segment each volume."
                )
            if min(shape[1:]) < 1:
                raise ValueError(f"{key} {name} is empty (shape {shape}).")
        return d


class LabelNiftiWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` that keeps the volume's spatial dimensions for single-channel data.

    MONAI's writers squeeze trailing singleton dimensions, so a one-slice volume ``(1, H, W, 1)`` would be
    written as a 2D ``(H, W)`` NIfTI; this writer writes ``(H, W, 1)``, the input's exact shape. Use it with
    ``SaveImaged(writer=LabelNiftiWriter, ...)``. Multi-channel data are written as MONAI does (channel last).
    """

    def set_data_array(self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        """Args: as ``NibabelWriter.set_data_array``; shape ``(1, H, W, D)`` is written as ``(H, W, D)``."""
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=squeeze_end_dims, **kwargs)
        shape = list(data_array.shape)
        if channel_dim is not None:
            cdim = int(channel_dim) % len(shape)
            if shape[cdim] != 1:
                return
            shape.pop(cdim)
        spatial = shape[:3]
        if self.data_obj is not None and len(self.data_obj.shape) < len(spatial):
            if int(np.prod(spatial)) == int(np.prod(self.data_obj.shape)):
                self.data_obj = self.data_obj.reshape(spatial)


# ---------------------------------------------------------------------------------------------- inputs
def check_dicom_folder(path: str | os.PathLike) -> list[str]:
    """Series UIDs of the DICOM series in a folder (as MONAI's ``ITKReader`` groups them).

    Args:
        path: a folder.

    Returns:
        the series UIDs; ``ITKReader`` reads the first one (a warning is logged when there are several).

    Raises:
        ValueError: the folder holds no DICOM series (message names the folder and what it contains).
    """
    import itk

    folder = os.fspath(path)
    gen = itk.GDCMSeriesFileNames.New()
    gen.SetUseSeriesDetails(True)
    gen.AddSeriesRestriction("0008|0021")  # series date, as MONAI's ITKReader
    gen.SetGlobalWarningDisplay(False)
    gen.SetDirectory(folder)
    uids = [str(u) for u in gen.GetSeriesUIDs()]
    if not uids:
        entries = sorted(os.listdir(folder))
        hint = f"{len(entries)} entries, e.g. {entries[:3]}" if entries else "it is empty"
        raise ValueError(f"folder {folder} contains no DICOM series ({hint}).")
    if len(uids) > 1:
        logger.warning(
            f"folder {folder} contains {len(uids)} DICOM series; reading the first one ({uids[0]}). Put each series "
            "in its own folder to segment the others."
        )
    return uids


def _norm_path(p: Any) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(p))))


def _as_items(inputs: Any) -> list[dict]:
    if isinstance(inputs, (str, os.PathLike, Mapping)):
        inputs = [inputs]
    items = []
    for x in inputs:
        item = dict(x) if isinstance(x, Mapping) else {"image": x}
        if not isinstance(item.get("image"), (str, os.PathLike)):
            raise ValueError(f"each input needs an 'image' path, got {x!r}.")
        item["image"] = _norm_path(item["image"])
        if isinstance(item.get("label"), (str, os.PathLike)):
            item["label"] = _norm_path(item["label"])
        items.append(item)
    return items


def resolve_inputs(
    input_files: str | os.PathLike | Sequence | None = None,
    datalist: str | os.PathLike | Mapping | None = None,
    dataset_dir: str | os.PathLike | None = None,
    datalist_key: str = "test",
    demo_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """The items to segment, ``[{"image": path, ("label": path, "dataset": id, ...)}]``, with absolute paths.

    Precedence: ``input_files``; else ``datalist`` (its ``datalist_key`` list, paths relative to ``dataset_dir``
    or the JSON's folder); else every NIfTI/NRRD/MHA file directly in ``dataset_dir``; else the built-in
    SYNTHETIC demo dataset's held-out ``test`` volumes (generated on first use, see
    :py:func:`pipofan_monai.dataset_conversion.ensure_demo_dataset`).

    Args:
        input_files: one path or a list of paths (NIfTI/NRRD files or DICOM series folders) or item dicts.
        datalist: a datalist JSON file or dict (``pipofan_monai`` datalist or MONAI decathlon style).
        dataset_dir: base folder of the datalist's relative paths, or a folder of images.
        datalist_key: the datalist list to read. Default ``"test"``.
        demo_dir: demo dataset folder (default ``$PIPOFAN_DEMO_DIR`` or ``~/.cache/pipofan_monai/demo``).

    Raises:
        ValueError: nothing to segment (empty list, empty folder, missing datalist key).
        FileNotFoundError: ``dataset_dir`` or the datalist does not exist.
    """
    if input_files not in (None, "", []):
        items = _as_items(input_files)
    elif datalist not in (None, ""):
        if isinstance(datalist, Mapping):
            dl, base = dict(datalist), Path(dataset_dir or ".").expanduser()
            src = "<dict>"
        else:
            p = Path(datalist).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"datalist not found: {p}")
            dl, src = json.loads(p.read_text()), str(p)
            base = Path(dataset_dir).expanduser() if dataset_dir else p.parent
        if not isinstance(dl.get(datalist_key), list):
            raise ValueError(f"datalist {src} has no list {datalist_key!r}; keys: {sorted(dl)}.")
        items = []
        for x in dl[datalist_key]:
            item = {"image": x} if isinstance(x, (str, os.PathLike)) else dict(x)
            for k in ("image", "label"):
                if isinstance(item.get(k), str) and not os.path.isabs(os.path.expanduser(item[k])):
                    item[k] = str(base / item[k])
            items.append(item)
        items = _as_items(items)
    elif dataset_dir not in (None, ""):
        folder = Path(dataset_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset_dir not found: {folder}")
        files = sorted(str(f) for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(_IMAGE_SUFFIXES))
        items = _as_items(files)
    else:
        from pipofan_monai.dataset_conversion import ensure_demo_dataset

        path = ensure_demo_dataset(demo_dir)
        logger.info(f"no input given: segmenting the SYNTHETIC demo dataset's held-out test volumes ({path})")
        return resolve_inputs(datalist=path, datalist_key="test")
    if not items:
        raise ValueError(
            f"nothing to segment: input_files={input_files!r}, datalist={datalist!r}, dataset_dir={dataset_dir!r}."
        )
    return items


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_class_names(ckpt: Any) -> list[str] | None:
    """The class names a checkpoint was trained with (``ckpt["plans"]["class_names"]`` of a self-describing
    checkpoint, or a top-level ``"class_names"``), or None for a checkpoint that does not record them."""
    if not isinstance(ckpt, Mapping):
        return None
    plans = ckpt.get("plans")
    names = plans.get("class_names") if isinstance(plans, Mapping) else None
    if names is None:
        names = ckpt.get("class_names")
    if names is None or isinstance(names, str) or not isinstance(names, Sequence):
        return None
    return [str(n) for n in names]


def load_network_weights(
    network: torch.nn.Module, ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu",
    class_names: Sequence[str] | None = None,
) -> torch.nn.Module:
    """Load a checkpoint into ``network`` strictly, with an error naming every mismatch.

    Accepts a plain ``state_dict`` (MONAI ``CheckpointSaver`` with one object), ``{"model": state_dict, ...}``
    (e.g. the training's ``last.pt``) or ``{"state_dict": ...}``; a ``module.`` prefix (DataParallel/DDP) is
    removed.

    Args:
        network: the instantiated network (``network_def``).
        ckpt_path: checkpoint file.
        map_location: where the tensors are loaded before copying. Default CPU.
        class_names: the config's vocabulary; a checkpoint that records another one is refused (before the
            weights are compared), see :py:func:`pipofan_monai.organs.check_class_names`.

    Returns:
        ``network`` with the weights loaded.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, no state dict inside, or keys/shapes that differ from the network (the
            message lists missing and unexpected keys and shape mismatches: a checkpoint of another architecture,
            e.g. other ``network_channels`` or ``num_classes``).
    """
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint not found: {path!r} (train the bundle first, or pass --ckpt_path <file>)."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"could not read checkpoint {path!r}: {type(e).__name__}: {e}") from e
    if class_names is not None:
        check_class_names(checkpoint_class_names(ckpt), class_names, path)
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
    network.load_state_dict(state, strict=True)
    return network


# ---------------------------------------------------------------------------------------------- ensembles
def majority_vote(label_maps: Sequence[Any], num_classes: int) -> Any:
    """Voxel-wise majority vote of label maps (the paper's fold ensemble).

    Ties are broken in favour of the LOWEST class id among the most voted (background first: e.g. two folds
    saying liver, two spleen and one background gives liver), a conservative and deterministic rule.

    Args:
        label_maps: ``M >= 1`` integer label maps of identical shape (any shape, e.g. ``(1, H, W, D)``), torch
            tensors / MetaTensors / numpy arrays, values in ``0 .. num_classes - 1``.
        num_classes: K.

    Returns:
        the voted label map, same shape, type and dtype as ``label_maps[0]`` (MetaTensor metadata kept).

    Raises:
        ValueError: no maps, shapes differ, or values outside ``0 .. num_classes - 1``.
    """
    if len(label_maps) == 0:
        raise ValueError("majority_vote needs at least one label map.")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    ref = label_maps[0]
    maps = [torch.as_tensor(m.as_tensor() if isinstance(m, MetaTensor) else m) for m in label_maps]
    shape = tuple(maps[0].shape)
    for i, m in enumerate(maps):
        if tuple(m.shape) != shape:
            raise ValueError(f"label map {i} has shape {tuple(m.shape)}, map 0 has {shape}.")
        lo, hi = float(m.min()), float(m.max())
        if lo < 0 or hi > num_classes - 1 or (m.is_floating_point() and not torch.equal(m, m.round())):
            raise ValueError(f"label map {i} holds values outside the class ids 0..{num_classes - 1} ({lo}..{hi}).")
    counts = torch.zeros((int(num_classes), *shape), dtype=torch.int16, device=maps[0].device)
    for m in maps:
        m = m.long()
        for c in range(int(num_classes)):
            counts[c] += m == c
    voted = torch.argmax(counts, dim=0)  # first (lowest) class among equal maxima
    return convert_to_dst_type(voted, ref, dtype=ref.dtype)[0]


def mean_probabilities(probabilities: Iterable[Any]) -> Any:
    """Mean of probability maps (the alternative fold ensemble), accumulated one map at a time.

    Args:
        probabilities: an iterable (a generator works, keeping memory at two maps) of ``(K, ...)`` maps of
            identical shape (torch / MetaTensor / numpy).

    Returns:
        the mean, float32, type of the first map (MetaTensor metadata kept).

    Raises:
        ValueError: empty iterable or shapes differ.
    """
    total, first, n = None, None, 0
    for p in probabilities:
        t = torch.as_tensor(p.as_tensor() if isinstance(p, MetaTensor) else p).float()
        if total is None:
            total, first = t.clone(), p
        elif tuple(t.shape) != tuple(total.shape):
            raise ValueError(f"probability map {n} has shape {tuple(t.shape)}, map 0 has {tuple(total.shape)}.")
        else:
            total += t
        n += 1
    if total is None:
        raise ValueError("mean_probabilities needs at least one probability map.")
    return convert_to_dst_type(total / n, first, dtype=torch.float32)[0]


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


def _root_error(e: BaseException) -> BaseException:
    """The original error behind MONAI's ``RuntimeError("applying transform ...")`` wrappers."""
    while isinstance(e, RuntimeError) and str(e).startswith("applying transform") and e.__cause__ is not None:
        e = e.__cause__
    return e


def _case_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


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
            file, other cases go on; ``True``: replace; ``"skip"``: leave the case (reported as skipped).
        save_overlay: write ``<output_dir>/<name>_overview.png`` per case (axial + coronal slices, organs over
            the windowed CT; with a label, prediction vs ground truth).
        evaluate: compare with the item's ``label`` (mapped to the global classes with its ``dataset`` id) and
            write ``evaluation.json`` / CSV reports into ``report_dir``.
        report_dir: folder for the evaluation reports (default: the output folder of the label ``SaveImaged``).
        class_names: the vocabulary, index = class id (background first); a checkpoint that records another
            vocabulary is refused with an error naming both.
        datasets: extra dataset table for label mapping (as ``MapDatasetLabelsd(datasets=...)``).
        hu_window: display window of the overview PNGs.
        fail_on_error: raise :class:`InferenceError` at the end when some case failed (the bundle runner then
            exits non-zero); otherwise only log the failures.
        pred_key: key of the prediction. Default ``"pred"``.
        image_key: key of the image. Default ``"image"``.
        organs: optional config-level ``organ_table`` (new organs, colours).
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
        organs: Mapping[str, Any] | None = None,
    ) -> None:
        if str(ensemble_mode).lower() not in ("vote", "mean"):
            raise ValueError(f"ensemble_mode must be 'vote' or 'mean', got {ensemble_mode!r}.")
        self.network = network
        self.preprocessing = preprocessing if isinstance(preprocessing, Compose) else Compose(preprocessing)
        self.inferer = inferer
        self.postprocessing = postprocessing if isinstance(postprocessing, Compose) else Compose(postprocessing)
        self.ensemble_mode = str(ensemble_mode).lower()
        self.overwrite = _parse_overwrite(overwrite)
        self.save_overlay = as_bool(save_overlay, "save_overlay")
        self.evaluate = as_bool(evaluate, "evaluate")
        self.report_dir = report_dir
        self.organs = dict(organs) if organs else None
        self.class_names = list(validate_class_names(class_names, self.organs))
        self.datasets = datasets
        self.hu_window = tuple(float(v) for v in hu_window)
        self.fail_on_error = as_bool(fail_on_error, "fail_on_error")
        self.pred_key = pred_key
        self.image_key = image_key
        post = list(self.postprocessing.flatten().transforms)
        self.savers = [t for t in post if isinstance(t, SaveImaged)]
        label_savers = [t for t in self.savers if self.pred_key in t.keys]
        self.output_dir = (
            str(label_savers[0].saver.folder_layout.output_dir) if label_savers else (str(report_dir or "."))
        )
        split = next((i for i, t in enumerate(post) if isinstance(t, AsDiscreted)), None)
        self._post_head = Compose(post[:split]) if split is not None else None
        self._post_argmax = post[split] if split is not None else None
        self._post_tail = Compose(post[split + 1 :]) if split is not None else None

    # ------------------------------------------------------------------ helpers
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def output_paths(self, image_path: str) -> list[str]:
        """Files the postprocessing's ``SaveImaged`` transforms write for ``image_path`` (+ the overview PNG)."""
        paths = []
        for t in self.savers:
            saver = t.saver
            kw = saver.fname_formatter({"filename_or_obj": image_path}, saver)
            paths.append(str(saver.folder_layout.filename(**kw)))
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
        nets = []
        for i, p in enumerate(paths):
            net = self.network if i == 0 else copy.deepcopy(self.network)
            load_network_weights(net, p, class_names=self.class_names)
            nets.append(net.eval())
            logger.info(f"loaded checkpoint {os.fspath(p)}")
        if len(nets) > 1:
            if self._post_argmax is None:
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
        d = MapDatasetLabelsd("label", datasets=self.datasets, class_names=self.class_names, organs=self.organs)(d)
        label = d["label"]
        mask = label.meta["labeled_mask"].reshape(-1).tolist()
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
        d = self.preprocessing({self.image_key: image_path})
        image = d[self.image_key]
        batch = image[None]
        with torch.no_grad():
            if len(nets) == 1:
                d[self.pred_key] = self.inferer(batch, nets[0])[0]
                return self.postprocessing(d)
            probs_sum, labels, last = None, [], None
            for net in nets:
                dk = self._post_head({**d, self.pred_key: self.inferer(batch, net)[0]})
                prob = dk[self.pred_key]
                if self.ensemble_mode == "mean" or "prob" in dk:
                    t = prob.as_tensor() if isinstance(prob, MetaTensor) else torch.as_tensor(prob)
                    probs_sum = t.float().clone() if probs_sum is None else probs_sum.add_(t)
                if self.ensemble_mode == "vote":
                    lab = self._post_argmax(dict(dk))[self.pred_key]
                    labels.append(lab.to(torch.uint8))
                last = dk
            out = dict(last)
            if probs_sum is not None:
                mean = convert_to_dst_type(probs_sum / len(nets), last[self.pred_key], dtype=torch.float32)[0]
                if "prob" in out:
                    out["prob"] = mean
            if self.ensemble_mode == "mean":
                out[self.pred_key] = mean
                out = self._post_argmax(out)
            else:
                voted = majority_vote(labels, self.num_classes)
                out[self.pred_key] = convert_to_dst_type(voted, last[self.pred_key], dtype=torch.float32)[0]
            return self._post_tail(out)

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
            FileNotFoundError, ValueError: checkpoint problems (before any case is processed).
            InferenceError: at the end, when some cases failed and ``fail_on_error``.
        """
        items = _as_items(items)
        nets = self._networks(ckpt_path)
        planned: dict[str, str] = {}
        cases: list[dict] = []
        eval_results: list[dict] = []
        t_start = time.perf_counter()
        for i, item in enumerate(items):
            path = item[self.image_key]
            name = _case_name(path)
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
                existing = [o for o in outputs if os.path.exists(o)]
                if existing and self.overwrite == "skip":
                    case["status"] = "skipped"
                    logger.info(f"[{i + 1}/{len(items)}] {name}: skipped, output exists: {existing[0]}")
                    continue
                if existing and self.overwrite is not True:
                    raise FileExistsError(
                        f"output file exists: {existing[0]} (pass --overwrite True to replace it, or --overwrite "
                        "skip to keep it)."
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
                e = _root_error(exc)
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

            loader = self.preprocessing.transforms[0]
            original = loader({self.image_key: item[self.image_key]})[self.image_key]
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
