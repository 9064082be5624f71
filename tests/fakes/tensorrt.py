"""Fake ``tensorrt`` modules for TensorRT 8.5, 8.6, 10.x, 11.x and TensorRT for RTX, running engines on numpy.

``make_tensorrt(version)`` returns a module that looks like that version's Python bindings and runs a tiny
"engine" on numpy bytes addressed by integer pointers (``FakeCudaMemory``, the ``CudaMemory`` protocol of
``fcnseg.runtime.backends.cuda_memory``), so the TensorRT backend's whole data path runs without a GPU.
``install`` puts one in ``sys.modules`` and gives the backend a fake GPU.

Where the surface comes from (names, enum members and values, signatures), per version:

- 10.x (``__version__`` 10.13.0.35): the tensorrt-stubs 10.13 package (``tensorrt_bindings/tensorrt.pyi``),
  plus the two write-only properties its generator leaves out (``Runtime.gpu_allocator``,
  ``IExecutionContext.device_memory``: ``.def_property(name, nullptr, setter)`` in NVIDIA/TensorRT
  v10.13.0 ``python/src/infer/pyCore.cpp``). Deprecated in 10.1 and warning when used:
  ``device_memory_size``, ``get_device_memory_size_for_profile`` (pyCore.cpp, ``utils::deprecate``).
- RTX (``tensorrt_rtx`` 1.7.1.116): ``dir()`` and ``__members__`` of the installed ``tensorrt_rtx`` module.
  Only RTX has ``IExecutionContext.is_stream_capturable`` and the runtime cache (``IRuntimeConfig.
  create_runtime_cache``/``set_runtime_cache``, ``IRuntimeCache.serialize``/``deserialize``/``reset``).
- 8.5 (8.5.2.2, JetPack 5.1) and 8.6 (8.6.2.3, JetPack 6.0): NVIDIA/TensorRT tags 8.5.2 and v8.6.1,
  ``python/src/infer/pyCore.cpp`` and ``pyFoundationalTypes.cpp``: the binding API (``num_bindings``,
  ``get_binding_*``, ``binding_is_input``, ``get_profile_shape``, ``execute_async_v2``, ``set_binding_shape``)
  is still there, next to the name API (``get_tensor_*``, ``set_input_shape``, ``execute_async_v3``); no
  ``device_memory_size_v2``/``get_device_memory_size_for_profile*``, no ``IRuntimeConfig``, no
  ``ExecutionContextAllocationStrategy``; ``create_execution_context()`` takes no argument; ``DataType`` has
  no BF16/INT64/INT4 (8.6 adds FP8 = 6). 8.5's Runtime lacks ``engine_host_code_allowed``, ``load_runtime``,
  ``get_plugin_registry``, ``tempfile_control_flags``, ``temporary_directory`` (added in 8.6).
  8.5's ``nptype`` builds its table with ``np.bool``, which numpy 1.24 removed (and 2.0 restored): every call
  raises AttributeError there (NVIDIA/TensorRT#2557; 8.5.2 ``python/packaging/tensorrt/__init__.py``). JetPack
  5.1's Python 3.8 gets numpy 1.24.4 from pip, so the 8.5 fake behaves as with that numpy unless told otherwise.
- 11.x (11.1.0.106): NVIDIA/TensorRT tag v11.1 ``pyCore.cpp``: removed ``device_memory_size``,
  ``get_device_memory_size_for_profile``, ``create_execution_context_without_device_memory``,
  ``has_implicit_batch_dimension``, ``IExecutionContext.all_shape_inputs_specified``; added
  ``get_aliased_input_tensor``, ``get_engine_stat``, ``set_communicator``.

Behaviour taken from the real bindings: pybind11 raises TypeError ("incompatible function arguments") for a
wrong argument type; enums are not equal to ints; ``Logger.WARNING`` is a ``Logger.Severity`` member and
``Logger(2)`` is a TypeError; ``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` return
bool (False: refused, with an error logged); ``set_tensor_address`` refuses unknown names and pointers not
256-byte aligned (NvInferRuntime.h); an output's dims are -1 where dynamic until the input shape is set;
``Runtime.DLA_core`` stays -1 when set to a core the device lacks (as tensorrt_rtx does on a PC);
``deserialize_cuda_engine`` logs an error and returns None for bytes it cannot read. A name the version has
but the fake does not model is present (``hasattr`` is true) and raises NotImplementedError when called.

Switchable failure modes (``module._fake.failures``, any time): ``shape_refused``, ``context_none``,
``execute_false``, ``capture`` ("enqueue_false": ``execute_async_v3`` returns False inside a stream capture;
"invalidated": it returns True but ``cudaStreamEndCapture`` reports the capture invalidated),
``not_capturable`` (RTX ``is_stream_capturable`` says no), ``negative_dims`` (output dims stay -1),
``address_refused``, ``deserialize`` ("none" or "raise"). An ``EngineSpec(version_compatible=True)`` plan loads only
with ``Runtime.engine_host_code_allowed`` set (8.6+), a DLA plan (``dla_core``) runs on the runtime's ``DLA_core``
(core 0 when unset), and ``FakeCudaMemory(strict=True)`` makes TensorRT's CUDA work outside ``CudaMemory.bound()``
fail, as it does with pycuda in a thread with no context pushed.

Python 3.8 syntax and numpy >= 1.17: ``tests/runtime/jetpack_checks.py`` runs this on JetPack's interpreters.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
import threading
import types
import warnings
from typing import Any, Dict, FrozenSet, Iterator, Optional, Sequence, Tuple

import numpy as np

VERSIONS = {"8.5": "8.5.2.2", "8.6": "8.6.2.3", "10.x": "10.13.0.35", "11.x": "11.1.0.106", "rtx": "1.7.1.116"}
ALL = tuple(VERSIONS)
GPU = {"name": "NVIDIA RTX A4000", "compute_capability": "8.6"}   # what the fake GPU reports
PLAN = b"FAKEPLAN"
PROFILE = ((1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 32, 32))
NUM_CLASSES = 4

# ---------------------------------------------------------------- surfaces (public names per class)

_BASE_10 = {   # tensorrt-stubs 10.13 (+ the write-only properties, see the module docstring)
    "Logger": {"ERROR", "INFO", "INTERNAL_ERROR", "Severity", "VERBOSE", "WARNING", "log", "min_severity"},
    "Runtime": {"DLA_core", "deserialize_cuda_engine", "engine_host_code_allowed", "error_recorder",
                "get_plugin_registry", "gpu_allocator", "load_runtime", "logger", "max_threads", "num_DLA_cores",
                "tempfile_control_flags", "temporary_directory"},
    "ICudaEngine": {
        "create_engine_inspector", "create_execution_context", "create_execution_context_without_device_memory",
        "create_runtime_config", "create_serialization_config", "device_memory_size", "device_memory_size_v2",
        "engine_capability", "error_recorder", "get_device_memory_size_for_profile",
        "get_device_memory_size_for_profile_v2", "get_tensor_bytes_per_component",
        "get_tensor_components_per_element", "get_tensor_dtype", "get_tensor_format", "get_tensor_format_desc",
        "get_tensor_location", "get_tensor_mode", "get_tensor_name", "get_tensor_profile_shape",
        "get_tensor_profile_values", "get_tensor_shape", "get_tensor_vectorized_dim",
        "get_weight_streaming_automatic_budget", "hardware_compatibility_level", "has_implicit_batch_dimension",
        "is_debug_tensor", "is_shape_inference_io", "minimum_weight_streaming_budget", "name", "num_aux_streams",
        "num_io_tensors", "num_layers", "num_optimization_profiles", "profiling_verbosity", "refittable",
        "serialize", "serialize_with_config", "streamable_weights_size", "tactic_sources",
        "weight_streaming_budget", "weight_streaming_budget_v2", "weight_streaming_scratch_memory_size"},
    "IExecutionContext": {
        "active_optimization_profile", "all_binding_shapes_specified", "all_shape_inputs_specified", "debug_sync",
        "device_memory", "engine", "enqueue_emits_profile", "error_recorder", "execute_async_v3", "execute_v2",
        "get_debug_listener", "get_debug_state", "get_input_consumed_event", "get_max_output_size",
        "get_output_allocator", "get_runtime_config", "get_tensor_address", "get_tensor_shape",
        "get_tensor_strides", "infer_shapes", "name", "nvtx_verbosity", "persistent_cache_limit", "profiler",
        "report_to_profiler", "set_all_tensors_debug_state", "set_aux_streams", "set_debug_listener",
        "set_device_memory", "set_input_consumed_event", "set_input_shape", "set_optimization_profile_async",
        "set_output_allocator", "set_tensor_address", "set_tensor_debug_state", "temporary_allocator",
        "unfused_tensors_debug_state", "update_device_memory_size_for_shapes"},
    "IRuntimeConfig": {"get_execution_context_allocation_strategy", "set_execution_context_allocation_strategy"},
    "Dims": {"MAX_DIMS"},
}
_BINDING_ENGINE_8 = {   # 8.x pyCore.cpp: the binding API that 10.0 removed
    "binding_is_input", "get_binding_bytes_per_component", "get_binding_components_per_element",
    "get_binding_dtype", "get_binding_format", "get_binding_format_desc", "get_binding_index", "get_binding_name",
    "get_binding_shape", "get_binding_vectorized_dim", "get_location", "get_profile_shape",
    "get_profile_shape_input", "is_execution_binding", "is_shape_binding", "max_batch_size", "num_bindings"}
_BINDING_CONTEXT_8 = {"execute", "execute_async", "execute_async_v2", "get_binding_shape", "get_shape",
                      "get_strides", "set_binding_shape", "set_shape_input"}
_NOT_IN_8_ENGINE = {   # added in 9.x/10.x
    "create_runtime_config", "create_serialization_config", "device_memory_size_v2",
    "get_device_memory_size_for_profile", "get_device_memory_size_for_profile_v2", "get_tensor_profile_values",
    "get_weight_streaming_automatic_budget", "is_debug_tensor", "minimum_weight_streaming_budget",
    "serialize_with_config", "streamable_weights_size", "weight_streaming_budget", "weight_streaming_budget_v2",
    "weight_streaming_scratch_memory_size"}
_NOT_IN_8_CONTEXT = {"get_debug_listener", "get_debug_state", "get_runtime_config", "set_all_tensors_debug_state",
                     "set_debug_listener", "set_device_memory", "set_tensor_debug_state",
                     "unfused_tensors_debug_state", "update_device_memory_size_for_shapes"}
_REMOVED_IN_11_ENGINE = {"create_execution_context_without_device_memory", "device_memory_size",
                         "get_device_memory_size_for_profile", "has_implicit_batch_dimension",
                         "minimum_weight_streaming_budget", "weight_streaming_budget"}


def _surfaces() -> Dict[str, Dict[str, FrozenSet[str]]]:
    base = {k: set(v) for k, v in _BASE_10.items()}
    v86 = dict(base, ICudaEngine=(base["ICudaEngine"] - _NOT_IN_8_ENGINE) | _BINDING_ENGINE_8,
               IExecutionContext=(base["IExecutionContext"] - _NOT_IN_8_CONTEXT) | _BINDING_CONTEXT_8)
    del v86["IRuntimeConfig"]
    v85 = dict(v86, ICudaEngine=v86["ICudaEngine"] - {"hardware_compatibility_level", "num_aux_streams"},
               IExecutionContext=v86["IExecutionContext"] - {"set_aux_streams"},
               Runtime=base["Runtime"] - {"engine_host_code_allowed", "get_plugin_registry", "load_runtime",
                                          "tempfile_control_flags", "temporary_directory"})
    v11 = dict(base, ICudaEngine=(base["ICudaEngine"] - _REMOVED_IN_11_ENGINE)
               | {"get_aliased_input_tensor", "get_engine_stat"},
               IExecutionContext=(base["IExecutionContext"] - {"all_shape_inputs_specified"}) | {"set_communicator"})
    rtx = dict(v11, Runtime=base["Runtime"] | {"defer_weights_loading", "dla_workspace_allocation_strategy",
                                               "engine_header_size", "get_engine_validity"},
               ICudaEngine=v11["ICudaEngine"] | {"create_weights_manager", "load_weights", "load_weights_async",
                                                 "unload_weights", "weights_loaded"},
               IExecutionContext=v11["IExecutionContext"] | {"is_stream_capturable"},
               IRuntimeConfig=base["IRuntimeConfig"] | {"create_runtime_cache", "cuda_graph_strategy",
                                                        "dynamic_shapes_kernel_specialization_strategy",
                                                        "get_runtime_cache", "set_runtime_cache"},
               IRuntimeCache={"deserialize", "reset", "serialize"})
    every = {"8.5": v85, "8.6": v86, "10.x": base, "11.x": v11, "rtx": rtx}
    return {v: {k: frozenset(names) for k, names in s.items()} for v, s in every.items()}


SURFACES = _surfaces()

_DTYPES_85 = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}
_DTYPES_10 = dict(_DTYPES_85, FP8=6, BF16=7, INT64=8, INT4=9, FP4=10, E8M0=11)
ENUMS = {   # name -> {member: value}, per version (headers NvInferRuntimeBase.h / NvInferRuntimeCommon.h)
    v: {"DataType": ({"8.5": _DTYPES_85, "8.6": dict(_DTYPES_85, FP8=6)}.get(v, _DTYPES_10)),
        "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
        "Severity": {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4},
        **({} if v in ("8.5", "8.6") else
           {"ExecutionContextAllocationStrategy": {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2}})}
    for v in VERSIONS}
DTYPE_ALIASES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8", "INT4": "int4", "FP4": "fp4",
                 "E8M0": "e8m0"}
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
          "BOOL": np.bool_, "UINT8": np.uint8}


# ---------------------------------------------------------------- what the fake engine is

class EngineSpec:
    """The engine a fake plan holds: one input, one output ("logits" scores or a "mask" of class ids).

    It computes class k's score as ``(k + 1) * x[:, k % 3] - k`` (``reference``), so the argmax varies per pixel.
    """

    def __init__(self, *, plan: bytes = PLAN, input: str = "input", output: str = "logits",
                 input_dtype: str = "FLOAT", output_dtype: str = "FLOAT", classes: int = NUM_CLASSES,
                 profile: Sequence[Sequence[int]] = PROFILE, dla_core: Optional[int] = None,
                 context_memory: int = 3 << 20, version_compatible: bool = False) -> None:
        self.plan, self.input, self.output = plan, input, output
        self.input_dtype, self.output_dtype, self.classes = input_dtype, output_dtype, classes
        self.profile = tuple(tuple(int(d) for d in s) for s in profile)
        self.dla_core, self.context_memory = dla_core, context_memory
        self.version_compatible = version_compatible   # built with BuilderFlag.VERSION_COMPATIBLE

    def output_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
        n, _, h, w = shape
        return (n, self.classes, h, w) if self.output == "logits" else (n, h, w)

    def compute(self, x: np.ndarray) -> np.ndarray:
        scores = reference(x.astype(np.float32), self.classes)
        out = scores if self.output == "logits" else scores.argmax(1)
        return out.astype(_NUMPY[self.output_dtype])


def reference(x: np.ndarray, classes: int = NUM_CLASSES) -> np.ndarray:
    """What the fake engine computes, in float32."""
    x = np.asarray(x, np.float32)
    return np.stack([(k + 1) * x[:, k % 3] - k for k in range(classes)], axis=1).astype(np.float32)


class Failures:
    """Failure modes, switchable at any time (see the module docstring)."""

    def __init__(self, **modes: Any) -> None:
        self.shape_refused = self.context_none = self.execute_false = False
        self.not_capturable = self.negative_dims = self.address_refused = False
        self.capture: Optional[str] = None       # "enqueue_false" | "invalidated"
        self.deserialize: Optional[str] = None   # "none" | "raise"
        for k, v in modes.items():
            if not hasattr(self, k):
                raise AttributeError(f"no failure mode {k!r}")
            setattr(self, k, v)


# ---------------------------------------------------------------- fake CUDA memory (the CudaMemory protocol)

class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.capturing: Optional[list] = None
        self.invalidated = False


class FakeGraph:
    def __init__(self, ops: list) -> None:
        self.ops = ops


class FakeCudaMemory:
    """``CudaMemory`` over numpy: device pointers index byte arrays; a capture records work instead of running it.

    Reads and writes outside an allocation raise AssertionError (on a GPU they would corrupt memory), so a buffer
    sized too small, or a graph replaying a freed address, fails the test. With ``strict=True`` (pycuda, where no
    context is current in a thread unless pushed) the fake TensorRT's CUDA work outside ``bound()`` is an
    AssertionError too.
    """

    name = "fake"
    supports_graphs = True

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self._tls = threading.local()
        self.device: Dict[int, np.ndarray] = {}
        self.host_live = 0
        self.mallocs: list = []
        self.captures = self.launches = self.graphs_live = 0
        self.last_error_cleared = 0
        self.streams: Dict[int, FakeStream] = {}
        self._next_ptr, self._next_stream = 1 << 20, 0x5000
        self._lock = threading.Lock()

    def bind_thread(self) -> None:
        pass

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        self._tls.depth = getattr(self._tls, "depth", 0) + 1
        try:
            yield
        finally:
            self._tls.depth -= 1

    def require_context(self, what: str) -> None:
        """What TensorRT needs for CUDA work: a current context in the calling thread (checked when strict)."""
        if self.strict and not getattr(self._tls, "depth", 0):
            raise AssertionError(f"{what} ran with no CUDA context current in this thread; TensorRT would fail "
                                 "(pycuda) or use another context: call it inside CudaMemory.bound()")

    def malloc(self, nbytes: int) -> int:
        with self._lock:
            ptr = self._next_ptr
            self._next_ptr += (int(nbytes) + 511) // 256 * 256   # 256-aligned, a gap after each
            self.device[ptr] = np.zeros(int(nbytes), np.uint8)
            self.mallocs.append(int(nbytes))
        return ptr

    def free(self, ptr: int) -> None:
        with self._lock:
            if self.device.pop(ptr, None) is None:
                raise AssertionError(f"cudaFree of {ptr:#x}, which is not allocated")

    def malloc_host(self, nbytes: int) -> np.ndarray:
        with self._lock:
            self.host_live += 1
        return np.zeros(int(nbytes), np.uint8)

    def free_host(self, array: np.ndarray) -> None:
        with self._lock:
            self.host_live -= 1

    def _buffer(self, ptr: int, nbytes: int) -> np.ndarray:
        buf = self.device.get(ptr)
        if buf is None:
            raise AssertionError(f"device address {ptr:#x} is not allocated (freed, or never set)")
        if nbytes > buf.nbytes:
            raise AssertionError(f"{nbytes} bytes at {ptr:#x}, which holds {buf.nbytes}: out of bounds")
        return buf

    def read(self, ptr: int, nbytes: int) -> np.ndarray:
        return self._buffer(ptr, nbytes)[:nbytes].copy()

    def write(self, ptr: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._buffer(ptr, raw.nbytes)[: raw.nbytes] = raw

    def enqueue(self, handle: int, op: Any) -> None:
        """Run ``op`` now, or record it while ``handle``'s stream is capturing."""
        stream = self.streams.get(int(handle))
        if stream is not None and stream.capturing is not None:
            stream.capturing.append(op)
        else:
            op()

    def invalidate_capture(self, handle: int) -> None:
        self.streams[int(handle)].invalidated = True

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: FakeStream) -> None:
        data = np.array(src, copy=True)
        self.enqueue(stream.handle, lambda: self.write(dst, data))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: FakeStream) -> None:
        def run():
            dst[...] = self.read(src, dst.nbytes).reshape(dst.shape)
        self.enqueue(stream.handle, run)

    def stream_create(self) -> FakeStream:
        with self._lock:
            self._next_stream += 16
            stream = self.streams[self._next_stream] = FakeStream(self._next_stream)
        return stream

    def stream_handle(self, stream: FakeStream) -> int:
        return stream.handle

    def stream_synchronize(self, stream: FakeStream) -> None:
        pass

    def stream_destroy(self, stream: FakeStream) -> None:
        with self._lock:
            self.streams.pop(stream.handle, None)

    def graph_capture_begin(self, stream: FakeStream) -> None:
        stream.capturing, stream.invalidated = [], False

    def graph_capture_end(self, stream: FakeStream) -> FakeGraph:
        ops, invalidated = stream.capturing, stream.invalidated
        stream.capturing, stream.invalidated = None, False
        if invalidated:   # what CudaRuntime._check raises for cudaStreamEndCapture's error
            from fcnseg.core.errors import FcnsegError

            raise FcnsegError("CUDA call cudaStreamEndCapture failed: expected cudaSuccess, got "
                              "cudaErrorStreamCaptureInvalidated; try `nvidia-smi` to check the GPU and driver")
        self.captures += 1
        self.graphs_live += 1
        return FakeGraph(ops or [])

    def graph_launch(self, graph: FakeGraph, stream: FakeStream) -> None:
        self.launches += 1
        for op in graph.ops:
            op()

    def graph_destroy(self, graph: FakeGraph) -> None:
        self.graphs_live -= 1

    def clear_last_error(self) -> None:
        """cudaGetLastError, as trtexec calls it after a failed capture (if the backend's CUDA layer offers it)."""
        self.last_error_cleared += 1


