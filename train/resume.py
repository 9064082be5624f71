"""``--resume``: read and check the checkpoint before any work, then restore it into the new run's objects.

Checked first (one line each): a training checkpoint at all, the same model, class count and aux head, and
epochs left to train. The LR schedule is not restored from the scheduler's state but re-planned from the
saved iteration (see ``schedule``), so another ``--epochs`` or ``-b`` continues with a decay over the new total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..core.errors import FcnsegError
from .checkpoint import parse_checkpoint
from .config import TrainConfig
from .schedule import LRPlan, make_scheduler, plan_lr
from .weights import read_checkpoint

__all__ = ["ResumePoint", "read_resume"]


@dataclass
class ResumePoint:
    """A checked training checkpoint: where to continue and the states to restore."""

    path: str
    full: dict
    start_epoch: int
    best_miou: float

    @property
    def saved_plan(self) -> Optional[dict]:
        return self.full.get("lr_plan")

    def iteration(self, iters_per_epoch: int) -> int:
        """Optimizer steps taken so far (older checkpoints: the scheduler's count, else whole epochs)."""
        if "iteration" in self.full:
            return int(self.full["iteration"])
        sched = self.full.get("lr_scheduler") or {}
        return int(sched.get("last_epoch", self.start_epoch * iters_per_epoch))

    def restore(self, cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler,
                iters_per_epoch: int) -> tuple:
        """Load model, optimizer and scaler states; return ``(scheduler, plan, replanned)`` positioned here."""
        base_lrs = [g["lr"] for g in optimizer.param_groups]  # this run's --lr, not the saved one
        model.load_state_dict(self.full["model"])
        try:
            optimizer.load_state_dict(self.full["optimizer"])
        except (ValueError, KeyError) as e:  # another parameter grouping (e.g. torchvision's own optimizer)
            raise FcnsegError(f"expected optimizer state of this recipe in {self.path}, got one that does not fit "
                              f"({e}); try --pretrained {self.path} to start a new run from its weights") from None
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["initial_lr"] = lr
        if scaler is not None and "scaler" in self.full:
            scaler.load_state_dict(self.full["scaler"])
        it = self.iteration(iters_per_epoch)
        plan = plan_lr(cfg, iters_per_epoch, start_epoch=self.start_epoch, start_iter=it, saved=self.saved_plan)
        saved = self.saved_plan
        replanned = saved is not None and LRPlan(**saved) != plan
        return make_scheduler(optimizer, cfg, iters_per_epoch, plan=plan, start_iter=it), plan, replanned


def read_resume(cfg: TrainConfig) -> ResumePoint:
    """Read ``cfg.resume`` and refuse, with one line, what this run cannot continue.

    Raises:
        FcnsegError: unreadable file, not a training checkpoint, another model, class count or aux head,
            or no epoch left below ``cfg.epochs``.
    """
    path = str(cfg.resume)
    full = read_checkpoint(path)
    ckpt = parse_checkpoint(full, path)
    if ckpt.arch not in (None, cfg.model) or ckpt.num_classes not in (None, cfg.num_classes or ckpt.num_classes):
        raise FcnsegError(f"expected a {cfg.model} checkpoint with {cfg.num_classes or ckpt.num_classes} classes to resume, got "
                          f"{ckpt.arch} with {ckpt.num_classes} in {path}; try --model {ckpt.arch} "
                          f"--num-classes {ckpt.num_classes}")
    if not all(k in full for k in ("optimizer", "epoch")):
        raise FcnsegError(f"expected a training checkpoint (optimizer, lr_scheduler, epoch) in {path}, got "
                          f"keys {sorted(full)[:6]}; try checkpoint.pth from --output-dir, or --pretrained for weights")
    has_aux = any(k.startswith("aux_classifier.") for k in ckpt.state_dict)
    if has_aux != cfg.aux_loss:
        raise FcnsegError(f"expected a checkpoint {'with' if cfg.aux_loss else 'without'} the aux head to resume "
                          f"{'with' if cfg.aux_loss else 'without'} --aux-loss, got one {'with' if has_aux else 'without'} "
                          f"it in {path}; try {'adding' if has_aux else 'dropping'} --aux-loss")
    start = int(full["epoch"]) + 1
    if start >= cfg.epochs:
        raise FcnsegError(f"expected --epochs above the {start} epochs {path} has finished, got --epochs "
                          f"{cfg.epochs}; try --epochs {start + 1} or more to train further")
    full["model"] = ckpt.state_dict
    return ResumePoint(path, full, start, float(full.get("best_miou", full.get("miou") or 0.0)))
