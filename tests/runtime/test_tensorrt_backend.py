"""TensorRTBackend with a fake ``tensorrt`` runtime and fake CUDA memory, plus real-engine tests.

The fakes keep the real data path: "device memory" is numpy bytes addressed by int pointers, the
fake execution context reads its input from and writes its output to the addresses the backend set,
and stream capture records the enqueue so that only the replayed graph computes. So buffer sizing,
shape handling, copies, per-thread contexts, CUDA graphs and freeing are all exercised without a GPU.
The ``tensorrt``-marked tests at the end build real engines and skip where TensorRT or a GPU is absent.
"""

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import types

import numpy as np
import pytest

from fcnseg.runtime.backends.cuda_memory import CudaRuntime, load_cuda_memory
from fcnseg.runtime.backends.tensorrt import TensorRTBackend, engine_mismatch_message, sidecar_path
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata

PROFILE = ((1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 32, 32))
NUM_CLASSES = 4
PLAN = b"FAKEPLAN"
GPU = {"name": "NVIDIA RTX A4000", "compute_capability": "8.6"}  # the GPU the fakes "run" on


def reference(x):
    """What the fake engine computes: class k scores = (k + 1) * channel k % 3, so argmax varies per pixel."""
    return np.stack([(k + 1) * x[:, k % 3] - k for k in range(NUM_CLASSES)], axis=1).astype(np.float32)


# ---------------------------------------------------------------- fake CUDA memory

class FakeCuda:
    """CudaMemory over numpy: pointers index byte arrays; capture records enqueues instead of running them."""

    name = "fake"
    supports_graphs = True

    def __init__(self):
        self.device, self.host_live, self.next_ptr = {}, 0, 4096
        self.mallocs, self.captures, self.launches = [], 0, 0
        self.capturing = threading.local()
        self.lock = threading.Lock()

    def bind_thread(self):
        pass

    def malloc(self, nbytes):
        with self.lock:
            ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 256
            self.device[ptr] = np.zeros(nbytes, np.uint8)
            self.mallocs.append(nbytes)
        return ptr

    def free(self, ptr):
        with self.lock:
            del self.device[ptr]

    def malloc_host(self, nbytes):
        with self.lock:
            self.host_live += 1
        return np.zeros(nbytes, np.uint8)

    def free_host(self, array):
        with self.lock:
            self.host_live -= 1

    def memcpy_htod_async(self, dst, src, stream):
        self.device[dst][: src.nbytes] = src

    def memcpy_dtoh_async(self, dst, src, stream):
        dst[...] = self.device[src][: dst.nbytes]

    def stream_create(self):
        return object()

    def stream_handle(self, stream):
        return id(stream)

    def stream_synchronize(self, stream):
        pass

    def stream_destroy(self, stream):
        pass

    def graph_capture_begin(self, stream):
        self.capturing.ops = []

    def graph_capture_end(self, stream):
        ops, self.capturing.ops = self.capturing.ops, None
        self.captures += 1
        return ops

    def graph_launch(self, graph, stream):
        self.launches += 1
        for op in graph:
            op()

    def graph_destroy(self, graph):
        pass


# ---------------------------------------------------------------- fake tensorrt runtime

