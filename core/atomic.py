"""Atomic file writes: a temporary file in the same folder, then ``os.replace``. Never half-written.

The temporary file is named ``.<name>.fcnseg-<pid>-<random>.tmp`` and gets the permissions a plain ``open``
would give (``0o666 & ~umask``: 0644 under umask 022), not ``mkstemp``'s 0600, so another user (a serving
process) can read the artifact. A run killed between the two steps leaves its temporary file behind; the
next atomic write into that folder removes such files when their writer is gone or they are over an hour old.
Scratch folders for long work (``work_dir``: INT8 calibration's graphs, ONNX Runtime's quantizer files) follow
the same rule beside the output, ``.<name>.fcnseg-<pid>-<random>.tmpdir``, so a SIGKILL cannot orphan them
in the system's temporary folder. A full disk (or a file-size limit) while writing is one ``FcnsegError``
naming the file and the free space, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Set, Union

from .errors import FcnsegError

PathLike = Union[str, "os.PathLike[str]"]
TEMP_MARK = ".fcnseg-"
STALE_SECONDS = 3600.0
_TEMP_RE = re.compile(r"^\..+\.fcnseg-(\d+)-[^.]+\.tmp(dir|\.\w+)?$")
# Write errors that mean "no room": a full filesystem, a quota, a file-size limit (RLIMIT_FSIZE).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# What torch.save (and other C++ writers) say when the same happens under them.
NO_ROOM_TEXT = ("No space left", "file write failed", "unexpected pos", "File too large", "Disk quota")
_umask_lock = threading.Lock()
_cleaned: Set[str] = set()


@contextlib.contextmanager
def atomic_path(path: PathLike, *, size: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``size``: the bytes to be written, when known, for the message of a write that finds no room.
    """
    tmp = temp_path(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_no_room(e):
            raise no_room_error(path, e, size) from None
        raise


def is_no_room(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the file-size limit) had no room for a write."""
    if isinstance(error, OSError) and error.errno in NO_ROOM:
        return True
    return isinstance(error, RuntimeError) and any(t in str(error) for t in NO_ROOM_TEXT)


def no_room_error(path: PathLike, error: BaseException, needed: Optional[int] = None) -> FcnsegError:
    """The one-line error for a write that found no room: which file, how much is free (and needed, if known)."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:   # torch.save's "unexpected pos 961920 vs 961816": say what it means
        reason = f"a failed write ({str(error).splitlines()[0][-60:].strip()})"
    need = f", {needed / 2**20:.1f} MiB needed" if needed else ""
    return FcnsegError(f"expected room to write {str(path)!r}, got {reason!r} ({free}{need}); nothing was written; "
                       "try freeing space there or writing to another folder")


@contextlib.contextmanager
def work_dir(near: PathLike, *, redirect_tempfile: bool = False) -> Iterator[Path]:
    """A scratch folder beside ``near`` (``.<name>.fcnseg-<pid>-<random>.tmpdir``), removed afterwards.

    A run killed inside it leaves the folder; the next ``work_dir`` or atomic write in that folder removes it
    once its process is gone. With ``redirect_tempfile``, ``tempfile`` (and so libraries such as ONNX
    Runtime's quantizer) creates its temporary files inside it for the duration.
    """
    target = Path(near)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP_MARK}{os.getpid()}-", suffix=".tmpdir",
                                   dir=target.parent))
    before = tempfile.tempdir
    try:
        if redirect_tempfile:
            tempfile.tempdir = str(folder)
        yield folder
    except BaseException as e:
        if is_no_room(e):
            raise no_room_error(near, e) from None
        raise
    finally:
        if redirect_tempfile:
            tempfile.tempdir = before
        shutil.rmtree(folder, ignore_errors=True)


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
    """Remove this module's temporary files in ``folder`` whose writer process is gone or that are too old, and
    its scratch folders whose process is gone.

    Only names of the form ``.<name>.fcnseg-<pid>-<random>.tmp`` (``.tmpdir``) are touched. Returns the removed
    paths.
    """
    removed: List[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        is_dir = match is not None and match.group(2) == "dir" and entry.is_dir(follow_symlinks=False)
        if not match or not (is_dir or entry.is_file(follow_symlinks=False)):
            continue
        with contextlib.suppress(OSError):
            # A scratch folder is in use as long as its process lives, however old (a long calibration).
            if not _pid_alive(int(match.group(1))) or (not is_dir and now - entry.stat().st_mtime > max_age):
                shutil.rmtree(entry.path) if is_dir else os.unlink(entry.path)
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
    """Write ``data`` to ``path`` atomically (a full disk is one ``FcnsegError`` saying how much was needed)."""
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def run_lock(folder: PathLike, command: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for a run that writes into it; a second run refuses in one line.

    The lock is ``flock`` on ``.<folder name>.fcnseg-lock`` beside the folder (the folder may not exist yet),
    holding the owner's pid for the message. The kernel drops it when the process dies, so a killed run
    never blocks the next one; the file is removed at the end.

    Raises:
        FcnsegError: another process holds the lock (named by its pid).
    """
    target = Path(folder).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.fcnseg-lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FcnsegError(f"expected {str(target)!r} to be free for {command}, got another {command} (pid {other}) "
                          "writing there; try another output folder, or wait for that run to end") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def file_sha256(path: "str | os.PathLike[str]") -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (engines, graphs and bundles are hundreds of MB)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
