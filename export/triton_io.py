"""The tensors of a network Triton will serve: read from an ONNX graph or from a TensorRT engine's sidecar.

Dims are written as Triton wants them: without the batch dimension, -1 where symbolic; dtypes as numpy names
("bytes" for Triton's TYPE_STRING).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..core.errors import FcnsegError
from ..core.metadata import PREFIX, ModelMetadata
from ..core.sidecar import EngineSidecar, sidecar_path
from .onnx_graph import load_onnx, read_metadata

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]

@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: numpy dtype name ("bytes" for strings), dims without the batch dimension."""

    name: str
    dtype: str
    dims: Tuple[int, ...]
    ragged: bool = False


@dataclass
class ModelIO:
    """A network's tensors, the largest batch it accepts (None: any) and its fcnseg metadata."""

    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    max_batch: Optional[int]
    metadata: ModelMetadata
    profile: Optional[Dict[str, Any]] = None
    fp16_qdq: bool = False   # an INT8 graph with FP16 elsewhere: ONNX Runtime must run it unoptimized (see triton)

    @property
    def result(self) -> TensorSpec:
        """The output the mask comes from: the in-graph ``mask``, else ``logits``, else the first."""
        by_name = {t.name: t for t in self.outputs}
        return by_name.get("mask") or by_name.get("logits") or self.outputs[0]


def read_onnx_io(path: PathLike) -> ModelIO:
    """Inputs, outputs (dims without batch, -1 where symbolic) and metadata of an ONNX graph."""
    from onnx.helper import tensor_dtype_to_np_dtype


    model = load_onnx(path)   # a missing, truncated or foreign file: one FcnsegError
    init = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> Tuple[TensorSpec, Optional[int]]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        dtype = tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        return TensorSpec(v.name, dtype, tuple(dims[1:])), (dims[0] if dims and dims[0] > 0 else None)

    inputs = [spec(v) for v in model.graph.input if v.name not in init]
    outputs = [spec(v)[0] for v in model.graph.output]
    meta, props = read_metadata(model, str(path))
    fp16_qdq = (props.get(PREFIX + "int8") or {}).get("high_precision") == "fp16"
    return ModelIO([s for s, _ in inputs], outputs, inputs[0][1], meta, fp16_qdq=fp16_qdq)


def read_plan_io(path: PathLike) -> ModelIO:
    """Tensors, profile and metadata of a TensorRT engine, from its sidecar ``<plan>.json``."""
    plan = Path(path)
    sidecar = EngineSidecar.read(plan)
    if sidecar is None:
        raise FcnsegError(f"expected a sidecar {sidecar_path(plan).name} next to {str(plan)!r}, got none; try the "
                          ".plan written by `fcn-export trt`, which writes both")
    io, profile = sidecar.io, sidecar.profile
    if not io.get("inputs") or not io.get("outputs") or not profile.get("max"):
        raise FcnsegError(f"expected the sidecar of {str(plan)!r} to list the engine's inputs, outputs and "
                          f"profile, got io {sorted(io)} and profile {sorted(profile)}; try rebuilding the engine "
                          "with `fcn-export trt`")

    def spec(t: Mapping[str, Any]) -> TensorSpec:
        return TensorSpec(t["name"], str(t["dtype"]), tuple(int(d) for d in t["shape"][1:]))

    if sidecar.library == "tensorrt_rtx":
        log.warning("%s was built with TensorRT for RTX: Triton's tensorrt_plan backend runs engines built by the "
                    "full TensorRT of the server's release; rebuild it there (fcn-export trt --library tensorrt)",
                    plan.name)
    return ModelIO([spec(t) for t in io["inputs"]], [spec(t) for t in io["outputs"]], int(profile["max"][0]),
                   sidecar.model_metadata() or ModelMetadata(), dict(profile))


@dataclass
class TritonRepository:
    """What ``export_triton`` / ``export_segmenter`` wrote.

    Attributes:
        root: the repository folder (give it to ``tritonserver --model-repository``).
        models: model folders written, in load order.
        entry: the model clients call.
        readme: the README with the commands.
    """

    root: Path
    models: List[str]
    entry: str
    readme: Path
    configs: Dict[str, Any] = field(default_factory=dict)
    profile: Optional[Dict[str, Any]] = None
    input_size: Optional[int] = None

    def config_path(self, name: str) -> Path:
        return self.root / name / "config.pbtxt"
