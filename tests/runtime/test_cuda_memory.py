"""``cuda_memory``'s real ``PyCuda`` and ``CudaRuntime`` classes over fakes of pycuda and cuda-python 11/12/13
(``tests/fakes/cuda.py``, written from those libraries' sources), and ``gpu_info``'s fallback to torch.

The pycuda fake keeps pycuda's per-thread context stacks and records the abort() pycuda calls when a thread ends
with its stack non-empty; ``check_exit()`` lists those threads (and the test's own, as at interpreter exit).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fcnseg.core.errors import FcnsegError
from fcnseg.export.tensorrt import gpu_info
from fcnseg.runtime.backends.cuda_memory import CudaRuntime, PyCuda, device_info, load_cuda_memory


def _load_fakes():
    """``tests.fakes.cuda`` under pytest (its importlib mode registers the ``tests`` package), else by path."""
    try:
        from tests.fakes import cuda as module
        return module
    except ImportError:
        name = "fcnseg_test_fakes_cuda"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, str(Path(__file__).resolve().parents[1] / "fakes"
                                                                   / "cuda.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return sys.modules[name]


fakes = _load_fakes()

CUDA_PYTHON = [pytest.param(13, "bindings", id="cuda-bindings-13"), pytest.param(12, "both", id="cuda-bindings-12.9"),
               pytest.param(12, "cudart", id="cuda-python-12.2"), pytest.param(11, "cudart", id="cuda-python-11")]


@pytest.fixture
def pycuda_fake(monkeypatch):
    """pycuda alone (cuda-python hidden); fails the test if pycuda would abort at exit."""
    fakes.hide_cuda_python(monkeypatch)
    fake = fakes.install_fake_pycuda(monkeypatch)
    yield fake
    assert fake.check_exit() == [], "pycuda would abort(): a thread ended with a CUDA context still pushed"


def _binding(cuda, style):
    """How a caller binds the CUDA context around its calls."""
    if style == "bind_thread":  # what runtime/backends/tensorrt.py called in each thread before `bound()`
        cuda.bind_thread()
        return contextlib.nullcontext()
    if style == "bound":
        return cuda.bound()
    return contextlib.nullcontext()  # "calls": each call binds the context itself


def _round_trip(cuda, payload: bytes, style: str = "calls") -> bytes:
    """What the TensorRT backend does in a thread: pinned and device buffers, a stream, copies both ways, free."""
    with _binding(cuda, style):
        host_in, host_out = cuda.malloc_host(len(payload)), cuda.malloc_host(len(payload))
        host_in[:] = np.frombuffer(payload, np.uint8)
        ptr, stream = cuda.malloc(len(payload)), cuda.stream_create()
        cuda.memcpy_htod_async(ptr, host_in, stream)
        cuda.memcpy_dtoh_async(host_out, ptr, stream)
        cuda.stream_synchronize(stream)
        out = host_out.tobytes()
        cuda.free(ptr)
        cuda.free_host(host_in)
        cuda.free_host(host_out)
        cuda.stream_destroy(stream)
    return out


def _in_thread(fn, *args):
    """Run ``fn`` in a short-lived thread; return its result or raise its exception."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    thread = threading.Thread(target=run, name="short-lived")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---------------------------------------------------------------- PyCuda (defect 1: every push is popped)

def test_pycuda_round_trip(pycuda_fake):
    cuda = load_cuda_memory()
    assert isinstance(cuda, PyCuda)
    assert _round_trip(cuda, bytes(range(64))) == bytes(range(64))
    assert pycuda_fake.memory.blocks == {} and pycuda_fake.pinned_live == 0 and pycuda_fake.streams_live == 0
    assert pycuda_fake.driver.Context.get_current() is None  # nothing left pushed in the test's thread


@pytest.mark.parametrize("style", ["calls", "bound", "bind_thread"])
def test_pycuda_thread_pool_leaves_no_context_pushed(pycuda_fake, style):
    cuda = PyCuda()
    payloads = [bytes([i]) * (32 + i) for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: _round_trip(cuda, p, style), payloads))
    assert results == payloads
    assert pycuda_fake.check_exit() == []


@pytest.mark.parametrize("style", ["calls", "bound", "bind_thread"])
def test_pycuda_short_lived_thread_leaves_no_context_pushed(pycuda_fake, style):
    cuda = PyCuda()
    assert _in_thread(_round_trip, cuda, b"fcnseg", style) == b"fcnseg"
    assert pycuda_fake.check_exit() == []


