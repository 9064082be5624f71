"""TensorRT backend: runs a serialized engine (``.plan``/``.engine``) with TensorRT 8.5 to 11.x, torch-free.

The engine is shared; each thread gets its own execution context, stream and buffers (TensorRT
contexts are not thread-safe, engines are), so one backend serves many threads; a thread's buffers
live until ``close()``, so prefer a thread pool to many short-lived threads. Buffers are sized
once for the optimization profile's MAX shape; each call sets the input shape, reads the output
shapes back and copies through pinned host memory. With ``cuda_graphs=True`` the enqueue for each
input shape is captured once into a CUDA graph and replayed (a graph freezes shapes and addresses).

TensorRT and the CUDA library (cuda-python or pycuda, see ``cuda_memory``) are imported inside the
constructor, never at module import. Engines are tied to the TensorRT version and the GPU they were
built with; the sidecar ``<plan>.json`` written by ``fcnseg.export.tensorrt`` records both, so a
failed deserialization says what the engine needs and how to rebuild it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import FcnsegError, first_line
from ..metadata import ModelMetadata
from .cuda_memory import CudaMemory, device_info, load_cuda_memory

if TYPE_CHECKING:
    import tensorrt as trt

Shape = Tuple[int, ...]

TRT_INSTALL_HINT = ("pip install tensorrt-cu12, or on Jetson it comes with JetPack: "
                    "sudo apt install python3-libnvinfer")


def import_tensorrt() -> Any:
    """Import the TensorRT Python bindings, or raise FcnsegError saying how to install them."""
    try:
        import tensorrt as trt_module
    except (ImportError, OSError) as e:  # OSError: bindings present, libnvinfer missing
        raise FcnsegError(f"TensorRT is not installed: expected the `tensorrt` Python package ({TRT_INSTALL_HINT}); "
                          f"got {'ImportError' if isinstance(e, ImportError) else type(e).__name__}: {e}") from None
    if not hasattr(trt_module, "Runtime"):
        # A bare `tensorrt` folder (e.g. type stubs only) imports as an empty namespace package.
        raise FcnsegError(f"TensorRT is not installed: expected the `tensorrt` Python package ({TRT_INSTALL_HINT}); "
                          f"got ImportError: `tensorrt` at {list(getattr(trt_module, '__path__', []))} has no "
                          "bindings (type stubs only?)")
    return trt_module


def sidecar_path(plan_path: Union[str, Path]) -> Path:
    """Where an engine's sidecar JSON lives: ``model.plan`` -> ``model.plan.json``."""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


def read_build_info(plan_path: Union[str, Path]) -> Dict[str, Any]:
    """The engine's sidecar document ({} when there is none): TensorRT version, GPU, profile, metadata."""
    p = Path(plan_path)
    for candidate in (sidecar_path(p), p.with_suffix(".json")):
        if candidate.is_file():
            try:
                doc = json.loads(candidate.read_text())
            except (OSError, ValueError) as e:
                raise FcnsegError(f"expected the engine's sidecar {str(candidate)!r} to be JSON written by "
                                  f"fcn-export, got {e}; try rebuilding the engine with fcn-export trt") from None
            return doc if isinstance(doc, dict) else {}
    return {}


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def engine_mismatch_message(plan_path: Union[str, Path], build_info: Dict[str, Any], *, version: str,
                            gpu: Dict[str, str], reason: str = "") -> str:
    """Why an engine could not be deserialized here, and the command that rebuilds it."""
    built_gpu = build_info.get("gpu") or {}
    built = (f"TensorRT {build_info.get('tensorrt_version', 'unknown')} on "
             f"{built_gpu.get('name', 'unknown GPU')} (compute capability {built_gpu.get('compute_capability', 'unknown')})")
    here = f"TensorRT {version} on {gpu.get('name', 'unknown GPU')} (compute capability {gpu.get('compute_capability', 'unknown')})"
    onnx_path = build_info.get("onnx") or "MODEL.onnx"
    detail = f" ({reason})" if reason else ""
    return (f"could not load TensorRT engine {str(plan_path)!r}{detail}: expected an engine built with {here}, "
            f"got one built with {built}; engines are tied to the TensorRT version and GPU, so it must be "
            f"rebuilt on this device: fcn-export trt {onnx_path} -o {plan_path}")


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