def make_trt(cuda, *, version="10.3.0", output="logits", out_dtype=np.float32):
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.TensorIOMode = type("TensorIOMode", (), {"INPUT": "in", "OUTPUT": "out"})
    m.nptype = lambda dt: dt
    m.contexts = 0

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            pass

    class Context:
        def __init__(self):
            self.shape, self.addresses = None, {}

        def set_input_shape(self, name, shape):
            ok = name == "input" and all(a <= d <= b for d, a, b in zip(shape, PROFILE[0], PROFILE[2]))
            self.shape = tuple(shape) if ok else self.shape
            return ok

        def get_tensor_shape(self, name):
            n, _, h, w = self.shape
            return [n, NUM_CLASSES, h, w] if output == "logits" else [n, h, w]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, handle):
            shape, src, dst = self.shape, self.addresses["input"], self.addresses[output]

            def run():
                x = cuda.device[src][: int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
                y = reference(x)
                y = y if output == "logits" else y.argmax(1).astype(out_dtype)
                cuda.device[dst][: y.nbytes] = y.reshape(-1).view(np.uint8)

            ops = getattr(cuda.capturing, "ops", None)
            (ops.append(run) if ops is not None else run())
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", output][i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_dtype(self, name):
            return np.float32 if name == "input" else out_dtype

        def get_tensor_profile_shape(self, name, index):
            return [list(s) for s in PROFILE]

        def create_execution_context(self):
            m.contexts += 1
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if bytes(data).startswith(b"RAISE"):
                raise RuntimeError("Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed")
            return Engine() if bytes(data) == PLAN else None

    m.Logger, m.Runtime = Logger, Runtime
    return m


@pytest.fixture
def cuda():
    return FakeCuda()


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "model.plan"
    path.write_bytes(PLAN)
    sidecar_path(path).write_text(json.dumps({
        "tensorrt_version": "10.3.0", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
        "onnx": "model.onnx", "metadata": ModelMetadata(arch="tiny", num_classes=NUM_CLASSES).to_dict()}))
    return path


def backend(monkeypatch, plan, cuda, **kwargs):
    trt_kwargs = {k: kwargs.pop(k) for k in ("output", "out_dtype", "version") if k in kwargs}
    monkeypatch.setitem(sys.modules, "tensorrt", make_trt(cuda, **trt_kwargs))
    return TensorRTBackend(plan, cuda=cuda, gpu=GPU, **kwargs)


def batch(n, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


# ---------------------------------------------------------------- fakes: data path

@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 13, 27), (2, 32, 32), (2, 9, 31)])
def test_logits_round_trip(monkeypatch, plan, cuda, shape):
    with backend(monkeypatch, plan, cuda) as b:
        x = batch(*shape)
        out = b.infer(x)
        assert list(out) == ["logits"] and out["logits"].dtype == np.float32
        np.testing.assert_array_equal(out["logits"], reference(x))
        assert set(b.last_timing) == {"h2d", "infer", "d2h"} and all(v >= 0 for v in b.last_timing.values())
        assert b.name == "tensorrt" and b.metadata.arch == "tiny" and b.metadata.num_classes == NUM_CLASSES


def test_consecutive_shapes_reuse_buffers_sized_for_max(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda)
    for shape in [(2, 32, 32), (1, 8, 8), (1, 20, 11), (2, 32, 32)]:
        x = batch(*shape, seed=sum(shape))
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    assert sorted(cuda.mallocs) == sorted([2 * 3 * 32 * 32 * 4, 2 * NUM_CLASSES * 32 * 32 * 4])
    b.close()


@pytest.mark.parametrize("out_dtype", [np.uint8, np.int64])
def test_mask_output(monkeypatch, plan, cuda, out_dtype):
    b = backend(monkeypatch, plan, cuda, output="mask", out_dtype=out_dtype)
    x = batch(2, 12, 10)
    out = b.infer(x)
    assert list(out) == ["mask"] and out["mask"].dtype == np.uint8 and out["mask"].shape == (2, 12, 10)
    np.testing.assert_array_equal(out["mask"], reference(x).argmax(1))
    b.close()


def test_input_is_cast_to_float32(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda)
    x = batch(1, 8, 8).astype(np.float64)
    np.testing.assert_allclose(b.infer(x)["logits"], reference(x.astype(np.float32)))
    b.close()


@pytest.mark.parametrize("shape", [(1, 3, 40, 40), (3, 3, 8, 8), (1, 3, 4, 16), (3, 8, 8)])
def test_shape_outside_profile(monkeypatch, plan, cuda, shape):
    b = backend(monkeypatch, plan, cuda)
    with pytest.raises(FcnsegError) as e:
        b.infer(np.zeros(shape, np.float32))
    msg = str(e.value)
    assert "between 1x3x8x8 and 2x3x32x32" in msg and f"got {'x'.join(map(str, shape))}" in msg
    assert "--max-shape" in msg
    b.close()


# ---------------------------------------------------------------- fakes: threads, graphs, closing

def test_threads_get_their_own_context_and_same_results(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda)
    inputs = [batch(1 + i % 2, 8 + i, 30 - i, seed=i) for i in range(8)]
    expected = [reference(x) for x in inputs]
    results = {}

    start = threading.Barrier(4)   # four threads at once: an idle pool thread must not take two tasks

    def work(t):
        start.wait()
        for i, x in enumerate(inputs):
            results[(t, i)] = b.infer(x)["logits"]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))  # re-raises a worker's exception here
    for (t, i), y in results.items():
        np.testing.assert_array_equal(y, expected[i])
    assert sys.modules["tensorrt"].contexts == 4
    b.close()
    assert cuda.device == {} and cuda.host_live == 0


