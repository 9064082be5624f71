"""``fcn-export check`` against TensorRT for RTX's real ONNX parser and builder, on deliberately broken graphs.

Each graph is a small residual block (Conv -> Relu -> Conv -> Add with the first Conv's output), broken in
one way. The checker's verdict, the parser's and the builder's are collected; the rule under test: every
graph the checker passes parses and builds. Where the checker is stricter than TensorRT for RTX (it
checks TensorRT 8.5's operator list, the oldest target), the row says so. With FCNSEG_CHECKER_TABLE set,
the table is written to that file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

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


GRAPHS = {
    # name: (graph factory, what is broken, the profile to build with)
    "fp32 block (control)": (fp32_block, "nothing", PROFILE),
    "Q/DQ block, TensorRT layout (control)": (qdq_block, "nothing", PROFILE),
    "op TensorRT lacks (Det)": (det_graph, "Det has no TensorRT importer", ((1, 3, 4, 4),) * 3),
    "custom-domain node (fcnseg.custom::FancyRelu)": (lambda: fp32_block(act="FancyRelu", act_domain="fcnseg.custom"),
                                                  "unknown domain, no plugin", PROFILE),
    "custom-domain node (com.microsoft::Gelu)": (lambda: fp32_block(act="Gelu", act_domain="com.microsoft"),
                                                 "ONNX Runtime contrib op", PROFILE),
    "asymmetric uint8 Q/DQ": (lambda: qdq_block(act_zp_type=TP.UINT8, act_zp=128), "uint8 activations, zp 128",
                              PROFILE),
    "int32 bias DequantizeLinear": (lambda: qdq_block(int32_bias=True), "bias quantized to int32", PROFILE),
    "Q/DQ between Conv and its Add": (lambda: qdq_block(qdq_before_add=True), "Q/DQ on the Conv's Add input",
                                      PROFILE),
    "static 1x3x64x64 input, profile 16..32": (lambda: fp32_block(dims=(1, 3, 64, 64)), "profile contradicts the graph",
                                              PROFILE),
    "Hardmax (not in TensorRT 8.5's list)": (lambda: _model([helper.make_node("Hardmax", ["input"], ["logits"],
                                                                              name="hardmax")], [], out_dims=None),
                                            "op newer than the 8.5 matrix", PROFILE),
}
ROWS: dict = {}


def trt_verdict(model, folder: Path, name: str, profile):
    """(parser errors, build error or "") from TensorRT for RTX, building with the raw API and ``profile``."""
    from fcnseg.export.tensorrt import create_network, detect_features, parse_onnx_errors

    path = folder / (name.split(" (")[0].replace(" ", "_").replace("/", "-") + ".onnx")
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
    return [], "" if plan is not None else "build_serialized_network returned None"


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


@pytest.mark.parametrize("name", list(GRAPHS))
def test_checker_and_parser(name, tmp_path):
    factory, broken, profile = GRAPHS[name]
    model = factory()
    report = check_trt_ready(model)
    errors, build = trt_verdict(model, tmp_path, name, profile)
    ROWS[name] = (broken, report, errors, build, ours(tmp_path, profile))
    if report:   # the rule: every graph the checker passes parses (and, with a consistent profile, builds)
        assert errors == [], f"{name}: checker OK but the parser says {errors}"
        if "profile" not in broken:
            assert build == "", f"{name}: checker OK but the build failed: {build}"
    if name.endswith("(control)"):
        assert report and errors == [] and build == ""


def test_table_of_verdicts():
    """Every broken graph is refused by the checker or by TensorRT; the table goes to FCNSEG_CHECKER_TABLE if set."""
    if len(ROWS) < len(GRAPHS):
        pytest.skip("runs after every graph's test (not all ran in this session)")
    for name, (broken, report, errors, build, spec) in ROWS.items():
        if broken != "nothing":
            assert not report or errors or build or spec != "OK", name
    path = os.environ.get("FCNSEG_CHECKER_TABLE")
    if not path:
        return
    lines = ["| graph | broken | checker says | parser says | builder says | fcn-export trt profile check |",
             "|---|---|---|---|---|---|"]
    for name, (broken, report, errors, build, spec) in ROWS.items():
        checker = "OK" if report else "FAIL: " + "; ".join(f"[{v.rule}] {v.message}" for v in report.violations)
        parser = "OK" if not errors else f"{len(errors)} error(s): " + " / ".join(errors)
        lines.append(f"| {name} | {broken} | {checker} | {parser} | {build or 'OK'} | {spec} |".replace("\n", " "))
    Path(path).write_text("\n".join(lines) + "\n")
