"""What an engine build needs, read and validated from the ONNX before any TensorRT library is touched.

``engine_spec`` resolves the image input, the optimization profile (``profile``), the graph's own precision
and metadata, and checks the build options, so mistakes are reported on any machine in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import onnx

from ..core.errors import FcnsegError
from ..core.metadata import ModelMetadata
from ..core.onnx_names import QDQ_OPS
from .onnx_graph import load_onnx
from .options import EngineOptions, with_fields
from .opt_profile import Dim, Profile, declared_size_range, derive_profile
from .trt_features import parse_compute_capabilities

PathLike = Union[str, "os.PathLike[str]"]

PRECISIONS = ("fp32", "fp16", "int8")
LIBRARY_CHOICES = ("auto", "tensorrt", "tensorrt_rtx")


def onnx_input(model: onnx.ModelProto) -> Tuple[str, List[Dim]]:
    """The image input's name and dims (int where fixed, the symbol's name or None where dynamic)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise FcnsegError(f"expected an ONNX graph with one image input, got {[i.name for i in inputs]}; "
                          "try a graph from fcn-export onnx")
    dims: List[Dim] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return inputs[0].name, dims


def precision_of_onnx(model: Union[onnx.ModelProto, PathLike]) -> str:
    """"int8" for a Q/DQ graph, "fp16" for an FP16-typed one (FP16 weights or casts), else "fp32"."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    fp16 = onnx.TensorProto.FLOAT16
    nodes = list(model.graph.node)
    if any(n.op_type in QDQ_OPS for n in nodes):
        return "int8"
    typed = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    if (any(t.data_type == fp16 for t in model.graph.initializer)
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in nodes)
            or any(n.op_type == "Constant" and any(a.t.data_type == fp16 for a in n.attribute) for n in nodes)
            or any(v.type.tensor_type.elem_type == fp16 for v in typed)):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine build needs, resolved and validated from the ONNX before TensorRT is touched.

    Attributes:
        onnx_path: the graph to parse.
        input_name: the image input's name.
        profile: min/opt/max shapes.
        graph_precision: what the graph itself is ("fp32", "fp16" or "int8").
        precision: what was asked for (None = the graph's).
        metadata: the ONNX's ``ModelMetadata``.
        nodes: (name, op_type) of every top-level node, to name nodes in 8.x parser errors.
        workspace_gib: TensorRT workspace memory pool limit.
        timing_cache: file to load/save the timing cache (None: no cache; ignored by TensorRT for RTX).
        strongly_typed: None = when the graph is FP16/Q-DQ typed and TensorRT supports it.
        library: "auto", "tensorrt" or "tensorrt_rtx".
        compute_capabilities: GPU targets for TensorRT for RTX (None: its portable set).
        dla_core: build for this DLA core (Jetson); None for the GPU.
        gpu_fallback: let layers DLA cannot run fall back to the GPU.
        source_onnx: the ONNX to name in the sidecar (default ``onnx_path``; set when that is a temporary file).
    """

    onnx_path: Path
    input_name: str
    profile: Profile
    graph_precision: str
    precision: Optional[str]
    metadata: ModelMetadata
    nodes: Tuple[Tuple[str, str], ...] = ()
    workspace_gib: float = 4.0
    timing_cache: Optional[Path] = None
    strongly_typed: Optional[bool] = None
    library: str = "auto"
    compute_capabilities: Optional[Tuple[str, ...]] = None
    dla_core: Optional[int] = None
    gpu_fallback: bool = False
    source_onnx: Optional[Path] = None


def engine_spec(onnx_path: PathLike, options: Optional[EngineOptions] = None, **fields: Any) -> EngineSpec:
    """Read the ONNX and validate the build options (no TensorRT needed). See ``build_engine``.

    Args:
        onnx_path: the graph.
        options: the build's ``EngineOptions``.
        fields: ``EngineOptions`` fields replacing those of ``options`` (``precision="fp16", min_shape=...``).
    """
    o = with_fields(options, EngineOptions, fields)
    precision, workspace_gib, library = o.precision, o.workspace_gib, o.library
    compute_capabilities, timing_cache, source_onnx = o.compute_capabilities, o.timing_cache, o.source_onnx
    if precision is not None and precision not in PRECISIONS:
        raise FcnsegError(f"expected a precision in {PRECISIONS}, got {precision!r}; try --fp16 or --int8")
    if not workspace_gib > 0:
        raise FcnsegError(f"expected a positive workspace in GiB, got {workspace_gib}; try --workspace 4")
    if library not in LIBRARY_CHOICES:
        raise FcnsegError(f"expected --library in {LIBRARY_CHOICES}, got {library!r}; try --library auto")
    if compute_capabilities is not None:
        compute_capabilities = parse_compute_capabilities(",".join(compute_capabilities))
    model = load_onnx(onnx_path)
    name, dims = onnx_input(model)
    profile = derive_profile(dims, min_shape=o.min_shape, opt_shape=o.opt_shape, max_shape=o.max_shape,
                             size_range=declared_size_range(model))
    props = {p.key: p.value for p in model.metadata_props}
    return EngineSpec(onnx_path=Path(onnx_path), input_name=name, profile=profile,
                      graph_precision=precision_of_onnx(model), precision=precision,
                      metadata=ModelMetadata.from_props(props),
                      nodes=tuple((n.name, n.op_type) for n in model.graph.node), workspace_gib=workspace_gib,
                      timing_cache=Path(timing_cache) if timing_cache is not None else None,
                      strongly_typed=o.strongly_typed, library=library,
                      compute_capabilities=tuple(compute_capabilities) if compute_capabilities else None,
                      dla_core=o.dla_core, gpu_fallback=o.gpu_fallback,
                      source_onnx=Path(source_onnx) if source_onnx is not None else None)