def test_cuda_graph_per_shape(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda, cuda_graphs=True)
    x1, x2 = batch(1, 16, 16), batch(2, 8, 24, seed=1)
    for x in (x1, x1, x2, x1):
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    assert cuda.captures == 2 and cuda.launches == 4
    x1b = batch(1, 16, 16, seed=5)  # same shape, new data: the replayed graph must read the new input
    np.testing.assert_array_equal(b.infer(x1b)["logits"], reference(x1b))
    b.close()


def test_cuda_graphs_need_capture_support(monkeypatch, plan, cuda):
    cuda.supports_graphs = False
    with pytest.raises(FcnsegError, match="CUDA graphs"):
        backend(monkeypatch, plan, cuda, cuda_graphs=True)


def test_close_frees_everything_and_is_idempotent(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda)
    b.infer(batch(1, 8, 8))
    assert cuda.device and cuda.host_live == 2
    b.close()
    b.close()
    assert cuda.device == {} and cuda.host_live == 0
    with pytest.raises(FcnsegError, match="closed"):
        b.infer(batch(1, 8, 8))


# ---------------------------------------------------------------- fakes: loading errors

def test_version_mismatch_message(monkeypatch, tmp_path, cuda):
    path = tmp_path / "old.plan"
    path.write_bytes(b"ENGINE FROM ELSEWHERE")
    sidecar_path(path).write_text(json.dumps({
        "tensorrt_version": "8.6.2", "gpu": {"name": "Orin", "compute_capability": "8.7"},
        "onnx": "fcn_int8.onnx", "metadata": ModelMetadata().to_dict()}))
    with pytest.raises(FcnsegError) as e:
        backend(monkeypatch, path, cuda, version="10.3.0")
    msg = str(e.value)
    assert "built with tensorrt 8.6.2 for Orin (compute capability 8.7)" in msg
    assert "expected an engine built with tensorrt 10.3.0 on" in msg and "\n" not in msg
    assert "rebuilt on this device: fcn-export trt fcn_int8.onnx --library tensorrt -o " + str(path) in msg


def test_deserialize_exception_is_reported(monkeypatch, tmp_path, cuda):
    path = tmp_path / "bad.engine"
    path.write_bytes(b"RAISE")
    with pytest.raises(FcnsegError) as e:
        backend(monkeypatch, path, cuda)
    assert "stdVersionRead" in str(e.value) and "tensorrt unknown for unknown GPU" in str(e.value)


def test_mismatch_message_is_one_line_without_sidecar():
    msg = engine_mismatch_message("m.plan", None, version="11.1.0", gpu={"name": "H200", "compute_capability": "9.0"})
    assert "\n" not in msg and "tensorrt 11.1.0 on H200" in msg and "fcn-export trt MODEL.onnx --library tensorrt -o m.plan" in msg


def test_no_sidecar_uses_defaults(monkeypatch, tmp_path, cuda):
    path = tmp_path / "bare.plan"
    path.write_bytes(PLAN)
    b = backend(monkeypatch, path, cuda, output="mask", out_dtype=np.uint8)
    assert b.metadata.argmax and b.metadata.num_classes == 21 and b.sidecar is None
    b.close()


def test_metadata_argument_wins(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda, metadata=ModelMetadata(arch="given", num_classes=2))
    assert b.metadata.arch == "given"
    b.close()


def test_missing_plan(monkeypatch, tmp_path, cuda):
    with pytest.raises(FcnsegError, match="expected a TensorRT engine file"):
        backend(monkeypatch, tmp_path / "nope.plan", cuda)


def test_corrupt_sidecar(monkeypatch, plan, cuda):
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(FcnsegError, match="sidecar"):
        backend(monkeypatch, plan, cuda)


def test_tensorrt_not_installed(monkeypatch, plan, cuda):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(FcnsegError, match="TensorRT is not installed: expected the `tensorrt` Python package"):
        TensorRTBackend(plan, cuda=cuda, gpu=GPU)


def test_tensorrt_libraries_missing(monkeypatch, plan, cuda):
    class BrokenBindings:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorrt":
                raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenBindings(), *sys.meta_path])
    with pytest.raises(FcnsegError, match="TensorRT is not installed: .* got OSError: libnvinfer.so.10"):
        TensorRTBackend(plan, cuda=cuda, gpu=GPU)


