"""TensorRT backend: runs a serialized engine (``.plan``/``.engine``) with TensorRT 8.5 to 11.x, torch-free.

The engine is shared; each thread gets its own execution context, stream and buffers (TensorRT
contexts are not thread-safe, engines are), so one backend serves many threads; a thread's buffers
live until ``close()``, so prefer a thread pool to many short-lived threads. Buffers are sized
once for the optimization profile's MAX shape; each call sets the input shape, reads the output
shapes back and copies through pinned host memory. With ``cuda_graphs=True`` the enqueue for each
input shape is captured once into a CUDA graph and replayed (a graph freezes shapes and addresses).

TensorRT and the CUDA library (cuda-python or pycuda, see ``cuda_memory``) are imported inside the
constructor, never at module import; the TensorRT library is the one the sidecar ``<plan>.json``
(``EngineSidecar``) names: ``tensorrt`` or ``tensorrt_rtx`` (TensorRT for RTX). Before anything is loaded
the GPU is asked of the driver (``probe_gpu``, ctypes over libcuda): with no GPU, or an RTX engine whose
compute capabilities leave this GPU out (Hopper, say), one line says so and how to rebuild. Engines are
tied to the library version and the GPU they were built for, so a failed deserialization says what the
engine needs and how to rebuild it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...core.errors import FcnsegError, one_line
from ...core.metadata import ModelMetadata
from ...core.sidecar import EngineSidecar, check_runnable, sidecar_path  # noqa: F401  (sidecar_path: re-exported)
from .base import BaseBackend
from .cuda_memory import CudaMemory, device_info, load_cuda_memory

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


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor."""

    name: str
    dtype: np.dtype


@dataclass
class _ThreadState:
    context: trt.IExecutionContext
    stream: Any
    device: Dict[str, int] = field(default_factory=dict)
    host: Dict[str, np.ndarray] = field(default_factory=dict)
    graphs: Dict[Shape, Any] = field(default_factory=dict)


