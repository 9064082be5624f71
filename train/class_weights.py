"""Per-class loss weights for unbalanced datasets: ``fcn-train --class-weights auto|none|FILE``.

``auto`` is median-frequency balancing (Eigen & Fergus, 2015), computed over the train split by the same scan
as ``fcn-data check``; a FILE is JSON: a list of one weight per class, or ``{"class name": weight}`` (classes
left out weigh 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import torch

from ..core.class_map import ClassMap
from ..core.data_source import DataSource
from ..core.errors import FcnsegError

__all__ = ["class_weights", "read_weights"]


def class_weights(choice: str, source: DataSource, class_map: ClassMap, device: torch.device, *,
                  say: Optional[Callable[[str], None]] = None) -> Optional[torch.Tensor]:
    """The cross-entropy weight of each class (None for "none"), on ``device``; ``say`` gets one line."""
    if choice == "none":
        return None
    if choice == "auto":
        from ..datasets.report import check_dataset

        report = check_dataset(source, ("train",), progress=False)
        weights, how = list(report.median_frequency_weights()), "auto, median frequency over the train split"
    else:
        weights, how = read_weights(Path(choice), class_map), choice
    if say is not None:
        shown = ", ".join(f"{n} {w:.2f}" for n, w in zip(class_map.names, weights))
        say(f"class weights ({how}): {shown}")
    return torch.tensor(weights, dtype=torch.float32, device=device)


def read_weights(path: Path, class_map: ClassMap) -> List[float]:
    """A weights file: a JSON list of one number per class, or an object of class name -> weight.

    Raises:
        FcnsegError: unreadable JSON, a wrong count, an unknown class name, a negative or non-number weight.
    """
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FcnsegError(f"expected a JSON file of class weights, got unreadable {str(path)!r} ({e}); try "
                          "--class-weights auto") from None
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(class_map.names))
        if unknown:
            raise FcnsegError(f"expected class names of the dataset in {str(path)!r}, got {unknown[:3]}; the "
                              f"classes are {', '.join(class_map.names[:8])}")
        obj = [obj.get(name, 1.0) for name in class_map.names]
    if not isinstance(obj, list) or len(obj) != class_map.num_classes:
        raise FcnsegError(f"expected {class_map.num_classes} class weights in {str(path)!r} (one per class), got "
                          f"{len(obj) if isinstance(obj, list) else type(obj).__name__}")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in obj):
        raise FcnsegError(f"expected non-negative numbers as class weights in {str(path)!r}, got {obj[:5]}")
    return [float(w) for w in obj]
