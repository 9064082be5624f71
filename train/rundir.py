"""The output folder of a training run: refuse to mix runs, move an old run aside on ``--force``, log epochs once.

A run writes ``checkpoint.pth``, ``model_<epoch>.pth``, ``model_best.pth``, ``metrics.jsonl`` and ``metrics.png``.
A folder holding any of them holds a previous run: a new run there must either continue it (``--resume``) or
start over (``--force``), which moves the old files to ``previous-<time>/`` in the same folder, never deletes them.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable, List, Optional

from ..core.atomic import write_text
from ..core.errors import FcnsegError
from ..core.output_guard import check_output_dir

__all__ = ["run_files", "prepare_output_dir", "append_metrics", "read_metrics"]

_RUN_FILE = re.compile(r"^(checkpoint\.pth|model_best\.pth|model_\d+\.pth|metrics\.jsonl|metrics\.png)$")
_EPOCH_FILE = re.compile(r"^model_(\d+)\.pth$")


def run_files(out: Path) -> List[Path]:
    """The files of a previous run in ``out`` (sorted; empty when ``out`` is not a folder)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_file() and _RUN_FILE.match(p.name))


def prepare_output_dir(out: Path, *, resume_epoch: Optional[int] = None, force: bool = False,
                       create: bool = True, say: Callable[[str], None] = print) -> None:
    """Check ``out`` and make it ready before any long work starts.

    Args:
        out: the ``--output-dir``.
        resume_epoch: the first epoch a resumed run trains (None: a new run). Files of a later continuation
            of the run (``model_N.pth`` with N >= it, such a ``model_best.pth``, their metrics rows) are set aside.
        force: start over in a folder holding a previous run, moving that run aside.
        create: create the folder and move files (the main process); other processes only check.
        say: where the one-line notice of moved files goes.

    Raises:
        FcnsegError: ``out`` is a file or cannot be created or written, or holds a run and neither
            ``resume_epoch`` nor ``force`` is given.
    """
    check_output_dir(out, "--output-dir", first_file="checkpoint.pth")
    previous = run_files(out)
    if previous and resume_epoch is None and not force:
        names = ", ".join(p.name for p in previous[:3]) + (f" and {len(previous) - 3} more" if len(previous) > 3 else "")
        raise FcnsegError(f"expected a new or empty --output-dir, got {str(out)!r} holding a previous run ({names}); "
                          f"try --resume {str(out / 'checkpoint.pth')!r} to continue it, --force to start over "
                          "(the old run is moved to a previous-<time> folder inside it), or another --output-dir")
    if not create:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. /proc, a read-only mount: os.access cannot tell for root
        raise FcnsegError(f"expected a writable --output-dir, got {str(out)!r}: {e.strerror or e}; "
                          "try another --output-dir") from None
    stale = previous if resume_epoch is None else _later_files(out, previous, resume_epoch)
    if resume_epoch is not None and _rows_from(out / "metrics.jsonl", resume_epoch):
        stale.append(out / "metrics.jsonl")  # moved whole, then rewritten below with the earlier rows
    if stale:
        dest = _move_aside(out, stale)
        what = "the previous run" if resume_epoch is None else f"files of epochs >= {resume_epoch}"
        say(f"moved {what} ({len(stale)} files) to {dest}")
        if resume_epoch is not None and (dest / "metrics.jsonl").is_file():
            rows = [r for r in read_metrics(dest / "metrics.jsonl") if int(r.get("epoch", -1)) < resume_epoch]
            write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _later_files(out: Path, previous: List[Path], epoch: int) -> List[Path]:
    """Files a resumed run would otherwise mix with its own: those of epochs it is about to train again."""
    later = [p for p in previous if (m := _EPOCH_FILE.match(p.name)) and int(m.group(1)) >= epoch]
    best = out / "model_best.pth"
    if later and best.is_file():
        from .weights import read_checkpoint

        if int(read_checkpoint(best).get("epoch", epoch)) >= epoch:
            later.append(best)
    return later


def _move_aside(out: Path, files: List[Path]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out / f"previous-{stamp}", 1
    while dest.exists():
        dest, n = out / f"previous-{stamp}-{n}", n + 1
    dest.mkdir()
    for p in files:
        os.replace(p, dest / p.name)
    return dest


def read_metrics(path: "str | os.PathLike[str]") -> List[dict]:
    """The rows of a ``metrics.jsonl`` log, one dict per epoch in file order (empty when there is no file)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rows_from(path: Path, epoch: int) -> List[dict]:
    return [r for r in read_metrics(path) if int(r.get("epoch", -1)) >= epoch]


def append_metrics(path: Path, row: dict) -> None:
    """Add one epoch's row to ``metrics.jsonl``, replacing any row of the same or a later epoch."""
    kept = [r for r in read_metrics(path) if int(r.get("epoch", -1)) < int(row["epoch"])]
    write_text(path, "".join(json.dumps(r) + "\n" for r in [*kept, row]))
