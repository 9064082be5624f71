"""Shape text as users type it on command lines: "520x520", "1x97x131", "1x3x256x256"."""

from __future__ import annotations

import re
from typing import Optional, Sequence, Union

from .errors import FcnsegError


def parse_dims(text: Union[str, Sequence[int]], *, ndim: Optional[int] = None, example: str = "1x3x520x520") -> tuple:
    """Parse positive integers joined by "x" (case and surrounding spaces ignored).

    Args:
        text: e.g. "1x3x256x256".
        ndim: required number of dimensions, if any.
        example: shown in the error message.

    Raises:
        FcnsegError: anything else, with an example of the expected form.
    """
    if isinstance(text, (tuple, list)):   # already parsed (a CLI option type): checked all the same
        text = "x".join(str(d) for d in text)
    parts = str(text).strip().lower().split("x")
    ok = all(re.fullmatch(r"\s*\d+\s*", p) and int(p) > 0 for p in parts) and (ndim is None or len(parts) == ndim)
    if not ok:
        raise FcnsegError(f"expected a shape like {example} (positive integers joined by 'x'), got {text!r}")
    return tuple(int(p) for p in parts)


def parse_hw(text: str) -> tuple:
    """ "375x500" -> (375, 500)."""
    return parse_dims(text, ndim=2, example="520x520 (HxW)")
