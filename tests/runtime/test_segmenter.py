"""Segmenter on tiny ONNX graphs written with onnx.helper: shapes, inputs, batches, metadata, threads, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import types

import numpy as np
import onnx
import pytest

from fcnseg.core.metadata import NoMetadataWarning
from onnx import TensorProto, helper, numpy_helper

from fcnseg.runtime import FcnsegError, ModelMetadata, Segmenter
from fcnseg.runtime.backends.onnxruntime import resolve_providers
from fcnseg.runtime.preprocess import preprocess, resize_mask, to_rgb_uint8

C = 5
SIZE = 12
CLASSES = ["bg", "cat", "dog", "car", "sky"]
RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(C, 3)).astype(np.float32)
BIAS = RNG.normal(scale=0.1, size=C).astype(np.float32)


def tiny_onnx(path, *, argmax, batch="N", hw=("H", "W"), output_name=None, meta=True):
    """A 1x1 stride-2 conv (3 -> C): logits at half the input's resolution; optionally ArgMax + Cast(uint8)."""
    h, w = (d if isinstance(d, int) else f"{d}in" for d in hw)
    oh, ow = (((d - 1) // 2 + 1) if isinstance(d, int) else f"{d}out" for d in hw)
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logits"], kernel_shape=[1, 1], strides=[2, 2])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, C, oh, ow])]
    if argmax:
        nodes += [helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
                  helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8)]
        outputs = [helper.make_tensor_value_info("mask", TensorProto.UINT8, [batch, oh, ow])]
    if output_name:
        nodes[-1].output[0] = output_name
        outputs[0].name = output_name
    inits = [numpy_helper.from_array(WEIGHT.reshape(C, 3, 1, 1), "W"), numpy_helper.from_array(BIAS, "B")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [batch, 3, h, w])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if meta:
        md = ModelMetadata(arch="tiny", num_classes=C, classes=CLASSES, input_size=SIZE, argmax=argmax)
        helper.set_model_props(model, md.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(image, size=SIZE, logits=False):
    """The same network in numpy: preprocess, stride-2 1x1 conv, argmax, nearest resize back."""
    x = preprocess(image, size=size, mean=ModelMetadata().mean, std=ModelMetadata().std)[0, :, ::2, ::2]
    scores = np.einsum("oc,chw->ohw", WEIGHT, x) + BIAS[:, None, None]
    if logits:
        return scores
    h, w = np.asarray(image).shape[:2]
    return resize_mask(scores.argmax(0).astype(np.uint8), h, w)


def random_image(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {"logits": tiny_onnx(d / "logits.onnx", argmax=False), "mask": tiny_onnx(d / "mask.onnx", argmax=True)}


@pytest.fixture(scope="module")
def segs(models):
    return {k: Segmenter.load(p, providers=["cpu"], num_threads=1) for k, p in models.items()}


@pytest.mark.parametrize("hw", [(17, 23), (31, 9), (1, 1), (12, 12)])
@pytest.mark.parametrize("kind", ["logits", "mask"])
def test_mask_at_original_size_matches_numpy_reference(segs, hw, kind):
    image = random_image(*hw)
    mask = segs[kind](image)
    assert mask.shape == hw and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, reference(image))


def test_mask_and_logits_graphs_agree(segs):
    for seed in range(5):
        image = random_image(20 + seed, 33 - seed, seed)
        np.testing.assert_array_equal(segs["mask"](image), segs["logits"](image))


def test_logits_output_and_mask_only_error(segs):
    image = random_image(19, 27)
    scores = segs["logits"](image, logits=True)
    assert scores.dtype == np.float32 and scores.shape == (C, 6, 9)  # resized to 12x17, then stride 2
    np.testing.assert_allclose(scores, reference(image, logits=True), atol=1e-4)
    with pytest.raises(FcnsegError, match="logits"):
        segs["mask"](image, logits=True)


def test_grayscale_rgba_and_uint16_follow_to_rgb_rule(segs):
    gray = random_image(15, 21)[:, :, 0]
    rgba = np.dstack([random_image(15, 21, 3), np.full((15, 21), 7, np.uint8)])
    deep = (random_image(15, 21, 4).astype(np.uint16) * 257)
    for image in (gray, rgba, deep):
        mask = segs["mask"](image)
        assert mask.shape == (15, 21)
        np.testing.assert_array_equal(mask, segs["mask"](to_rgb_uint8(image)))
    # An RGBA image is segmented as its RGB part; a different alpha changes nothing.
    np.testing.assert_array_equal(segs["mask"](rgba), segs["mask"](rgba[:, :, :3]))


def test_batches_list_and_array(segs):
    seg = segs["logits"]
    images = [random_image(17, 23, 1), random_image(9, 30, 2), random_image(17, 23, 3)]
    masks = seg(images)
    assert isinstance(masks, list) and [m.shape for m in masks] == [(17, 23), (9, 30), (17, 23)]
    for image, mask in zip(images, masks):
        np.testing.assert_array_equal(mask, reference(image))
    batch = np.stack([random_image(14, 11, s) for s in range(3)])
    out = seg(batch)
    assert isinstance(out, np.ndarray) and out.shape == (3, 14, 11) and out.dtype == np.uint8
    for image, mask in zip(batch, out):
        np.testing.assert_array_equal(mask, reference(image))
    scores = seg(batch, logits=True)
    assert scores.shape == (3, C, 8, 6)
    assert seg([]) == []


def test_metadata_read_back_and_size_override(models, segs):
    seg = segs["mask"]
    assert seg.metadata.arch == "tiny" and seg.metadata.classes == CLASSES and seg.metadata.num_classes == C
    assert seg.metadata.argmax and not segs["logits"].metadata.argmax
    assert seg.size == SIZE and seg.backend.name == "onnxruntime"
    image = random_image(10, 16)
    big = Segmenter.load(models["logits"], size=20)
    assert big.size == 20 and big(image, logits=True).shape == (C, 10, 16)
    native = Segmenter.load(models["logits"], size=0)
    assert native.size is None and native(image, logits=True).shape == (C, 5, 8)
    np.testing.assert_array_equal(native(image), reference(image, size=None))
    with pytest.raises(FcnsegError, match="size"):
        Segmenter.load(models["logits"], size=-3)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_model_without_metadata_takes_its_class_count_from_its_output(tmp_path, backend):
    """A graph from another tool: C classes from its output channels (was: VOC's 21 whatever C), generic names,
    one warning line; --classes FILE names them, and a file of another class count is refused in one line."""
    plain = tiny_onnx(tmp_path / "plain.onnx", argmax=False, output_name="out", meta=False)
    with pytest.warns(NoMetadataWarning, match=f"assuming {C} classes from its output channels"):
        seg = Segmenter.load(plain, backend=backend)
    assert seg.metadata.num_classes == C and seg.metadata.classes == [f"class_{i}" for i in range(C)]
    assert seg.size == 520 and seg(random_image(8, 8)).shape == (8, 8)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(C)))
    with pytest.warns(NoMetadataWarning):
        named = Segmenter.load(plain, backend=backend, classes=names)
    assert named.metadata.classes == [f"thing{i}" for i in range(C)] and len(named.metadata.palette) == C
    names.write_text("a\nb\n")
    with pytest.warns(NoMetadataWarning), pytest.raises(FcnsegError, match=f"expected a class file with the model's {C} classes, got 2"):
        Segmenter.load(plain, backend=backend, classes=names)


