"""Reading weight files, and what their keys say: the one home both ``models`` and ``checkpoint`` use.

Accepted files: checkpoints written by ``fcn-train``, checkpoints of torchvision's
``references/segmentation/train.py`` (``{"model", "optimizer", "lr_scheduler", "epoch", "args"}`` with ``args``
an ``argparse.Namespace``) and raw state dicts. Everything loads with ``torch.load(weights_only=True)``;
``argparse.Namespace`` is the one class added to the allow-list, so no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..core.errors import FcnsegError, one_line

__all__ = ["read_checkpoint", "check_checkpoint_file", "check_pretrained", "state_dict_of", "classes_from_state", "arch_from_state", "args_dict"]

# Files fcnseg's other commands take, and the command that takes them.
_OTHER_FORMATS = {".onnx": ("an ONNX model", "fcn-eval --model / fcn-predict run it; fcn-export fp16, int8 or trt "
                                             "convert it"),
                  ".plan": ("a TensorRT engine", "fcn-eval --model / fcn-predict run it"),
                  ".engine": ("a TensorRT engine", "fcn-eval --model / fcn-predict run it")}


def read_checkpoint(path: "str | os.PathLike[str]") -> dict:
    """Load a checkpoint file with ``weights_only=True``; one clear error for missing, foreign or corrupt files.

    Raises:
        FcnsegError: the file is missing, a folder, unreadable, an ONNX model or engine, or not a torch.save dict.
    """
    p = check_checkpoint_file(path)
    try:
        obj = _load(p)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise FcnsegError(f"could not read checkpoint {str(p)!r} ({type(e).__name__}: {one_line(e, 200)}); "
                          "expected a file written by torch.save, e.g. by fcn-train") from None
    if not isinstance(obj, dict):
        raise FcnsegError(f"expected a checkpoint dict or state dict in {str(p)!r}, got {type(obj).__name__}")
    return obj


def check_checkpoint_file(path: "str | os.PathLike[str]") -> Path:
    """What can be told without loading: the file exists, is readable and is not an ONNX model or engine.

    Raises:
        FcnsegError: one line saying what the path is instead, and what to try.
    """
    p = Path(path)
    if p.is_dir():
        raise FcnsegError(f"expected a checkpoint file, got the folder {str(p)!r}; try {str(p / 'checkpoint.pth')!r}")
    if not p.is_file():
        raise FcnsegError(f"expected a checkpoint file, got {str(p)!r} which does not exist")
    if not os.access(p, os.R_OK):
        raise FcnsegError(f"expected a readable checkpoint, got {str(p)!r}: permission denied; try chmod a+r")
    _refuse_other_format(p)
    return p


def check_pretrained(path: "str | os.PathLike[str]", model: str) -> None:
    """``--pretrained``: a readable checkpoint whose weights are those of ``model`` (told from its keys, as
    ``arch_from_state``; an ImageNet ResNet file is checked when it loads).

    Raises:
        FcnsegError: what ``check_checkpoint_file`` raises, or weights of another architecture.
    """
    sd = state_dict_of(read_checkpoint(path), path)   # read_checkpoint checks the file first
    arch = arch_from_state(sd)
    if arch is not None and arch != model:
        raise FcnsegError(f"expected --pretrained weights of {model}, got {arch} weights in {str(path)!r}; try "
                          f"--model {arch}, or the weights of the same architecture")


def _load(path: Path) -> Any:
    ser = torch.serialization
    if hasattr(ser, "safe_globals"):  # torch >= 2.5: allow-list for this call only
        with ser.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    ser.add_safe_globals([argparse.Namespace])  # torch 2.4
    return torch.load(path, map_location="cpu", weights_only=True)


def _refuse_other_format(path: Path) -> None:
    """An ONNX model or TensorRT engine given as a checkpoint: say what it is and which command takes it."""
    with open(path, "rb") as f:
        head = f.read(4)
    kind = _OTHER_FORMATS.get(path.suffix.lower())
    if kind is None and head[:1] == b"\x08" and path.suffix.lower() != ".pth":
        kind = _OTHER_FORMATS[".onnx"]  # an ONNX ModelProto starts with field 1 (ir_version), a torch file with PK
    if kind is not None and head[:2] != b"PK":
        raise FcnsegError(f"expected a PyTorch checkpoint (.pth), got {kind[0]} {str(path)!r}; {kind[1]}")


def state_dict_of(obj: Mapping[str, Any], path: "str | os.PathLike[str]" = "<checkpoint>") -> dict:
    """The model state dict of a read checkpoint (its ``"model"``, or the dict itself when it is one)."""
    sd = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FcnsegError(f"expected a state dict of tensors in {str(path)!r}, got keys {list(sd)[:5]}")
    return dict(sd)


def args_dict(args: Any) -> dict:
    """A checkpoint's ``args`` as a dict: ours are dicts, torchvision's reference saves an argparse.Namespace."""
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, Mapping) else {}


def classes_from_state(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The class count of the main head, read from the last classifier layer's weight."""
    for key in ("classifier.4.weight", "score_fr.weight", "classifier.weight"):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def arch_from_state(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The model name a state dict fits, told from its keys (None when it fits none of ours).

    FCN-8s has ``score_fr``; torchvision's FCN has an FCNHead (``classifier.0`` a conv, not DeepLab's ASPP).
    ResNet-34 and -101 have more blocks in layer3 than ResNet-18 and -50.
    """
    if "score_fr.weight" in sd and "backbone.layer1.0.conv1.weight" in sd:
        return "fcn8s_resnet34" if "backbone.layer3.2.conv1.weight" in sd else "fcn8s_resnet18"
    if "classifier.0.weight" in sd and "classifier.4.weight" in sd and "backbone.layer1.0.conv3.weight" in sd:
        return "fcn_resnet101" if "backbone.layer3.6.conv1.weight" in sd else "fcn_resnet50"
    return None
