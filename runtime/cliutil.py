"""Click classes whose usage errors are one line on stderr, like ``FcnsegError`` (no "Usage:" block).

``fcn-bench --batch 0`` then says ``error: Invalid value for '--batch': 0 is not in the range x>=1; try
fcn-bench -h`` and exits with status 2, as every other refused input does. Imported by the CLIs only (the
runtime library itself does not need click).
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

import click


# click >= 8.2 raises this (a UsageError) for a bare group or a command with no_args_is_help: show the help.
_HELP_ERRORS = tuple(getattr(click.exceptions, n) for n in ("NoArgsIsHelpError",) if hasattr(click.exceptions, n))


def _one_line_usage(error: click.UsageError, name: str) -> None:
    if isinstance(error, _HELP_ERRORS):
        raise error
    ctx = error.ctx
    command = ctx.command_path if ctx is not None else name
    message = " ".join(error.format_message().split()).rstrip(".")
    click.echo(f"error: {message}; try {command} -h", err=True)
    sys.exit(error.exit_code)


class OneLineCommand(click.Command):
    """A ``click.Command`` that reports bad options and arguments in one line (exit status 2)."""

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _one_line_usage(e, info_name or self.name or "")
            raise  # unreachable: _one_line_usage exits


class OneLineGroup(click.Group):
    """A ``click.Group`` whose own and whose subcommands' usage errors are one line."""

    command_class = OneLineCommand

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _one_line_usage(e, info_name or self.name or "")
            raise

    def resolve_command(self, ctx: click.Context, args: List[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            _one_line_usage(e, ctx.command_path)
            raise