# ---------------------------------------------------------------- pybind11-like pieces

class _PybindEnum(enum.Enum):
    """Members compare equal only to members (pybind11 enums without py::arithmetic); int() gives the value."""

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)


def _enum(name: str, members: Dict[str, int], qualname: Optional[str] = None) -> Any:
    cls = _PybindEnum(name, list(members.items()), module="tensorrt")
    cls.__qualname__ = qualname or name
    return cls


def _incompatible(fn: str, signature: str, args: Sequence[Any]) -> TypeError:
    return TypeError(f"{fn}(): incompatible function arguments. The following argument types are supported:\n"
                     f"    1. {signature}\n\nInvoked with: {', '.join(repr(a) for a in args)}")


def _is_int(x: Any, *, unsigned: bool = False) -> bool:
    ok = not isinstance(x, (float, np.floating)) and hasattr(type(x), "__index__")
    return ok and (not unsigned or int(x) >= 0)


def _unmodelled(cls_name: str, name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"the fake {cls_name} does not model {name!r}")
    return call


def _build_class(name: str, impl: type, names: FrozenSet[str], extra: Optional[Dict[str, Any]] = None,
                 bases: Tuple[type, ...] = ()) -> type:
    """A class with exactly ``names`` public: ``impl``'s where it has them, ``extra``'s, else an unmodelled callable."""
    namespace = {k: v for k, v in vars(impl).items() if k.startswith("_") and k not in ("__dict__", "__weakref__")}
    extra = extra or {}
    for attr in names:
        namespace[attr] = extra[attr] if attr in extra else vars(impl)[attr] if attr in vars(impl) \
            else _unmodelled(name, attr)
    namespace.update({k: v for k, v in extra.items() if k.startswith("_")})
    namespace.update(__module__="tensorrt", __qualname__=name)
    return type(name, bases, namespace)


