"""Check a dataset before long work: every image/label pair of the splits a run reads, with a progress bar.

The scan is ``datasets.report``'s, the one scanner (``fcn-data check`` prints its full report): files exist and
open (images by their header only), labels hold class ids (palette or "L") or the class map's colours, with values
in the class map, each label the size of its image. Every bad pair is found, and the first problem is raised in
one line with a count of the others.
"""

from __future__ import annotations

from typing import Iterable

from .layouts import PairDataset
from .report import scan_datasets

__all__ = ["scan_splits"]

SKIP_HINT = "--skip-data-check"


def scan_splits(layouts: Iterable[PairDataset], *, threads: int = 1, show: bool = True) -> int:
    """Check every pair of ``layouts``; returns how many pairs were checked.

    Args:
        layouts: the splits to check (e.g. train and val).
        threads: reader threads (Pillow's decoders release the GIL).
        show: show a progress bar (on a terminal only: a log or a pipe gets the one error line alone).

    Raises:
        FcnsegError: one line naming the first problem and the number of the others.
    """
    report = scan_datasets(list(layouts), threads=threads, progress=None if show else False)
    report.raise_for_problems(f"fix the dataset before training, or skip this check with {SKIP_HINT}")
    return report.total.images
