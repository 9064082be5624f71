"""TensorRT backend: runs a serialized engine (``.plan``/``.engine``) with TensorRT 8.5 to 11.x, torch-free.

The engine is shared; each thread gets its own execution context, stream and buffers (TensorRT
contexts are not thread-safe, engines are), so one backend serves many threads; a thread's buffers
live until ``close()``, so prefer a thread pool to many short-lived threads. Each call sets the input
shape, reads the output shapes back and copies through pinned host memory; a thread's device and pinned
buffers are sized for the shapes it has run and grow only when a larger one arrives (the optimization
profile's maximum may be far larger than what is run). ``context_memory_bytes`` says how much device memory
each context holds for the engine's own activations. With ``cuda_graphs=True`` the enqueue for each input
shape is captured once into a CUDA graph and replayed (a graph freezes shapes and addresses); an engine
that cannot be captured (``execute_async_v3`` failing inside the capture, the capture invalidated, or
TensorRT for RTX's ``is_stream_capturable`` saying no) runs with plain enqueues after one warning, as
trtexec does. A DLA engine runs on the DLA core its sidecar records (``Runtime.DLA_core`` set before
deserializing, as trtexec does). With TensorRT for RTX, the runtime cache of kernels compiled on this GPU is
kept in ``<plan>.rtcache`` beside the engine: read before the first context, written atomically at ``close``.

TensorRT and the CUDA library (cuda-python or pycuda, see ``cuda_memory``) are imported inside the
constructor, never at module import; the TensorRT library is the one the sidecar ``<plan>.json``
(``EngineSidecar``) names: ``tensorrt`` or ``tensorrt_rtx`` (TensorRT for RTX). Before anything is loaded
the GPU is asked of the driver (``probe_gpu``, ctypes over libcuda): with no GPU, or an RTX engine whose
compute capabilities leave this GPU out (Hopper, say), one line says so and how to rebuild. Engines are
tied to the library version and the GPU they were built for, so a failed deserialization says what the
engine needs and how to rebuild it. Tensor types map to numpy by ``DataType`` name (``NUMPY_DTYPES``), never
through ``trt.nptype``, which raises on TensorRT 8.5 with numpy >= 1.24.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...core.atomic import write_bytes
from ...core.errors import FcnsegError, one_line
from ...core.metadata import ModelMetadata
from ...core.sidecar import EngineSidecar, check_runnable, sidecar_path  # noqa: F401  (sidecar_path: re-exported)
from .base import BaseBackend
from .cuda_memory import CudaMemory, load_cuda_memory

if TYPE_CHECKING:
    import tensorrt as trt

Shape = Tuple[int, ...]

LIBRARIES = ("tensorrt", "tensorrt_rtx")
INSTALL_HINTS = {
    "tensorrt": "pip install tensorrt-cu12, or on Jetson it comes with JetPack: sudo apt install python3-libnvinfer",
    "tensorrt_rtx": "pip install tensorrt-rtx (or pip install 'fcnseg[rtx]'); it builds engines on a CPU too",
}
TRT_INSTALL_HINT = INSTALL_HINTS["tensorrt"]


def import_tensorrt(library: str = "tensorrt") -> Any:
    """Import a TensorRT library's Python bindings, or raise FcnsegError saying how to install it.

    Args:
        library: "tensorrt", "tensorrt_rtx" (TensorRT for RTX) or "auto" (tensorrt when importable,
            else tensorrt_rtx).
    """
    if library == "auto":
        try:
            return import_tensorrt("tensorrt")
        except FcnsegError as e:
            try:
                return import_tensorrt("tensorrt_rtx")
            except FcnsegError:
                raise FcnsegError(f"{e}; or TensorRT for RTX: {INSTALL_HINTS['tensorrt_rtx']}") from None
    if library not in LIBRARIES:
        raise FcnsegError(f"expected a TensorRT library in {LIBRARIES + ('auto',)}, got {library!r}; "
                          "try --library auto")
    what = f"TensorRT is not installed: expected the `{library}` Python package ({INSTALL_HINTS[library]})"
    try:
        trt_module = importlib.import_module(library)
    except (ImportError, OSError) as e:  # OSError: bindings present, libnvinfer missing
        raise FcnsegError(f"{what}; got {'ImportError' if isinstance(e, ImportError) else type(e).__name__}: "
                          f"{e}") from None
    if not hasattr(trt_module, "Runtime"):
        # A bare `tensorrt` folder (e.g. type stubs only) imports as an empty namespace package.
        raise FcnsegError(f"{what}; got ImportError: `{library}` at {list(getattr(trt_module, '__path__', []))} "
                          "has no bindings (type stubs only?)")
    return trt_module


def library_name(trt_module: Any) -> str:
    """"tensorrt" or "tensorrt_rtx" for an imported module (a fake named otherwise counts as tensorrt)."""
    name = str(getattr(trt_module, "__name__", "tensorrt")).split(".")[0]
    return name if name in LIBRARIES else "tensorrt"


def probe_gpu() -> Tuple[Optional[Dict[str, str]], str]:
    """CUDA device 0 through the driver API (``libcuda``, via ctypes: no CUDA Python package needed).

    Returns:
        ({"name", "compute_capability"}, "") for a GPU, or (None, why there is none).
    """
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    lib = None
    for name in names:
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(name)
            break
    if lib is None:
        return None, f"no NVIDIA driver: {names[0]} not found"
    count, device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    err = lib.cuInit(0)
    if err != 0:
        return None, f"the NVIDIA driver found no usable CUDA device (cuInit error {err})"
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None, "the NVIDIA driver reports 0 CUDA devices"
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGet(ctypes.byref(device), 0)
    lib.cuDeviceGetName(buf, 256, device)
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    return {"name": buf.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}, ""


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def engine_mismatch_message(plan_path: Union[str, Path], sidecar: Optional[EngineSidecar], *, version: str,
                            gpu: Dict[str, str], reason: str = "", library: str = "tensorrt") -> str:
    """Why an engine could not be deserialized here, and the command that rebuilds it."""
    side = sidecar or EngineSidecar(library=library)
    built = f"{side.library} {side.library_version} for {side.targets()}"
    here = (f"{library} {version} on {gpu.get('name', 'unknown GPU')} (compute capability "
            f"{gpu.get('compute_capability', 'unknown')})")
    onnx_path = side.onnx or "MODEL.onnx"
    detail = f" ({reason})" if reason else ""
    return (f"could not load TensorRT engine {str(plan_path)!r}{detail}: expected an engine built with {here}, "
            f"got one built with {built}; engines are tied to the TensorRT version and GPU, so it must be "
            f"rebuilt on this device: fcn-export trt {onnx_path} --library {library} -o {plan_path}")


# TensorRT data types by name (``DataType.HALF.name``), not ``trt.nptype``: 8.5's builds its table with ``np.bool``,
# which numpy 1.24 removed, so every call raises AttributeError there (NVIDIA/TensorRT#2557).
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


class CudaGraphFallbackWarning(RuntimeWarning):
    """CUDA graphs were asked for, but the engine cannot be captured here: it runs with plain enqueues."""


class RuntimeCacheWarning(RuntimeWarning):
    """The TensorRT for RTX runtime cache file could not be read or written (inference is not affected)."""


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor."""

    name: str
    dtype: np.dtype