class Dims:
    """``tensorrt.Dims``: indexable (IndexError "Out of bounds"), sized, equal to a tuple or list of its values."""

    MAX_DIMS = 8

    def __init__(self, shape: Sequence[int] = ()) -> None:
        if isinstance(shape, (str, bytes)) or not all(_is_int(d) for d in shape):
            raise _incompatible("__init__", "tensorrt.Dims(shape: List[int])", [shape])
        self._d = tuple(int(d) for d in shape)

    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, i: int) -> int:
        if not _is_int(i) or not -len(self._d) <= int(i) < len(self._d):
            raise IndexError("Out of bounds")
        return self._d[int(i)]

    def __eq__(self, other: Any) -> bool:
        values = other._d if isinstance(other, Dims) else tuple(other) if isinstance(other, (tuple, list)) else None
        return values == self._d

    __hash__ = None   # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._d) if len(self._d) != 1 else f"({self._d[0]})"


def _as_shape(version: str, shape: Any, args: Sequence[Any]) -> Optional[Tuple[int, ...]]:
    """set_input_shape's shape: Dims, tuple or list on 10.x+; any int sequence on 8.x (vector<int32> -> Dims)."""
    if isinstance(shape, Dims):
        return shape._d
    sequence_ok = isinstance(shape, (tuple, list)) or (version in ("8.5", "8.6") and hasattr(shape, "__len__")
                                                       and not isinstance(shape, (str, bytes)))
    if sequence_ok and all(_is_int(d) for d in shape):
        return tuple(int(d) for d in shape)
    return None