class TensorRTBackend:
    """Run a TensorRT engine on NCHW float32 batches (the ``Backend`` protocol).

    Args:
        plan_path: serialized engine; its sidecar ``<plan>.json`` supplies metadata and build info.
        metadata: overrides the sidecar's metadata.
        cuda_graphs: replay one captured CUDA graph per input shape (needs cuda-python).
        cuda: the CUDA memory implementation; default cuda-python, else pycuda.

    Raises:
        FcnsegError: TensorRT or CUDA bindings missing, an engine from another TensorRT version or
            GPU, or (in ``infer``) an input outside the engine's optimization profile.
    """

    name = "tensorrt"
    thread_safe = True  # one execution context per thread, see the module docstring

    def __init__(self, plan_path: Union[str, Path], *, metadata: Optional[ModelMetadata] = None,
                 cuda_graphs: bool = False, cuda: Optional[CudaMemory] = None) -> None:
        self.plan_path = Path(plan_path)
        if not self.plan_path.is_file():
            raise FcnsegError(f"expected a TensorRT engine file, got no file at {str(self.plan_path)!r}; "
                              "try building one with fcn-export trt MODEL.onnx -o model.plan")
        self.build_info = read_build_info(self.plan_path)
        import_tensorrt()
        import tensorrt as trt  # checked just above; imported by name so mypy checks it against the stubs

        self._cuda: CudaMemory = cuda if cuda is not None else load_cuda_memory()
        if cuda_graphs and not self._cuda.supports_graphs:
            raise FcnsegError(f"expected cuda-python for CUDA graphs, got {self._cuda.name}; "
                              "try `pip install cuda-python` or cuda_graphs=False")
        self.cuda_graphs = cuda_graphs
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime: Optional[trt.Runtime] = trt.Runtime(self._logger)
        self._engine: Optional[trt.ICudaEngine] = self._deserialize(trt.__version__)
        self.input, self.outputs = _engine_io(self._engine)
        self.profile = _input_profile(self._engine, self.input.name)
        self.max_batch = self.profile[2][0]   # the Segmenter splits larger batches into runs of this size
        self.metadata = metadata or self._metadata_from_sidecar()
        self._lock = threading.Lock()
        self._states: List[_ThreadState] = []
        self._local = threading.local()

    def _deserialize(self, version: str) -> trt.ICudaEngine:
        reason = ""
        assert self._runtime is not None
        try:
            engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        except Exception as e:  # TensorRT raises on some mismatches and returns None on others
            engine, reason = None, first_line(e)
        if engine is None:
            raise FcnsegError(engine_mismatch_message(self.plan_path, self.build_info, version=version,
                                                      gpu=device_info(), reason=reason))
        return engine

    def _metadata_from_sidecar(self) -> ModelMetadata:
        meta = self.build_info.get("metadata")
        if isinstance(meta, dict):
            return ModelMetadata.from_dict(meta)
        # No sidecar (e.g. a trtexec engine): VOC defaults, with the output telling whether argmax is in-graph.
        return ModelMetadata(argmax=_output_key(self.outputs[0], len(self.outputs)) == "mask")

    @property
    def last_timing(self) -> Dict[str, float]:
        """Seconds spent in the calling thread's last ``infer``: "h2d", "infer", "d2h"."""
        return getattr(self._local, "timing", {"h2d": 0.0, "infer": 0.0, "d2h": 0.0})

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one NCHW batch; returns {"logits": (N,C,h,w) float32} or {"mask": (N,h,w) uint8}."""
        if self._engine is None:
            raise FcnsegError("expected an open TensorRTBackend, got one that was closed; try loading it again")
        batch = self._check_batch(batch)
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
        self._local.timing = {"h2d": t1 - t0, "infer": t2 - t1, "d2h": t3 - t2}
        return views

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
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

    def close(self) -> None:
        """Free every thread's buffers, streams, graphs and contexts, then the engine. Idempotent."""
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

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _engine_io(engine: trt.ICudaEngine) -> Tuple[TensorInfo, List[TensorInfo]]:
    import tensorrt as trt

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