def test_timing_recorded_per_call(segs):
    seg = segs["logits"]
    seg([random_image(10, 10), random_image(12, 20)])
    t = seg.last_timing
    assert set(t) == {"preprocess", "h2d", "infer", "d2h", "postprocess"}
    assert t["h2d"] == 0.0 and t["d2h"] == 0.0 and t["infer"] > 0 and t["preprocess"] > 0
    assert all(v >= 0 for v in t.values())


def test_bad_suffix_and_missing_file(tmp_path):
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(FcnsegError, match=r"\.onnx.*\.plan.*\.engine.*\.pth"):
        Segmenter.load(tmp_path / "model.txt")
    with pytest.raises(FcnsegError, match="does not exist"):
        Segmenter.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(FcnsegError, match="ONNX Runtime|OpenVINO"):   # the fastest backend installed
        Segmenter.load(tmp_path / "junk.onnx")


def test_bad_image_input(segs):
    with pytest.raises(FcnsegError, match="shape"):
        segs["mask"](np.zeros((2, 2, 2, 2, 3), np.uint8))
    with pytest.raises(FcnsegError, match="HxW"):
        segs["mask"](np.zeros((4, 4, 2), np.uint8))


def test_missing_onnxruntime_says_how_to_install(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(FcnsegError, match="pip install onnxruntime"):
        Segmenter.load(models["mask"], backend="onnxruntime")   # without it the default would be OpenVINO


def test_providers_resolution(models):
    assert resolve_providers(None, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(FcnsegError, match="onnxruntime-gpu"):
        resolve_providers(["tensorrt"], ["CPUExecutionProvider"])
    assert Segmenter.load(models["mask"], providers=["CPUExecutionProvider"]).backend.providers == [
        "CPUExecutionProvider"]


def test_static_batch_and_shape(tmp_path):
    seg = Segmenter.load(tiny_onnx(tmp_path / "static.onnx", argmax=True, batch=1, hw=(8, 8)), size=0)
    assert seg.backend.max_batch == 1
    images = [random_image(8, 8, s) for s in range(3)]
    for image, mask in zip(images, seg(images)):
        np.testing.assert_array_equal(mask, reference(image, size=None))
    # another size is resized to the static 8x8 input and the mask comes back at the image's size (issue 9)
    assert seg(random_image(10, 14)).shape == (10, 14)


def test_shared_between_threads(segs):
    images = [random_image(11 + i, 19 + 2 * i, i) for i in range(6)]
    for seg in segs.values():
        expected = [seg(im) for im in images]
        results = {}

        start = threading.Barrier(4)   # four threads at once: an idle pool thread must not take two tasks

        def work(tid):
            start.wait()
            for rep in range(3):
                for k, im in enumerate(images):
                    results[(tid, rep, k)] = seg(im)
                    assert set(seg.last_timing) >= {"infer", "preprocess"}

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))  # re-raises a worker's exception here
        assert len(results) == 4 * 3 * len(images)
        for (_, _, k), mask in results.items():
            np.testing.assert_array_equal(mask, expected[k])


