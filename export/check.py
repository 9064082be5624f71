"""Static TensorRT-readiness check of an ONNX graph, without TensorRT.

Rules for every graph:
- every op is one the TensorRT ONNX parser supports (``TRT_ONNX_OPS``: the operators marked supported in
  onnx/onnx-tensorrt ``docs/operators.md`` for TensorRT 8.5, the oldest release this project targets; a
  documented subset, later releases add operators such as LayerNormalization); nodes of other domains
  (``com.microsoft``) are rejected; a Cast to a type TensorRT 8.5's parser cannot map is a warning;
- a Cast to (or from) UINT8 whose other side is not FLOAT/FLOAT16, such as ``--argmax``'s ArgMax -> UINT8 (ArgMax
  gives INT32 in TensorRT): TensorRT 8.5's parser refuses it (onnx-tensorrt release/8.5-GA
  ``builtin_op_importers.cpp``, Cast: "UINT8 type casting is only supported from FP types"; 8.6 casts with
  ``ICastLayer``); a violation for a TensorRT 8.5 target (``trt_version``), a warning otherwise;
- the default-domain opset is one the parsers read (9..25; warnings above 17 for 8.x and above 20 for 10.x);
- Resize uses nearest/linear with a coordinate mode TensorRT implements and no antialias (``sizes``
  preferred over ``scales``);
- Conv/ConvTranspose weights are constants (initializers, possibly through Q/DQ);
- input and output element types are ones TensorRT binds (float32/float16/int32/int8/uint8/bool; int64
  outputs only on 10.x+).

Rules for explicitly quantized (Q/DQ) graphs, as TensorRT's explicit quantization expects:
- every QuantizeLinear/DequantizeLinear is int8 with zero point 0 (symmetric);
- weights are quantized per channel on axis 0 for Conv (axis 1 for ConvTranspose); activations per tensor;
- no DequantizeLinear feeds a Conv/ConvTranspose bias (no int32 bias);
- an Add fed by Convs keeps one Conv input free of Q/DQ, the one TensorRT fuses the Add into (Q/DQ on the
  residual input only: the skip, or a downsampling block's 1x1 Conv output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..core.errors import FcnsegError
from ..core.onnx_names import QDQ_OPS, TRT8_MAX_OPSET, TRT10_MAX_OPSET
from .onnx_graph import PathLike, load_onnx

TRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
OPSET_RANGE = (9, 25)         # TensorRT 10.x parses 9-20, 11.x up to 25
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                           "align_corners")
IO_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32, TensorProto.INT8, TensorProto.UINT8,
            TensorProto.BOOL}
# Types TensorRT 8.5's parser maps in Cast (onnx-tensorrt release/8.5-GA onnx2trt_utils.cpp ``convertDtype``).
CAST_TYPES_TRT85 = (TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT16,
                    TensorProto.BOOL, TensorProto.INT32, TensorProto.INT64)
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
UINT8_CAST_FIXED_IN = (8, 6)   # the first TensorRT whose parser casts INT32 -> UINT8 (ICastLayer)
CONV_OPS = ("Conv", "ConvTranspose")
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}


@dataclass
class Violation:
    """One broken rule: which rule, at which node, and why."""

    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] node {self.node!r}: {self.message}"


@dataclass
class CheckReport:
    """Result of ``check_trt_ready``; truthy when no rule is broken (warnings do not count)."""

    name: str
    opset: int
    quantized: bool
    num_nodes: int
    violations: List[Violation] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    trt_version: Optional[str] = None

    def __bool__(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        target = f", for TensorRT {self.trt_version}" if self.trt_version else ""
        head = (f"{'OK' if self else 'FAIL'}: {self.name} (opset {self.opset}, {self.num_nodes} nodes, "
                f"{'Q/DQ INT8' if self.quantized else 'no Q/DQ'}{target})")
        if self:
            head += " is TensorRT-ready"
        else:
            head += f" breaks {len(self.violations)} TensorRT rule(s):"
        lines = [head] + [f"  {v}" for v in self.violations] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_trt_ready(model_or_path: Union[onnx.ModelProto, PathLike], *,
                    trt_version: Optional[str] = None) -> CheckReport:
    """Check an ONNX graph (a ``ModelProto`` or a file) against the rules in this module's docstring.

    Args:
        model_or_path: the graph.
        trt_version: the TensorRT that will parse it ("8.5", "10.3"); rules of that version's parser become
            violations (a UINT8 Cast from an integer on 8.5). None: they are warnings.

    Raises:
        FcnsegError: when a file cannot be read as ONNX or ``trt_version`` is not a version; rule violations go
            into the report.
    """
    older = older_than(trt_version, UINT8_CAST_FIXED_IN) if trt_version else False
    if isinstance(model_or_path, onnx.ModelProto):
        model, name = model_or_path, model_or_path.graph.name or "<model>"
    else:
        model, name = load_onnx(model_or_path), Path(model_or_path).name
    g = _Graph(model)
    quantized = any(n.op_type in QDQ_OPS for n in model.graph.node)
    report = CheckReport(name, g.opset, quantized, len(model.graph.node), trt_version=trt_version)
    _check_opset(g, report)
    _check_ops(g, report)
    _check_uint8_casts(g, report, strict=older)
    _check_io(model, report)
    if quantized:
        _check_qdq(g, report)
    return report


class _Graph:
    """Producer/consumer maps and constant lookup over a graph's top level."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.init = {i.name: i for i in model.graph.initializer}
        self.producer: Dict[str, onnx.NodeProto] = {o: n for n in self.nodes for o in n.output}
        self.consumers: Dict[str, List[tuple]] = {}
        graph = model.graph
        self.declared = {v.name: v.type.tensor_type.elem_type
                         for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
        self._types: Optional[Dict[str, int]] = None   # inferred, on first need
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of an initializer or Constant output, else None."""
        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def value_type(self, name: str, *, infer: bool = True) -> Optional[int]:
        """The element type of a value: declared, from its producer (Cast, ArgMax), else (``infer``) from ONNX
        shape inference, run once when first needed; None if unknown."""
        p = self.producer.get(name)
        found = self.declared.get(name) or self.dtype(name) or (
            _attr(p, "to") if p is not None and p.op_type == "Cast" else
            TensorProto.INT64 if p is not None and p.op_type in ("ArgMax", "ArgMin") else None)
        if found or not infer:
            return found or None
        if self._types is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model).graph.value_info
            except Exception:   # a graph inference cannot follow (or over 2 GB): what is declared only
                inferred = []
            self._types = {v.name: v.type.tensor_type.elem_type for v in inferred}
        return self._types.get(name) or None

    def dtype(self, name: str) -> Optional[int]:
        if name in self.init:
            return self.init[name].data_type
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            return next((a.t.data_type for a in p.attribute if a.name == "value"), None)
        return None


def _node_name(n: onnx.NodeProto) -> str:
    return n.name or f"{n.op_type}({', '.join(n.output)})"


def _attr(n: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in n.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _check_opset(g: _Graph, r: CheckReport) -> None:
    lo, hi = OPSET_RANGE
    if not lo <= g.opset <= hi:
        r.violations.append(Violation("opset", "<graph>", f"expected opset {lo}..{hi}, got {g.opset}"))
    elif g.opset > TRT10_MAX_OPSET:
        r.warnings.append(f"opset {g.opset}: TensorRT 10.x parses up to {TRT10_MAX_OPSET} (11.x only)")
    elif g.opset > TRT8_MAX_OPSET:
        r.warnings.append(f"opset {g.opset}: TensorRT 8.x parses up to {TRT8_MAX_OPSET}; export with --trt8")


def _check_ops(g: _Graph, r: CheckReport) -> None:
    for n in g.nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type not in TRT_ONNX_OPS:
            r.violations.append(Violation("op", _node_name(n), f"expected an op the TensorRT ONNX parser "
                                          f"supports, got {n.domain + '::' if n.domain else ''}{n.op_type}"))
        elif n.op_type == "Resize":
            _check_resize(n, r)
        elif n.op_type == "Cast" and _attr(n, "to") not in CAST_TYPES_TRT85:
            r.warnings.append(f"Cast {_node_name(n)!r} to {TensorProto.DataType.Name(_attr(n, 'to'))}: TensorRT "
                              "8.5's parser casts to DOUBLE/FLOAT/FLOAT16/INT8/UINT8/BOOL/INT32/INT64 only")
        elif n.op_type in CONV_OPS and not _is_constant_weight(g, n.input[1]):
            r.violations.append(Violation("conv-weights", _node_name(n),
                                          "expected constant weights (an initializer, possibly through Q/DQ)"))


def older_than(version: str, release: tuple) -> bool:
    """Whether TensorRT ``version`` ("8.5", "8.5.2.2", "10") is older than ``release`` ((8, 6)).

    Raises:
        FcnsegError: ``version`` does not start with MAJOR or MAJOR.MINOR.
    """
    parts = (str(version).split(".") + ["0"])[:2]
    if not all(p.isdigit() for p in parts):
        raise FcnsegError(f"expected a TensorRT version like 8.5 or 10.3, got {version!r}; try --trt-version 8.5")
    return (int(parts[0]), int(parts[1])) < tuple(release)


def uint8_casts(model: onnx.ModelProto) -> List[Tuple[str, str]]:
    """The Casts TensorRT 8.5's parser refuses, as (node name, "INT64 -> UINT8 (why)"): to or from UINT8 with a
    non-float other side, like ``--argmax``'s ArgMax -> UINT8. TensorRT 8.6+ parses them."""
    return _uint8_casts(_Graph(model))


def _uint8_violation(node: str, what: str) -> Violation:
    return Violation("cast-uint8", node, f"expected a Cast between UINT8 and FLOAT/FLOAT16, got {what}; TensorRT "
                     "8.5's parser casts UINT8 from and to floats only")


def _uint8_casts(g: _Graph) -> List[Tuple[str, str]]:
    """(node name, "INT64 -> UINT8 (ArgMax's indices: INT32 in TensorRT)") of each such Cast."""
    found, name = [], TensorProto.DataType.Name
    for n in g.nodes:
        if n.op_type != "Cast" or not n.input:
            continue
        to = _attr(n, "to")
        src = g.value_type(n.input[0], infer=to == TensorProto.UINT8)   # inference only for the rare UINT8 Cast
        if src is None or TensorProto.UINT8 not in (src, to) or src in FLOAT_TYPES or to in FLOAT_TYPES:
            continue
        why = " (ArgMax's indices: INT32 in TensorRT)" if _producer_op(g, n.input[0]) in ("ArgMax", "ArgMin") else ""
        found.append((_node_name(n), f"{name(src)} -> {name(to)}{why}"))
    return found


def _check_uint8_casts(g: _Graph, r: CheckReport, *, strict: bool) -> None:
    """Violations for a TensorRT 8.5 target, warnings otherwise (8.6+ parses these Casts)."""
    for node, what in _uint8_casts(g):
        if strict:
            r.violations.append(_uint8_violation(node, what))
        else:
            r.warnings.append(f"Cast {node!r} {what}: TensorRT 8.5's parser refuses it, 8.6+ parses it "
                              "(JetPack 5: check for TensorRT 8.5)")


def _producer_op(g: _Graph, name: str) -> str:
    p = g.producer.get(name)
    return p.op_type if p is not None else ""


def _check_resize(n: onnx.NodeProto, r: CheckReport) -> None:
    mode = _attr(n, "mode", "nearest")
    coord = _attr(n, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        r.violations.append(Violation("resize", _node_name(n), f"expected mode nearest or linear, got {mode}"))
    if coord not in RESIZE_COORDINATE_MODES:
        r.violations.append(Violation("resize", _node_name(n), f"expected a coordinate_transformation_mode in "
                                      f"{RESIZE_COORDINATE_MODES}, got {coord}"))
    if _attr(n, "antialias", 0):
        r.violations.append(Violation("resize", _node_name(n), "expected antialias=0, got 1"))
    if len(n.input) < 4 or not n.input[3]:
        r.warnings.append(f"Resize {_node_name(n)!r} uses scales; sizes are preferred (exact output size)")


def _is_constant_weight(g: _Graph, name: str) -> bool:
    for _ in range(3):   # initializer, or Q -> DQ -> (initializer)
        if g.const(name) is not None:
            return True
        p = g.producer.get(name)
        if p is None or p.op_type not in QDQ_OPS:
            return False
        name = p.input[0]
    return False


def _check_io(model: onnx.ModelProto, r: CheckReport) -> None:
    name = TensorProto.DataType.Name
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            t = v.type.tensor_type.elem_type
            if kind == "output" and t == TensorProto.INT64:
                r.warnings.append(f"output {v.name!r} is INT64: TensorRT 10.x+ only (8.x binds INT32)")
            elif t not in IO_TYPES:
                r.violations.append(Violation("io-type", v.name, f"expected a {kind} of type "
                                              f"{sorted(name(x) for x in IO_TYPES)}, got {name(t)}"))


def _check_qdq(g: _Graph, r: CheckReport) -> None:
    for n in g.nodes:
        if n.op_type == "Add":
            _check_residual(g, n, r)
        if n.op_type not in QDQ_OPS:
            continue
        bias_of = [c for c, idx in g.consumers.get(n.output[0], []) if c.op_type in CONV_OPS and idx == 2]
        if n.op_type == "DequantizeLinear" and bias_of:
            # one violation says it all: its int32 type and per-channel scale follow from being a bias
            r.violations.append(Violation("bias", _node_name(n), f"expected a float bias for "
                                          f"{_node_name(bias_of[0])!r}, got an int32 bias DequantizeLinear; "
                                          "quantize with QuantizeBias=False"))
            continue
        _check_zero_point(g, n, r)
        _check_granularity(g, n, r)


def _check_zero_point(g: _Graph, n: onnx.NodeProto, r: CheckReport) -> None:
    if len(n.input) < 3 or not n.input[2]:
        src = n.input[0] if n.op_type == "DequantizeLinear" else None
        if src is not None and g.dtype(src) in (None, TensorProto.INT8):
            return   # x is int8 (or produced by a QuantizeLinear checked on its own)
        r.violations.append(Violation("zero-point", _node_name(n), "expected an int8 zero point 0, got none "
                                      "(the type defaults to uint8)"))
        return
    zp, dtype = g.const(n.input[2]), g.dtype(n.input[2])
    if zp is None:
        r.violations.append(Violation("zero-point", _node_name(n), "expected a constant zero point"))
    elif dtype != TensorProto.INT8:
        r.violations.append(Violation("zero-point", _node_name(n), f"expected an int8 zero point, got "
                                      f"{TensorProto.DataType.Name(dtype or 0)} (asymmetric/unsigned)"))
    elif np.any(zp != 0):
        r.violations.append(Violation("zero-point", _node_name(n), f"expected zero point 0 (symmetric), got "
                                      f"{np.unique(zp)[:4].tolist()}"))


def _weight_consumer(g: _Graph, n: onnx.NodeProto) -> Optional[onnx.NodeProto]:
    """The Conv/ConvTranspose whose weight this Q (through its DQ) or DQ feeds, if any."""
    outs = [n.output[0]]
    if n.op_type == "QuantizeLinear":
        outs = [c.output[0] for c, _ in g.consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
    for out in outs:
        for c, idx in g.consumers.get(out, []):
            if c.op_type in CONV_OPS and idx == 1:
                return c
    return None


def _check_granularity(g: _Graph, n: onnx.NodeProto, r: CheckReport) -> None:
    scale = g.const(n.input[1])
    if scale is None:
        r.violations.append(Violation("scale", _node_name(n), "expected a constant scale"))
        return
    conv = _weight_consumer(g, n)
    if conv is None:
        if scale.size != 1:
            r.violations.append(Violation("per-tensor", _node_name(n), f"expected a per-tensor (scalar) "
                                          f"activation scale, got {scale.size} values"))
        return
    weight = _weight_shape(g, n)
    axis = WEIGHT_AXIS[conv.op_type]
    got_axis = int(_attr(n, "axis", 1))
    channels = weight[axis] if weight is not None and len(weight) > axis else None
    if scale.ndim != 1 or got_axis != axis or (channels is not None and scale.size != channels):
        r.violations.append(Violation("per-channel", _node_name(n), f"expected per-channel weight scales on axis "
                                      f"{axis} for {conv.op_type} ({channels} values), got {scale.size} on axis "
                                      f"{got_axis}"))


def _weight_shape(g: _Graph, n: onnx.NodeProto) -> Optional[tuple]:
    name = n.input[0]
    if n.op_type == "DequantizeLinear" and name in g.producer and g.producer[name].op_type == "QuantizeLinear":
        name = g.producer[name].input[0]
    value = g.const(name)
    return None if value is None else value.shape


def _check_residual(g: _Graph, add: onnx.NodeProto, r: CheckReport) -> None:
    # A Conv output straight into the Add is the one TensorRT fuses the Add into; with one, a Q/DQ'd Conv output
    # on the other input is the residual (a downsampling block's 1x1 Conv), as NVIDIA places it.
    fused = any(p is not None and p.op_type in CONV_OPS for p in (g.producer.get(name) for name in add.input))
    for name in add.input:
        chain = [g.producer.get(name)]   # Add <- DequantizeLinear <- QuantizeLinear <- Conv?
        for op in ("DequantizeLinear", "QuantizeLinear"):
            node = chain[-1]
            chain.append(g.producer.get(node.input[0]) if node is not None and node.op_type == op else None)
        _, q, conv = chain
        if q is not None and conv is not None and conv.op_type in CONV_OPS and not fused:
            r.violations.append(Violation("residual", _node_name(add), f"expected no Q/DQ between "
                                          f"{_node_name(conv)!r} and the Add it feeds ({_node_name(q)!r}) unless "
                                          "another input comes straight from a Conv; put Q/DQ on the residual "
                                          "input only"))
