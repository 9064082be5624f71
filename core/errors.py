"""The package's one exception type, its one-line rendering and the one CLI error handler.

It lives in ``fcnseg.core``, under every stage, so that the runtime, training,
export and benchmark stages all raise it. Messages follow the
form "expected X, got Y; try Z". The command-line tools turn it into one line
on stderr and a non-zero exit (``cli_errors`` / ``handle_cli_errors``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import os
import sys
from typing import Any, Callable, Iterator, Optional


class FcnsegError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


def one_line(error: BaseException, limit: Optional[int] = None) -> str:
    """The error's message on one line, for an error message or a report cell.

    Our own messages (``FcnsegError``, e.g. a checker report over several lines) are joined; another
    library's error keeps its first line (the rest is usually a dump); an error a DataLoader worker
    re-raised keeps only the original message; an empty message gives the type name.

    Args:
        error: the exception.
        limit: cut the text to this many characters (None: no cut).
    """
    lines = [part.strip() for part in str(error).strip().splitlines() if part.strip()]
    if any("Original Traceback" in line for line in lines):
        lines = [lines[-1].split(": ", 1)[-1]]
    elif not isinstance(error, FcnsegError):
        lines = lines[:1]
    text = " ".join(lines) or type(error).__name__
    return text[:limit] if limit else text


def import_optional(module: str, expected: str, hint: str) -> Any:
    """Import an optional dependency when it is needed, or say in one line how to install it.

    Args:
        module: dotted module name, e.g. ``"av"`` or ``"tritonclient.grpc"``.
        expected: what the package is and what it is for (the "expected X" of the message).
        hint: what to run (the "try Z" of the message).

    Raises:
        FcnsegError: "expected {expected}, got an import error (...); try {hint}".
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise FcnsegError(f"expected {expected}, got an import error ({e}); try {hint}") from None


@contextlib.contextmanager
def handle_cli_errors(debug: bool = False) -> Iterator[None]:
    """The one CLI error handler: FcnsegError becomes one line on stderr and exit status 2.

    With ``debug`` (the ``--debug`` flag every fcnseg CLI has) or ``FCNSEG_DEBUG=1`` the traceback shows instead.
    """
    try:
        yield
    except FcnsegError as e:
        if debug or os.environ.get("FCNSEG_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        # A full disk or a file-size limit outside an atomic write (logs, a library's own files): one line too.
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or debug or os.environ.get("FCNSEG_DEBUG"):
            raise
        where = f" {e.filename!r}" if e.filename else ""
        print(f"error: expected room to write{where}, got {e.strerror!r}; try freeing space or another output "
              "folder", file=sys.stderr)
        sys.exit(2)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command's function: adds ``--debug`` and runs it under ``handle_cli_errors``.

    Put it innermost (just above ``def``); used by every ``fcn-*`` command and benchmark script.
    """
    import click

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        with handle_cli_errors(debug):
            return fn(*args, **kwargs)

    return click.option("--debug", is_flag=True, help="Show the traceback of errors.")(wrapper)