class TensorRTBackend(BaseBackend):
    """Run a TensorRT engine on NCHW float32 batches (the ``Backend`` protocol).

    Args:
        plan_path: serialized engine; its sidecar ``<plan>.json`` supplies metadata and build info.
        metadata: overrides the sidecar's metadata.
        cuda_graphs: replay one captured CUDA graph per input shape (needs cuda-python).
        cuda: the CUDA memory implementation; default cuda-python, else pycuda.
        gpu: {"name", "compute_capability"} of the GPU to run on; default: device 0 as the driver reports it.

    Raises:
        FcnsegError: TensorRT or CUDA bindings missing, an engine from another TensorRT version or
            GPU, or (in ``infer``) an input outside the engine's optimization profile.
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
        self.library = self.sidecar.library if self.sidecar is not None else "auto"
        trt_module = import_tensorrt(self.library)
        self.library = library_name(trt_module)
        if TYPE_CHECKING:
            import tensorrt as trt  # mypy checks the names below against the TensorRT stubs
        else:
            trt = trt_module

        self._cuda: CudaMemory = cuda if cuda is not None else load_cuda_memory()
        if cuda_graphs and not self._cuda.supports_graphs:
            raise FcnsegError(f"expected cuda-python for CUDA graphs, got {self._cuda.name}; "
                              "try `pip install cuda-python` or cuda_graphs=False")
        self.cuda_graphs = cuda_graphs
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime: Optional[trt.Runtime] = trt.Runtime(self._logger)
        self._engine: Optional[trt.ICudaEngine] = self._deserialize(trt.__version__)
        self.input, self.outputs = _engine_io(self._engine, trt_module)
        self.profile = _input_profile(self._engine, self.input.name)
        self.max_batch = self.profile[2][0]   # the Segmenter splits larger batches into runs of this size
        self.metadata = metadata or self._metadata_from_sidecar()
        self._lock = threading.Lock()
        self._states: List[_ThreadState] = []

    def _deserialize(self, version: str) -> trt.ICudaEngine:
        reason = ""
        assert self._runtime is not None
        try:
            engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        except Exception as e:  # TensorRT raises on some mismatches and returns None on others
            engine, reason = None, one_line(e, 300)
        if engine is None:
            raise FcnsegError(engine_mismatch_message(self.plan_path, self.sidecar, version=version,
                                                      gpu=device_info(), reason=reason, library=self.library))
        return engine

    def _metadata_from_sidecar(self) -> ModelMetadata:
        meta = self.sidecar.model_metadata() if self.sidecar is not None else None
        if meta is not None:
            return meta
        # No sidecar (e.g. a trtexec engine): VOC defaults, with the output telling whether argmax is in-graph.
        return ModelMetadata(argmax=_output_key(self.outputs[0], len(self.outputs)) == "mask")

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one NCHW batch; returns {"logits": (N,C,h,w) float32} or {"mask": (N,h,w) uint8}."""
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
        assert self._engine is not None
        self._cuda.bind_thread()
        with self._lock:  # creating contexts is cheap and rare; not documented as thread-safe
            context = self._engine.create_execution_context()
        if context is None:
            raise FcnsegError("expected TensorRT to create an execution context, got None (out of GPU memory?); "
                              "try fewer threads or a smaller --max-shape")
        state = _ThreadState(context=context, stream=self._cuda.stream_create())
        with self._lock:
            self._states.append(state)  # registered first, so close() frees a partly allocated state too
        max_shapes = self._prepare(state, self.profile[2])
        sizes = {self.input.name: _nbytes(self.profile[2], self.input.dtype)}
        sizes.update({o.name: _nbytes(max_shapes[o.name], o.dtype) for o in self.outputs})
        for tensor, nbytes in sizes.items():
            state.device[tensor] = self._cuda.malloc(nbytes)
            state.host[tensor] = self._cuda.malloc_host(nbytes)
        return state

    def _prepare(self, state: _ThreadState, shape: Shape) -> Dict[str, Shape]:
        """Set the input shape and tensor addresses; return the output shapes TensorRT derives."""
        context = state.context
        if not context.set_input_shape(self.input.name, tuple(shape)):
            raise FcnsegError(f"expected TensorRT to accept input shape {format_shape(shape)} for "
                              f"{self.input.name!r}, got a refusal; try a shape within "
                              f"{format_shape(self.profile[0])}..{format_shape(self.profile[2])}")
        for tensor, ptr in state.device.items():
            context.set_tensor_address(tensor, ptr)
        shapes = {o.name: _dims(context.get_tensor_shape(o.name)) for o in self.outputs}
        for tensor, out_shape in shapes.items():
            if any(d < 0 for d in out_shape):
                raise FcnsegError(f"expected a static output shape for {tensor!r} once the input shape is set, "
                                  f"got {out_shape}; data-dependent output shapes are not supported")
        return shapes

    def _execute(self, state: _ThreadState, shape: Shape) -> None:
        handle = self._cuda.stream_handle(state.stream)
        if not self.cuda_graphs:
            _enqueue(state.context, handle)
            return
        graph = state.graphs.get(tuple(shape))
        if graph is None:
            # One normal enqueue first: TensorRT does its per-shape setup outside the capture.
            _enqueue(state.context, handle)
            self._cuda.stream_synchronize(state.stream)
            graph = state.graphs[tuple(shape)] = self._capture(state, handle)
        self._cuda.graph_launch(graph, state.stream)

    def _capture(self, state: _ThreadState, handle: int) -> Any:
        self._cuda.graph_capture_begin(state.stream)
        try:
            ok = state.context.execute_async_v3(handle)
        except BaseException:
            with contextlib.suppress(Exception):
                self._cuda.graph_destroy(self._cuda.graph_capture_end(state.stream))
            raise
        graph = self._cuda.graph_capture_end(state.stream)
        if not ok:
            self._cuda.graph_destroy(graph)
            raise FcnsegError("expected TensorRT to enqueue inside a CUDA graph capture, got a failure; "
                              "try cuda_graphs=False")
        return graph

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
            result[key] = array.astype(np.uint8) if key == "mask" and array.dtype != np.uint8 else array
        return result

    def _close(self) -> None:
        """Free every thread's buffers, streams, graphs and contexts, then the engine (once, from ``close``)."""
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            self._free_state(state)
        self._local = threading.local()
        self._engine = None
        self._runtime = None

    def _free_state(self, state: _ThreadState) -> None:
        self._cuda.bind_thread()
        # Free as much as possible: one failed call must not leak the rest.
        for graph in state.graphs.values():
            with contextlib.suppress(FcnsegError):
                self._cuda.graph_destroy(graph)
        for ptr in state.device.values():
            with contextlib.suppress(FcnsegError):
                self._cuda.free(ptr)
        for array in state.host.values():
            with contextlib.suppress(FcnsegError):
                self._cuda.free_host(array)
        with contextlib.suppress(FcnsegError):
            self._cuda.stream_destroy(state.stream)
        state.graphs, state.device, state.host = {}, {}, {}
        state.context = None  # type: ignore[assignment]  # contexts must go before the engine

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _engine_io(engine: trt.ICudaEngine, trt_module: Any) -> Tuple[TensorInfo, List[TensorInfo]]:
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = trt_module

    inputs: List[TensorInfo] = []
    outputs: List[TensorInfo] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        info = TensorInfo(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(info)
    if len(inputs) != 1 or not outputs:
        raise FcnsegError(f"expected an engine with one image input and an output, got inputs "
                          f"{[t.name for t in inputs]} and outputs {[t.name for t in outputs]}; "
                          "try an engine built from fcn-export's ONNX")
    return inputs[0], outputs


def _input_profile(engine: trt.ICudaEngine, name: str) -> Tuple[Shape, Shape, Shape]:
    lo, opt, hi = (_dims(d) for d in engine.get_tensor_profile_shape(name, 0))
    return lo, opt, hi


def _dims(dims: Any) -> Shape:
    """A TensorRT ``Dims`` as a tuple (indexing works on every version; iteration is not in the stubs)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _enqueue(context: trt.IExecutionContext, handle: int) -> None:
    if not context.execute_async_v3(handle):
        raise FcnsegError("expected TensorRT's execute_async_v3 to enqueue the engine, got a failure; "
                          "see the TensorRT log above")


def _output_key(out: TensorInfo, num_outputs: int) -> str:
    """Name outputs as the runtime expects: "logits" (float scores) or "mask" (class ids)."""
    if out.name in ("logits", "mask") or num_outputs > 1:
        return out.name
    return "mask" if np.issubdtype(out.dtype, np.integer) else "logits"


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