TORCH_FREE = """
import importlib.abc, sys
BLOCKED = {"torch", "torchvision", "onnx", "click", "tensorrt"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import numpy as np
import fcnseg.runtime as rt
seg = rt.Segmenter.load(sys.argv[1])
image = (np.arange(17 * 23 * 3) * 7 % 256).astype(np.uint8).reshape(17, 23, 3)
mask = seg(image)
assert mask.shape == (17, 23) and mask.dtype == np.uint8
rt.overlay(image, mask); rt.colorize(mask)
assert not BLOCKED & {m.split(".")[0] for m in sys.modules}
np.save(sys.argv[2], mask)
"""


@pytest.mark.parametrize("kind", ["logits", "mask"])
def test_runtime_works_without_torch_onnx_click(models, tmp_path, kind):
    out = tmp_path / "mask.npy"
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(models[kind]), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    image = (np.arange(17 * 23 * 3) * 7 % 256).astype(np.uint8).reshape(17, 23, 3)
    np.testing.assert_array_equal(np.load(out), reference(image))


class FakeTensorRTBackend:
    """Stands in for the TensorRT backend: records how the Segmenter built it, runs the numpy reference."""

    name = "tensorrt"
    max_batch = None
    calls: list = []

    def __init__(self, plan_path, *, metadata=None, cuda=None, gpu=None):   # TensorRTBackend's keywords
        FakeTensorRTBackend.calls.append((plan_path, metadata))
        self.metadata = metadata if metadata is not None else ModelMetadata()
        self.last_timing = {"h2d": 0.25, "infer": 0.5, "d2h": 0.125}
        self.outputs = [object()]   # engine I/O descriptions, not names: the Segmenter must not rely on them

    def infer(self, batch):
        x = batch[:, :, ::2, ::2]
        scores = np.einsum("oc,nchw->nohw", WEIGHT, x) + BIAS[None, :, None, None]
        return {"mask": scores.argmax(1).astype(np.uint8)} if self.metadata.argmax else {"logits": scores}

    def close(self):
        pass


def test_plan_dispatches_to_tensorrt_with_sidecar_metadata(tmp_path, monkeypatch):
    fake = types.ModuleType("fcnseg.runtime.backends.tensorrt")
    fake.TensorRTBackend = FakeTensorRTBackend
    fake.probe_gpu = lambda: (None, "no GPU (the fake backend runs anyway)")   # what engine_for_gpu asks first
    monkeypatch.setitem(sys.modules, "fcnseg.runtime.backends.tensorrt", fake)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    md = ModelMetadata(arch="tiny", num_classes=C, classes=CLASSES, input_size=SIZE, precision="fp16")
    (tmp_path / "m.plan.json").write_text(json.dumps({"metadata": md.to_dict(), "other": 1}))
    seg = Segmenter.load(plan)
    assert FakeTensorRTBackend.calls[-1] == (plan, md) and seg.metadata.precision == "fp16"
    image = random_image(13, 18)
    np.testing.assert_array_equal(seg(image), reference(image))
    assert seg.last_timing["h2d"] == 0.25 and seg.last_timing["d2h"] == 0.125
    md.argmax = True
    (tmp_path / "m.plan.json").write_text(json.dumps({"metadata": md.to_dict()}))
    seg = Segmenter.load(plan)
    np.testing.assert_array_equal(seg(image), reference(image))
    with pytest.raises(FcnsegError, match="logits=True"):
        seg(image, logits=True)

    engine = tmp_path / "e.engine"
    engine.write_bytes(b"engine")
    with pytest.warns(UserWarning, match="sidecar"):
        assert Segmenter.load(engine).metadata == ModelMetadata()
    (tmp_path / "e.engine.json").write_text(json.dumps({"tensorrt_version": "10"}))
    with pytest.warns(UserWarning, match="sidecar"):
        Segmenter.load(engine)
    assert FakeTensorRTBackend.calls[-1] == (engine, None)   # no "metadata" key: the backend's defaults apply
    (tmp_path / "e.engine.json").write_text("{broken")
    with pytest.raises(FcnsegError, match="sidecar"):
        Segmenter.load(engine)
    with pytest.raises(FcnsegError, match="providers"):
        Segmenter.load(plan, providers=["cpu"])
    monkeypatch.setitem(sys.modules, "fcnseg.runtime.backends.tensorrt", None)
    with pytest.raises(FcnsegError, match="pip install tensorrt"):
        Segmenter.load(plan)