def test_pycuda_frees_what_another_thread_made(pycuda_fake):
    """The pipelined stream makes buffers in its inference thread and ``close()`` frees them from another:
    pycuda can only free memory and streams there while their context is current, else it warns and leaks."""
    cuda = PyCuda()
    made = _in_thread(lambda: (cuda.malloc(16), cuda.malloc_host(16), cuda.stream_create()))
    ptr, host, stream = made
    _in_thread(lambda: (cuda.free(ptr), cuda.free_host(host), cuda.stream_destroy(stream)))
    assert pycuda_fake.leaks == []
    assert pycuda_fake.memory.blocks == {} and pycuda_fake.pinned_live == 0 and pycuda_fake.streams_live == 0


def test_pycuda_bound_nests_and_restores_the_callers_context(pycuda_fake):
    cuda = PyCuda()
    Context = pycuda_fake.driver.Context
    own = pycuda_fake.driver.Device(0).make_context()  # e.g. pycuda.autoinit's context, current in this thread
    with cuda.bound():
        inside = Context.get_current()
        with cuda.bound():
            assert _round_trip(cuda, b"abc") == b"abc"
        assert Context.get_current() is inside
    assert inside is not own and inside.handle != own.handle  # the primary context, as TensorRT uses
    assert Context.get_current() is own
    Context.pop()
    assert Context.get_current() is None


def test_pycuda_errors_are_fcnseg_errors_and_still_pop(pycuda_fake):
    cuda = PyCuda()
    pycuda_fake.out_of_memory = 2  # pycuda's mem_alloc collects garbage and retries once
    with pytest.raises(FcnsegError, match=r"expected .*got MemoryError: cuMemAlloc failed: out of memory; try"):
        cuda.malloc(1 << 20)
    assert pycuda_fake.driver.Context.get_current() is None
    with pytest.raises(ValueError), cuda.bound():
        raise ValueError("not a CUDA error: passed through, after the pop")
    assert pycuda_fake.driver.Context.get_current() is None


def test_pycuda_without_gpu(monkeypatch):
    fakes.hide_cuda_python(monkeypatch)
    fakes.install_fake_pycuda(monkeypatch, no_device=True)
    with pytest.raises(FcnsegError, match="got RuntimeError: cuInit failed: no CUDA-capable device is detected; try"):
        PyCuda()
    with pytest.raises(FcnsegError, match=r"expected cuda-python or pycuda.*pycuda: .*cuInit failed"):
        load_cuda_memory()


# ---------------------------------------------------------------- the pycuda fake keeps pycuda's rules

def test_fake_pycuda_records_the_abort_of_a_thread_left_with_a_context(pycuda_fake):
    driver = pycuda_fake.driver
    driver.init()
    context = driver.Device(0).retain_primary_context()
    _in_thread(context.push)
    aborts = pycuda_fake.check_exit()
    assert len(aborts) == 1 and "short-lived" in aborts[0] and "not empty upon module cleanup" in aborts[0]
    pycuda_fake.aborts.clear()  # seen; the fixture checks the rest


def test_fake_pycuda_raises_what_pycuda_raises(pycuda_fake):
    driver = pycuda_fake.driver
    with pytest.raises(driver.LogicError, match=r"^cuDeviceGet failed: initialization error$"):
        driver.Device(0)
    driver.init()
    with pytest.raises(driver.LogicError, match=r"^context::pop failed: invalid device context - cannot pop non-"):
        driver.Context.pop()
    with pytest.raises(driver.LogicError, match=r"^cuMemAlloc failed: invalid device context$"):
        driver.mem_alloc(16)
    with pytest.raises(driver.LogicError, match=r"explicit_context_dependent failed: .* no currently active context\?"):
        driver.Stream()
    context = driver.Device(0).retain_primary_context()
    assert driver.Context.get_current() is None  # retaining does not push
    context.push()
    memory, stream = driver.mem_alloc(8), driver.Stream()
    with pytest.raises(TypeError):
        driver.memcpy_htod_async(memory, np.zeros(8, np.uint8), stream.handle)  # a Stream, not its handle
    memory.free()
    with pytest.raises(driver.LogicError, match="invalid resource handle"):
        memory.free()
    del stream
    driver.Context.pop()
    assert issubclass(driver.LogicError, driver.Error) and driver.MemoryError.__name__ == "MemoryError"


