"""``fcn-export check`` against TensorRT for RTX's real ONNX parser and builder, on deliberately broken graphs.

Each graph is a small residual block (Conv -> Relu -> Conv -> Add with the first Conv's output), broken in
one way, or a graph ending in ArgMax as ``--argmax`` exports. Each row states what is expected of the checker
(the exact set of rules it reports, by default and for a TensorRT 8.5 target), of the real parser (parses, or
fails with a given message), of the builder and of ``fcn-export trt``'s profile check, so a change on either
side fails the row: a checker that grows lax or strict, a parser that starts or stops refusing. The rule
behind them: every graph the checker passes parses and builds. Where the checker is stricter than TensorRT for
RTX (it checks TensorRT 8.5's operator list and parser, the oldest target), the row says so. With
FCNSEG_CHECKER_TABLE set, the table is written to that file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, FrozenSet, Optional, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from fcnseg.export.check import check_trt_ready

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="needs TensorRT for RTX (pip install tensorrt-rtx)")

C = 3   # the block keeps 3 channels, so the Add's skip input is the block input (as in ResNet)
PROFILE = ((1, 3, 16, 16), (1, 3, 24, 24), (1, 3, 32, 32))
RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.3
W2 = RNG.standard_normal((C, C, 1, 1)).astype(np.float32) * 0.3
B1 = RNG.standard_normal(C).astype(np.float32) * 0.1


def _model(nodes, inits, *, dims=("N", 3, "H", "W"), out="logits", out_dims=None, opsets=()):
    x = helper.make_tensor_value_info("input", TP.FLOAT, list(dims))
    y = helper.make_tensor_value_info(out, TP.FLOAT, out_dims if out_dims is not None else [dims[0], C, dims[2],
                                                                                          dims[3]])
    graph = helper.make_graph(nodes, "block", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *opsets])
    model.ir_version = 8
    return model


def _qdq(name, src, dst, scale, zp_type=TP.INT8, zp=0):
    """Q -> DQ on an activation, per tensor; returns (nodes, initializers)."""
    inits = [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
             helper.make_tensor(f"{name}_z", zp_type, [], [zp])]
    nodes = [helper.make_node("QuantizeLinear", [src, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_Q"),
             helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [dst], name=f"{name}_DQ")]
    return nodes, inits


def _wdq(name, w):
    """An int8 per-channel (axis 0) weight initializer feeding DequantizeLinear; returns (nodes, initializers)."""
    scale = np.abs(w).reshape(w.shape[0], -1).max(1) / 127
    q = np.clip(np.rint(w / scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
    inits = [numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale.astype(np.float32), f"{name}_s"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{name}_z")]
    return [helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"], axis=0,
                             name=f"{name}_DQ")], inits


def fp32_block(dims=("N", 3, "H", "W"), act="Relu", act_domain=""):
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node(act, ["y1"], ["r1"], name="act1", domain=act_domain),
             helper.make_node("Conv", ["r1", "w2"], ["y2"], name="conv2"),
             helper.make_node("Add", ["y2", "input"], ["logits"], name="add")]
    inits = [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(B1, "b1"), numpy_helper.from_array(W2, "w2")]
    opsets = [helper.make_opsetid(act_domain, 1)] if act_domain else []
    return _model(nodes, inits, dims=dims, opsets=opsets)


def qdq_block(*, act_zp_type=TP.INT8, act_zp=0, int32_bias=False, qdq_before_add=False):
    """The block in TensorRT's Q/DQ layout, or broken in one of the ways the arguments name."""
    nodes, inits = [], [numpy_helper.from_array(B1, "b1")]
    for part in (_qdq("x", "input", "xd", 0.05, act_zp_type, act_zp), _wdq("w1", W1), _wdq("w2", W2)):
        nodes += part[0]
        inits += part[1]
    bias = "b1"
    if int32_bias:
        bias_scale = (0.05 * np.abs(W1).reshape(C, -1).max(1) / 127).astype(np.float32)
        inits += [numpy_helper.from_array(np.rint(B1 / bias_scale).astype(np.int32), "b1_q"),
                  numpy_helper.from_array(bias_scale, "b1_s"), numpy_helper.from_array(np.zeros(C, np.int32), "b1_z")]
        nodes.append(helper.make_node("DequantizeLinear", ["b1_q", "b1_s", "b1_z"], ["b1_dq"], axis=0, name="b1_DQ"))
        bias = "b1_dq"
    nodes += [helper.make_node("Conv", ["xd", "w1_dq", bias], ["y1"], pads=[1, 1, 1, 1], name="conv1"),
              helper.make_node("Relu", ["y1"], ["r1"], name="act1")]
    part = _qdq("r", "r1", "rd", 0.05, act_zp_type, act_zp)
    nodes, inits = nodes + part[0], inits + part[1]
    nodes.append(helper.make_node("Conv", ["rd", "w2_dq"], ["y2"], name="conv2"))
    add_in = "y2"
    if qdq_before_add:
        part = _qdq("y2", "y2", "y2d", 0.05)
        nodes, inits, add_in = nodes + part[0], inits + part[1], "y2d"
    nodes.append(helper.make_node("Add", [add_in, "xd"], ["logits"], name="add"))   # skip: the Q/DQ'd block input
    return _model(nodes, inits)


