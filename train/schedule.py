"""The learning-rate schedule as a plan: linear warm-up, then poly decay (power 0.9) to zero, per iteration.

The factor is a pure function of the iteration (``LRPlan.factor``), so a resumed run needs only the saved
iteration and plan, not the scheduler's internal state: resuming with the same options continues the very
same schedule, and resuming with another ``--epochs`` or ``-b`` re-plans the decay over the new total.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .config import TrainConfig

__all__ = ["LRPlan", "plan_lr", "make_scheduler"]


@dataclass(frozen=True)
class LRPlan:
    """``warmup`` iterations of linear warm-up from ``warmup_decay``, then poly decay reaching 0 at ``total``."""

    warmup: int
    total: int
    warmup_decay: float = 0.01
    power: float = 0.9

    def factor(self, iteration: int) -> float:
        """The LR multiplier at ``iteration`` (0-based); 0 from ``total`` on, never negative."""
        if iteration < self.warmup:
            return self.warmup_decay + (1.0 - self.warmup_decay) * iteration / self.warmup
        left = 1.0 - (iteration - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, left) ** self.power

    def to_dict(self) -> dict:
        return asdict(self)


def plan_lr(cfg: TrainConfig, iters_per_epoch: int, *, start_epoch: int = 0, start_iter: int = 0,
            saved: Optional[dict] = None) -> LRPlan:
    """The plan of a fresh run, or of a run resumed at ``start_epoch`` after ``start_iter`` iterations.

    A resumed run keeps the saved warm-up and decays over ``start_iter`` plus what is left to train, which is
    the saved total when ``--epochs`` and the batch size are unchanged.
    """
    warmup = min(cfg.lr_warmup_epochs, cfg.epochs - 1) * iters_per_epoch if cfg.epochs > 1 else 0
    if saved is not None:
        warmup = int(saved.get("warmup", warmup))
    total = start_iter + (cfg.epochs - start_epoch) * iters_per_epoch
    return LRPlan(warmup=warmup, total=total, warmup_decay=cfg.lr_warmup_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, iters_per_epoch: int, *,
                   plan: Optional[LRPlan] = None, start_iter: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following ``plan`` (default: a fresh run's), positioned at ``start_iter``.

    For a resumed run the optimizer's groups must hold ``initial_lr`` (the base LR of each group).
    """
    plan = plan or plan_lr(cfg, iters_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: plan.factor(it), last_epoch=start_iter - 1)
