"""Fixtures shared by several test folders: the TensorRT/GPU skip (``@pytest.mark.tensorrt`` tests), small
ONNX graphs and their builders, and the bundled Triton server install."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tensorrt_gpu():
    """The real ``tensorrt`` module; skips with the reason when TensorRT, CUDA bindings or a GPU are missing."""
    from fcnseg.runtime.backends.cuda_memory import load_cuda_memory
    from fcnseg.runtime.backends.tensorrt import import_tensorrt
    from fcnseg.core.errors import FcnsegError

    try:
        trt = import_tensorrt()
        load_cuda_memory()
    except FcnsegError as e:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {e}")
    return trt


# ---------------------------------------------------------------- small ONNX graphs shared by several test folders

def _conv_onnx(path, meta):
    """A 2-conv net (3x3 conv, ReLU, 1x1 conv to ``meta.num_classes``) with dynamic N/H/W and ``meta`` as its
    fcnseg metadata, shaped like fcn-export's graphs (input -> logits)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes = meta.num_classes
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((classes, 8, 1, 1)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["h"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Conv", ["r", "w2"], ["logits"], name="conv2")]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])], [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by the ONNX parsers of TensorRT 8.5 and later
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _int8_qdq_onnx(src, dst):
    """Q/DQ the TensorRT way (symmetric int8, per-channel weights, no bias quantization), keeping the metadata;
    calibrated on eight random 1x3x32x32 inputs."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            inputs = [np.random.default_rng(s).standard_normal((1, 3, 32, 32)).astype(np.float32) for s in range(8)]
            self.items = iter([{"input": x} for x in inputs])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "AddQDQPairToWeight": True, "DedicatedQDQPair": False,
                                   "ForceQuantizeNoInputCheck": True,
                                   "QDQOpTypePerChannelSupportToAxis": {"Conv": 0}})
    model, props = onnx.load(str(dst)), onnx.load(str(src)).metadata_props
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="session")
def conv_onnx_factory():
    """``make(path, meta) -> path``: a 2-conv FP32 graph with ``meta`` (a ModelMetadata) as its fcnseg metadata
    (test modules do not import conftest)."""
    return _conv_onnx


@pytest.fixture(scope="session")
def int8_qdq_factory():
    """``make(src, dst) -> dst``: ``src`` quantized to an INT8 Q/DQ graph the way TensorRT wants, metadata kept."""
    return _int8_qdq_onnx


@pytest.fixture(scope="session")
def tiny_conv_onnx(tmp_path_factory):
    """A 1x1 conv (3 -> 4 classes) with dynamic N/H/W and fcnseg metadata (input size 16): quick to serve."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fcnseg.core.metadata import ModelMetadata

    classes, rng = 4, np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(classes, 3, 1, 1)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[1, 1])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelMetadata(arch="tiny", num_classes=classes, input_size=16).to_props())
    path = tmp_path_factory.mktemp("tiny_conv") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------- Triton

@pytest.fixture(scope="session")
def triton_install():
    """The tritonserver bundled by nvidia-pytriton (``fcnseg.serve.TritonInstall``); skips the test without it."""
    from fcnseg.core.errors import FcnsegError
    from fcnseg.serve import TritonInstall

    try:
        return TritonInstall.find()
    except FcnsegError as e:
        pytest.skip(f"needs the tritonserver bundled by nvidia-pytriton in .venv-triton (make test creates it): {e}")