def det_graph():
    return _model([helper.make_node("Det", ["input"], ["det"], name="det")], [], dims=(1, 3, 4, 4), out="det",
                  out_dims=[1, 3])


def argmax_graph(mask_type=TP.UINT8):
    """Conv -> ArgMax over the classes -> Cast to ``mask_type``, as ``fcn-export onnx --argmax`` ends."""
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["scores"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("ArgMax", ["scores"], ["ids"], axis=1, keepdims=0, name="argmax"),
             helper.make_node("Cast", ["ids"], ["mask"], to=mask_type, name="cast_mask")]
    model = _model(nodes, [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(B1, "b1")], out="mask",
                   out_dims=["N", "H", "W"])
    model.graph.output[0].type.tensor_type.elem_type = mask_type
    return model


W3 = RNG.standard_normal((C, 3, 1, 1)).astype(np.float32) * 0.3


def placed_block(*, main_qdq=False, pool=False):
    """The block as NVIDIA places Q/DQ (issue 21): a downsampling block whose skip is a 1x1 Conv with Q/DQ on its
    output (the residual), the main Conv's output straight into the Add; ``main_qdq``: Q/DQ on that one too;
    ``pool``: the first Conv's activation through MaxPool between Q/DQ (shared scale) instead."""
    nodes, inits = [], [numpy_helper.from_array(B1, "b1")]
    parts = [_qdq("x", "input", "xd", 0.05), _wdq("w1", W1), _wdq("w2", W2)] + ([] if pool else [_wdq("w3", W3)])
    for part in parts:
        nodes, inits = nodes + part[0], inits + part[1]
    nodes += [helper.make_node("Conv", ["xd", "w1_dq", "b1"], ["y1"], pads=[1, 1, 1, 1], name="conv1"),
              helper.make_node("Relu", ["y1"], ["r1"], name="act1")]
    part = _qdq("r", "r1", "rd", 0.05)
    nodes, inits = nodes + part[0], inits + part[1]
    if pool:
        nodes += [helper.make_node("MaxPool", ["rd"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="pool"),
                  helper.make_node("QuantizeLinear", ["p", "r_s", "r_z"], ["p_q"], name="p_Q"),
                  helper.make_node("DequantizeLinear", ["p_q", "r_s", "r_z"], ["rd_pool"], name="p_DQ")]
    nodes.append(helper.make_node("Conv", ["rd_pool" if pool else "rd", "w2_dq"], ["y2"], name="conv2"))
    if pool:
        nodes.append(helper.make_node("Add", ["y2", "xd"], ["logits"], name="add"))
        return _model(nodes, inits)
    nodes.append(helper.make_node("Conv", ["xd", "w3_dq"], ["ds"], name="downsample"))
    part = _qdq("ds", "ds", "dsd", 0.05)
    nodes, inits, main = nodes + part[0], inits + part[1], "y2"
    if main_qdq:
        part = _qdq("y2", "y2", "y2d", 0.05)
        nodes, inits, main = nodes + part[0], inits + part[1], "y2d"
    nodes.append(helper.make_node("Add", [main, "dsd"], ["logits"], name="add"))
    return _model(nodes, inits)


def fp16_qdq_block():
    """The Q/DQ block as ``fcn-export int8`` writes it by default: FP16-typed, FP16 Q/DQ scales, opset 19."""
    from fcnseg.export.fp16 import qdq_to_fp16

    return qdq_to_fp16(qdq_block())


OK = "OK"


@dataclass(frozen=True)
class Case:
    """One graph and what each side is expected to say of it.

    rules: the checker's rules, by default; rules_85: for a TensorRT 8.5 target (None: the same).
    parser: "OK", or a text one of the real parser's errors contains. build: "OK", "fails" or "not built".
    spec: what ``fcn-export trt``'s profile check says ("OK" or the start of its message).
    """

    factory: Callable
    broken: str
    profile: Tuple = PROFILE
    rules: FrozenSet[str] = frozenset()
    parser: str = OK
    build: str = OK
    spec: str = OK
    rules_85: Optional[FrozenSet[str]] = None


GRAPHS = {
    "fp32 block (control)": Case(fp32_block, "nothing"),
    "Q/DQ block, TensorRT layout (control)": Case(qdq_block, "nothing"),
    "op TensorRT lacks (Det)": Case(det_graph, "Det has no TensorRT importer", ((1, 3, 4, 4),) * 3,
                                    rules=frozenset({"op"}), parser="node 'det' (Det)", build="not built"),
    "custom-domain node (fcnseg.custom::FancyRelu)": Case(
        lambda: fp32_block(act="FancyRelu", act_domain="fcnseg.custom"), "unknown domain, no plugin",
        rules=frozenset({"op"}), parser="Plugin not found", build="not built"),
    "custom-domain node (com.microsoft::Gelu)": Case(   # stricter: the RTX parser maps it to its own Gelu
        lambda: fp32_block(act="Gelu", act_domain="com.microsoft"), "ONNX Runtime contrib op",
        rules=frozenset({"op"})),
    "asymmetric uint8 Q/DQ": Case(lambda: qdq_block(act_zp_type=TP.UINT8, act_zp=128), "uint8 activations, zp 128",
                                  rules=frozenset({"zero-point"}), parser="Non-zero zero point is not supported",
                                  build="not built"),
    "int32 bias DequantizeLinear": Case(lambda: qdq_block(int32_bias=True), "bias quantized to int32",
                                        rules=frozenset({"bias"}), parser="input has type Int32", build="not built"),
    "Q/DQ between Conv and its Add": Case(   # stricter: it builds, but TensorRT cannot fuse the Add into the Conv
        lambda: qdq_block(qdq_before_add=True), "Q/DQ on the Conv's Add input", rules=frozenset({"residual"})),
    "static 1x3x64x64 input, profile 16..32": Case(
        lambda: fp32_block(dims=(1, 3, 64, 64)), "profile contradicts the graph", build="fails",
        spec="expected dim 2 of --min-shape to be 64 (fixed in the ONNX input 1x3x64x64), got 1x3x16x16"),
    "Hardmax (not in TensorRT 8.5's list)": Case(   # parses; the build needs the Hardmax axis (W) fixed
        lambda: _model([helper.make_node("Hardmax", ["input"], ["logits"], name="hardmax")], [], out_dims=None),
        "op newer than the 8.5 matrix, over a dynamic axis", rules=frozenset({"op"}), build="fails"),
    "ArgMax -> UINT8 mask (fcn-export --argmax)": Case(   # 8.5's parser asserts an FP input for a UINT8 Cast
        argmax_graph, "Cast INT32 -> UINT8, refused by TensorRT 8.5", rules_85=frozenset({"cast-uint8"})),
    "ArgMax -> INT32 mask (control)": Case(lambda: argmax_graph(TP.INT32), "nothing"),
}
GRAPHS.update({   # NVIDIA's Q/DQ placement and FP16 elsewhere (issue 21)
    "Q/DQ on a downsampling Conv's output (residual), main Conv float": Case(placed_block, "nothing"),
    "Q/DQ on both Conv inputs of an Add": Case(   # stricter: it builds, but nothing is left to fuse the Add into
        lambda: placed_block(main_qdq=True), "Q/DQ on the main Conv's Add input too", rules=frozenset({"residual"})),
    "MaxPool between Q/DQ (INT8 pooling)": Case(lambda: placed_block(pool=True), "nothing"),
    "FP16-typed Q/DQ block, FP16 scales, opset 19": Case(fp16_qdq_block, "nothing"),
})
ROWS: dict = {}


def trt_verdict(model, folder: Path, name: str, profile):
    """(parser errors, build verdict: "OK", "fails" or "not built") from TensorRT for RTX, with ``profile``."""
    from fcnseg.export.tensorrt import create_network, detect_features, parse_onnx_errors

    path = folder / (name.split(" (")[0].replace(" ", "_").replace("/", "-").replace(">", "") + ".onnx")
    onnx.save(model, str(path))
    features = detect_features(importlib.import_module("tensorrt_rtx"))
    trt = features.module
    logger = trt.Logger(trt.Logger.INTERNAL_ERROR)
    builder = trt.Builder(logger)
    network = create_network(builder, features, strongly_typed=True)
    parser, errors = parse_onnx_errors(network, logger, path, features)
    if errors:
        return errors, "not built"
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    opt.set_shape("input", *profile)
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    return [], OK if plan is not None else "fails"


def ours(folder: Path, profile) -> str:
    """What fcn-export trt says before TensorRT is asked (its profile check against the graph)."""
    from fcnseg.export.tensorrt import engine_spec
    from fcnseg.core.errors import FcnsegError

    path = next(folder.glob("*.onnx"))
    try:
        engine_spec(path, min_shape=profile[0], opt_shape=profile[1], max_shape=profile[2])
    except FcnsegError as e:
        return str(e).split(";")[0]
    return "OK"


def _rules(report):
    return frozenset(v.rule for v in report.violations)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_checker_and_parser(name, tmp_path):
    case = GRAPHS[name]
    model = case.factory()
    report, report_85 = check_trt_ready(model), check_trt_ready(model, trt_version="8.5")
    errors, build = trt_verdict(model, tmp_path, name, case.profile)
    spec = ours(tmp_path, case.profile)
    ROWS[name] = (case.broken, report, report_85, errors, build, spec)
    assert _rules(report) == case.rules, f"{name}: checker says {report}"
    assert _rules(report_85) == (case.rules if case.rules_85 is None else case.rules_85), f"{name}: {report_85}"
    if case.parser == OK:
        assert errors == [], f"{name}: expected the parser to accept it, got {errors}"
    else:
        assert len(errors) == 1 and case.parser in errors[0], f"{name}: expected {case.parser!r}, got {errors}"
    assert build == case.build, name
    assert spec == case.spec, name
    if report:   # the rule: every graph the checker passes parses (and, with a consistent profile, builds)
        assert errors == [] and (build == OK or spec != OK), name


def test_table_of_verdicts():
    """Every broken graph is refused by the checker (by default or for 8.5) or by TensorRT; the table goes to
    FCNSEG_CHECKER_TABLE if set."""
    if len(ROWS) < len(GRAPHS):
        pytest.skip("runs after every graph's test (not all ran in this session)")
    for name, (broken, report, report_85, errors, build, spec) in ROWS.items():
        if broken != "nothing":
            assert not report or not report_85 or errors or build != OK or spec != OK, name
    path = os.environ.get("FCNSEG_CHECKER_TABLE")
    if not path:
        return
    lines = ["| graph | broken | checker says | for TensorRT 8.5 | parser says | builder says | fcn-export trt profile "
             "check |", "|---|---|---|---|---|---|---|"]
    for name, (broken, report, report_85, errors, build, spec) in ROWS.items():
        checker, checker_85 = (("OK" if r else "FAIL: " + "; ".join(f"[{v.rule}] {v.message}" for v in r.violations))
                               for r in (report, report_85))
        parser = "OK" if not errors else f"{len(errors)} error(s): " + " / ".join(errors)
        lines.append(f"| {name} | {broken} | {checker} | {checker_85} | {parser} | {build} | {spec} |"
                     .replace("\n", " "))
    Path(path).write_text("\n".join(lines) + "\n")
