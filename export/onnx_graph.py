"""The ONNX helpers every export step shares, with no torch: loading with clear errors, metadata, atomic saving,
ONNX Runtime sessions, Resize checks, the shapes to verify at and output kinds.

``fcnseg.export.torch_export`` writes the FP32 graph with them; the FP16, INT8 and TensorRT steps read it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np
import onnx

from ..core.atomic import atomic_path
from ..core.errors import FcnsegError, one_line
from ..core.output_guard import check_readable
from ..core.onnx_names import LOGITS_NAME, MASK_NAME, QDQ_OPS
from ..core.shapes import parse_dims
from ..core.metadata import PREFIX, ModelMetadata, without_metadata

if TYPE_CHECKING:
    import onnxruntime

PathLike = Union[str, "os.PathLike[str]"]
Shape = Tuple[int, int, int]  # (batch, height, width)

log = logging.getLogger("fcnseg.export")

# Odd sizes catch off-by-one crops and Resize coordinate modes; batch 2 catches a fixed batch dimension.
DEFAULT_VERIFY_SHAPES: Tuple[Shape, ...] = ((1, 97, 131), (1, 375, 500), (1, 520, 520), (2, 97, 131))
TRT_RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners")
SIZE_KEYS = (PREFIX + "min_size", PREFIX + "max_size")


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: fold constants and drop identities; symbolic dims stay symbolic."""
    import onnxslim

    slim = onnxslim.slim(model)
    if slim is None:
        raise FcnsegError("expected onnxslim to return a simplified graph, got None; "
                          "try another onnxslim version or report the model")
    return slim


def check_resize_modes(model: onnx.ModelProto) -> None:
    """Raise if a Resize uses a coordinate mode or interpolation TensorRT does not run as PyTorch does."""
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        interp = attrs.get("mode", b"nearest").decode()
        if mode not in TRT_RESIZE_COORDINATE_MODES or interp not in ("nearest", "linear"):
            raise FcnsegError(f"expected Resize with mode nearest/linear and coordinate mode in "
                              f"{TRT_RESIZE_COORDINATE_MODES}, got {interp}/{mode} at node {node.name!r}; "
                              "try F.interpolate(..., mode='bilinear', align_corners=False) in the model")


def _full_check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise FcnsegError(f"expected a valid ONNX graph, got a checker error: {one_line(e, 300)}; "
                          "try another --opset") from None


def load_onnx(path: PathLike) -> onnx.ModelProto:
    """Load an ONNX file; missing, truncated or foreign files give one clear ``FcnsegError``."""
    p = Path(path)
    if not p.is_file():
        raise FcnsegError(f"expected an ONNX file, got {str(p)!r} which does not exist")
    check_readable(p, "ONNX file")   # "permission denied", not "truncated"
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, checker ValidationError, external-data OSError ...
        with open(p, "rb") as f:
            if f.read(2) in (b"PK", b"\x80\x02"):  # torch.save's zip (or legacy pickle), never an ONNX protobuf
                raise FcnsegError(f"expected an ONNX model, got the PyTorch checkpoint {str(p)!r}; try "
                                  f"`fcn-export onnx {p}` to export it first") from None
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise FcnsegError(f"could not read {str(p)!r} as an ONNX model ({type(e).__name__}: {first}); "
                          "expected a complete .onnx file, e.g. from `fcn-export onnx`; try exporting it again") \
            from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise FcnsegError(f"expected an ONNX graph with nodes, inputs and outputs in {str(p)!r}, got an empty one; "
                          "try exporting it again")
    return model


def save_onnx(model: onnx.ModelProto, path: PathLike) -> Path:
    """Write ``model`` atomically (a temporary file renamed over ``path``)."""
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)


def set_metadata(model: onnx.ModelProto, meta: ModelMetadata, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``meta`` and ``extra`` (JSON-encoded) into metadata_props, keeping keys they do not name."""
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta.to_props())
    props.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "fcnseg"
    model.producer_version = _version()


def read_metadata(model: onnx.ModelProto, source: str = "") -> Tuple[ModelMetadata, Dict[str, Any]]:
    """The model's ``ModelMetadata`` and all its ``fcnseg.*`` props decoded from JSON.

    A graph without fcnseg metadata gets its class count from its first output's channels (``without_metadata``).
    """
    props = {p.key: p.value for p in model.metadata_props}
    if not any(k.startswith(PREFIX) for k in props):
        return without_metadata(source or f"the ONNX graph {model.graph.name!r}", _output_channels(model)), {}
    return ModelMetadata.from_props({k: v for k, v in props.items() if k.startswith(PREFIX)}), fcnseg_props(model)


def fcnseg_props(model: onnx.ModelProto) -> Dict[str, Any]:
    """The model's ``fcnseg.*`` props, each decoded from JSON where it is JSON ({} without any)."""
    decoded: Dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key.startswith(PREFIX):
            try:
                decoded[p.key] = json.loads(p.value)
            except ValueError:
                decoded[p.key] = p.value
    return decoded


def _output_channels(model: onnx.ModelProto) -> Optional[int]:
    """C of the first output when it is a fixed NxCxHxW dimension."""
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value) if len(dims) == 4 and dims[1].HasField("dim_value") else None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fcnseg")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"


