"""CUDA memory for the TensorRT backend without PyTorch: cuda-python where installed, pycuda otherwise.

The TensorRT backend needs seven things from CUDA: device and pinned host allocations, asynchronous
copies, a stream, and (optionally) stream capture into a CUDA graph. ``CudaMemory`` names exactly
those; ``CudaRuntime`` implements them with cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart``), ``PyCuda`` with pycuda, which is what JetPack images usually carry. Every
cuda-python call returns ``(err, *results)`` and each one is checked. Nothing here is imported
unless a TensorRT engine is loaded.

Threads: pycuda keeps a stack of current contexts per thread and calls abort() when a thread ends with
its stack non-empty (``~context_stack`` in pycuda's cuda.hpp; NVIDIA/TensorRT#1107, #2357), so ``PyCuda``
pushes the primary context around each call, or around a ``with cuda.bound():`` block, and always pops it.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any, ContextManager, Dict, Iterator, Protocol

import numpy as np

from ...core.errors import FcnsegError

INSTALL_HINT = ("pip install cuda-python (12.x for drivers older than 580, e.g. JetPack 6), or on Jetson "
                "pycuda (pip install pycuda, built on the device)")


class CudaMemory(Protocol):
    """The CUDA operations the TensorRT backend uses. Pointers are plain ints; streams are opaque.

    Every method may be called from any thread and leaves nothing pushed on the thread's context stack, so a
    thread (a pool's, or a pipeline's short-lived one) can end at any time. ``bound()`` makes the device's
    primary context current around a block: put TensorRT's own calls (deserialize, create an execution
    context, enqueue) in one so that they use the context the buffers were allocated in.
    """

    name: str
    supports_graphs: bool

    def bound(self) -> ContextManager[None]:
        """The device's primary context current in this thread inside a ``with`` block, undone on exit (nests)."""

    def bind_thread(self) -> None:
        """Deprecated no-op kept for callers of the first protocol: each call binds its context now; use ``bound()``."""

    def malloc(self, nbytes: int) -> int:
        """Device memory of ``nbytes``; returns its address."""

    def free(self, ptr: int) -> None:
        """Release device memory from ``malloc``."""

    def malloc_host(self, nbytes: int) -> np.ndarray:
        """Pinned (page-locked) host memory as a uint8 array of ``nbytes``."""

    def free_host(self, array: np.ndarray) -> None:
        """Release pinned host memory from ``malloc_host``."""

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        """Copy a (pinned) host array to device memory on ``stream``."""

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        """Copy device memory into a (pinned) host array on ``stream``."""

    def stream_create(self) -> Any:
        """A new non-default stream (CUDA graphs cannot be captured on the default one)."""

    def stream_handle(self, stream: Any) -> int:
        """The stream as the integer handle TensorRT's ``execute_async_v3`` takes."""

    def stream_synchronize(self, stream: Any) -> None:
        """Wait until everything queued on ``stream`` has run."""

    def stream_destroy(self, stream: Any) -> None:
        """Release a stream from ``stream_create``."""

    def clear_last_error(self) -> None:
        """Reset the thread's sticky CUDA error after a failed capture (trtexec calls ``cudaGetLastError``)."""

    def graph_capture_begin(self, stream: Any) -> None:
        """Start capturing the work queued on ``stream`` into a CUDA graph."""

    def graph_capture_end(self, stream: Any) -> Any:
        """End the capture and return an instantiated, launchable graph."""

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        """Replay an instantiated graph on ``stream``."""

    def graph_destroy(self, graph_exec: Any) -> None:
        """Release an instantiated graph."""