# ---------------------------------------------------------------- the classes

class _LoggerImpl:
    def __init__(self, min_severity: Any = None) -> None:
        sev = type(self).Severity   # type: ignore[attr-defined]
        if min_severity is None:
            min_severity = sev.WARNING
        if not isinstance(min_severity, sev):
            raise TypeError("__init__(): incompatible constructor arguments. The following argument types are "
                            f"supported:\n    1. tensorrt.Logger(min_severity: tensorrt.ILogger.Severity = "
                            f"<Severity.WARNING: 2>)\n\nInvoked with: {min_severity!r}")
        self.min_severity = min_severity
        self._messages: list = []

    def log(self, severity: Any, msg: str) -> None:
        self._messages.append((severity, msg))
        if int(severity) <= int(self.min_severity):
            print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)


class _RuntimeImpl:
    def __init__(self, logger: Any) -> None:
        if not isinstance(logger, self._trt.ILogger):
            raise TypeError("__init__(): incompatible constructor arguments. The following argument types are "
                            "supported:\n    1. tensorrt.Runtime(logger: tensorrt.ILogger)\n\n"
                            f"Invoked with: {logger!r}")
        self._logger, self._dla_core, self._host_code = logger, -1, False

    def _log_error(self, msg: str) -> None:
        self._logger.log(self._trt.ILogger.Severity.ERROR, msg)

    @property
    def logger(self) -> Any:
        return self._logger

    @property
    def num_DLA_cores(self) -> int:
        return self._trt._fake.dla_cores

    @property
    def DLA_core(self) -> int:
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, core: int) -> None:
        if not _is_int(core):
            raise TypeError(f"(): incompatible function arguments; got {core!r} for DLA_core (int)")
        if 0 <= int(core) < self._trt._fake.dla_cores:   # else unchanged, as tensorrt_rtx 1.7 does on a PC
            self._dla_core = int(core)

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, allowed: bool) -> None:
        self._host_code = bool(allowed)

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        try:
            data = bytes(memoryview(serialized_engine))
        except TypeError:
            raise _incompatible("deserialize_cuda_engine", "(self: tensorrt.Runtime, serialized_engine: buffer) -> "
                                "tensorrt.ICudaEngine", [self, serialized_engine]) from None
        fake = self._trt._fake
        fake.memory.require_context("IRuntime::deserializeCudaEngine")
        mode = fake.failures.deserialize
        if mode == "raise":
            raise RuntimeError("Serialization assertion stdVersionRead == kSERIALIZATION_VERSION failed")
        if data != fake.spec.plan or mode == "none":
            self._log_error("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization assertion "
                            "magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        spec = fake.spec
        if spec.version_compatible and not self._host_code:
            self._log_error("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization assertion "
                            "safeVersionRead == kSAFE_SERIALIZATION_VERSION failed. Version compatible engines need "
                            "engine_host_code_allowed)")
            return None
        if spec.dla_core is not None:   # a DLA engine runs on the runtime's core (core 0 when none was set)
            fake.dla_core_used = self._dla_core if self._dla_core >= 0 else 0
        fake.deserialized += 1
        return self._trt.ICudaEngine._new(self._trt, spec)


class _EngineImpl:
    @classmethod
    def _new(cls, trt: Any, spec: EngineSpec) -> Any:
        engine = cls.__new__(cls)
        engine._trt, engine._spec = trt, spec
        return engine

    def _dtype(self, name: str) -> Optional[str]:
        return {self._spec.input: self._spec.input_dtype, self._spec.output: self._spec.output_dtype}.get(name)

    @property
    def num_io_tensors(self) -> int:
        return 2

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, index: int) -> Optional[str]:
        if not _is_int(index):
            raise _incompatible("get_tensor_name", "(self: tensorrt.ICudaEngine, index: int) -> str", [self, index])
        names = [self._spec.input, self._spec.output]
        return names[int(index)] if 0 <= int(index) < 2 else None

    def get_tensor_mode(self, name: str) -> Any:
        mode = self._trt.TensorIOMode
        return {self._spec.input: mode.INPUT, self._spec.output: mode.OUTPUT}.get(name, mode.NONE)

    def get_tensor_dtype(self, name: str) -> Any:
        if not isinstance(name, str):
            raise _incompatible("get_tensor_dtype", "(self: tensorrt.ICudaEngine, name: str) -> tensorrt.DataType",
                                [self, name])
        return getattr(self._trt.DataType, self._dtype(name) or "FLOAT")

    def get_tensor_shape(self, name: str) -> Dims:
        if name == self._spec.input:
            return Dims((-1, 3, -1, -1))
        return Dims(self._spec.output_shape((-1, 3, -1, -1))) if name == self._spec.output else Dims(())

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        if not isinstance(name, str) or not _is_int(profile_index):
            raise _incompatible("get_tensor_profile_shape", "(self: tensorrt.ICudaEngine, name: str, "
                                "profile_index: int) -> List[tensorrt.Dims]", [self, name, profile_index])
        return [Dims(s) for s in self._spec.profile] if name == self._spec.input else []

    def create_execution_context(self, *args: Any, **kwargs: Any) -> Any:
        fake = self._trt._fake
        config = self._context_argument(args, kwargs)
        fake.memory.require_context("ICudaEngine::createExecutionContext")
        if fake.failures.context_none:
            return None
        with fake.lock:
            fake.contexts += 1
        return self._trt.IExecutionContext._new(self, config)

    def _context_argument(self, args: Sequence[Any], kwargs: Dict[str, Any]) -> Any:
        """8.x takes nothing; 10.x+ a strategy or (10.13+) a runtime_config (pyCore.cpp overloads)."""
        version, trt = self._trt._fake.version, self._trt
        given = list(args) + list(kwargs.values())
        keys_ok = set(kwargs) <= {"strategy", "runtime_config"} and len(given) <= 1
        if version in ("8.5", "8.6"):
            if given:
                raise _incompatible("create_execution_context", "(self: tensorrt.ICudaEngine) -> "
                                    "tensorrt.IExecutionContext", [self, *given])
            return None
        arg = given[0] if given else None
        config_type = getattr(trt, "IRuntimeConfig", None)
        strategy_ok = isinstance(arg, trt.ExecutionContextAllocationStrategy) and "runtime_config" not in kwargs
        config_ok = arg is None or (config_type is not None and isinstance(arg, config_type)
                                    and "strategy" not in kwargs)
        if not keys_ok or not (strategy_ok or config_ok):
            raise _incompatible("create_execution_context", "(self: tensorrt.ICudaEngine, strategy: tensorrt."
                                "ExecutionContextAllocationStrategy = STATIC) -> tensorrt.IExecutionContext",
                                [self, *given])
        return arg if config_ok else None

    def create_runtime_config(self) -> Any:
        return self._trt.IRuntimeConfig._new(self._trt)

    def _memory_v2(self, *profile: Any) -> int:
        return self._spec.context_memory

    def _memory_deprecated(self, what: str) -> int:
        if self._trt._fake.version == "10.x":
            warnings.warn(f"Use {what}_v2 instead: {what} is deprecated since TensorRT 10.1", DeprecationWarning,
                          stacklevel=3)
        return self._spec.context_memory

    @property
    def device_memory_size(self) -> int:
        return self._memory_deprecated("device_memory_size")

    @property
    def device_memory_size_v2(self) -> int:
        return self._spec.context_memory

    def get_device_memory_size_for_profile(self, profile_index: int) -> int:
        return self._memory_deprecated("get_device_memory_size_for_profile")

    def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
        if not _is_int(profile_index):
            raise _incompatible("get_device_memory_size_for_profile_v2", "(self: tensorrt.ICudaEngine, "
                                "profile_index: int) -> int", [self, profile_index])
        return self._spec.context_memory


