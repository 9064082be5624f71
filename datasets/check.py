"""Check a dataset before long work: every image/label pair of the splits a run reads, with a progress bar.

Each pair is checked by ``PairDataset.check_pair`` (files exist and open, label palette or "L" with values in
``0..num_classes-1`` or 255, image and label of one size); images are not decoded, only their headers read.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, List, Optional

from tqdm import tqdm

from ..core.errors import FcnsegError
from .layouts import PairDataset

__all__ = ["scan_splits"]

SKIP_HINT = "--skip-data-check"


def scan_splits(layouts: Iterable[PairDataset], *, threads: int = 1, show: bool = True) -> int:
    """Check every pair of ``layouts``; returns how many pairs were checked.

    Args:
        layouts: the splits to check (e.g. train and val).
        threads: reader threads (Pillow's decoders release the GIL).
        show: show a progress bar.

    Raises:
        FcnsegError: one line naming the number of bad pairs and the first problem.
    """
    jobs = [(layout, i) for layout in layouts for i in range(len(layout))]
    errors: List[str] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            tqdm(total=len(jobs), desc="checking data", unit="pair", disable=not show, leave=False) as bar:
        for error in pool.map(_check, jobs):
            bar.update(1)
            if error is not None:
                errors.append(error)
    if errors:
        more = f" (and {len(errors) - 1} more bad pairs)" if len(errors) > 1 else ""
        raise FcnsegError(f"{errors[0]}{more}; fix the dataset before training, or skip this check with {SKIP_HINT}")
    return len(jobs)


def _check(job: tuple) -> Optional[str]:
    layout, i = job
    try:
        layout.check_pair(i)
    except FcnsegError as e:
        return f"{e} ({layout.split} split)"
    return None
