"""The package's one exception type.

It lives in the runtime (the layer with the fewest dependencies) so that the
training, export and benchmark stages can raise it too. Messages follow the
form "expected X, got Y; try Z". The command-line tools turn it into one line
on stderr and a non-zero exit.
"""


class FcnsegError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of a third-party error's message (its type name when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    """The error's message on one line.

    A DataLoader worker re-raises an error with the worker's traceback inside the message; only the original
    message is kept. Multi-line messages (a checker report) are joined.
    """
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def cli_errors(fn):
    """Decorate a CLI entry point: FcnsegError becomes one line on stderr and exit code 2.

    Set ``FCNSEG_DEBUG=1`` to see the traceback instead. Used by every ``fcn-*`` command.
    """
    import functools
    import os
    import sys

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FcnsegError as e:
            if os.environ.get("FCNSEG_DEBUG"):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)

    return wrapper
