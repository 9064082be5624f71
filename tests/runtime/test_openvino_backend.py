"""OpenVINO backend on tiny ONNX graphs: same masks and logits as ONNX Runtime, folded preprocessing, threads,
static compilation, backend choice, and the fallback to ONNX Runtime when OpenVINO is not importable."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnseg.runtime import FcnsegError, ModelMetadata, Segmenter
from fcnseg.runtime.backends.openvino import default_precision_hint

pytest.importorskip("openvino")

C = 4
RNG = np.random.default_rng(3)
WEIGHT = RNG.normal(size=(C, 3, 3, 3)).astype(np.float32)
BIAS = RNG.normal(scale=0.1, size=C).astype(np.float32)
# Not ImageNet's: the normalisation folded into the OpenVINO graph must come from the model's metadata.
META = ModelMetadata(arch="tiny", num_classes=C, classes=["a", "b", "c", "d"], input_size=16,
                     mean=[0.3, 0.5, 0.7], std=[0.2, 0.3, 0.4])


def tiny_onnx(path, *, argmax):
    """3x3 conv (3 -> C, padding 1): logits at the input's size; optionally ArgMax + Cast(uint8) as ``mask``."""
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logits"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C, "H", "W"])]
    if argmax:
        nodes += [helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
                  helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8)]
        outputs = [helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 3, "H", "W"])], outputs,
                              [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(BIAS, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = ModelMetadata(**{**META.to_dict(), "argmax": argmax})
    helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(path))
    return path


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    return {"logits": tiny_onnx(d / "logits.onnx", argmax=False), "mask": tiny_onnx(d / "mask.onnx", argmax=True)}


@pytest.fixture(scope="module")
def pair(models):
    """The logits model on OpenVINO (the default choice; f32, the exact-parity hint) and on ONNX Runtime."""
    ov, ort = Segmenter.load(models["logits"], precision_hint="f32"), Segmenter.load(models["logits"],
                                                                                     backend="onnxruntime")
    yield ov, ort
    ov.close()
    ort.close()


def agreement(a, b):
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def test_openvino_is_the_default_for_onnx_and_reads_the_metadata(pair, models):
    ov, ort = pair
    assert ov.backend.name == "openvino" and ort.backend.name == "onnxruntime"
    assert ov.metadata == ort.metadata and ov.metadata.mean == META.mean and ov.backend.precision_hint == "f32"
    default = Segmenter.load(models["mask"])
    assert default.metadata.argmax is True and default.backend.name == "openvino"
    assert Segmenter.load(models["logits"], providers=["cpu"]).backend.name == "onnxruntime"


def test_the_default_hint_is_openvinos_own_for_the_device(models):
    """No hint given: what OpenVINO itself picks for the CPU (bf16 where it has AVX-512 BF16 / AMX), any graph."""
    import openvino as ov

    own = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    with Segmenter.load(models["logits"]) as seg:
        assert seg.backend.precision_hint == (own if own in ("f32", "bf16") else "f32")
        compiled = seg.backend._compiled(("u8", "mask"), None).compiled
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == seg.backend.precision_hint


@pytest.mark.parametrize("hw", [(17, 23), (40, 9), (16, 16)])
def test_masks_and_logits_match_onnxruntime(pair, hw):
    ov, ort = pair
    im = image(*hw, seed=hw[0])
    assert agreement(ov(im), ort(im)) > 0.99
    np.testing.assert_allclose(ov(im, logits=True), ort(im, logits=True), atol=1e-3, rtol=1e-4)


def test_lists_and_batches_of_mixed_sizes(pair):
    ov, ort = pair
    ims = [image(20, 30, 1), image(33, 17, 2), image(20, 30, 3)]
    for a, b in zip(ov(ims), ort(ims)):
        assert a.shape == b.shape and agreement(a, b) > 0.99
    batch = np.stack([image(24, 24, s) for s in range(3)])
    out = ov(batch)
    assert out.shape == (3, 24, 24) and out.dtype == np.uint8 and agreement(out, ort(batch)) > 0.99


def test_float_nchw_batches_and_in_graph_argmax(pair, models):
    ov, ort = pair
    x = np.random.default_rng(4).standard_normal((2, 3, 11, 13)).astype(np.float32)
    np.testing.assert_allclose(ov.backend.infer(x)["mask"], ort.backend.infer(x)["logits"].argmax(1))
    np.testing.assert_allclose(ov.backend.infer(x, outputs=("logits",))["logits"], ort.backend.infer(x)["logits"],
                               atol=1e-4, rtol=1e-4)
    with Segmenter.load(models["mask"]) as seg:
        assert agreement(seg(image(21, 19)), ov(image(21, 19))) > 0.99
        with pytest.raises(FcnsegError, match="logits"):
            seg(image(8, 8), logits=True)
    with pytest.raises(FcnsegError, match="NCHW|float32"):
        ov.backend.infer(np.zeros((1, 4, 8, 8), np.float32))


def test_repeated_shapes_get_a_static_compilation_with_the_same_result(models):
    with Segmenter.load(models["logits"], size=0) as seg:
        im = image(19, 27, 5)
        first = seg(im)                   # dynamic compilation
        assert not seg.backend.static_shapes_compiled
        second = seg(im)                  # same shape twice in a row: compiled for 1x19x27x3
        assert seg.backend.static_shapes_compiled == [(1, 19, 27, 3)]
        np.testing.assert_array_equal(first, second)


def test_threads_share_one_backend(pair):
    ov, _ = pair
    ims = [image(12 + i, 20 - i, i) for i in range(4)]
    expected = [ov(im) for im in ims]
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        return [ov(ims[i]) for _ in range(3)]

    with ThreadPoolExecutor(4) as pool:
        for i, results in enumerate(pool.map(work, range(4))):
            assert all(np.array_equal(r, expected[i]) for r in results)


def test_precision_hints_and_bad_files(models, tmp_path):
    with Segmenter.load(models["logits"], precision_hint="bf16", num_threads=1) as seg:
        assert seg.backend.precision_hint == "bf16" and seg(image(16, 16)).shape == (16, 16)
    with pytest.raises(FcnsegError, match="f32, bf16"):
        Segmenter.load(models["logits"], precision_hint="fp8")
    # the device's own default when it is one of ours (a GPU's f16 is not: f32)
    assert [default_precision_hint(d) for d in ("bf16", "f32", "f16")] == ["bf16", "f32", "f32"]
    with pytest.raises(FcnsegError, match="only with the openvino backend"):
        Segmenter.load(models["logits"], backend="onnxruntime", precision_hint="bf16")
    with pytest.raises(FcnsegError, match="expected a backend in openvino, onnxruntime"):
        Segmenter.load(models["logits"], backend="tensorrt")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(FcnsegError, match="OpenVINO .*parsed"):
        Segmenter.load(tmp_path / "junk.onnx")


BLOCKED = """
import sys
for name in ("openvino", "onnx", "torch", "onnxruntime"):
    sys.modules[name] = None          # `import name` raises ImportError
import fcnseg.runtime
loaded = [m for m in ("openvino", "onnxruntime", "torch", "onnx") if sys.modules.get(m) is not None]
assert not loaded, loaded
del sys.modules["onnxruntime"]        # ONNX Runtime installed again, OpenVINO still missing
from fcnseg.runtime import Segmenter
seg = Segmenter.load(sys.argv[1])
print(seg.backend.name, seg(__import__("numpy").zeros((9, 9, 3), "uint8")).shape)
"""


def test_runtime_imports_with_numpy_alone_and_falls_back_to_onnxruntime(models):
    r = subprocess.run([sys.executable, "-c", BLOCKED, str(models["logits"])], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["onnxruntime", "(9,", "9)"]
