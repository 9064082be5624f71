"""``fcn-export inspect``: what TensorRT makes of an ONNX graph, or what an engine file is (like ``polygraphy inspect``).

For an ONNX graph the network is parsed (no build; a CPU is enough with TensorRT for RTX) and every layer
is listed with its type, output dtypes and shapes and the precision it runs in. In a strongly typed
network that precision follows from the tensors: a layer whose data inputs all come from
DequantizeLinear layers runs in INT8 once TensorRT fuses the Q/DQ pairs into it (explicit quantization),
otherwise in the type of its float output (FP16 or FP32); Q/DQ layers, constants (weights, scales) and
integer/shape layers are counted apart. For an engine, the sidecar is shown and, where a GPU can deserialize the engine,
TensorRT's engine inspector adds its per-layer JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ..runtime.backends.tensorrt import import_tensorrt, probe_gpu
from ..core.errors import FcnsegError, one_line
from ..core.sidecar import EngineSidecar
from .onnx_graph import PathLike
from .trt_features import Features, detect_features
from .tensorrt import ENGINE_SUFFIXES, create_network, dims_list, dtype_name, parse_onnx_errors

PRECISION_ORDER = ("int8", "fp16", "fp32", "q/dq", "constant", "other")
_FLOATS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass
class LayerInfo:
    """One network layer: name, TensorRT layer type, outputs as (name, dtype, shape), and its precision."""

    index: int
    name: str
    type: str
    outputs: List[Dict[str, Any]]
    precision: str


@dataclass
class NetworkReport:
    """The parsed network of an ONNX graph; ``counts`` says how many layers run in each precision."""

    path: str
    library: str
    errors: List[str]
    layers: List[LayerInfo] = field(default_factory=list)

    def counts(self) -> Dict[str, int]:
        return {p: sum(layer.precision == p for layer in self.layers) for p in PRECISION_ORDER}

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "library": self.library, "errors": self.errors, "counts": self.counts(),
                "layers": [asdict(layer) for layer in self.layers]}

    def __str__(self) -> str:
        counts = ", ".join(f"{p} {n}" for p, n in self.counts().items())
        lines = [f"{Path(self.path).name}: parsed by {self.library}, {len(self.errors)} parser error(s), "
                 f"{len(self.layers)} layers ({counts})"]
        lines += [f"  parser error: {e}" for e in self.errors]
        for layer in self.layers:
            outs = ", ".join(f"{o['name']} {o['dtype']} {_shape(o['shape'])}" for o in layer.outputs)
            lines.append(f"  {layer.index:4d} {layer.precision:8s} {layer.type:14s} {layer.name} -> {outs}")
        return "\n".join(lines)


def inspect_onnx(path: PathLike, *, library: str = "auto") -> NetworkReport:
    """Parse ``path`` into a strongly typed TensorRT network and describe its layers (nothing is built).

    Raises:
        FcnsegError: no TensorRT library, or a file that is not ONNX.
    """
    features = detect_features(import_tensorrt(library))
    trt = features.module
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = create_network(builder, features, strongly_typed=features.strongly_typed)
    parser, errors = parse_onnx_errors(network, logger, Path(path), features)
    report = NetworkReport(str(path), features.name, errors, _layers(network, features))
    del parser
    return report


def _layers(network: Any, features: Features) -> List[LayerInfo]:
    producer: Dict[str, str] = {}
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = str(layer.type).rsplit(".", 1)[-1]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        described = [{"name": t.name, "dtype": dtype_name(t.dtype, features), "shape": dims_list(t.shape)}
                     for t in outs]
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        sources = [producer.get(t.name, "INPUT") for t in inputs if t is not None]
        layers.append(LayerInfo(i, layer.name, kind, described, _precision(kind, sources, described)))
        for t in outs:
            producer[t.name] = kind
    return layers


def _precision(kind: str, sources: List[str], outputs: List[Dict[str, Any]]) -> str:
    if kind in ("QUANTIZE", "DEQUANTIZE"):
        return "q/dq"
    if kind == "CONSTANT":
        return "constant"
    if kind == "SHAPE":
        return "other"
    data = [s for s in sources if s not in ("CONSTANT", "SHAPE")]
    if data and all(s == "DEQUANTIZE" for s in data):
        return "int8"
    floats = [_FLOATS.get(o["dtype"]) for o in outputs]
    return next((f for f in floats if f in ("fp16", "fp32")), "other")


def _shape(shape: List[int]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in shape)


# ---------------------------------------------------------------- engines

def inspect_engine(plan: PathLike) -> Dict[str, Any]:
    """The engine's sidecar and, with a GPU that can load it, TensorRT's per-layer engine information.

    Returns:
        {"path", "size_bytes", "sidecar" (dict or None), "layers" (the inspector's JSON or None),
        "layers_note" (why there are no layers, when there are none)}.
    """
    p = Path(plan)
    if not p.is_file():
        raise FcnsegError(f"expected an engine file, got no file at {str(p)!r}; try fcn-export trt MODEL.onnx")
    sidecar = EngineSidecar.read(p)
    result: Dict[str, Any] = {"path": str(p), "size_bytes": p.stat().st_size,
                              "sidecar": sidecar.to_dict() if sidecar is not None else None,
                              "layers": None, "layers_note": ""}
    gpu, why = probe_gpu()
    if gpu is None:
        result["layers_note"] = f"per-layer information needs a GPU to deserialize the engine: {why}"
        return result
    try:
        result["layers"] = _engine_layers(p, sidecar.library if sidecar is not None else "auto")
    except Exception as e:  # a wrong GPU or library: the sidecar is still worth showing
        result["layers_note"] = f"the engine could not be loaded here: {one_line(e, 300)}"
    return result


def _engine_layers(plan: Path, library: str) -> Any:
    trt = import_tensorrt(library)
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise FcnsegError("deserialize_cuda_engine returned None (another TensorRT version or GPU)")
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(info)


def engine_text(result: Dict[str, Any]) -> str:
    """``inspect_engine``'s result as text."""
    side = result["sidecar"]
    head = f"{Path(result['path']).name}: {result['size_bytes'] / 1e6:.1f} MB"
    if side is None:
        lines = [head + ", no sidecar"]
    else:
        lines = [head + ", " + EngineSidecar.from_dict(side).describe()]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in side.items() if k not in ("metadata",)]
    if result["layers"] is not None:
        lines.append(json.dumps(result["layers"], indent=1))
    else:
        lines.append(f"  layers: {result['layers_note']}")
    return "\n".join(lines)


def inspect_path(path: PathLike, *, library: str = "auto", as_json: bool = False) -> str:
    """``fcn-export inspect``: an ONNX graph's network or an engine's sidecar/layers, as text or JSON."""
    p = Path(path)
    if p.suffix in ENGINE_SUFFIXES:
        result = inspect_engine(p)
        return json.dumps(result, indent=1) if as_json else engine_text(result)
    report = inspect_onnx(p, library=library)
    return json.dumps(report.to_dict(), indent=1) if as_json else str(report)