def test_plan_with_the_real_tensorrt_backend_fails_clearly_on_a_bad_engine(monkeypatch, tmp_path):
    """Bytes TensorRT cannot deserialize reach the real backend's deserialization (a fake TensorRT 10.x on a fake
    GPU, tests/fakes/tensorrt.py, returns None for them as the real one does) and come back as one exact line."""
    from tests.fakes import tensorrt as fakes

    trt, _ = fakes.install("10.x", setitem=monkeypatch.setitem, setattr_=monkeypatch.setattr)
    plan = tmp_path / "junk.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(FcnsegError) as e:
        Segmenter.load(plan)
    assert str(e.value) == (
        f"could not load TensorRT engine {str(plan)!r}: expected an engine built with tensorrt 10.13.0.35 on "
        "NVIDIA RTX A4000 (compute capability 8.6), got one built with tensorrt unknown for unknown GPU (compute "
        "capability unknown); engines are tied to the TensorRT version and GPU, so it must be rebuilt on this "
        f"device: fcn-export trt MODEL.onnx --library tensorrt -o {plan}")
    assert trt._fake.deserialized == 0


def test_batches_are_split_to_the_backends_max_batch():
    """A TensorRT profile's max batch (or a static ONNX batch) bounds each run; results keep their order."""
    backend = FakeTensorRTBackend("x.plan", metadata=ModelMetadata(arch="tiny", num_classes=C, classes=CLASSES,
                                                                   input_size=None))
    backend.max_batch = 2
    sizes = []
    infer = backend.infer
    backend.infer = lambda batch: sizes.append(len(batch)) or infer(batch)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 20, 3), dtype=np.uint8) for _ in range(5)]
    masks = Segmenter(backend)(images)
    assert sizes == [2, 2, 1]
    for image, mask in zip(images, masks):
        np.testing.assert_array_equal(mask, Segmenter(backend)(image))


def test_unknown_suffix_is_refused_by_choose_backend_too(tmp_path):
    """The backend choice (used by fcn-bench before any file is opened) says what a model file is, not IndexError."""
    from fcnseg.runtime.segmenter import choose_backend

    for backend in (None, "onnxruntime"):
        with pytest.raises(FcnsegError, match=r"expected a model file ending in one of \.onnx"):
            choose_backend(tmp_path / "foo.bin", backend)
    assert choose_backend(tmp_path / "m.plan") == "tensorrt"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_unnamed_outputs_are_mapped_alike_by_both_backends(tmp_path, backend):
    """One output not called logits/mask is told apart by its rank; two such outputs are refused."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    for argmax, key in ((False, "logits"), (True, "mask")):
        path = tiny_onnx(tmp_path / f"{key}.onnx", argmax=argmax, output_name="out")
        with Segmenter.load(path, backend=backend) as seg:
            assert seg.backend.outputs == {key: "out"}
            np.testing.assert_array_equal(seg(random_image(9, 7)), reference(random_image(9, 7)))
    model = onnx.load(str(tmp_path / "logits.onnx"))
    model.graph.node.append(helper.make_node("Identity", ["out"], ["copy"]))
    model.graph.output.append(helper.make_tensor_value_info("copy", TensorProto.FLOAT, ["N", C, "Hout", "Wout"]))
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(FcnsegError, match=r"expected a graph output named 'logits' .* got \[\('out', .*\('copy'"):
        Segmenter.load(tmp_path / "two.onnx", backend=backend)