def load_cuda_memory() -> CudaMemory:
    """cuda-python if it works here, else pycuda; FcnsegError saying why each failed if neither does.

    cuda-python is skipped when installed but unusable, e.g. cuda-bindings 13 (pulled in by a CUDA 13 torch)
    on a driver older than 580, where a pycuda built on the device still works.
    """
    errors = []
    for cls in (CudaRuntime, PyCuda):
        try:
            return cls()
        except ImportError as e:
            errors.append(f"{cls.name}: not installed ({e})")
        except FcnsegError as e:
            errors.append(f"{cls.name}: {e}")
    raise FcnsegError(f"expected cuda-python or pycuda to move data to the GPU, got {'; '.join(errors)}; "
                      f"try {INSTALL_HINT}")


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python; an ImportError here means no cuda-python at all
    return cudart


class CudaRuntime:
    """``CudaMemory`` over the CUDA runtime API of cuda-python."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self) -> None:
        self._rt = _import_cudart()
        self._pinned: Dict[int, Any] = {}
        self._check("cudaGetDevice", self._rt.cudaGetDevice())  # fails early and clearly without driver or GPU

    def _check(self, what: str, result: Any) -> Any:
        err, *rest = result
        if err != self._rt.cudaError_t.cudaSuccess:
            raise FcnsegError(f"CUDA call {what} failed: expected cudaSuccess, got {getattr(err, 'name', err)}; "
                              "try `nvidia-smi` to check the GPU and driver, and a cuda-python whose major "
                              "version the driver supports (cuda-bindings 13 needs driver >= 580)")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def bound(self) -> ContextManager[None]:
        return contextlib.nullcontext()  # the runtime API uses the device's primary context in every thread

    def bind_thread(self) -> None:
        pass

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self._rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self._rt.cudaFree(ptr))

    def malloc_host(self, nbytes: int) -> np.ndarray:
        ptr = int(self._check("cudaMallocHost", self._rt.cudaMallocHost(nbytes)))
        array = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))
        self._pinned[array.ctypes.data] = ptr
        return array

    def free_host(self, array: np.ndarray) -> None:
        ptr = self._pinned.pop(array.ctypes.data, None)
        if ptr is not None:
            self._check("cudaFreeHost", self._rt.cudaFreeHost(ptr))

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check("cudaMemcpyAsync", self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check("cudaMemcpyAsync", self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def stream_create(self) -> Any:
        return self._check("cudaStreamCreateWithFlags",
                           self._rt.cudaStreamCreateWithFlags(self._rt.cudaStreamNonBlocking))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._check("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._check("cudaStreamDestroy", self._rt.cudaStreamDestroy(stream))

    def clear_last_error(self) -> None:
        self._rt.cudaGetLastError()   # returns (the error it cleared,): nothing to check, it is being dropped

    def graph_capture_begin(self, stream: Any) -> None:
        # Thread-local mode: other threads' contexts may allocate while this one captures.
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check("cudaStreamBeginCapture", self._rt.cudaStreamBeginCapture(stream, mode))

    def graph_capture_end(self, stream: Any) -> Any:
        graph = self._check("cudaStreamEndCapture", self._rt.cudaStreamEndCapture(stream))
        try:
            # ...WithFlags(graph, flags) has the same signature from CUDA 11.4 to 13.
            return self._check("cudaGraphInstantiateWithFlags", self._rt.cudaGraphInstantiateWithFlags(graph, 0))
        finally:
            self._check("cudaGraphDestroy", self._rt.cudaGraphDestroy(graph))

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._check("cudaGraphLaunch", self._rt.cudaGraphLaunch(graph_exec, stream))

    def graph_destroy(self, graph_exec: Any) -> None:
        self._check("cudaGraphExecDestroy", self._rt.cudaGraphExecDestroy(graph_exec))


class _PyCudaStream:
    """Holds a pycuda ``Stream`` so ``stream_destroy`` can drop it while the context is current: pycuda
    destroys a stream when it is collected, and cannot in another thread with no context current (it warns
    and leaks it)."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream


