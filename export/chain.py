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
from .int8 import Int8Result, for_builder, quantize_int8
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
    # the INT8 graph this TensorRT builds (8.x, or an 8.x --trt-version to parse it too: opset 17, FP32 elsewhere)
    int8 = for_builder(int8, trt_runtime.import_tensorrt(spec.library), getattr(options, "trt_version", None))
    if spec.graph_precision != "fp32" or options.precision not in LOWER_PRECISIONS:
        return build(onnx_path, output, options)
    # The intermediate graph lives in a scratch folder beside the engine (removed by the next run if killed).
    with work_dir(output) as tmp:
        graph = save_onnx or tmp / f"{Path(onnx_path).stem}_{options.precision}.onnx"
        lowered = lower(onnx_path, options.precision, graph, int8=int8)
        source = Path(save_onnx) if save_onnx else Path(onnx_path)
        # The sidecar names the user's graph, not the temporary one.
        return build(lowered.path, output, replace(options, source_onnx=source))


# ---------------------------------------------------------------- rebuilding from the sidecar

def rebuild_engine(plan_path: PathLike, onnx_path: Optional[PathLike] = None, output: Optional[PathLike] = None, *,
                   compute_capability: Optional[str] = None) -> Path:
    """Rebuild an engine from the options its sidecar recorded, with the TensorRT library installed here.

    Args:
        plan_path: the engine; its sidecar ``<plan>.json`` gives the ONNX, precision, profile, workspace, targets,
            DLA core and compatibility of the build.
        onnx_path: the ONNX to build from [default: the one the sidecar names, relative to the plan's folder];
            it must have the recorded SHA-256 when one was recorded.
        output: where to write the new plan and sidecar [default: ``plan_path``, replaced atomically].
        compute_capability: the GPU to build for, like "8.9" (TensorRT for RTX targets exactly it; full TensorRT
            builds for the GPU it runs on and ignores it) [default: the recorded targets].

    Returns:
        The path of the rebuilt plan.

    Raises:
        FcnsegError: no sidecar, no ONNX (or another graph than the recorded one), an INT8 engine whose Q/DQ graph
            was temporary, or anything ``build_engine`` refuses.
    """
    plan = Path(plan_path)
    side = trt_build.EngineSidecar.read(plan)
    if side is None:
        raise FcnsegError(f"expected the sidecar {trt_build.sidecar_path(plan).name} that fcn-export trt writes beside "
                          f"{plan.name}, to rebuild it, got none; try `fcn-export trt MODEL.onnx -o {plan}`")
    source = trt_build.rebuild_source(plan, side, onnx_path)
    options = trt_build.rebuild_options(side, compute_capability)
    out = Path(output) if output is not None else plan
    graph = trt_build.precision_of_onnx(source)
    flags = getattr(trt_build.import_tensorrt(side.library), "BuilderFlag", None)
    weak = bool(side.builder_flags) and all(hasattr(flags, f) for f in side.builder_flags)   # FP16 flag on FP32
    if graph == side.precision or weak:
        return trt_build.build_engine(source, output=out, options=options).path
    if side.precision == "int8":
        raise FcnsegError(f"expected the Q/DQ INT8 graph {plan.name} was built from, got the {graph} graph "
                          f"{source.name} (the INT8 graph was a temporary file); try onnx_path= the INT8 graph "
                          f"(fcn-export int8), or `fcn-export trt {source} --int8 --calib-data ROOT -o {out}`")
    return engine(source, out, options).path   # the FP32 graph lowered to FP16 again, as the build did
