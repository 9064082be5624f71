"""Checkpoints: torchvision-reference format plus what deployment needs, saved atomically, loaded safely.

Format: ``{"model", "optimizer", "lr_scheduler", "epoch", "args"}`` as torchvision's reference writes,
plus ``num_classes``, ``arch``, ``classes``, ``palette``, ``mean``, ``std``, ``base_size`` and ``miou``. ``args`` is a
plain dict; torchvision's own checkpoints (``args`` an ``argparse.Namespace``) are read too (see ``weights``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from ..core.atomic import atomic_path
from ..core.errors import FcnsegError, one_line
from ..core.metadata import ModelMetadata
from ..core.classes import BASE_SIZE, MEAN, STD, VOC_CLASSES
from .models import MODELS, get_model
from .weights import arch_from_state, args_dict, classes_from_state, read_checkpoint, state_dict_of

__all__ = ["save_checkpoint", "link_or_copy", "read_checkpoint", "LoadedCheckpoint", "load_checkpoint", "parse_checkpoint",
           "model_from_checkpoint"]


def save_checkpoint(obj: Mapping[str, Any], path: "str | os.PathLike[str]") -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file, then rename it over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(dict(obj), tmp)


def link_or_copy(src: "str | os.PathLike[str]", dst: "str | os.PathLike[str]") -> None:
    """Make ``dst`` the same file as ``src``: a hard link where the file system allows it, else a copy.

    Either way ``dst`` is replaced atomically (a temporary name, then a rename), so a reader of the old ``dst``
    never sees a partial file, and ``src`` is never written through ``dst`` (nothing writes files in place).
    """
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network and FUSE file systems)
            shutil.copyfile(src, tmp)


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
        for key in ("classes", "palette"):   # the dataset's class names and colours (fcn-train writes both)
            if i.get(key):
                d[key] = list(i[key])
        return ModelMetadata.from_dict(d)


def load_checkpoint(path: "str | os.PathLike[str]") -> LoadedCheckpoint:
    """Read our checkpoints, torchvision-reference checkpoints (``{"model": ...}``) and raw state dicts."""
    return parse_checkpoint(read_checkpoint(path), path)


def parse_checkpoint(obj: dict, path: "str | os.PathLike[str]" = "<checkpoint>") -> LoadedCheckpoint:
    """Split an already-read checkpoint dict into state dict and information (``path`` is for messages).

    The architecture is the one recorded (``arch``, else torchvision's ``args.model``), else told from the keys.
    """
    sd = state_dict_of(obj, path)
    wrapped = isinstance(obj.get("model"), Mapping)
    info = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "lr_scheduler", "scaler")} if wrapped else {}
    if "args" in info:
        info["args"] = args_dict(info["args"])
    arch = info.get("arch") or info.get("args", {}).get("model") or arch_from_state(sd)
    num_classes = info.get("num_classes") or classes_from_state(sd)
    return LoadedCheckpoint(sd, arch, num_classes, info)


def model_from_checkpoint(path: "str | os.PathLike[str]", *, arch: Optional[str] = None,
                          num_classes: Optional[int] = None,
                          loaded: Optional[LoadedCheckpoint] = None) -> tuple[torch.nn.Module, LoadedCheckpoint]:
    """Build the checkpoint's model and load its weights strictly, with errors that say what does not fit.

    Args:
        path: checkpoint file (ours, torchvision-reference, or a raw state dict).
        arch: model name; required when the file does not say it, checked when it does.
        num_classes: expected class count; checked against the file.
        loaded: ``load_checkpoint(path)`` when the caller already has it (the file is then not read again).
    """
    ckpt = loaded if loaded is not None else load_checkpoint(path)
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
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), one_line(e, 300))
        raise FcnsegError(f"checkpoint {str(path)!r} does not fit {arch} with {n} classes: {first}") from None
    return model.eval(), ckpt


def _key_diff(expected: Mapping[str, Any], got: Mapping[str, Any]) -> tuple[list, list]:
    missing = [k for k in expected if k not in got and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in got if k not in expected]
    return missing, unexpected