class PyCuda:
    """``CudaMemory`` over pycuda, sharing the device's primary context with TensorRT.

    The primary context is retained once and pushed only for the duration of each call (or ``bound()``
    block), then popped: a thread never ends with it on pycuda's context stack, which would abort the process.
    """

    name = "pycuda"
    supports_graphs = False  # pycuda exposes no stream capture

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        try:
            cuda.init()
            self._context = cuda.Device(0).retain_primary_context()  # retained, not pushed
        except cuda.Error as e:
            raise _pycuda_error("init", e) from None
        self._allocations: Dict[int, Any] = {}

    def bound(self) -> ContextManager[None]:
        return self._bound("call")

    @contextlib.contextmanager
    def _bound(self, what: str) -> Iterator[None]:
        try:
            self._context.push()
            try:
                yield
            finally:
                self._cuda.Context.pop()  # pops what push pushed, even when the block raised
        except self._cuda.Error as e:
            raise _pycuda_error(what, e) from None

    def bind_thread(self) -> None:
        pass  # every call pushes and pops the context itself; a lasting push would abort at thread exit

    def malloc(self, nbytes: int) -> int:
        with self._bound("mem_alloc"):
            allocation = self._cuda.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            with self._bound("DeviceAllocation.free"):
                allocation.free()

    def malloc_host(self, nbytes: int) -> np.ndarray:
        with self._bound("pagelocked_empty"):
            return self._cuda.pagelocked_empty(nbytes, np.uint8)

    def free_host(self, array: np.ndarray) -> None:
        free = getattr(array.base, "free", None)
        if free is not None:
            with self._bound("PagelockedHostAllocation.free"):
                free()

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        with self._bound("memcpy_htod_async"):
            self._cuda.memcpy_htod_async(dst, src, stream.stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        with self._bound("memcpy_dtoh_async"):
            self._cuda.memcpy_dtoh_async(dst, src, stream.stream)

    def stream_create(self) -> Any:
        with self._bound("Stream"):
            return _PyCudaStream(self._cuda.Stream())

    def stream_handle(self, stream: Any) -> int:
        return int(stream.stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        with self._bound("Stream.synchronize"):
            stream.stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        with self._bound("Stream destruction"):
            stream.stream = None  # the last reference: pycuda destroys the stream now, its context current

    def clear_last_error(self) -> None:
        """pycuda raises each CUDA error where it happens: no sticky error is left to clear."""

    def graph_capture_begin(self, stream: Any) -> None:
        raise FcnsegError("expected cuda-python for CUDA graphs, got pycuda, which cannot capture streams; "
                          "try `pip install cuda-python` or cuda_graphs=False")

    def graph_capture_end(self, stream: Any) -> Any:
        raise AssertionError("unreachable: graph_capture_begin raised")

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        raise AssertionError("unreachable: no graph can be captured with pycuda")

    def graph_destroy(self, graph_exec: Any) -> None:
        pass


def _pycuda_error(what: str, error: Exception) -> FcnsegError:
    return FcnsegError(f"pycuda {what} failed: expected success, got {type(error).__name__}: {error}; "
                       "try `nvidia-smi` (`tegrastats` on Jetson) to check the GPU, and a pycuda built on this "
                       "device against its CUDA")


def device_info() -> Dict[str, str]:
    """Name and compute capability of CUDA device 0 via cuda-python or pycuda; "unknown" where neither works."""
    for probe in (_device_info_cudart, _device_info_pycuda):
        try:
            return probe()
        except Exception:  # no library, no driver, no GPU: try the next way, then say "unknown"
            continue
    return {"name": "unknown", "compute_capability": "unknown"}


def _device_info_cudart() -> Dict[str, str]:
    rt = _import_cudart()
    err, device = rt.cudaGetDevice()
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(err)
    err, prop = rt.cudaGetDeviceProperties(device)
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(err)
    name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}"}


def _device_info_pycuda() -> Dict[str, str]:
    import pycuda.driver as cuda

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return {"name": str(device.name()), "compute_capability": f"{major}.{minor}"}
