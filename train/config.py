"""``fcn-train``'s options: one dataclass (the one home of every default) and the checks run before any work.

Importing this module does not import torch, so ``fcn-train --help`` stays fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

from ..core.errors import FcnsegError
from ..core.classes import BASE_SIZE, CROP_SIZE, NUM_CLASSES

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig", "resolve_device"]


@dataclass
class TrainConfig:
    """Options of ``fcn-train``; names follow torchvision's reference train.py.

    ``force`` starts over in an ``output_dir`` that holds a previous run (moving that run aside);
    ``check_data`` scans every image/label pair of both splits before the first epoch. ``layout`` and
    ``classes`` say how to read ``data_path`` (None: detected, the layout's class map); ``num_classes`` None
    takes the dataset's class count. ``pretrained`` with another class count fine-tunes: every tensor whose
    shape fits is loaded, the class layers start anew (``freeze_backbone`` keeps the backbone fixed).
    ``class_weights``: "none", "auto" (median-frequency balancing over the train split) or a JSON file with
    one weight per class.
    """

    data_path: str
    layout: Optional[str] = None
    classes: Optional[str] = None
    model: str = "fcn_resnet50"
    aux_loss: bool = False
    epochs: int = 30
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_warmup_epochs: int = 1
    lr_warmup_decay: float = 0.01
    workers: int = min(4, os.cpu_count() or 1)
    output_dir: str = "runs/fcn"
    resume: Optional[str] = None
    force: bool = False
    check_data: bool = True
    amp: bool = False
    base_size: int = BASE_SIZE
    crop_size: int = CROP_SIZE
    pretrained: Optional[str] = None
    freeze_backbone: bool = False
    num_classes: Optional[int] = None
    class_weights: str = "none"
    device: Optional[str] = None
    sync_bn: bool = False
    seed: int = 0
    val_split: str = "val"
    plot: bool = True

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one option (for the CLI, so that defaults live here only)."""
        return next(f.default for f in fields(cls) if f.name == name)

    def validate(self) -> None:
        """Refuse impossible options with one line each, before data loading or any other work starts."""
        from .models import MODELS  # torchvision: only once the options are parsed

        if self.model not in MODELS:
            raise FcnsegError(f"expected --model to be one of {', '.join(MODELS)}, got {self.model!r}")
        _at_least("--epochs", self.epochs, 1, "try --epochs 30")
        _at_least("-b/--batch-size", self.batch_size, 1, "try -b 8")
        _at_least("-j/--workers", self.workers, 0, "try -j 0 to load data in the main process")
        _at_least("--base-size", self.base_size, 1, f"try --base-size {BASE_SIZE}")
        _at_least("--crop-size", self.crop_size, 1, f"try --crop-size {CROP_SIZE}")
        if self.num_classes is not None:
            _at_least("--num-classes", self.num_classes, 1, f"try --num-classes {NUM_CLASSES}")
        if self.class_weights not in ("none", "auto") and not os.path.isfile(self.class_weights):
            raise FcnsegError(f"expected --class-weights auto, none or a JSON file of weights, got "
                              f"{self.class_weights!r}; try --class-weights auto")
        _at_least("--lr-warmup-epochs", self.lr_warmup_epochs, 0, "try 1")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise FcnsegError(f"expected --lr > 0, got {self.lr}; try --lr 0.01")
        if not 0 < self.lr_warmup_decay <= 1:
            raise FcnsegError(f"expected a warm-up start factor in (0, 1], got {self.lr_warmup_decay}; try 0.01")
        if self.resume and self.force:
            raise FcnsegError("expected --resume (continue the run) or --force (start over), got both; "
                              "try one of them")


def _at_least(name: str, value: Any, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FcnsegError(f"expected {name} to be an integer >= {low}, got {value!r}; {hint}")


def resolve_device(name: Optional[str]) -> "torch.device":
    """``--device`` as a torch.device (None: CUDA when available); refuses names torch does not know and
    CUDA devices this machine does not have."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FcnsegError(f"expected --device cpu, cuda or cuda:N, got {name!r}; try --device cpu") from None
    if device.type not in ("cpu", "cuda"):
        raise FcnsegError(f"expected --device cpu, cuda or cuda:N, got {name!r}; try --device cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FcnsegError(f"expected a CUDA GPU for --device {name}, got none (torch.cuda.is_available() is "
                              "False); try --device cpu")
        if device.index is not None and device.index >= count:
            raise FcnsegError(f"expected --device cuda:0..cuda:{count - 1}, got {name!r}; try --device cuda")
    return device