def test_fake_pycuda_copies_wait_for_synchronize(pycuda_fake):
    cuda = PyCuda()
    host_in, host_out = cuda.malloc_host(4), cuda.malloc_host(4)
    host_in[:] = 7
    host_out[:] = 0
    ptr, stream = cuda.malloc(4), cuda.stream_create()
    cuda.memcpy_htod_async(ptr, host_in, stream)
    cuda.memcpy_dtoh_async(host_out, ptr, stream)
    assert host_out.tolist() == [0, 0, 0, 0]  # queued, not run: reading before synchronize sees old bytes
    cuda.stream_synchronize(stream)
    assert host_out.tolist() == [7, 7, 7, 7]
    for free in (lambda: cuda.free(ptr), lambda: cuda.free_host(host_in), lambda: cuda.free_host(host_out),
                 lambda: cuda.stream_destroy(stream)):
        free()


# ---------------------------------------------------------------- CudaRuntime over cuda-python 11 / 12 / 13

@pytest.fixture
def cuda_python(monkeypatch, request):
    major, layout = request.param
    fakes.hide_pycuda(monkeypatch)
    return fakes.install_fake_cuda_python(monkeypatch, major, layout=layout)


@pytest.mark.parametrize("cuda_python", [p.values for p in CUDA_PYTHON], ids=[p.id for p in CUDA_PYTHON],
                         indirect=True)
def test_cuda_python_round_trip(cuda_python):
    cuda = load_cuda_memory()
    assert isinstance(cuda, CudaRuntime)
    assert _round_trip(cuda, bytes(range(100))) == bytes(range(100))
    assert cuda_python.memory.blocks == {} and cuda_python.pinned == {} and cuda_python.streams == {}


@pytest.mark.parametrize("cuda_python", [p.values for p in CUDA_PYTHON], ids=[p.id for p in CUDA_PYTHON],
                         indirect=True)
def test_cuda_python_graph_replays_captured_copies(cuda_python):
    cuda = CudaRuntime()
    host_in, host_out = cuda.malloc_host(8), cuda.malloc_host(8)
    ptr, stream = cuda.malloc(8), cuda.stream_create()
    host_in[:], host_out[:] = 1, 0
    cuda.graph_capture_begin(stream)
    cuda.memcpy_htod_async(ptr, host_in, stream)
    cuda.memcpy_dtoh_async(host_out, ptr, stream)
    graph = cuda.graph_capture_end(stream)
    cuda.stream_synchronize(stream)
    assert host_out.tolist() == [0] * 8  # captured, not run
    host_in[:] = 2  # a graph reads its buffers when launched
    cuda.graph_launch(graph, stream)
    cuda.stream_synchronize(stream)
    assert host_out.tolist() == [2] * 8
    cuda.graph_destroy(graph)
    assert cuda_python.graphs == {} and cuda_python.execs == {}


@pytest.mark.parametrize("cuda_python", [p.values for p in CUDA_PYTHON], ids=[p.id for p in CUDA_PYTHON],
                         indirect=True)
def test_cuda_python_invalidated_capture(cuda_python):
    cuda = CudaRuntime()
    stream = cuda.stream_create()
    cuda.graph_capture_begin(stream)
    with pytest.raises(FcnsegError, match="cudaStreamSynchronize failed: expected cudaSuccess, got "
                                          "cudaErrorStreamCaptureUnsupported; try"):
        cuda.stream_synchronize(stream)  # not allowed while capturing: it invalidates the capture
    with pytest.raises(FcnsegError, match="got cudaErrorStreamCaptureInvalidated"):
        cuda.graph_capture_end(stream)
    assert cuda_python.captures == {} and cuda_python.graphs == {}  # capture over, nothing to destroy
    cuda.stream_synchronize(stream)  # the stream works again
    cuda.graph_capture_begin(stream)
    cuda_python.fail("cudaGraphInstantiateWithFlags", fakes.cudaError_t.cudaErrorMemoryAllocation)
    with pytest.raises(FcnsegError, match=r"cudaGraphInstantiateWithFlags failed: .*cudaErrorMemoryAllocation"):
        cuda.graph_capture_end(stream)
    assert cuda_python.graphs == {} and cuda_python.execs == {}  # the captured graph was destroyed
    cuda.stream_destroy(stream)


def test_fake_cuda_python_graph_instantiate_signatures(monkeypatch):
    """cudaGraphInstantiate took (graph, pLogBuffer, bufferSize) in 11.x and takes (graph, flags) in 12.x and
    13.x; cudaGraphInstantiateWithFlags(graph, flags), which CudaRuntime uses, is the same in all three."""
    for major in (11, 12, 13):
        rt = fakes.install_fake_cuda_python(monkeypatch, major).runtime
        _, stream = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
        rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        err, graph = rt.cudaStreamEndCapture(stream)
        assert err == rt.cudaError_t.cudaSuccess
        if major == 11:
            err, graph_exec, _error_node = rt.cudaGraphInstantiate(graph, b"", 0)
        else:
            err, graph_exec = rt.cudaGraphInstantiate(graph, 0)
        assert err == 0 and int(graph_exec) != 0
        with pytest.raises(TypeError):
            rt.cudaGraphInstantiate(graph, 0) if major == 11 else rt.cudaGraphInstantiate(graph, b"", 0)
        with pytest.raises(TypeError):
            rt.cudaMemcpyAsync(0, 0, 0, 1, stream)  # the bindings want a cudaMemcpyKind, not an int
        assert rt.cudaGraphInstantiateWithFlags(graph, 0)[0] == 0


