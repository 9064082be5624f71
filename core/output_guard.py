"""Where a command may write: the one check every ``fcn-*`` output goes through before any long work.

An existing file is replaced only when it is the same kind of artifact fcnseg wrote or when the user passes
``--force``. Each stage declares the kinds it writes as ``ArtifactKind`` values next to its code
(``fcnseg.export.artifacts``: ONNX models, engines, sidecars, calibration caches, INT8 reports, timing caches;
``fcnseg.runtime.artifacts``: masks and overlays; ``fcnseg.eval.evaluate.EVAL_JSON``;
``fcnseg.benchmarks.bench.BENCH_JSON``/``BENCH_CSV``), so this module knows no stage's files; a command never
writes over one of its own inputs, force or not.
Folders that are files, paths that are folders and unwritable places (``/proc``) are refused up front,
so no long run dies at its last step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Union

from .errors import FcnsegError

PathLike = Union[str, "os.PathLike[str]"]
SOFTWARE = "fcnseg"   # the PNG "Software" text chunk fcnseg writes into masks and overlays


@dataclass(frozen=True)
class ArtifactKind:
    """A kind of file fcnseg writes: its name in messages and a test that an existing file is one of ours."""

    name: str
    is_ours: Callable[[Path], bool]


def read_json(path: Path) -> Any:
    """The JSON document in ``path`` (at most 64 MiB read), or None when it is unreadable or not JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(64 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return None


def json_dict_with(*keys: str) -> Callable[[Path], bool]:
    """A test for an ``ArtifactKind``: the file is a JSON object holding all of ``keys``."""
    def is_ours(path: Path) -> bool:
        doc = read_json(path)
        return isinstance(doc, dict) and all(k in doc for k in keys)
    return is_ours


def check_output(path: PathLike, kind: ArtifactKind, *, inputs: Iterable[PathLike] = (), force: bool = False,
                 option: str = "-o") -> Path:
    """Refuse an output path before any work is done; return it as a ``Path``.

    Args:
        path: the file the command is about to write.
        kind: what it writes; an existing file of that kind (written by fcnseg) may be replaced.
        inputs: the command's input files: never written over, even with ``force``.
        force: replace an existing file of any kind.
        option: the option that named ``path``, for the message.

    Raises:
        FcnsegError: the path is an input, a folder, under a file or an unwritable folder, or holds a file
            that is not ``kind`` (without ``force``).
    """
    out = Path(path)
    for item in inputs:
        if _same_file(out, Path(item)):
            raise FcnsegError(f"expected {option} to name a new file, got {str(out)!r} which is the command's own "
                              f"input {str(item)!r}; try another {option} (inputs are never overwritten)")
    check_writable_parent(out, option)
    if out.is_dir():
        raise FcnsegError(f"expected {option} to name a file, got {str(out)!r} which is a folder; "
                          f"try {option} with a file name inside that folder")
    if out.exists() and not force and not kind.is_ours(out):
        raise FcnsegError(f"expected to write an {kind.name} to {str(out)!r}, but {out.name} exists and is not "
                          f"an {kind.name}; pass --force to replace it, or try another {option}")
    return out


def check_writable_parent(path: PathLike, option: str = "-o") -> None:
    """Refuse a path under a file, or in a folder the user cannot create files in (``/proc``, read-only)."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise FcnsegError(f"expected {option} in a folder, got {str(out)!r} whose parent {str(existing)!r} is a "
                          f"file; try another {option}")
    if not os.access(existing, os.W_OK | os.X_OK) or _is_virtual_fs(existing):
        raise FcnsegError(f"expected a writable folder for {option}, got {str(out)!r}: permission denied in "
                          f"{str(existing)!r}; try {option} under your home or working folder")


def check_readable(path: PathLike, what: str = "file") -> Path:
    """Say "permission denied" for an input that exists but cannot be read (instead of a parser's error)."""
    p = Path(path)
    if p.exists() and not os.access(p, os.R_OK):
        raise FcnsegError(f"expected a readable {what}, got {str(p)!r}: permission denied; "
                          f"try `chmod a+r {p}` or run as its owner")
    return p


def unique_path(path: Path, taken: set) -> Path:
    """``path``, or ``<stem>_1<suffix>``, ``_2``... : the first whose lower-cased text is not in ``taken``."""
    candidate, n = path, 1
    while str(candidate).lower() in taken:
        candidate, n = path.with_name(f"{path.stem}_{n}{path.suffix}"), n + 1
    return candidate


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _is_virtual_fs(folder: Path) -> bool:
    resolved = folder.resolve()
    return any(resolved == Path(v) or Path(v) in resolved.parents for v in ("/proc", "/sys"))


def check_output_dir(path: PathLike, option: str = "--out", *, what: str = "a folder",
                     first_file: str = "x") -> Path:
    """Refuse an output folder that is a file, or that cannot be created or written in; return it as a ``Path``.

    Args:
        path: the folder the command is about to write into.
        option: the option (or argument) that named it, for the message.
        what: how the message describes the folder expected ("a folder (new or empty)").
        first_file: a file the command writes in it (relative path), checked with ``check_writable_parent``.

    Raises:
        FcnsegError: ``path`` is a file, lies under a file, or is in a folder the user cannot write in.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FcnsegError(f"expected {option} to be {what}, got the file {str(out)!r}; try another {option}")
    check_writable_parent(out / first_file, option)  # under a file, read-only, /proc
    return out
