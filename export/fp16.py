"""FP32 ONNX -> FP16-typed ONNX with float32 inputs and outputs (what a strongly typed TensorRT 11 build needs).

Conversion: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``; the network body
runs in FP16 while ``input`` and ``logits`` stay float32 (``mask`` stays uint8). Ops in
``FP16_OP_BLOCK_LIST`` stay FP32: onnxconverter-common's default list (Resize, TopK, Range, CumSum, Min, Max,
Upsample, ...) plus ArgMax and the reductions/exponentials, which lose the most in FP16. The final
bilinear Resize of the logits therefore runs in FP32, as the FP32 engine's does.

The result is verified against the FP32 graph on ONNX Runtime (CPU, which inserts casts where it has no
FP16 kernel) at several shapes before it is written.

An INT8 Q/DQ graph is lowered the same way (``qdq_to_fp16``, the default of ``fcn-export int8``): what is not
INT8 then runs in FP16 on strongly typed builders (TensorRT 10+/11, TensorRT for RTX), which take precision from
the graph. Its QuantizeLinear/DequantizeLinear read FP16 activations and write FP16, so their scales are FP16,
which ONNX allows from opset 19 on: the graph is upgraded to opset 19 first (TensorRT 8.x, which parses up to
opset 17, builds the FP32 one with its --int8 --fp16 flags instead).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnx.version_converter

from ..core.errors import FcnsegError, one_line
from ..core.metadata import ModelMetadata
from ..eval.parity import OutputComparison, compare_logits
from ..core.onnx_names import LOGITS_NAME, MASK_NAME
from .onnx_graph import (PathLike, Shape, default_verify_shapes, expose_argmax_input, load_onnx, ort_session,
                         read_metadata, require_fp32_graph, run_session, save_onnx, set_metadata)

log = logging.getLogger("fcnseg.export")

QDQ_FP16_OPSET = 19   # QuantizeLinear/DequantizeLinear take FP16 scales from opset 19 on
# ONNX Runtime (1.2x up to 1.32 at least) rewrites a Conv whose input and weight come from DequantizeLinear so that
# its float bias becomes an int32 DequantizeLinear (the optimizer "WeightBiasQuantization"); with FP16 scales it
# divides the bias by input scale x weight scale in FP16, which overflows, and the outputs are wrong (argmax
# agreement 18 % on FCN-8s). TensorRT and OpenVINO do no such thing. ONNX Runtime sessions on FP16 Q/DQ graphs
# must disable it (``ort_qdq_fp16_session``).
ORT_DISABLED_FOR_FP16_QDQ = ("WeightBiasQuantization",)

FP16_OP_BLOCK_LIST: tuple = (
    # onnxconverter-common's DEFAULT_OP_BLOCK_LIST entries that can occur in vision graphs
    "Resize", "Upsample", "TopK", "Range", "CumSum", "Min", "Max", "NonMaxSuppression", "RoiAlign",
    "RandomUniformLike",
    # numerically sensitive in FP16: arg-reductions over nearly tied scores, exp/log, sums over many values
    "ArgMax", "ArgMin", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "ReduceMean", "ReduceSum",
    "ReduceL2", "ReduceLogSumExp",
)


@dataclass
class Fp16Result:
    """What ``convert_fp16`` wrote and how it compared with the FP32 graph.

    Attributes:
        path: the FP16 ONNX file.
        metadata: its ``ModelMetadata`` (precision "fp16").
        comparisons: FP16 vs FP32 logits per verified shape.
        seconds: wall time.
    """

    path: Path
    metadata: ModelMetadata
    comparisons: List[OutputComparison] = field(default_factory=list)
    seconds: float = 0.0


def convert_fp16(model_path: PathLike, output: Optional[PathLike] = None, *, verify: bool = True,
                 verify_shapes: Optional[Sequence[Shape]] = None, min_agreement: float = 0.99,
                 rtol: float = 0.02) -> Fp16Result:
    """Convert an FP32 ONNX graph to FP16 with float32 I/O, verify it on ONNX Runtime, write it atomically.

    Args:
        model_path: FP32 ONNX file (e.g. from ``export_onnx``).
        output: destination; default ``<model>_fp16.onnx`` next to the input.
        verify: compare with the FP32 graph on ONNX Runtime (CPU) before writing.
        verify_shapes: (N, H, W) shapes to compare at; default as ``export_onnx``'s (clipped to the model's
            declared size range).
        min_agreement: the smallest accepted fraction of equal argmax labels.
        rtol: accepted max abs error, relative to the largest FP32 logit magnitude at that shape.

    Raises:
        FcnsegError: unreadable, already FP16 or quantized input; I/O types changed; or FP16 outputs
            that disagree with FP32; nothing is written then.
    """
    t0 = time.perf_counter()
    src = Path(model_path)
    model = load_onnx(src)
    meta, _ = read_metadata(model)
    require_fp32_graph(model, meta, src)
    fp16 = to_fp16(model)
    check_io_types(model, fp16)
    meta.precision = "fp16"
    set_metadata(fp16, meta)
    shapes = _check_verify_shapes(verify_shapes, meta) or default_verify_shapes(model)
    comparisons = verify_fp16(model, fp16, shapes, min_agreement=min_agreement, rtol=rtol) if verify else []
    out = Path(output) if output is not None else src.with_name(src.stem + "_fp16.onnx")
    save_onnx(fp16, out)
    seconds = time.perf_counter() - t0
    log.info("wrote %s (fp16 body, float32 I/O) in %.1f s", out, seconds)
    return Fp16Result(out, meta, comparisons, seconds)


def _check_verify_shapes(shapes: Optional[Sequence[Shape]], meta: ModelMetadata) -> Optional[Sequence[Shape]]:
    """Refuse verify shapes outside the model's declared size range (9999x9999 would be OOM-killed, not refused)."""
    low, high = meta.min_size or 1, meta.max_size
    for n, h, w in shapes or ():
        if min(h, w) < low or (high is not None and max(h, w) > high):
            raise FcnsegError(f"expected verify shapes with H, W in the model's declared range {low}..{high}, got "
                              f"{n}x{h}x{w}; try --verify-shapes 1x{max(low, 97)}x{max(low, 131)}")
    return shapes


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The FP16-typed graph with float32 (and uint8) inputs/outputs kept as they are.

    Blocked ops that write a graph output (the dilated FCN's final Resize) are set aside during the
    conversion and re-attached after it: onnxconverter-common 1.16 otherwise fails while removing the
    redundant Cast pair it puts between such an op and the output ("The downstream node of the second cast
    node should be graph output"). The result is the intended graph: FP16 body -> Cast -> FP32 Resize.
    """
    from onnxconverter_common import float16

    body, tail = _split_tail(onnx.shape_inference.infer_shapes(model))
    try:
        with warnings.catch_warnings():
            # one warning per tiny weight flushed to FP16's smallest normal: expected, not actionable
            warnings.filterwarnings("ignore", message=".*will be truncated to.*")
            converted = float16.convert_float_to_float16(body, keep_io_types=True,
                                                         op_block_list=list(FP16_OP_BLOCK_LIST))
    except Exception as e:  # the converter raises bare ValueError/KeyError on graphs it cannot type
        raise FcnsegError(f"expected onnxconverter-common to convert the graph to FP16, got {type(e).__name__}: "
                          f"{one_line(e, 300)}") from None
    if tail is not None:
        nodes, inits, outputs = tail
        converted.graph.node.extend(nodes)
        converted.graph.initializer.extend(inits)
        del converted.graph.output[:]
        converted.graph.output.extend(outputs)
    return converted


def _split_tail(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, Optional[tuple]]:
    """Take the blocked ops that produce graph outputs out of ``model``; their inputs become outputs instead.

    Returns the body and (tail nodes, their own initializers, the original outputs), or (model, None).
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    is_tail = [n.op_type in FP16_OP_BLOCK_LIST and bool(n.output) and set(n.output) <= outputs for n in g.node]
    tail = [n for n, t in zip(g.node, is_tail) if t]
    if not tail:
        return model, None
    kept = [n for n, t in zip(g.node, is_tail) if not t]
    used = {i for n in kept for i in n.input}
    needed = {i for n in tail for i in n.input if i}
    moved = [i for i in g.initializer if i.name in needed and i.name not in used]
    sources = {i.name for i in g.input} | {i.name for i in g.initializer}
    typed = {v.name: v for v in list(g.value_info) + list(g.output)}
    cut = sorted(needed - sources)
    if any(name not in typed for name in cut):
        return model, None   # no type known for a cut tensor: convert as is and let the converter decide
    tail_outputs = {x for n in tail for x in n.output}
    graph = onnx.helper.make_graph(
        kept, g.name, list(g.input), [o for o in g.output if o.name not in tail_outputs] + [typed[c] for c in cut],
        [i for i in g.initializer if i.name not in {m.name for m in moved}], value_info=[v for v in g.value_info if v.name not in cut])
    body = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    body.metadata_props.extend(model.metadata_props)
    return body, ([copy.deepcopy(n) for n in tail], [copy.deepcopy(i) for i in moved],
                  [copy.deepcopy(o) for o in g.output])


def check_io_types(ref: onnx.ModelProto, fp16: onnx.ModelProto) -> None:
    """Raise unless every input and output kept its element type (float32 logits, uint8 mask)."""
    def types(m: onnx.ModelProto) -> dict:
        return {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}

    want, got = types(ref), types(fp16)
    if want != got:
        name = onnx.TensorProto.DataType.Name
        raise FcnsegError(f"expected the FP16 graph to keep its I/O types { {k: name(v) for k, v in want.items()} }, "
                          f"got { {k: name(v) for k, v in got.items()} }; try a newer onnxconverter-common")


def verify_fp16(ref: onnx.ModelProto, fp16: onnx.ModelProto, shapes: Sequence[Shape], *,
                min_agreement: float = 0.99, rtol: float = 0.02) -> List[OutputComparison]:
    """Compare FP16 and FP32 logits (and masks) on ONNX Runtime CPU at ``shapes``; raise when out of tolerance."""
    ref_sess, test_sess = ort_session(expose_argmax_input(ref)), ort_session(expose_argmax_input(fp16))
    results = []
    for n, h, w in shapes:
        x = np.random.default_rng([n, h, w]).standard_normal((n, 3, h, w), dtype=np.float32)
        a, b = run_session(ref_sess, x), run_session(test_sess, x)
        for name in (LOGITS_NAME, MASK_NAME):
            if name in b and b[name].dtype != a[name].dtype:
                raise FcnsegError(f"expected {name!r} as {a[name].dtype} from the FP16 graph, got {b[name].dtype}")
        atol = rtol * max(1.0, float(np.abs(a[LOGITS_NAME]).max()))
        cmp = compare_logits(a[LOGITS_NAME], b[LOGITS_NAME], atol=atol, min_agreement=min_agreement)
        log.info("fp16 vs fp32 %s", cmp)
        results.append(cmp)
        if not cmp:
            raise FcnsegError(f"expected the FP16 graph to match FP32, got {cmp}; nothing written; "
                              "try keeping more ops in FP32 (FP16_OP_BLOCK_LIST) or use the FP32 model")
    return results


def qdq_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Q/DQ graph with FP32 elsewhere as an FP16-typed one: opset 19, FP16 Q/DQ scales, I/O types kept.

    Raises:
        FcnsegError: the opset cannot be upgraded or the graph cannot be typed in FP16.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    upgraded = model
    if opset < QDQ_FP16_OPSET:
        try:
            upgraded = onnx.version_converter.convert_version(model, QDQ_FP16_OPSET)
        except Exception as e:  # the converter raises bare RuntimeError/ValueError on adapters it lacks
            raise FcnsegError(f"expected ONNX's version converter to take the graph from opset {opset} to "
                              f"{QDQ_FP16_OPSET} (FP16 Q/DQ scales), got {type(e).__name__}: {one_line(e, 300)}; "
                              "try --high-precision fp32") from None
        upgraded.ir_version = max(upgraded.ir_version, 9)   # opset 19 needs IR 9
    fp16 = to_fp16(upgraded)
    check_io_types(model, fp16)
    return fp16


def has_fp16_qdq(model: onnx.ModelProto) -> bool:
    """Whether a DequantizeLinear of the graph has an FP16 scale (see ``ORT_DISABLED_FOR_FP16_QDQ``)."""
    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    return any(n.op_type == "DequantizeLinear" and len(n.input) > 1 and n.input[1] in fp16 for n in model.graph.node)


def ort_qdq_fp16_session(model: onnx.ModelProto) -> Any:
    """A CPU ONNX Runtime session that runs an FP16 Q/DQ graph correctly (``ORT_DISABLED_FOR_FP16_QDQ`` off)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3   # one warning per FP16 node without a CPU kernel (ONNX Runtime casts around it)
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(ORT_DISABLED_FOR_FP16_QDQ))
    except Exception as e:
        raise FcnsegError(f"expected ONNX Runtime to load the FP16 Q/DQ graph, got {type(e).__name__}: "
                          f"{one_line(e, 300)}; try --high-precision fp32") from None


def verify_qdq_fp16(ref: onnx.ModelProto, fp16: onnx.ModelProto, inputs: Sequence[np.ndarray], *,
                    min_agreement: float = 0.95, rtol: float = 0.1) -> List[OutputComparison]:
    """Compare the FP16 Q/DQ graph with its FP32-elsewhere source on ``inputs`` (ONNX Runtime CPU); raise when out
    of tolerance. The tolerance catches a broken lowering (a wrong rewrite gives ~20 % agreement), not the INT8
    accuracy, which is judged on the source graph: FP16 activations move some values to the next INT8 step."""
    ref_sess, test_sess = ort_session(expose_argmax_input(ref)), ort_qdq_fp16_session(expose_argmax_input(fp16))
    results = []
    for x in inputs:
        ref_out, test_out = run_session(ref_sess, x), run_session(test_sess, x)
        key = LOGITS_NAME if LOGITS_NAME in ref_out else next(iter(ref_out))   # another tool's output name
        a, b = ref_out[key], test_out[key]
        cmp = compare_logits(a, b, atol=rtol * max(1.0, float(np.abs(a).max())), min_agreement=min_agreement)
        results.append(cmp)
        # Logits within tolerance pass whatever the argmax agreement: an untrained or barely trained model's
        # near-tied scores flip under FP16 (86 % agreement at 5e-2 error was seen), a broken rewrite moves both.
        if cmp.max_abs > cmp.atol and cmp.argmax_agreement < cmp.min_agreement:
            raise FcnsegError(f"expected the FP16 Q/DQ graph to match its FP32-elsewhere source, got {cmp}; nothing "
                              "written; try --high-precision fp32")
    if results:
        log.info("int8 with fp16 elsewhere vs fp32 elsewhere: argmax agreement %.2f%% (worst of %d images)",
                 min(c.argmax_agreement for c in results) * 100, len(results))
    return results

