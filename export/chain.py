"""The one export chain: an FP32 ONNX graph -> FP16-typed or Q/DQ INT8 graph (``lower``) -> TensorRT engine
(``build``), and both in one call (``engine``, what ``fcn-export trt --fp16/--int8`` runs).

``fcn-export``'s commands, the device bundle (``fcnseg.export.bundle``) and the benchmarks' pipeline
(``fcnseg.benchmarks.pipeline``) all go through these three functions, with the option objects of
``fcnseg.export.options``, so a default or a check lives in one place. Precision is decided in ONNX, where
ONNX Runtime and OpenVINO check it on a CPU; the engine build only parses what ``lower`` wrote.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

from ..core.atomic import work_dir
from ..core.errors import FcnsegError
from .fp16 import Fp16Result, convert_fp16
from .int8 import Int8Result, quantize_int8
from .options import EngineOptions, Int8Options
from ..runtime.backends import tensorrt as trt_runtime
from . import tensorrt as trt_build
from .tensorrt import BuiltEngine, engine_spec

PathLike = Union[str, "os.PathLike[str]"]
LOWER_PRECISIONS = ("fp16", "int8")


def lower(onnx_path: PathLike, precision: str, output: Optional[PathLike] = None, *,
          int8: Int8Options = Int8Options()) -> Union[Fp16Result, Int8Result]:
    """The FP32 graph at ``onnx_path`` as an FP16-typed graph or a calibrated Q/DQ INT8 graph.

    Args:
        onnx_path: the FP32 ONNX (from ``fcn-export onnx``).
        precision: "fp16" or "int8".
        output: where to write it [default: ``<model>_fp16.onnx`` / ``<model>_int8.onnx`` beside the input].
        int8: calibration and accuracy options for "int8" (its ``calib_root`` is required then).

    Returns:
        The step's result (``.path`` is the graph written; an INT8 result also carries the mIoU comparison).
    """
    if precision == "fp16":
        return convert_fp16(onnx_path, output)
    if precision == "int8":
        int8.require_root(onnx_path)
        return quantize_int8(onnx_path, output, int8)
    raise FcnsegError(f"expected a precision to lower an FP32 graph to in {', '.join(LOWER_PRECISIONS)}, got "
                      f"{precision!r}; try fp16 or int8")


def build(onnx_path: PathLike, output: PathLike, options: EngineOptions = EngineOptions()) -> BuiltEngine:
    """A TensorRT engine (and its sidecar) from a graph as it is: FP32, FP16-typed or Q/DQ INT8."""
    return trt_build.build_engine(onnx_path, output=output, options=options)


def engine(onnx_path: PathLike, output: PathLike, options: EngineOptions = EngineOptions(), *,
           int8: Int8Options = Int8Options(), save_onnx: Optional[PathLike] = None) -> BuiltEngine:
    """``lower`` an FP32 graph to ``options.precision`` when that is FP16 or INT8, then ``build`` the engine.

    The graph, the profile and the options are checked first, and TensorRT is looked for before a long
    calibration. The intermediate graph goes to ``save_onnx`` when given, else to a temporary folder that is
    removed afterwards; a graph that is already FP16 or INT8 is built as it is.
    """
    spec = engine_spec(onnx_path, options)   # bad shapes or options are reported whether or not TensorRT is here
    if options.precision == "int8" and spec.graph_precision == "fp32":
        int8.require_root(onnx_path)
    trt_runtime.import_tensorrt(spec.library)
    if spec.graph_precision != "fp32" or options.precision not in LOWER_PRECISIONS:
        return build(onnx_path, output, options)
    # The intermediate graph lives in a scratch folder beside the engine (removed by the next run if killed).
    with work_dir(output) as tmp:
        graph = save_onnx or tmp / f"{Path(onnx_path).stem}_{options.precision}.onnx"
        lowered = lower(onnx_path, options.precision, graph, int8=int8)
        source = Path(save_onnx) if save_onnx else Path(onnx_path)
        # The sidecar names the user's graph, not the temporary one.
        return build(lowered.path, output, replace(options, source_onnx=source))