def test_cuda_python_without_a_driver_it_supports(monkeypatch):
    """cuda-bindings 13 on a driver older than 580: it imports, and every call says so."""
    fakes.install_fake_cuda_python(monkeypatch, 13, driver="insufficient")
    with pytest.raises(FcnsegError, match="cudaGetDevice failed: expected cudaSuccess, got cudaErrorInsufficientDriv"):
        CudaRuntime()
    fakes.hide_pycuda(monkeypatch)
    with pytest.raises(FcnsegError, match=r"expected cuda-python or pycuda.*cudaErrorInsufficientDriver.*pycuda: "):
        load_cuda_memory()
    pycuda = fakes.install_fake_pycuda(monkeypatch)
    assert isinstance(load_cuda_memory(), PyCuda)  # pycuda, built for this driver, still works
    assert pycuda.check_exit() == []


# ---------------------------------------------------------------- device_info and gpu_info (defect 9c)

def test_device_info_from_each_library(monkeypatch):
    fakes.install_fake_cuda_python(monkeypatch, 12)
    assert device_info() == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    fakes.install_fake_cuda_python(monkeypatch, 13, driver="insufficient")
    fakes.install_fake_pycuda(monkeypatch)
    assert device_info() == {"name": "Orin", "compute_capability": "8.7"}
    fakes.hide_pycuda(monkeypatch)
    assert device_info() == {"name": "unknown", "compute_capability": "unknown"}


def _fake_torch(monkeypatch, available):
    asked = []
    cuda = types.SimpleNamespace(is_available=lambda: asked.append("is_available") or available,
                                 get_device_capability=lambda index=0: (8, 9),
                                 get_device_name=lambda index=0: "NVIDIA GeForce RTX 4090")
    torch = types.ModuleType("torch")
    torch.__spec__ = importlib.machinery.ModuleSpec("torch", loader=None)
    torch.cuda = cuda
    monkeypatch.setitem(sys.modules, "torch", torch)
    return asked


def test_gpu_info_asks_torch_when_cuda_python_has_no_driver(monkeypatch):
    """A `cuda` package without a driver it supports (torch's cuda-bindings 13 on a 570 driver, say) must not
    stop torch from naming the GPU it can use."""
    fakes.install_fake_cuda_python(monkeypatch, 13, driver="insufficient")
    fakes.hide_pycuda(monkeypatch)
    _fake_torch(monkeypatch, available=True)
    assert gpu_info() == {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}


def test_gpu_info_unknown_when_nothing_finds_a_gpu(monkeypatch):
    fakes.install_fake_cuda_python(monkeypatch, 13, driver="no_device")
    fakes.hide_pycuda(monkeypatch)
    asked = _fake_torch(monkeypatch, available=False)
    assert gpu_info() == {"name": "unknown", "compute_capability": "unknown"}
    assert asked == ["is_available"]


def test_gpu_info_prefers_cuda_python_to_torch(monkeypatch):
    fakes.install_fake_cuda_python(monkeypatch, 12)
    asked = _fake_torch(monkeypatch, available=True)
    assert gpu_info() == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert asked == []


def test_clear_last_error_resets_the_sticky_error(monkeypatch):
    """After a failed capture trtexec calls cudaGetLastError; CudaRuntime.clear_last_error does, pycuda has none."""
    from tests.fakes.cuda import install_fake_cuda_python

    fake = install_fake_cuda_python(monkeypatch, major=13)
    from fcnseg.runtime.backends.cuda_memory import CudaRuntime

    cuda = CudaRuntime()
    fake.fail("cudaStreamSynchronize", fake.runtime.cudaError_t.cudaErrorStreamCaptureInvalidated)
    stream = cuda.stream_create()
    with pytest.raises(Exception):
        cuda.stream_synchronize(stream)
    cuda.clear_last_error()
    assert fake.calls[-1] == "cudaGetLastError" and fake.last_error == fake.runtime.cudaError_t.cudaSuccess