@dataclass
class _ThreadState:
    context: trt.IExecutionContext
    stream: Any
    runtime_config: Any = None   # TensorRT for RTX: holds the shared runtime cache; must outlive the context
    device: Dict[str, int] = field(default_factory=dict)
    host: Dict[str, np.ndarray] = field(default_factory=dict)
    capacity: Dict[str, int] = field(default_factory=dict)   # bytes of device[t] and host[t]
    graphs: Dict[Shape, Any] = field(default_factory=dict)


class TensorRTBackend(BaseBackend):
    """Run a TensorRT engine on NCHW float32 batches (the ``Backend`` protocol).

    Args:
        plan_path: serialized engine; its sidecar ``<plan>.json`` supplies metadata and build info.
        metadata: overrides the sidecar's metadata.
        cuda_graphs: replay one captured CUDA graph per input shape (needs cuda-python); an engine that cannot be
            captured runs with plain enqueues after one ``CudaGraphFallbackWarning``.
        cuda: the CUDA memory implementation; default cuda-python, else pycuda.
        gpu: {"name", "compute_capability"} of the GPU to run on; default: device 0 as the driver reports it.

    Raises:
        FcnsegError: TensorRT or CUDA bindings missing, an engine from another TensorRT version or
            GPU, a DLA engine on a device without that DLA core, or (in ``infer``) an input outside the engine's
            optimization profile or a step TensorRT refuses.
    """

    name = "tensorrt"
    thread_safe = True  # one execution context per thread, see the module docstring

    def __init__(self, plan_path: Union[str, Path], *, metadata: Optional[ModelMetadata] = None,
                 cuda_graphs: bool = False, cuda: Optional[CudaMemory] = None,
                 gpu: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.plan_path = Path(plan_path)
        if not self.plan_path.is_file():
            raise FcnsegError(f"expected a TensorRT engine file, got no file at {str(self.plan_path)!r}; "
                              "try building one with fcn-export trt MODEL.onnx -o model.plan")
        self.sidecar = EngineSidecar.read(self.plan_path)
        found, why = (gpu, "") if gpu is not None else probe_gpu()
        check_runnable(self.plan_path, self.sidecar, found, why)
        self._gpu: Dict[str, str] = dict(found or {})
        self.library = self.sidecar.library if self.sidecar is not None else "auto"
        trt_module = import_tensorrt(self.library)
        self.library = library_name(trt_module)
        self._cuda: CudaMemory = cuda if cuda is not None else load_cuda_memory()
        if cuda_graphs and not self._cuda.supports_graphs:
            raise FcnsegError(f"expected cuda-python for CUDA graphs, got {self._cuda.name}; "
                              "try `pip install cuda-python` or cuda_graphs=False")
        self.cuda_graphs = cuda_graphs
        self._lock = threading.Lock()
        self._states: List[_ThreadState] = []
        with self._bound():   # TensorRT's objects belong to the CUDA context the buffers are allocated in
            self._engine: Optional[trt.ICudaEngine] = self._load_engine(trt_module)
            self._rt_cache = _RuntimeCacheFile.for_engine(self._engine, runtime_cache_path(self.plan_path))
        self.input, self.outputs = _engine_io(self._engine, trt_module)
        self.profile = _input_profile(self._engine, self.input.name)
        self.max_batch = self.profile[2][0]   # the Segmenter splits larger batches into runs of this size
        self._context_memory = _context_memory(self._engine)
        self.metadata = metadata or self._metadata_from_sidecar()

    def _load_engine(self, trt_module: Any) -> trt.ICudaEngine:
        """Logger, runtime (DLA core, host code of a version-compatible engine) and the deserialized engine."""
        if TYPE_CHECKING:
            import tensorrt as trt  # mypy checks the names below against the TensorRT stubs
        else:
            trt = trt_module
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime: Optional[trt.Runtime] = trt.Runtime(self._logger)
        self._use_dla_core(self._runtime)
        self._allow_host_code(self._runtime)
        return self._deserialize(trt.__version__)

    def _bound(self) -> ContextManager[None]:
        """The CUDA context current around TensorRT's own calls (``CudaMemory.bound``; a no-op where absent)."""
        bound = getattr(self._cuda, "bound", None)
        return bound() if bound is not None else contextlib.nullcontext()

    @property
    def context_memory_bytes(self) -> Optional[int]:
        """Device memory each execution context (one per thread) holds for the engine's activations, as TensorRT
        reports it for the optimization profile; None where the TensorRT version does not say."""
        return self._context_memory

    def _use_dla_core(self, runtime: trt.Runtime) -> None:
        """Run a DLA engine on the DLA core it was built for, as trtexec does (``setDLACore`` before loading)."""
        side = self.sidecar
        if side is None or side.dla_core is None:
            return
        core, cores = side.dla_core, int(getattr(runtime, "num_DLA_cores", 0))
        if core >= cores:
            raise FcnsegError(f"expected DLA core {core} to run {self.plan_path.name!r} (it was built for that core), "
                              f"got {cores} DLA core{'s' if cores != 1 else ''} on this device; try an engine built "
                              f"for the GPU: fcn-export trt {side.onnx or 'MODEL.onnx'} -o {self.plan_path}")
        runtime.DLA_core = core

    def _allow_host_code(self, runtime: trt.Runtime) -> None:
        """A version-compatible engine carries its own runtime code: allow it, as trtexec does (sampleEngines.cpp)."""
        if getattr(self.sidecar, "version_compatible", False) and hasattr(runtime, "engine_host_code_allowed"):
            runtime.engine_host_code_allowed = True

    def _deserialize(self, version: str) -> trt.ICudaEngine:
        reason = ""
        assert self._runtime is not None
        try:
            engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        except Exception as e:  # TensorRT raises on some mismatches and returns None on others
            engine, reason = None, one_line(e, 300)
        if engine is None:
            raise FcnsegError(engine_mismatch_message(self.plan_path, self.sidecar, version=version,
                                                      gpu=self._gpu, reason=reason, library=self.library))
        return engine

    def _metadata_from_sidecar(self) -> ModelMetadata:
        meta = self.sidecar.model_metadata() if self.sidecar is not None else None
        if meta is not None:
            return meta
        # No sidecar (e.g. a trtexec engine): VOC defaults, with the output telling whether argmax is in-graph.
        return ModelMetadata(argmax=_output_key(self.outputs[0], len(self.outputs)) == "mask")

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one NCHW batch; returns {"logits": (N,C,h,w) float32} or {"mask": (N,h,w) uint8}."""
        with self._bound():
            return self._run(batch)

    def _run(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        state = self._thread_state()
        shapes = self._prepare(state, batch.shape)
        host_in = state.host[self.input.name][: batch.nbytes]
        np.copyto(host_in.view(batch.dtype), batch.reshape(-1))
        t0 = time.perf_counter()
        self._cuda.memcpy_htod_async(state.device[self.input.name], host_in, state.stream)
        self._cuda.stream_synchronize(state.stream)
        t1 = time.perf_counter()
        self._execute(state, batch.shape)
        self._cuda.stream_synchronize(state.stream)
        t2 = time.perf_counter()
        views = self._copy_outputs(state, shapes)
        t3 = time.perf_counter()
        self._set_timing(h2d=t1 - t0, infer=t2 - t1, d2h=t3 - t2)
        return views

    def _check_input(self, batch: np.ndarray) -> np.ndarray:
        """The engine's own input check: a shape inside its optimization profile, cast to its input dtype."""
        arr = np.asarray(batch)
        lo, hi = self.profile[0], self.profile[2]
        if arr.ndim != len(lo) or any(d < a or d > b for d, a, b in zip(arr.shape, lo, hi)):
            raise FcnsegError(
                f"expected an input shape between {format_shape(lo)} and {format_shape(hi)} (the engine's "
                f"optimization profile, min..max), got {format_shape(arr.shape) if arr.ndim else arr.shape}; "
                "try a size inside that range (Segmenter size=...) or rebuild the engine with "
                "fcn-export trt --min-shape/--max-shape covering it")
        return np.ascontiguousarray(arr, dtype=self.input.dtype)

    def _thread_state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._new_state()
            self._local.state = state
        return state

    def _new_state(self) -> _ThreadState:
        """This thread's context and stream; its buffers come with the first batch (``_ensure_buffers``)."""
        assert self._engine is not None
        stream = self._cuda.stream_create()   # first: CUDA is initialised before the runtime cache is read
        try:
            config, context = self._new_context()
        except BaseException:
            with contextlib.suppress(FcnsegError):
                self._cuda.stream_destroy(stream)
            raise
        state = _ThreadState(context=context, stream=stream, runtime_config=config)
        with self._lock:
            self._states.append(state)  # registered first, so close() frees a partly allocated state too
        return state

    def _new_context(self) -> Tuple[Any, trt.IExecutionContext]:
        assert self._engine is not None
        with self._lock:  # creating contexts is cheap and rare; not documented as thread-safe
            config = self._rt_cache.config(self._engine) if self._rt_cache is not None else None
            context = (self._engine.create_execution_context() if config is None
                       else self._engine.create_execution_context(runtime_config=config))
        if context is None:
            raise FcnsegError("expected TensorRT to create an execution context, got None (out of GPU memory?); "
                              "try fewer threads or a smaller --max-shape")
        return config, context

    def _prepare(self, state: _ThreadState, shape: Shape) -> Dict[str, Shape]:
        """Set the input shape, size the buffers for it and set the tensor addresses; return the output shapes."""
        context = state.context
        if not context.set_input_shape(self.input.name, tuple(int(d) for d in shape)):
            raise FcnsegError(f"expected TensorRT to accept input shape {format_shape(shape)} for "
                              f"{self.input.name!r}, got a refusal; try a shape within "
                              f"{format_shape(self.profile[0])}..{format_shape(self.profile[2])}")
        shapes = {o.name: _dims(context.get_tensor_shape(o.name)) for o in self.outputs}
        for tensor, out_shape in shapes.items():
            if any(d < 0 for d in out_shape):
                raise FcnsegError(f"expected a static output shape for {tensor!r} once the input shape is set, "
                                  f"got {out_shape}; try an engine whose output shape follows from the input "
                                  "(data-dependent output shapes are not supported), e.g. from fcn-export's ONNX")
        sizes = {self.input.name: _nbytes(shape, self.input.dtype)}
        sizes.update({o.name: _nbytes(shapes[o.name], o.dtype) for o in self.outputs})
        self._ensure_buffers(state, sizes)
        for tensor, ptr in state.device.items():
            if not context.set_tensor_address(tensor, ptr):
                raise FcnsegError(f"expected TensorRT to accept the device address {ptr:#x} for tensor {tensor!r}, "
                                  "got a refusal (set_tensor_address returned False); try the TensorRT log above "
                                  "for why (an unknown tensor name, or an address not 256-byte aligned)")
        return shapes

    def _ensure_buffers(self, state: _ThreadState, sizes: Dict[str, int]) -> None:
        """Grow device and pinned buffers to ``sizes`` (bytes per tensor); a buffer moves only for a larger size."""
        grown = [tensor for tensor, nbytes in sizes.items() if state.capacity.get(tensor, 0) < nbytes]
        if not grown:
            return
        for shape in list(state.graphs):   # a graph froze the old addresses: capture again at the next call
            with contextlib.suppress(FcnsegError):
                self._cuda.graph_destroy(state.graphs.pop(shape))
        for tensor in grown:
            self._free_buffer(state, tensor)
            state.device[tensor] = self._cuda.malloc(sizes[tensor])
            state.host[tensor] = self._cuda.malloc_host(sizes[tensor])
            state.capacity[tensor] = sizes[tensor]

    def _free_buffer(self, state: _ThreadState, tensor: str) -> None:
        state.capacity.pop(tensor, None)
        ptr, array = state.device.pop(tensor, None), state.host.pop(tensor, None)
        if ptr is not None:
            with contextlib.suppress(FcnsegError):
                self._cuda.free(ptr)
        if array is not None:
            with contextlib.suppress(FcnsegError):
                self._cuda.free_host(array)

    def _execute(self, state: _ThreadState, shape: Shape) -> None:
        handle = self._cuda.stream_handle(state.stream)
        graph = state.graphs.get(tuple(shape)) if self.cuda_graphs else None
        if graph is not None:
            self._cuda.graph_launch(graph, state.stream)
            return
        _enqueue(state.context, handle)
        if self.cuda_graphs:
            # Captured after one normal enqueue (TensorRT does its per-shape setup outside the capture); this
            # call's outputs come from that enqueue, later calls of this shape replay the graph.
            self._cuda.stream_synchronize(state.stream)
            graph = self._capture(state, handle)
            if graph is not None:
                state.graphs[tuple(shape)] = graph

    def _capture(self, state: _ThreadState, handle: int) -> Any:
        """One enqueue captured into a CUDA graph, or None (and plain enqueues from now on) where it cannot be."""
        capturable = getattr(state.context, "is_stream_capturable", None)   # TensorRT for RTX
        if capturable is not None and not capturable(handle):
            return self._graphs_unavailable("TensorRT for RTX's is_stream_capturable says this context cannot be "
                                           "captured on its stream")
        self._cuda.graph_capture_begin(state.stream)
        try:
            ok = state.context.execute_async_v3(handle)
        except BaseException:
            with contextlib.suppress(Exception):
                self._cuda.graph_destroy(self._cuda.graph_capture_end(state.stream))
            raise
        try:
            graph = self._cuda.graph_capture_end(state.stream)
        except FcnsegError as e:   # cudaStreamEndCapture: cudaErrorStreamCaptureInvalidated
            return self._graphs_unavailable(f"the stream capture was invalidated ({one_line(e, 120)})")
        if not ok:
            with contextlib.suppress(FcnsegError):
                self._cuda.graph_destroy(graph)
            return self._graphs_unavailable("execute_async_v3 returned False inside the stream capture")
        return graph

    def _graphs_unavailable(self, why: str) -> None:
        """Fall back to plain enqueues, as trtexec does when a capture fails (sampleInference.cpp), warning once."""
        clear = getattr(self._cuda, "clear_last_error", None)   # cudaGetLastError, as trtexec calls after a failure
        if clear is not None:
            with contextlib.suppress(Exception):
                clear()
        with self._lock:
            warn, self.cuda_graphs = self.cuda_graphs, False
        if warn:
            warnings.warn(f"CUDA graphs are off for {self.plan_path.name}: {why}; the engine contains work not "
                          "permitted under stream capture, so it runs with plain enqueues (as trtexec "
                          "--useCudaGraph does then)", CudaGraphFallbackWarning, stacklevel=5)

    def _copy_outputs(self, state: _ThreadState, shapes: Dict[str, Shape]) -> Dict[str, np.ndarray]:
        views = {}
        for out in self.outputs:
            view = state.host[out.name][: _nbytes(shapes[out.name], out.dtype)]
            self._cuda.memcpy_dtoh_async(view, state.device[out.name], state.stream)
            views[out] = view
        self._cuda.stream_synchronize(state.stream)
        result = {}
        for out, view in views.items():
            array = view.view(out.dtype).reshape(shapes[out.name]).copy()
            key = _output_key(out, len(self.outputs))
            result[key] = _as_output(key, array)
        return result

    def _close(self) -> None:
        """Save the runtime cache, free every thread's buffers, streams, graphs and contexts, then the engine."""
        with self._bound():   # TensorRT frees its contexts and engine in the CUDA context they were made in
            rt_cache = getattr(self, "_rt_cache", None)
            if rt_cache is not None:
                rt_cache.save()
            with self._lock:
                states, self._states = self._states, []
            for state in states:
                self._free_state(state)
            self._local = threading.local()
            self._rt_cache = None   # after the contexts that use it
            self._engine = None
            self._runtime = None

    def _free_state(self, state: _ThreadState) -> None:
        # Free as much as possible: one failed call must not leak the rest.
        for graph in state.graphs.values():
            with contextlib.suppress(FcnsegError):
                self._cuda.graph_destroy(graph)
        for tensor in list(state.capacity):
            self._free_buffer(state, tensor)
        with contextlib.suppress(FcnsegError):
            self._cuda.stream_destroy(state.stream)
        state.graphs = {}
        state.context = None  # type: ignore[assignment]  # contexts must go before the engine
        state.runtime_config = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def runtime_cache_path(plan_path: Union[str, Path]) -> Path:
    """Where the TensorRT for RTX runtime cache of an engine lives: ``model.plan`` -> ``model.plan.rtcache``."""
    p = Path(plan_path)
    return p.with_name(p.name + ".rtcache")


class _RuntimeCacheFile:
    """TensorRT for RTX's runtime cache (kernels compiled on the GPU at run time) kept in a file beside the engine.

    One ``IRuntimeCache`` serves every thread: each context gets its own ``IRuntimeConfig`` holding it. The file is
    read before the first context (a cache of ours from another GPU or driver is rejected by TensorRT and then
    replaced) and written atomically at ``close``, after ``MAGIC``: a file of that name without it is not ours and
    is left as it is (no cache is kept then).
    """

    MAGIC = b"fcnseg-rtx-runtime-cache\n"

    def __init__(self, engine: Any, path: Path) -> None:
        self.path = path
        self.cache = engine.create_runtime_config().create_runtime_cache()
        self.loaded: Optional[bool] = None   # None: not read yet; then whether TensorRT took the file's contents
        self.foreign = False                 # the file is someone else's: never written

    @classmethod
    def for_engine(cls, engine: Any, path: Path) -> Optional["_RuntimeCacheFile"]:
        """The cache where the library has the API (TensorRT for RTX), else None."""
        if not hasattr(engine, "create_runtime_config"):   # TensorRT 8.x to 10.10
            return None
        if not hasattr(engine.create_runtime_config(), "create_runtime_cache"):   # TensorRT 10.11+, 11.x
            return None
        return cls(engine, path)

    def config(self, engine: Any) -> Any:
        """A runtime config for one new context, holding the shared cache (read from the file the first time)."""
        if self.loaded is None:
            self.loaded = self._load()
        config = engine.create_runtime_config()
        if not config.set_runtime_cache(self.cache):
            warnings.warn(f"TensorRT did not take the runtime cache for {self.path.name}; kernels are compiled "
                          "again at each start", RuntimeCacheWarning, stacklevel=4)
        return config

    def _load(self) -> bool:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as e:
            warnings.warn(f"could not read the runtime cache {str(self.path)!r} ({e}); starting with an empty one",
                          RuntimeCacheWarning, stacklevel=5)
            return False
        if not data.startswith(self.MAGIC):
            self.foreign = True
            warnings.warn(f"{str(self.path)!r} is not an fcnseg runtime cache; it is left as it is and kernels are "
                          "compiled again at each start: move it away to keep a cache", RuntimeCacheWarning,
                          stacklevel=5)
            return False
        try:
            return bool(self.cache.deserialize(data[len(self.MAGIC):]))   # False: another GPU, driver or version; replaced at close
        except Exception as e:  # a damaged file must not stop inference: the cache is an optimisation
            warnings.warn(f"TensorRT could not read the runtime cache {str(self.path)!r} ({one_line(e, 200)}); "
                          "starting with an empty one", RuntimeCacheWarning, stacklevel=5)
            return False

    def save(self) -> None:
        if self.loaded is None or self.foreign:
            return   # no context ran (nothing was compiled), or the file is not ours: it stays as it is
        try:
            write_bytes(self.path, self.MAGIC + bytes(memoryview(self.cache.serialize())))
        except Exception as e:  # close() must still free the GPU memory: say so and go on
            warnings.warn(f"could not write the runtime cache {str(self.path)!r} ({one_line(e, 200)}); the next start "
                          "compiles its kernels again", RuntimeCacheWarning, stacklevel=4)


def _engine_io(engine: trt.ICudaEngine, trt_module: Any) -> Tuple[TensorInfo, List[TensorInfo]]:
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = trt_module

    inputs: List[TensorInfo] = []
    outputs: List[TensorInfo] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        info = TensorInfo(name, numpy_dtype(engine.get_tensor_dtype(name), name))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(info)
    if len(inputs) != 1 or not outputs:
        raise FcnsegError(f"expected an engine with one image input and an output, got inputs "
                          f"{[t.name for t in inputs]} and outputs {[t.name for t in outputs]}; "
                          "try an engine built from fcn-export's ONNX")
    return inputs[0], outputs


def numpy_dtype(trt_dtype: Any, tensor: str = "") -> np.dtype:
    """The numpy dtype of a TensorRT ``DataType`` (by member name: the same table on every TensorRT version)."""
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1]
    if name not in NUMPY_DTYPES:
        raise FcnsegError(f"expected engine tensors of a type numpy holds ({', '.join(NUMPY_DTYPES)}), got {name} "
                          f"for {tensor!r}; try an engine whose inputs and outputs are float32/float16 (or an "
                          "integer mask), as fcn-export builds them")
    return np.dtype(NUMPY_DTYPES[name])