def ort_session(model: Union[onnx.ModelProto, PathLike], *,
                threads: Optional[int] = None) -> "onnxruntime.InferenceSession":
    """A CPU ONNX Runtime session; errors become ``FcnsegError``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3   # ORT warns about inserted fp16 casts and unused initializers
    if threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise FcnsegError(f"expected ONNX Runtime to load the graph, got {type(e).__name__}: "
                          f"{one_line(e, 300)}") from None


def run_session(session: "onnxruntime.InferenceSession", x: np.ndarray) -> Dict[str, np.ndarray]:
    """Run one NCHW float32 batch; outputs by name."""
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
    return dict(zip(names, values))


def expose_argmax_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of an argmax graph that also outputs the (float) tensor fed to ArgMax as ``logits``.

    Returns ``model`` itself when it already outputs ``logits``.
    """
    if any(o.name == LOGITS_NAME for o in model.graph.output):
        return model
    argmax = [n for n in model.graph.node if n.op_type == "ArgMax"]
    if not argmax:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    src = argmax[-1].input[0]
    copy.graph.node.append(onnx.helper.make_node("Cast", [src], [LOGITS_NAME], to=onnx.TensorProto.FLOAT,
                                                 name="fcnseg_expose_logits"))
    copy.graph.output.append(onnx.helper.make_tensor_value_info(LOGITS_NAME, onnx.TensorProto.FLOAT, None))
    return copy


def require_fp32_graph(model: onnx.ModelProto, meta: ModelMetadata, path: PathLike, *,
                       fp16_hint: str = "try the FP32 export from `fcn-export onnx`") -> None:
    """Refuse a graph that is already INT8 (Q/DQ nodes or metadata) or FP16 (initializers or metadata)."""
    if {n.op_type for n in model.graph.node} & set(QDQ_OPS) or meta.precision == "int8":
        raise FcnsegError(f"expected an FP32 ONNX model, got a quantized (INT8 Q/DQ) one in {str(path)!r}; "
                          "try the FP32 export from `fcn-export onnx`")
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) or meta.precision == "fp16":
        raise FcnsegError(f"expected an FP32 ONNX model, got an FP16 one in {str(path)!r}; {fp16_hint}")


def static_input_shape(model: onnx.ModelProto) -> Optional[Shape]:
    """(N, H, W) of an input whose dims are all fixed, else None."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and all(d.HasField("dim_value") for d in dims):
        return dims[0].dim_value, dims[2].dim_value, dims[3].dim_value
    return None


def default_verify_shapes(model: onnx.ModelProto) -> List[Shape]:
    """The static input shape, or the ``DEFAULT_VERIFY_SHAPES`` inside the model's declared size range."""
    fixed = static_input_shape(model)
    if fixed:
        return [fixed]
    props = fcnseg_props(model)
    lo, hi = props.get(SIZE_KEYS[0]) or 1, props.get(SIZE_KEYS[1]) or 1 << 30   # null: not declared
    shapes = [s for s in DEFAULT_VERIFY_SHAPES if lo <= min(s[1:]) and max(s[1:]) <= hi]
    return shapes or [(1, lo, lo)]


def output_kind(model: onnx.ModelProto) -> str:
    """``"mask"`` for argmax graphs, else ``"logits"``."""
    names = [o.name for o in model.graph.output]
    return MASK_NAME if MASK_NAME in names and LOGITS_NAME not in names else LOGITS_NAME


def parse_shapes(text: str) -> List[Shape]:
    """``"1x97x131,2x375x500"`` -> [(1, 97, 131), (2, 375, 500)] (NxHxW)."""
    shapes = [parse_dims(p, ndim=3, example="1x97x131,2x375x500 (NxHxW)") for p in text.split(",") if p.strip()]
    if not shapes:
        raise FcnsegError(f"expected at least one NxHxW shape, got {text!r}")
    return shapes
