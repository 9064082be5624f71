"""The TensorRT optimization profile (min/opt/max NCHW shapes): parsed, defaulted and checked against the ONNX.

No TensorRT is needed here, so shape mistakes are reported on any machine before a library is looked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import onnx

from ..runtime.backends.tensorrt import format_shape
from ..core.errors import FcnsegError
from ..core.metadata import PREFIX

Shape = Tuple[int, ...]
Dim = Union[int, str, None]

DEFAULT_MIN_SHAPE: Shape = (1, 3, 256, 256)
DEFAULT_OPT_SHAPE: Shape = (1, 3, 520, 520)
DEFAULT_MAX_SHAPE: Shape = (1, 3, 1024, 1024)
SIZE_KEYS = (PREFIX + "min_size", PREFIX + "max_size")


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile for the image input (NCHW shapes)."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> Dict[str, List[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def __str__(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


SizeRange = Tuple[Optional[int], Optional[int]]


def derive_profile(input_dims: Sequence[Dim], *, min_shape: Optional[Sequence[int]] = None,
                   opt_shape: Optional[Sequence[int]] = None, max_shape: Optional[Sequence[int]] = None,
                   size_range: SizeRange = (None, None)) -> Profile:
    """Validate (or default) min/opt/max for an ONNX input whose dims may be symbolic.

    Defaults are 1x3x256x256 / 1x3x520x520 / 1x3x1024x1024, with the ONNX's fixed dims substituted,
    height/width clamped into ``size_range`` and moved to order with the shapes given (only
    ``max_shape=1x3x480x480`` gives opt 480x480). Shapes given explicitly are never adjusted, only checked.

    Args:
        input_dims: the ONNX input's dims: ints where fixed, names or None where symbolic.
        min_shape / opt_shape / max_shape: NCHW shapes, or None for the defaults.
        size_range: (min_size, max_size) for height and width declared by the export (metadata).

    Raises:
        FcnsegError: wrong rank, a fixed dim contradicted, min > opt > max somewhere, channel counts that
            differ, or heights/widths outside ``size_range``.
    """
    given = {"min": min_shape, "opt": opt_shape, "max": max_shape}
    defaults = _default_shapes(input_dims, size_range)
    shapes = {k: tuple(int(d) for d in v) if v is not None else defaults[k] for k, v in given.items()}
    for which, shape in shapes.items():
        _check_against_onnx(which, shape, input_dims)
    shapes = _fit_defaults(shapes, given_keys={k for k, v in given.items() if v is not None})
    for which, shape in shapes.items():
        _check_against_onnx(which, shape, input_dims)
    _check_order(shapes)
    _check_size_range(shapes, size_range)
    return Profile(shapes["min"], shapes["opt"], shapes["max"])


def _default_shapes(input_dims: Sequence[Dim], size_range: SizeRange) -> Dict[str, Shape]:
    lo = max(size_range[0] or 1, 1)
    hi = size_range[1] or 1 << 30
    result = {}
    for which, base in (("min", DEFAULT_MIN_SHAPE), ("opt", DEFAULT_OPT_SHAPE), ("max", DEFAULT_MAX_SHAPE)):
        if len(input_dims) != len(base):
            result[which] = tuple(d if isinstance(d, int) and d > 0 else 1 for d in input_dims)
            continue
        dims = [min(max(d, lo), hi) if i >= 2 else d for i, d in enumerate(base)]
        result[which] = tuple(d if isinstance(d, int) and d > 0 else b for d, b in zip(input_dims, dims))
    return result


def _fit_defaults(shapes: Dict[str, Shape], given_keys: set) -> Dict[str, Shape]:
    """Move defaulted shapes so they order with the given ones (e.g. only --max-shape 1x3x480x480)."""
    lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
    fixed = [shapes[k] for k in given_keys]
    if "min" not in given_keys:
        lo = tuple(min([d, *(s[i] for s in fixed)]) for i, d in enumerate(lo))
    if "max" not in given_keys:
        hi = tuple(max([d, *(s[i] for s in fixed)]) for i, d in enumerate(hi))
    if "opt" not in given_keys:
        opt = tuple(min(max(d, a), b) for d, a, b in zip(opt, lo, hi))
    return {"min": lo, "opt": opt, "max": hi}


def _check_against_onnx(which: str, shape: Shape, input_dims: Sequence[Dim]) -> None:
    rank = len(input_dims)
    if len(shape) != rank:
        raise FcnsegError(f"expected a {rank}-D --{which}-shape for the ONNX input (NCHW, like 1x3x520x520), got "
                          f"{format_shape(shape)}; try e.g. --{which}-shape 1x3x520x520")
    if any(d <= 0 for d in shape):
        raise FcnsegError(f"expected positive dims in --{which}-shape, got {format_shape(shape)}")
    for i, (d, fixed) in enumerate(zip(shape, input_dims)):
        if isinstance(fixed, int) and fixed > 0 and d != fixed:
            want = "x".join(str(f) if isinstance(f, int) and f > 0 else "?" for f in input_dims)
            raise FcnsegError(f"expected dim {i} of --{which}-shape to be {fixed} (fixed in the ONNX input "
                              f"{want}), got {format_shape(shape)}; try a shape matching {want}")


def _check_order(shapes: Mapping[str, Shape]) -> None:
    lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
    for i, (a, b, c) in enumerate(zip(lo, opt, hi)):
        if not a <= b <= c:
            raise FcnsegError(f"expected min <= opt <= max in every dim, got min {format_shape(lo)}, opt "
                              f"{format_shape(opt)}, max {format_shape(hi)} (dim {i}: {a}, {b}, {c}); "
                              "try reordering --min-shape/--opt-shape/--max-shape")
    if len(lo) > 1 and not lo[1] == opt[1] == hi[1]:
        raise FcnsegError(f"expected the same channel count in min/opt/max, got {lo[1]}, {opt[1]}, {hi[1]}; "
                          "try 3 channels (RGB) in all three shapes")


def _check_size_range(shapes: Mapping[str, Shape], size_range: SizeRange) -> None:
    lo, hi = size_range
    for which, shape in shapes.items():
        for d in shape[2:]:
            if (lo is not None and d < lo) or (hi is not None and d > hi):
                raise FcnsegError(f"expected heights and widths within [{lo}, {hi}] (the range the ONNX was "
                                  f"exported for: {SIZE_KEYS[0]}/{SIZE_KEYS[1]}), got --{which}-shape "
                                  f"{format_shape(shape)}; try a shape inside that range or re-export with "
                                  "fcn-export onnx --min-size/--max-size")


def declared_size_range(model: onnx.ModelProto) -> SizeRange:
    """(min_size, max_size) from the ONNX metadata props, None where absent."""
    props = {p.key: p.value for p in model.metadata_props}
    values: List[Optional[int]] = []
    for key in SIZE_KEYS:
        raw = props.get(key)
        try:
            value = None if raw is None else json.loads(raw)
            values.append(None if value is None else int(value))
        except (TypeError, ValueError):
            raise FcnsegError(f"expected an integer in the ONNX metadata {key!r}, got {raw!r}; "
                              "try re-exporting with fcn-export onnx") from None
    return values[0], values[1]
