"""Parity as a function: compare outputs or segmentation quality of two backends on the same data.

Export, the tests, ``fcn-eval --compare`` and the benchmarks all reuse these. Results are truthy when
the two agree within the given tolerance (as Polygraphy's comparator results are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence

import numpy as np

from ..core.metrics import ConfusionMatrix


@dataclass
class OutputComparison:
    """Element-wise comparison of two logits tensors (N, C, H, W) and of their argmax labels."""

    max_abs: float
    mean_abs: float
    argmax_agreement: float
    shape: tuple
    atol: float
    min_agreement: float

    def __bool__(self) -> bool:
        return self.max_abs <= self.atol and self.argmax_agreement >= self.min_agreement

    def __str__(self) -> str:
        ok = "OK" if self else "FAIL"
        return (f"{ok} shape {'x'.join(map(str, self.shape))}: max abs err {self.max_abs:.2e} (<= {self.atol:g}), "
                f"argmax agreement {self.argmax_agreement * 100:.3f}% (>= {self.min_agreement * 100:g}%)")


def compare_logits(ref: np.ndarray, test: np.ndarray, *, atol: float = 1e-3,
                   min_agreement: float = 0.999) -> OutputComparison:
    """Compare logits of the same shape: max/mean abs error and the fraction of equal argmax labels (axis 1)."""
    ref = np.asarray(ref, dtype=np.float32)
    test = np.asarray(test, dtype=np.float32)
    if ref.shape != test.shape:
        raise ValueError(f"expected outputs of the same shape, got {ref.shape} and {test.shape}")
    diff = np.abs(ref - test)
    agree = float((ref.argmax(1) == test.argmax(1)).mean())
    return OutputComparison(float(diff.max()), float(diff.mean()), agree, tuple(ref.shape), atol, min_agreement)


@dataclass
class MiouComparison:
    """mIoU of a test model against a reference on the same images, with per-class IoU deltas (points)."""

    ref_miou: float
    test_miou: float
    class_delta: np.ndarray          # (test - ref) IoU per class, in mIoU points (x100)
    tolerance: float                  # allowed |delta| in mIoU points
    classes: Sequence[str] = field(default_factory=list)

    @property
    def delta(self) -> float:
        """test - ref, in mIoU points (x100)."""
        return (self.test_miou - self.ref_miou) * 100.0

    def __bool__(self) -> bool:
        return abs(self.delta) <= self.tolerance

    def worst_classes(self, k: int = 3) -> list:
        """The k classes whose IoU changed most, as (name, delta points)."""
        d = np.nan_to_num(self.class_delta)
        order = np.argsort(-np.abs(d))[:k]
        names = list(self.classes) or [str(i) for i in range(len(d))]
        return [(names[i], float(d[i])) for i in order]


def compare_miou(ref: ConfusionMatrix, test: ConfusionMatrix, *, tolerance: float,
                 classes: Sequence[str] = ()) -> MiouComparison:
    """Compare two confusion matrices accumulated over the same images."""
    r, t = ref.compute(), test.compute()
    return MiouComparison(r["miou"], t["miou"], (t["iou"] - r["iou"]) * 100.0, tolerance, list(classes))


class ParityRow(Protocol):
    """What a ``ParityResult`` needs of a row (``fcnseg.eval.evaluate.ModelEval`` is one)."""

    path: str

    @property
    def ok(self) -> bool:
        """True when the row ran and is within its tolerance."""
        ...

    def to_dict(self) -> Dict[str, Any]:
        """The row as JSON types, its delta included even when it failed."""
        ...


@dataclass
class ParityResult:
    """Models compared on the same data against a reference (the first row); truthy when every row passes.

    Each row judges itself once (``row.ok``; a failed row keeps its delta), so callers need not re-judge:
    ``if not result: print(result.failed)``. Iterating or indexing a result gives its rows.
    """

    rows: List[Any] = field(default_factory=list)

    def __bool__(self) -> bool:
        return all(row.ok for row in self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    @property
    def reference(self) -> Any:
        """The row the others are compared with."""
        return self.rows[0]

    @property
    def failed(self) -> List[Any]:
        """Rows outside tolerance or that could not run."""
        return [row for row in self.rows if not row.ok]

    def summary(self) -> str:
        """One line: "parity OK (n models)" or which models failed."""
        if self:
            return f"parity OK ({len(self.rows)} models within tolerance of {self.reference.path})"
        return (f"parity FAILED: {len(self.failed)} model(s) outside tolerance or failed: "
                + ", ".join(str(row.path) for row in self.failed))

    def to_dict(self) -> Dict[str, Any]:
        """``{"passed": bool, "failed": [paths], "models": [row dicts]}``."""
        return {"passed": bool(self), "failed": [str(r.path) for r in self.failed],
                "models": [r.to_dict() for r in self.rows]}


def evaluate(predict: Callable[[np.ndarray], np.ndarray], samples: Iterable[tuple[np.ndarray, np.ndarray]],
             num_classes: int, *, progress: Optional[Callable[[Iterable], Iterable]] = None) -> ConfusionMatrix:
    """Accumulate a confusion matrix of ``predict(image) -> mask`` over (image, target) samples.

    Args:
        predict: maps an HxWx3 uint8 image to an HxW class mask at the image's size (a ``Segmenter`` does).
        samples: (image, target mask) pairs, e.g. a ``PairDataset``.
        num_classes: number of classes.
        progress: optional wrapper such as ``tqdm`` for a progress bar.
    """
    cm = ConfusionMatrix(num_classes)
    for image, target in (progress(samples) if progress else samples):
        cm.update(target, predict(image))
    return cm
