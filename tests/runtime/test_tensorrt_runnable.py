"""Loading a real TensorRT for RTX engine where it cannot run: one line says why (no GPU; wrong GPU).

The engine is built here, on the CPU, from a 1x1-conv graph with in-graph argmax. This machine has no
NVIDIA driver, so ``Segmenter.load`` and ``fcn-predict`` must say exactly that, on one line, before any
CUDA library is asked for. The wrong-GPU case (an H100 for an RTX engine) is checked with the GPU given.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fcnseg.runtime import ModelMetadata, Segmenter
from fcnseg.runtime.backends.tensorrt import TensorRTBackend, probe_gpu
from fcnseg.runtime.cli import predict_main
from fcnseg.core.errors import FcnsegError
from fcnseg.core.sidecar import EngineSidecar, check_runnable

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def rtx_plan(tmp_path_factory):
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX (pip install tensorrt-rtx)")
    from fcnseg.export.tensorrt import build_engine

    w = np.array([[0, 0, 0], [4, -2, -2], [-2, 4, -2], [-2, -2, 4]], np.float32).reshape(4, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[1, 1]),
             helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
             helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8)]
    graph = helper.make_graph(
        nodes, "colours", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"])], [numpy_helper.from_array(w, "W")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(m, ModelMetadata(arch="colours", num_classes=4, input_size=16, argmax=True).to_props())
    folder = tmp_path_factory.mktemp("rtx_plan")
    onnx.save(m, str(folder / "colours.onnx"))
    return build_engine(folder / "colours.onnx", output=folder / "colours.plan", library="tensorrt_rtx",
                        min_shape=(1, 3, 8, 8), opt_shape=(1, 3, 16, 16), max_shape=(1, 3, 32, 32)).path


def _no_gpu_here():
    if probe_gpu()[0] is not None:
        pytest.skip("a CUDA GPU is present: the no-GPU message cannot be seen here")


def test_segmenter_load_says_there_is_no_gpu(rtx_plan):
    _no_gpu_here()
    with pytest.raises(FcnsegError) as e:
        Segmenter.load(rtx_plan)
    msg = str(e.value)
    assert msg.startswith("cannot run TensorRT engine 'colours.plan' here: expected a CUDA GPU, got none (")
    assert "\n" not in msg and "colours.onnx" in msg and "onnxruntime" in msg


def test_fcn_predict_says_there_is_no_gpu_in_one_line(rtx_plan, tmp_path):
    _no_gpu_here()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(predict_main, ["--model", str(rtx_plan), "--out", str(tmp_path / "out"),
                                               str(tmp_path / "a.png")])
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "expected a CUDA GPU, got none" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_rtx_engine_on_a_hopper_gpu_says_rebuild_with_tensorrt(rtx_plan):
    with pytest.raises(FcnsegError) as e:
        TensorRTBackend(rtx_plan, gpu=H100)
    assert str(e.value) == (
        "cannot run TensorRT engine 'colours.plan' here: built with tensorrt_rtx 1.7 for sm_86/sm_89/sm_120; this "
        f"GPU is sm_90 (NVIDIA H100 80GB HBM3): rebuild with `fcn-export trt {EngineSidecar.read(rtx_plan).onnx} "
        "--library tensorrt`")


def test_rtx_engine_on_a_turing_gpu_says_which_target_to_add(rtx_plan):
    side = EngineSidecar.read(rtx_plan)
    with pytest.raises(FcnsegError, match=r"this GPU is sm_75 \(T4\): rebuild with .*--library tensorrt_rtx "
                                          r"--compute-capability 7.5`"):
        check_runnable(rtx_plan, side, {"name": "T4", "compute_capability": "7.5"})
    check_runnable(rtx_plan, side, {"name": "RTX 4090", "compute_capability": "8.9"})   # a target: no error


def test_engine_validity_needs_a_gpu_too(rtx_plan):
    """What TensorRT for RTX itself says about the engine without a GPU (documents why we probe the driver)."""
    _no_gpu_here()
    trt = importlib.import_module("tensorrt_rtx")
    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    validity, _ = runtime.get_engine_validity(rtx_plan.read_bytes()[: runtime.engine_header_size])
    assert validity == trt.EngineValidity.INVALID
