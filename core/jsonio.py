"""The one JSON writer of every report (evaluation, benchmarks, INT8): strict JSON, written atomically."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .atomic import write_text


def write_json(path: Any, obj: Any) -> Path:
    """The one JSON writer: ``obj`` through ``to_jsonable`` (NaN -> null, never bare ``NaN``), written atomically.

    Args:
        path: the file to write (replaced atomically: temp file, then rename).
        obj: dicts, lists, dataclasses, paths, numpy values (see ``to_jsonable``).

    Returns:
        ``path`` as a Path.
    """
    write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples, numpy values -> JSON types; NaN and infinities -> None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)
