"""Confusion-matrix segmentation metrics in numpy: one implementation for training, eval and runtime."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .classes import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: target, columns: prediction).

    Follows the torchvision segmentation reference: pixels whose target is ``ignore_index``
    (or otherwise outside ``0..num_classes-1``) are skipped; IoU is ``TP / (TP + FP + FN)``.

    Args:
        num_classes: number of classes.
        ignore_index: target value that is not scored (VOC's void border, 255).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        """Add one batch: integer arrays of the same shape (any shape)."""
        target = np.asarray(target)
        pred = np.asarray(pred)
        if target.shape != pred.shape:
            raise ValueError(f"expected target and prediction of the same shape, got {target.shape} and {pred.shape}")
        t = target.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        keep = (t >= 0) & (t < self.num_classes) & (t != self.ignore_index)
        # A prediction outside 0..num_classes-1 would shift bincount's layout silently: reject it.
        if keep.any() and (p[keep].min() < 0 or p[keep].max() >= self.num_classes):
            raise ValueError(f"expected predictions in 0..{self.num_classes - 1}, got values up to {p[keep].max()}")
        idx = self.num_classes * t[keep] + p[keep]
        self.mat += np.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def merge(self, other: "ConfusionMatrix | np.ndarray") -> None:
        """Add another matrix (a ConfusionMatrix or a raw array), e.g. from another process."""
        mat = other.mat if isinstance(other, ConfusionMatrix) else np.asarray(other, dtype=np.int64)
        if mat.shape != self.mat.shape:
            raise ValueError(f"expected a {self.mat.shape} matrix, got {mat.shape}")
        self.mat += mat

    def reduce(self, all_reduce: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the matrix by ``all_reduce(matrix)`` (a sum across processes, supplied by the caller)."""
        self.mat = np.asarray(all_reduce(self.mat), dtype=np.int64).reshape(self.mat.shape)

    def reset(self) -> None:
        self.mat[:] = 0

    def compute(self) -> dict:
        """Return ``global_acc``, ``class_acc`` and ``iou`` (per class) and ``miou``, fractions in 0..1.

        Classes that never occur in target or prediction have an undefined IoU (NaN) and are left out of
        ``miou``, as in the usual VOC evaluation.
        """
        h = self.mat.astype(np.float64)
        tp = np.diag(h)
        with np.errstate(divide="ignore", invalid="ignore"):
            global_acc = tp.sum() / h.sum() if h.sum() else float("nan")
            class_acc = tp / h.sum(1)
            iou = tp / (h.sum(1) + h.sum(0) - tp)
        valid = ~np.isnan(iou)
        miou = float(iou[valid].mean()) if valid.any() else float("nan")
        return {"global_acc": float(global_acc), "class_acc": class_acc, "iou": iou, "miou": miou}

    def __str__(self) -> str:
        r = self.compute()
        return f"global correct: {r['global_acc'] * 100:.1f}  mean IoU: {r['miou'] * 100:.1f}"
