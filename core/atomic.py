"""Atomic file writes: a temporary file in the same folder, then ``os.replace``. Never half-written.

The temporary file is named ``.<name>.fcnseg-<pid>-<random>.tmp`` and gets the permissions a plain ``open``
would give (``0o666 & ~umask``: 0644 under umask 022), not ``mkstemp``'s 0600, so another user (a serving
process) can read the artifact. A run killed between the two steps leaves its temporary file behind; the
next atomic write into that folder removes such files when their writer is gone or they are over an hour old.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Set, Union

PathLike = Union[str, "os.PathLike[str]"]
TEMP_MARK = ".fcnseg-"
STALE_SECONDS = 3600.0
_TEMP_RE = re.compile(r"^\..+\.fcnseg-(\d+)-[^.]+\.tmp(\.\w+)?$")
_umask_lock = threading.Lock()
_cleaned: Set[str] = set()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temp_path(path: PathLike, *, keep_suffix: bool = False) -> Path:
    """Create the empty temporary file for ``path`` (``keep_suffix``: end in ``.tmp<suffix>``, for writers that
    pick the format from the name, as FFmpeg does); stale temporaries in that folder are removed first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(target.parent)
    suffix = ".tmp" + (target.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}{os.getpid()}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(tmp)


def commit_temp(tmp: PathLike, path: PathLike) -> None:
    """Give ``tmp`` the user's umask permissions and rename it to ``path``."""
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)


def current_umask() -> int:
    """The process's umask: from ``/proc/self/status`` on Linux, else by setting and restoring it under a lock."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:   # another thread creating a file in between would briefly see 022
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _clean_once(folder: Path) -> None:
    """``remove_stale_temps`` once per folder and process (a dataset of 10,000 files is not rescanned each time)."""
    key = str(folder.resolve())
    if key not in _cleaned:
        _cleaned.add(key)
        remove_stale_temps(folder)


def remove_stale_temps(folder: PathLike, *, max_age: float = STALE_SECONDS) -> List[Path]:
    """Remove this module's temporary files in ``folder`` whose writer process is gone or that are too old.

    Only names of the form ``.<name>.fcnseg-<pid>-<random>.tmp`` are touched. Returns the removed paths.
    """
    removed: List[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if not _pid_alive(int(match.group(1))) or now - entry.stat().st_mtime > max_age:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True   # someone else's live process (or a pid we cannot ask about): leave it to the age rule
    return True


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