def _context_memory(engine: trt.ICudaEngine) -> Optional[int]:
    """Activation memory of one context for profile 0: the ``_v2`` calls where they exist (10.x+), else 8.x's."""
    for method in ("get_device_memory_size_for_profile_v2", "get_device_memory_size_for_profile"):
        if hasattr(engine, method):
            return int(getattr(engine, method)(0))
    for prop in ("device_memory_size_v2", "device_memory_size"):   # 8.x has only device_memory_size
        if hasattr(engine, prop):
            return int(getattr(engine, prop))
    return None


def _input_profile(engine: trt.ICudaEngine, name: str) -> Tuple[Shape, Shape, Shape]:
    lo, opt, hi = (_dims(d) for d in engine.get_tensor_profile_shape(name, 0))
    return lo, opt, hi


def _dims(dims: Any) -> Shape:
    """A TensorRT ``Dims`` as a tuple (indexing works on every version; iteration is not in the stubs)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _enqueue(context: trt.IExecutionContext, handle: int) -> None:
    if not context.execute_async_v3(handle):
        raise FcnsegError("expected TensorRT's execute_async_v3 to enqueue the engine, got False; try the TensorRT "
                          "log above for the reason (an input shape or tensor address not set, or the GPU out of "
                          "memory)")


def _output_key(out: TensorInfo, num_outputs: int) -> str:
    """Name outputs as the runtime expects: "logits" (float scores) or "mask" (class ids)."""
    if out.name in ("logits", "mask") or num_outputs > 1:
        return out.name
    return "mask" if np.issubdtype(out.dtype, np.integer) else "logits"


def _as_output(key: str, array: np.ndarray) -> np.ndarray:
    """Logits as float32 (an FP16-output engine gives float16, as ONNX Runtime's backend casts too), masks as uint8."""
    if key == "logits" and array.dtype != np.float32:
        return array.astype(np.float32)
    if key == "mask" and array.dtype != np.uint8:
        return array.astype(np.uint8)
    return array


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
