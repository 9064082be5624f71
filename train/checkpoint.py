"""Checkpoints: torchvision-reference format plus what deployment needs, saved atomically, loaded safely.

Format: ``{"model", "optimizer", "lr_scheduler", "epoch", "args"}`` as torchvision's reference writes,
plus ``num_classes``, ``arch``, ``classes``, ``mean``, ``std``, ``base_size`` and ``miou``. ``args`` is a
plain dict (an ``argparse.Namespace`` would not load under ``weights_only=True``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from ..runtime.atomic import atomic_path
from ..runtime.errors import FcnsegError, first_line
from ..runtime.metadata import ModelMetadata
from ..runtime.voc import BASE_SIZE, MEAN, STD, VOC_CLASSES


def save_checkpoint(obj: Mapping[str, Any], path: "str | os.PathLike[str]") -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file, then rename it over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(dict(obj), tmp)


def read_checkpoint(path: "str | os.PathLike[str]") -> dict:
    """Load a checkpoint file with ``weights_only=True``; one clear error for missing or corrupt files."""
    if not os.path.isfile(path):
        raise FcnsegError(f"expected a checkpoint file, got {path!r} which does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise FcnsegError(f"could not read checkpoint {path!r} ({type(e).__name__}: {first_line(e, 200)}); "
                          "expected a file written by torch.save, e.g. by fcn-train") from None
    if not isinstance(obj, dict):
        raise FcnsegError(f"expected a checkpoint dict or state dict in {path!r}, got {type(obj).__name__}")
    return obj


@dataclass
class LoadedCheckpoint:
    """A model state dict and what is known about it."""

    state_dict: dict
    arch: Optional[str]
    num_classes: Optional[int]
    info: dict = field(default_factory=dict)

    def metadata(self) -> ModelMetadata:
        """Deployment metadata (class names, normalisation, size, mIoU) for export."""
        i = self.info
        d = {"arch": self.arch or "unknown", "num_classes": self.num_classes or len(VOC_CLASSES),
             "mean": list(i.get("mean", MEAN)), "std": list(i.get("std", STD)),
             "input_size": i.get("base_size", BASE_SIZE), "miou": i.get("miou")}
        if i.get("classes"):
            d["classes"] = list(i["classes"])
        return ModelMetadata.from_dict(d)


def load_checkpoint(path: "str | os.PathLike[str]") -> LoadedCheckpoint:
    """Read our checkpoints, torchvision-reference checkpoints (``{"model": ...}``) and raw state dicts."""
    return parse_checkpoint(read_checkpoint(path), path)


def parse_checkpoint(obj: dict, path: "str | os.PathLike[str]" = "<checkpoint>") -> LoadedCheckpoint:
    """Split an already-read checkpoint dict into state dict and information (``path`` is for messages)."""
    if "model" in obj and isinstance(obj["model"], Mapping):
        sd = dict(obj["model"])
        info = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "lr_scheduler", "scaler")}
    else:
        sd, info = obj, {}
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FcnsegError(f"expected a state dict of tensors in {str(path)!r}, got keys {list(sd)[:5]}")
    args = info.get("args")
    arch = info.get("arch") or (args.get("model") if isinstance(args, Mapping) else None)
    num_classes = info.get("num_classes") or _classes_from_state(sd)
    return LoadedCheckpoint(sd, arch, num_classes, info)


def _classes_from_state(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The class count of the main head, read from the last classifier layer's weight."""
    for key in ("classifier.4.weight", "score_fr.weight", "classifier.weight"):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def model_from_checkpoint(path: "str | os.PathLike[str]", *, arch: Optional[str] = None,
                          num_classes: Optional[int] = None) -> tuple[torch.nn.Module, LoadedCheckpoint]:
    """Build the checkpoint's model and load its weights strictly, with errors that say what does not fit.

    Args:
        path: checkpoint file (ours, torchvision-reference, or a raw state dict).
        arch: model name; required when the file does not say it, checked when it does.
        num_classes: expected class count; checked against the file.
    """
    from .models import MODELS, get_model

    ckpt = load_checkpoint(path)
    if arch and ckpt.arch and arch != ckpt.arch:
        raise FcnsegError(f"expected a checkpoint of {arch}, got one of {ckpt.arch} in {str(path)!r}; "
                          f"try --arch {ckpt.arch}")
    arch = arch or ckpt.arch
    if not arch:
        raise FcnsegError(f"{str(path)!r} does not say its architecture; try --arch with one of {', '.join(MODELS)}")
    if num_classes and ckpt.num_classes and num_classes != ckpt.num_classes:
        raise FcnsegError(f"expected a checkpoint with {num_classes} classes, got {ckpt.num_classes} in "
                          f"{str(path)!r}; try --num-classes {ckpt.num_classes}")
    ckpt.arch = arch
    ckpt.num_classes = n = ckpt.num_classes or num_classes or len(VOC_CLASSES)
    aux = any(k.startswith("aux_classifier.") for k in ckpt.state_dict)
    model = get_model(arch, num_classes=n, aux_loss=aux)
    missing, unexpected = _key_diff(model.state_dict(), ckpt.state_dict)
    if missing or unexpected:
        raise FcnsegError(f"checkpoint {str(path)!r} does not fit {arch} with {n} classes: "
                          f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                          f"(e.g. {unexpected[:2]}); try --arch with the model it was trained as")
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), first_line(e))
        raise FcnsegError(f"checkpoint {str(path)!r} does not fit {arch} with {n} classes: {first}") from None
    return model.eval(), ckpt


def _key_diff(expected: Mapping[str, Any], got: Mapping[str, Any]) -> tuple[list, list]:
    missing = [k for k in expected if k not in got and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in got if k not in expected]
    return missing, unexpected