class _ContextImpl:
    @classmethod
    def _new(cls, engine: Any, config: Any) -> Any:
        ctx = cls.__new__(cls)
        ctx._engine, ctx._trt, ctx._spec, ctx._config = engine, engine._trt, engine._spec, config
        ctx._shape, ctx._addresses = None, {}
        return ctx

    def _error(self, msg: str) -> None:
        self._trt._fake.log.append(msg)
        print(f"[TRT] [E] {msg}", file=sys.stderr)

    @property
    def engine(self) -> Any:
        return self._engine

    @property
    def all_binding_shapes_specified(self) -> bool:
        return self._shape is not None

    def get_runtime_config(self) -> Any:
        return self._config

    def set_input_shape(self, name: str, shape: Any) -> bool:
        dims = _as_shape(self._trt._fake.version, shape, [self, name, shape])
        if not isinstance(name, str) or dims is None:
            raise _incompatible("set_input_shape", "(self: tensorrt.IExecutionContext, name: str, shape: tuple) -> "
                                "bool", [self, name, shape])
        lo, _, hi = self._spec.profile
        inside = len(dims) == len(lo) and all(a <= d <= b for d, a, b in zip(dims, lo, hi))
        if name != self._spec.input or not inside or self._trt._fake.failures.shape_refused:
            self._error(f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Parameter check failed, "
                        f"condition: satisfyProfile. Set dimension {dims} for tensor {name} does not satisfy any "
                        "optimization profiles.)")
            return False
        self._shape = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        if name == self._spec.input:
            return Dims(self._shape or (-1, 3, -1, -1))
        if name != self._spec.output:
            return Dims(())
        known = self._shape is not None and not self._trt._fake.failures.negative_dims
        return Dims(self._spec.output_shape(self._shape if known else (-1, 3, -1, -1)))

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(name, str) or not _is_int(memory, unsigned=True):
            raise _incompatible("set_tensor_address", "(self: tensorrt.IExecutionContext, name: str, memory: int) "
                                "-> bool", [self, name, memory])
        if name not in (self._spec.input, self._spec.output) or int(memory) % 256 \
                or self._trt._fake.failures.address_refused:
            self._error(f"IExecutionContext::setTensorAddress: Error Code 3: API Usage Error (Parameter check "
                        f"failed, condition: tensor {name} exists and the address {int(memory):#x} is 256-byte "
                        "aligned)")
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def is_stream_capturable(self, stream: int) -> bool:
        if not _is_int(stream):
            raise _incompatible("is_stream_capturable", "(self: tensorrt.IExecutionContext, stream: int) -> bool",
                                [self, stream])
        return not self._trt._fake.failures.not_capturable

    def update_device_memory_size_for_shapes(self) -> int:
        return self._spec.context_memory

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not _is_int(stream_handle, unsigned=True):
            raise _incompatible("execute_async_v3", "(self: tensorrt.IExecutionContext, stream_handle: int) -> bool",
                                [self, stream_handle])
        fake, spec = self._trt._fake, self._spec
        missing = [t for t in (spec.input, spec.output) if t not in self._addresses]
        if fake.failures.execute_false or self._shape is None or missing:
            self._error(f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (input shape "
                        f"{'set' if self._shape else 'not set'}; addresses not set for {missing})")
            return False
        memory, stream = fake.memory, fake.memory.streams.get(int(stream_handle))
        memory.require_context("IExecutionContext::enqueueV3")
        capturing = stream is not None and stream.capturing is not None
        if capturing and fake.failures.capture == "enqueue_false":
            return False   # TensorRT refused; cudaStreamEndCapture still hands back a graph (not to be used)
        if capturing and fake.failures.capture == "invalidated":
            memory.invalidate_capture(stream_handle)   # a call not permitted under capture
            return True
        shape, src, dst = self._shape, self._addresses[spec.input], self._addresses[spec.output]
        in_dtype = np.dtype(_NUMPY[spec.input_dtype])
        cache = self._config._cache if self._config is not None else None

        def run() -> None:   # what the kernels do; shapes and addresses are those of the enqueue (a graph freezes them)
            nbytes = int(np.prod(shape)) * in_dtype.itemsize
            x = memory.read(src, nbytes).view(in_dtype).reshape(shape)
            memory.write(dst, spec.compute(x))

        memory.enqueue(stream_handle, run)
        if cache is not None:
            cache._entries.add(shape)   # kernels compiled for this shape (TensorRT for RTX JIT)
        return True


class _RuntimeConfigImpl:
    @classmethod
    def _new(cls, trt: Any) -> Any:
        config = cls.__new__(cls)
        config._trt, config._cache = trt, None
        config._strategy = trt.ExecutionContextAllocationStrategy.STATIC
        return config

    def get_execution_context_allocation_strategy(self) -> Any:
        return self._strategy

    def set_execution_context_allocation_strategy(self, strategy: Any = None) -> None:
        self._strategy = strategy

    def create_runtime_cache(self) -> Any:
        return self._trt.IRuntimeCache._new(self._trt)

    def set_runtime_cache(self, cache: Any = None) -> bool:
        if cache is not None and not isinstance(cache, self._trt.IRuntimeCache):
            raise _incompatible("set_runtime_cache", "(self: tensorrt.IRuntimeConfig, cache: IRuntimeCache = None) "
                                "-> bool", [self, cache])
        self._cache = cache
        return True

    def get_runtime_cache(self) -> Any:
        return self._cache


class IHostMemory(bytes):
    """The serialized bytes TensorRT hands back (the real one exposes the buffer protocol, as bytes does)."""

    @property
    def nbytes(self) -> int:
        return len(self)


_CACHE_MAGIC = b"FAKERTCACHE1"


class _RuntimeCacheImpl:
    @classmethod
    def _new(cls, trt: Any) -> Any:
        cache = cls.__new__(cls)
        cache._trt, cache._entries = trt, set()
        return cache

    def serialize(self) -> IHostMemory:
        doc = {"env": self._trt._fake.cache_env, "shapes": sorted(list(s) for s in self._entries)}
        return IHostMemory(_CACHE_MAGIC + json.dumps(doc).encode())

    def deserialize(self, blob: Any) -> bool:
        self._trt._fake.memory.require_context("IRuntimeCache::deserialize")   # documented: needs a current context
        data = bytes(memoryview(blob))
        if not data.startswith(_CACHE_MAGIC):
            return False
        doc = json.loads(data[len(_CACHE_MAGIC):].decode())
        if doc.get("env") != self._trt._fake.cache_env:   # another GPU, driver or library: rejected, unchanged
            return False
        self._entries |= {tuple(s) for s in doc["shapes"]}
        self._trt._fake.cache_loaded.append(sorted(tuple(s) for s in doc["shapes"]))
        return True

    def reset(self) -> bool:
        self._entries = set()
        return True


# ---------------------------------------------------------------- nptype, per version

_NUMPY_124_BOOL = ("module 'numpy' has no attribute 'bool'.\n`np.bool` was a deprecated alias for the builtin "
                   "`bool`. To avoid this error in existing code, use `bool` by itself. Doing this will not modify "
                   "any behavior and is safe. If you specifically wanted the numpy scalar type, use `np.bool_` here."
                   "\nThe aliases was originally deprecated in NumPy 1.20; for more details and guidance see the "
                   "original release note at:\n    https://numpy.org/devdocs/release/1.20.0-notes.html#deprecations")


def _numpy_without_bool(numpy_version: str) -> bool:
    major, minor = (int(p) for p in numpy_version.split(".")[:2])
    return (1, 24) <= (major, minor) < (2, 0)


def _make_nptype(m: Any, version: str, numpy_version: str) -> Any:
    def nptype(trt_type: Any) -> Any:
        """Returns the numpy-equivalent of a TensorRT :class:`DataType` ."""
        if version == "8.5" and _numpy_without_bool(numpy_version):
            raise AttributeError(_NUMPY_124_BOOL)   # the table's np.bool, evaluated on every call
        names = ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8") + (() if version in ("8.5", "8.6") else ("INT64",))
        mapping = {getattr(m.DataType, n): _NUMPY[n] for n in names}
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return nptype


# ---------------------------------------------------------------- the module

def make_tensorrt(version: str = "10.x", *, spec: Optional[EngineSpec] = None, memory: Optional[FakeCudaMemory] = None,
                  failures: Optional[Failures] = None, dla_cores: int = 0, numpy_version: Optional[str] = None) -> Any:
    """A fake ``tensorrt`` (or ``tensorrt_rtx`` for "rtx") module of ``version`` (a key of ``VERSIONS``).

    Args:
        spec: the engine its runtime deserializes from ``spec.plan``.
        memory: the fake device memory its contexts read and write (shared with the backend's CUDA layer).
        failures: switchable failure modes (``module._fake.failures``).
        dla_cores: what ``Runtime.num_DLA_cores`` reports (2 on Jetson AGX Orin, 0 on a PC).
        numpy_version: the numpy 8.5's ``nptype`` runs against; default 1.24.4 for 8.5 (JetPack 5.1's Python 3.8
            gets it from pip), else the installed one.
    """
    if version not in VERSIONS:
        raise ValueError(f"expected a version in {ALL}, got {version!r}")
    surface, enums = SURFACES[version], ENUMS[version]
    m = types.ModuleType("tensorrt_rtx" if version == "rtx" else "tensorrt")
    m.__version__ = VERSIONS[version]
    m._fake = types.SimpleNamespace(
        version=version, spec=spec or EngineSpec(), memory=memory or FakeCudaMemory(), failures=failures or Failures(),
        dla_cores=dla_cores, dla_core_used=None, contexts=0, deserialized=0, log=[], lock=threading.Lock(),
        cache_env="sm_86/driver-580", cache_loaded=[])
    m.DataType = _enum("DataType", enums["DataType"])
    m.TensorIOMode = _enum("TensorIOMode", enums["TensorIOMode"])
    if "ExecutionContextAllocationStrategy" in enums:
        m.ExecutionContextAllocationStrategy = _enum("ExecutionContextAllocationStrategy",
                                                     enums["ExecutionContextAllocationStrategy"])
    for member, alias in DTYPE_ALIASES.items():
        if member in enums["DataType"]:
            setattr(m, alias, getattr(m.DataType, member))
    severity = _enum("Severity", enums["Severity"], "ILogger.Severity")
    exported = {k: getattr(severity, k) for k in enums["Severity"]}
    m.ILogger = type("ILogger", (), dict(exported, Severity=severity, __module__="tensorrt"))
    m.Logger = _build_class("Logger", _LoggerImpl, surface["Logger"], dict(exported, Severity=severity),
                            bases=(m.ILogger,))
    m.Dims = Dims
    classes = (("Runtime", _RuntimeImpl), ("ICudaEngine", _EngineImpl), ("IExecutionContext", _ContextImpl),
               ("IRuntimeConfig", _RuntimeConfigImpl), ("IRuntimeCache", _RuntimeCacheImpl))
    for name, impl in classes:
        if name in surface:
            setattr(m, name, _build_class(name, impl, surface[name], {"_trt": m}))
    if version == "rtx":
        m.IHostMemory = IHostMemory
    m.nptype = _make_nptype(m, version, numpy_version or ("1.24.4" if version == "8.5" else np.__version__))
    return m


def library(version: str) -> str:
    """The module name the backend imports for ``version``: "tensorrt_rtx" for "rtx", else "tensorrt"."""
    return "tensorrt_rtx" if version == "rtx" else "tensorrt"


def install(version: str = "10.x", *, setitem: Any = None, setattr_: Any = None, gpu: Optional[Dict[str, str]] = None,
            **kwargs: Any) -> Tuple[Any, FakeCudaMemory]:
    """Make the fake module of ``version`` the one ``import tensorrt`` (or ``tensorrt_rtx``) finds, and give the
    TensorRT backend a GPU (``probe_gpu``) and CUDA memory (``load_cuda_memory``) that are fakes too.

    Args:
        setitem / setattr_: how to patch (``monkeypatch.setitem`` / ``monkeypatch.setattr`` in tests, so that
            everything is undone after the test); default: plain assignment (a subprocess's sitecustomize).
        gpu: what ``probe_gpu`` reports (default ``GPU``).
        kwargs: for ``make_tensorrt``.

    Returns:
        (module, memory).
    """
    import fcnseg.runtime.backends.tensorrt as backend_module

    setitem = setitem or (lambda mapping, key, value: mapping.__setitem__(key, value))
    setattr_ = setattr_ or setattr
    memory = kwargs.pop("memory", None) or FakeCudaMemory()
    module = make_tensorrt(version, memory=memory, **kwargs)
    setitem(sys.modules, library(version), module)
    found = dict(gpu or GPU)
    setattr_(backend_module, "probe_gpu", lambda: (dict(found), ""))
    setattr_(backend_module, "load_cuda_memory", lambda: memory)
    return module, memory


def sidecar_for(version: str, *, spec: Optional[EngineSpec] = None, gpu: Optional[Dict[str, str]] = None,
                **metadata: Any) -> Dict[str, Any]:
    """A sidecar document (format 2) for the fake engine of ``version``, built on (or for) the fake GPU."""
    spec, gpu = spec or EngineSpec(), gpu or GPU
    rtx = version == "rtx"
    meta = dict({"arch": "tiny", "num_classes": spec.classes, "input_size": 16, "min_size": 8, "max_size": 32},
                **metadata)
    return {"format": 2, "library": library(version), "library_version": VERSIONS[version],
            "compute_capabilities": [gpu["compute_capability"]] if rtx else [], "gpu": {} if rtx else dict(gpu),
            "precision": "fp16" if spec.output_dtype == "HALF" else "fp32", "dla_core": spec.dla_core,
            "profile": {"input": spec.input, "min": list(spec.profile[0]), "opt": list(spec.profile[1]),
                        "max": list(spec.profile[2])},
            "onnx": "model.onnx", "metadata": meta}