def test_no_cuda_library(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(FcnsegError, match="expected cuda-python or pycuda") as e:
        load_cuda_memory()
    assert "pip install cuda-python" in str(e.value)


def test_cuda_python_without_gpu_fails_clearly():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    try:
        CudaRuntime()
    except FcnsegError as e:
        assert "CUDA call cudaGetDevice failed: expected cudaSuccess, got cuda" in str(e)
    else:
        pytest.skip("a CUDA device is present; covered by test_cuda_python_round_trip")


@pytest.mark.gpu
def test_cuda_python_round_trip():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    try:
        cuda = CudaRuntime()
    except FcnsegError as e:
        pytest.skip(f"no usable CUDA device: {e}")
    host_in, host_out = cuda.malloc_host(64), cuda.malloc_host(64)
    host_in[:] = np.arange(64, dtype=np.uint8)
    ptr, stream = cuda.malloc(64), cuda.stream_create()
    cuda.memcpy_htod_async(ptr, host_in, stream)
    cuda.memcpy_dtoh_async(host_out, ptr, stream)
    cuda.stream_synchronize(stream)
    np.testing.assert_array_equal(host_out, host_in)
    cuda.free(ptr)
    cuda.free_host(host_in)
    cuda.free_host(host_out)
    cuda.stream_destroy(stream)


def test_module_imports_without_torch_or_tensorrt():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision', 'tensorrt', 'onnx', 'onnxruntime'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import fcnseg.runtime.backends.tensorrt as m\n"
            "assert m.TensorRTBackend.name == 'tensorrt'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- real TensorRT (skipped without it)
# The graphs: tests/conftest.py's 2-conv net (dynamic batch/height/width, input -> logits like fcn-export's), its
# FP16 conversion and its INT8 Q/DQ form.

CONV_META = ModelMetadata(arch="conv", num_classes=NUM_CLASSES)


def fp16_onnx(src, dst):
    import onnx
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


def ort_logits(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_real_engine_graphs_are_what_they_claim(conv_onnx_factory, int8_qdq_factory, tmp_path):
    """The graphs the TensorRT tests build from run on ORT and are typed as their precision claims."""
    from fcnseg.export.tensorrt import engine_spec

    fp32 = conv_onnx_factory(tmp_path / "conv.onnx", CONV_META)
    x = batch(2, 19, 23)
    for make, precision in ((fp16_onnx, "fp16"), (int8_qdq_factory, "int8")):
        graph = make(fp32, tmp_path / f"conv_{precision}.onnx")
        assert engine_spec(graph).graph_precision == precision
        assert ort_logits(graph, x).shape == ort_logits(fp32, x).shape == (2, NUM_CLASSES, 19, 23)


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_matches_onnxruntime(tensorrt_gpu, conv_onnx_factory, int8_qdq_factory, tmp_path, precision):
    from fcnseg.export.tensorrt import build_engine
    from fcnseg.eval.parity import compare_logits

    fp32 = conv_onnx_factory(tmp_path / "conv.onnx", CONV_META)
    graph = (fp16_onnx if precision == "fp16" else int8_qdq_factory)(fp32, tmp_path / f"conv_{precision}.onnx")
    plan = build_engine(graph, output=tmp_path / f"conv_{precision}.plan", min_shape=(1, 3, 16, 16),
                        opt_shape=(1, 3, 64, 64), max_shape=(2, 3, 128, 128), workspace_gib=1.0)
    side = json.loads(sidecar_path(plan).read_text())
    assert side["precision"] == precision and side["library_version"] == tensorrt_gpu.__version__
    for graphs in (False, True):
        with TensorRTBackend(plan, cuda_graphs=graphs) as b:
            for shape in [(1, 16, 16), (1, 37, 53), (2, 128, 128)]:
                x = batch(*shape, seed=shape[1])
                # INT8 is compared with ORT running the same Q/DQ graph; FP16 with the FP32 graph.
                ref = ort_logits(graph if precision == "int8" else fp32, x)
                cmp = compare_logits(ref, b.infer(x)["logits"], atol=0.05 if precision == "fp16" else 0.25,
                                     min_agreement=0.98)
                assert cmp, f"{precision} {shape} graphs={graphs}: {cmp}"


def test_lifecycle_and_timing_come_from_base_backend(monkeypatch, plan, cuda):
    """Context manager, idempotent close and a per-thread copy of last_timing, as every backend has them."""
    with backend(monkeypatch, plan, cuda) as b:
        assert b.last_timing == {"h2d": 0.0, "infer": 0.0, "d2h": 0.0}
        b.infer(batch(1, 8, 8))
        timing = b.last_timing
        timing["infer"] = -1.0
        assert set(b.last_timing) == {"h2d", "infer", "d2h"} and b.last_timing["infer"] >= 0   # a copy
    assert cuda.device == {} and cuda.host_live == 0
    with pytest.raises(FcnsegError, match="closed"):
        b.infer(batch(1, 8, 8))
