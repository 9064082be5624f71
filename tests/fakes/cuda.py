"""pycuda and cuda-python without a GPU, written from their sources (not from how fcnseg calls them).

pycuda (inducer/pycuda at 19bed90), the behaviour that matters for a program using it from threads:
- ``src/cpp/cuda.hpp``: ``context_stack`` is one stack per thread (a ``boost::thread_specific_ptr``) whose
  destructor calls ``abort()`` when the thread ends with the stack non-empty ("The context stack was not empty
  upon module cleanup"; NVIDIA/TensorRT#1107, #2357). Here that is ``FakePyCuda.aborts``, which
  ``check_exit()`` turns into a test failure. ``context_push``/``context::pop``/``prepare_context_switch``/
  ``current_context`` (pushing pops the driver's current context first; ``pop()`` pushes the next one back),
  ``primary_context`` (``retain_primary_context()`` does not push), ``context_dependent`` (streams and memory
  remember the context current when they were made, and need one), ``scoped_context_activation`` (freeing
  them in a thread other than their context's, with another or no context current, cannot switch: pycuda
  warns and leaks; ``FakePyCuda.leaks``), ``device_allocation``, ``pagelocked_host_allocation``, ``stream``,
  ``error::make_message`` ("cuMemAlloc failed: invalid device context").
- ``src/wrapper/wrap_cudadrv.cpp``: names and arguments (``memcpy_htod_async(dest, src, stream=None)`` with
  ``stream`` a ``Stream`` or None, ``Context.pop``/``get_current`` static), ``translate_cuda_error`` (which
  CUresult raises ``LogicError``, ``MemoryError``, ``RuntimeError``...), ``numpy_empty`` (``pagelocked_empty``
  returns an array whose ``base`` is the allocation, with ``free()``); ``src/wrapper/tools.hpp``:
  ``mem_alloc_gc`` (out of memory: collect garbage, retry once).

cuda-python, ``cuda/bindings/runtime.pyx`` of cuda-bindings 12.9 and 13.x (11.8 where it differs):
- every call returns ``(cudaError_t, *results)``; on an error the results are None (12.9, 13.x; 11.8
  returned placeholder objects); ``cudaError_t``, ``cudaMemcpyKind`` and ``cudaStreamCaptureMode`` are int
  enums and the bindings refuse plain ints for them (``kind not None : cudaMemcpyKind``);
- ``cudaGraphInstantiate(graph, flags)`` on 12.x and 13.x; ``cudaGraphInstantiate(graph, pLogBuffer,
  bufferSize)`` returning ``(err, graphExec, errorNode)`` on 11.x; ``cudaGraphInstantiateWithFlags(graph,
  flags)`` on all three;
- layout: 13.x has only ``cuda.bindings.runtime``; 12.6-12.9 also ``cuda.cudart`` (a deprecated alias);
  older releases only ``cuda.cudart``;
- without a driver the bindings still import and every call returns ``cudaErrorInsufficientDriver``
  (cuda-bindings 13 on a driver older than 580), except ``cudaGetErrorString``/``cudaGetErrorName``.
CUDA semantics both fakes keep: device memory is bytes behind addresses no host buffer can have; work on a
stream runs when the stream is synchronized (reading a host buffer earlier shows the old bytes); a capturing
stream records work into the graph instead of running it, and synchronizing it invalidates the capture.

Install with ``install_fake_pycuda(monkeypatch)`` or ``install_fake_cuda_python(monkeypatch, major=13)``;
``hide_pycuda``/``hide_cuda_python`` make the other one unimportable.
"""

from __future__ import annotations

import ctypes
import enum
import gc
import importlib.machinery
import sys
import threading
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

DEVICE_BASE = 1 << 48   # above every user-space address of 64-bit Linux: no pointer is both host and device
ALIGNMENT = 256         # what cudaMalloc guarantees


# ---------------------------------------------------------------- shared: device memory and stream queues

class DeviceMemory:
    """Device allocations as byte arrays keyed by address."""

    def __init__(self) -> None:
        self.blocks: Dict[int, bytearray] = {}
        self._next = DEVICE_BASE
        self._lock = threading.Lock()

    def alloc(self, nbytes: int) -> int:
        with self._lock:
            ptr = self._next
            self._next += -(-max(int(nbytes), 1) // ALIGNMENT) * ALIGNMENT
            self.blocks[ptr] = bytearray(int(nbytes))
            return ptr

    def release(self, ptr: int) -> bool:
        with self._lock:
            return self.blocks.pop(int(ptr), None) is not None

    def find(self, ptr: int, nbytes: int) -> Optional[Tuple[bytearray, int]]:
        """The block and offset holding ``[ptr, ptr + nbytes)``, or None."""
        with self._lock:
            for base, block in self.blocks.items():
                if base <= ptr and ptr + nbytes <= base + len(block):
                    return block, ptr - base
        return None

    def is_device(self, ptr: int) -> bool:
        return int(ptr) >= DEVICE_BASE


class WorkQueue:
    """Work queued on one stream: it runs, in order, when the stream (or the whole device) is synchronized."""

    def __init__(self) -> None:
        self.ops: List[Callable[[], None]] = []

    def run(self) -> None:
        ops, self.ops = self.ops, []
        for op in ops:
            op()


def _fake_module(name: str, **attrs: Any) -> types.ModuleType:
    """A module that looks installed: ``importlib.util.find_spec`` finds its spec."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []  # type: ignore[attr-defined]  # a package, so submodules import
    module.__dict__.update(attrs)
    return module


def _hide(monkeypatch: Any, names: Tuple[str, ...]) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: `import name` raises ImportError


def hide_pycuda(monkeypatch: Any) -> None:
    """Make ``import pycuda`` fail as when it is not installed."""
    _hide(monkeypatch, ("pycuda", "pycuda.driver", "pycuda.autoinit", "pycuda.autoprimaryctx"))


def hide_cuda_python(monkeypatch: Any) -> None:
    """Make ``cuda.bindings.runtime`` and ``cuda.cudart`` fail to import as when cuda-python is not installed."""
    _hide(monkeypatch, ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"))


# ---------------------------------------------------------------- pycuda

# CUresult codes and cuGetErrorString's texts for them.
CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_NOT_INITIALIZED = 1, 2, 3
CUDA_ERROR_NO_DEVICE, CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_INVALID_CONTEXT = 100, 101, 201
CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_UNKNOWN = 400, 999
CU_ERROR_STRINGS = {
    CUDA_ERROR_INVALID_VALUE: "invalid argument", CUDA_ERROR_OUT_OF_MEMORY: "out of memory",
    CUDA_ERROR_NOT_INITIALIZED: "initialization error", CUDA_ERROR_NO_DEVICE: "no CUDA-capable device is detected",
    CUDA_ERROR_INVALID_DEVICE: "invalid device ordinal", CUDA_ERROR_INVALID_CONTEXT: "invalid device context",
    CUDA_ERROR_INVALID_HANDLE: "invalid resource handle", CUDA_ERROR_UNKNOWN: "unknown error",
}


def _pycuda_error(name: str, base: type, doc: str) -> type:
    return type(name, (base,), {"__module__": "pycuda._driver", "__doc__": doc})


# pycuda's exception classes (DECLARE_EXC in wrap_cudadrv.cpp); two shadow builtins there, so not here.
Error = _pycuda_error("Error", Exception, "pycuda.driver.Error, the base of the others.")
LogicError = _pycuda_error("LogicError", Error, "A CUDA call used wrongly (most CUresults).")
PyCudaMemoryError = _pycuda_error("MemoryError", Error, "CUDA_ERROR_OUT_OF_MEMORY.")
PyCudaRuntimeError = _pycuda_error("RuntimeError", Error, "CUDA_ERROR_NO_DEVICE, NOT_READY, FILE_NOT_FOUND...")
LaunchError = _pycuda_error("LaunchError", Error, "A kernel launch failed.")


def cu_error(routine: str, code: int, msg: str = "") -> Error:
    """What pycuda raises for ``pycuda::error(routine, code, msg)`` (``error::make_message`` and
    ``translate_cuda_error``)."""
    text = f"{routine} failed: {CU_ERROR_STRINGS[code]}" + (f" - {msg}" if msg else "")
    if code == CUDA_ERROR_OUT_OF_MEMORY:
        return PyCudaMemoryError(text)
    if code == CUDA_ERROR_NO_DEVICE:
        return PyCudaRuntimeError(text)
    if code == CUDA_ERROR_UNKNOWN:
        return Error(text)
    return LogicError(text)


class _CannotActivate(Exception):
    """pycuda::cannot_activate_out_of_thread_context / cannot_activate_dead_context (caught by the destructors)."""


class _ThreadStacks:
    """One thread's context stacks: pycuda's (Context objects) and the CUDA driver's (context handles)."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.stack: List[Any] = []
        self.driver: List[int] = []


class FakePyCuda:
    """The state behind a fake ``pycuda.driver`` (``self.driver``): devices, per-thread stacks, memory, streams.

    Args:
        devices: how many CUDA devices the driver reports.
        no_device: cuInit fails with CUDA_ERROR_NO_DEVICE (no GPU, or no driver for it).
        name: ``Device.name()``.
        compute_capability: ``Device.compute_capability()``.
    """

    def __init__(self, *, devices: int = 1, no_device: bool = False, name: str = "Orin",
                 compute_capability: Tuple[int, int] = (8, 7)) -> None:
        self.devices, self.no_device = devices, no_device
        self.name, self.compute_capability = name, compute_capability
        self.initialized = False
        self.memory = DeviceMemory()
        self.pinned_live = 0
        self.streams_live = 0
        self.aborts: List[str] = []
        self.leaks: List[str] = []
        self.out_of_memory = 0   # the next N cuMemAlloc calls fail with CUDA_ERROR_OUT_OF_MEMORY
        self._threads: Dict[threading.Thread, _ThreadStacks] = {}
        self._reported: set = set()
        self._local = threading.local()
        self._lock = threading.RLock()
        self._next_handle = 0x1000
        self.primary_handles: Dict[int, int] = {}
        self.driver = self._module()

    # ---------------------------------------------------------------- per-thread stacks, context switching

    def stacks(self) -> _ThreadStacks:
        """The calling thread's stacks (made on first use, like ``context_stack::get``)."""
        stacks = getattr(self._local, "stacks", None)
        if stacks is None:
            stacks = self._local.stacks = _ThreadStacks(threading.current_thread())
            with self._lock:
                self._threads[stacks.thread] = stacks
        return stacks

    def check_exit(self, *, exiting: bool = True) -> List[str]:
        """Record an abort for every thread that ended with a non-empty context stack (pycuda's
        ``~context_stack``); with ``exiting``, for the calling thread too, as at interpreter exit. Returns
        ``aborts``."""
        with self._lock:
            for thread, stacks in list(self._threads.items()):
                ended = not thread.is_alive() or (exiting and thread is threading.current_thread())
                if ended and stacks.stack and thread not in self._reported:
                    self._reported.add(thread)
                    self.aborts.append(f"PyCUDA ERROR: The context stack was not empty upon module cleanup "
                                       f"(thread {thread.name!r}, {len(stacks.stack)} context(s) pushed); "
                                       "abort()")
        return self.aborts

    def _handle(self) -> int:
        with self._lock:
            self._next_handle += 0x100
            return self._next_handle

    def _cu_current(self) -> Optional[int]:
        driver = self.stacks().driver
        return driver[-1] if driver else None

    def _need_cu_context(self, routine: str) -> None:
        if self._cu_current() is None:
            raise cu_error(routine, CUDA_ERROR_INVALID_CONTEXT)

    def _prepare_context_switch(self) -> None:
        stacks = self.stacks()
        if stacks.stack:
            if not stacks.driver:
                raise cu_error("cuCtxPopCurrent", CUDA_ERROR_INVALID_CONTEXT)
            stacks.driver.pop()

    def current_context(self, except_: Any = None) -> Any:
        """``context::current_context``: the top of this thread's stack, dropping invalid contexts."""
        stack = self.stacks().stack
        while stack:
            top = stack[-1]
            if top is not except_ and top._valid:
                return top
            stack.pop()
        return None

    def context_push(self, ctx: Any) -> None:
        self._prepare_context_switch()
        self.stacks().driver.append(ctx._handle)
        self.stacks().stack.append(ctx)
        ctx._use_count += 1

    def context_pop(self) -> None:
        self._prepare_context_switch()
        stacks = self.stacks()
        if not stacks.stack:
            raise cu_error("context::pop", CUDA_ERROR_INVALID_CONTEXT, "cannot pop non-current context")
        current = self.current_context()
        if current is not None:
            current._use_count -= 1
        if not stacks.stack:  # current_context() dropped invalid contexts down to nothing
            raise cu_error("m_stack::pop", CUDA_ERROR_INVALID_CONTEXT, "cannot pop context from empty stack")
        stacks.stack.pop()
        current = self.current_context()
        if current is not None:
            stacks.driver.append(current._handle)

    def acquire_context(self) -> Any:
        """``explicit_context_dependent::acquire_context``."""
        ctx = self.current_context()
        if ctx is None:
            raise cu_error("explicit_context_dependent", CUDA_ERROR_INVALID_CONTEXT, "no currently active context?")
        return ctx

    def scoped_free(self, ward: Any, what: str, free: Callable[[], None]) -> None:
        """``scoped_context_activation`` around ``free``, as the destructors and ``free()`` methods use it."""
        try:
            if not ward._valid:
                raise _CannotActivate("cannot activate dead context")
            did_switch = self.current_context() is not ward
            if did_switch:
                if threading.current_thread() is not ward._thread:
                    raise _CannotActivate("cannot activate out-of-thread context")
                self.context_push(ward)
            try:
                free()
            finally:
                if did_switch:
                    self.context_pop()
        except _CannotActivate as e:
            if "out-of-thread" in str(e):
                warnings.warn(f"{what} in out-of-thread context could not be cleaned up", UserWarning, stacklevel=3)
                self.leaks.append(f"{what}: {e} (thread {threading.current_thread().name!r})")

    # ---------------------------------------------------------------- the pycuda.driver module

    def _module(self) -> types.ModuleType:
        fake = self

        class Context(_Context):
            _fake = fake

        class Device(_Device):
            _fake = fake

        class Stream(_Stream):
            _fake = fake

        def init(flags: int = 0) -> None:
            if fake.no_device:
                raise cu_error("cuInit", CUDA_ERROR_NO_DEVICE)
            fake.initialized = True

        def mem_alloc(nbytes: int) -> DeviceAllocation:
            try:
                ptr = fake.cu_mem_alloc(nbytes)
            except PyCudaMemoryError:
                gc.collect()  # mem_alloc_gc: collect garbage, then retry once
                ptr = fake.cu_mem_alloc(nbytes)
            return DeviceAllocation(fake, ptr)

        def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
            ward = fake.acquire_context()  # host_pointer is context_dependent: its base is made first
            fake._need_cu_context("cuMemHostAlloc")
            dims = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
            return np.asarray(PagelockedHostAllocation(fake, ward, dims, np.dtype(dtype)))

        def memcpy_htod_async(dest: Any, src: Any, stream: Any = None) -> None:
            fake.memcpy("cuMemcpyHtoDAsync", int(dest), memoryview(src), stream, to_device=True)

        def memcpy_dtoh_async(dest: Any, src: Any, stream: Any = None) -> None:
            view = memoryview(dest)
            if view.readonly:
                raise TypeError("memcpy_dtoh_async: the destination must be writable")
            fake.memcpy("cuMemcpyDtoHAsync", int(src), view, stream, to_device=False)

        driver = _fake_module(
            "pycuda.driver", init=init, Device=Device, Context=Context, Stream=Stream, mem_alloc=mem_alloc,
            DeviceAllocation=DeviceAllocation, PagelockedHostAllocation=PagelockedHostAllocation,
            HostAllocation=PagelockedHostAllocation, pagelocked_empty=pagelocked_empty,
            memcpy_htod_async=memcpy_htod_async, memcpy_dtoh_async=memcpy_dtoh_async, Error=Error,
            LogicError=LogicError, MemoryError=PyCudaMemoryError, RuntimeError=PyCudaRuntimeError,
            LaunchError=LaunchError)
        driver.__spec__.submodule_search_locations = None  # a module, not a package
        del driver.__path__
        return driver

    def cu_mem_alloc(self, nbytes: int) -> int:
        self._need_cu_context("cuMemAlloc")
        if self.out_of_memory > 0:
            self.out_of_memory -= 1
            raise cu_error("cuMemAlloc", CUDA_ERROR_OUT_OF_MEMORY)
        return self.memory.alloc(nbytes)

    def memcpy(self, routine: str, device_ptr: int, host: memoryview, stream: Any, *, to_device: bool) -> None:
        """An async copy between a host buffer and device memory, queued on ``stream`` (run now on None)."""
        if stream is not None and not isinstance(stream, _Stream):  # Boost.Python.ArgumentError, a TypeError
            name = "memcpy_htod_async" if to_device else "memcpy_dtoh_async"
            raise TypeError(f"Python argument types in pycuda._driver.{name}(..., {type(stream).__name__}) did not "
                            "match C++ signature (stream: a pycuda Stream or None)")
        self._need_cu_context(routine)
        host = host.cast("B") if host.format != "B" or host.ndim != 1 else host
        found = self.memory.find(device_ptr, host.nbytes)
        if found is None:
            raise cu_error(routine, CUDA_ERROR_INVALID_VALUE)
        block, offset = found

        def op() -> None:
            if to_device:
                block[offset: offset + host.nbytes] = host
            else:
                host[:] = block[offset: offset + host.nbytes]

        if stream is None:
            op()
        else:
            stream._queue.ops.append(op)


class _Context:
    """pycuda.driver.Context (``context``/``primary_context`` in cuda.hpp)."""

    _fake: FakePyCuda

    def __init__(self, handle: int, device: int, primary: bool) -> None:
        self._handle, self._device, self._primary = handle, device, primary
        self._valid, self._use_count = True, 1
        self._thread = threading.current_thread()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Context) and self._handle == other._handle

    def __hash__(self) -> int:
        return hash(self._handle) ^ id(self)

    @property
    def handle(self) -> int:
        return self._handle

    def push(self) -> None:
        self._fake.context_push(self)

    @classmethod
    def pop(cls) -> None:  # a static method in pycuda: Context.pop() pops whatever is current
        cls._fake.context_pop()

    @classmethod
    def get_current(cls) -> Optional[_Context]:
        return cls._fake.current_context()

    @classmethod
    def get_device(cls) -> _Device:
        fake = cls._fake
        fake._need_cu_context("cuCtxGetDevice")
        return fake.driver.Device(0)

    @classmethod
    def synchronize(cls) -> None:
        fake = cls._fake
        fake._need_cu_context("cuCtxSynchronize")

    def detach(self) -> None:
        fake = self._fake
        if not self._valid:
            raise cu_error("context::detach", CUDA_ERROR_INVALID_CONTEXT, "cannot detach from invalid context")
        active = fake.current_context() is self
        if not active and self._thread is threading.current_thread():
            # cuCtxPushCurrent then cuDevicePrimaryCtxRelease/cuCtxDetach; for a primary context nothing pops it
            fake.stacks().driver.append(self._handle)
            if not self._primary:
                fake.stacks().driver.pop()
        elif active and not self._primary:
            fake.stacks().driver.pop()  # cuCtxDetach pops a detached current context
        self._valid = False
        if active:
            new_active = fake.current_context(except_=self)
            if new_active is not None:
                fake.stacks().driver.append(new_active._handle)


class _Device:
    """pycuda.driver.Device."""

    _fake: FakePyCuda

    def __init__(self, ordinal: int) -> None:
        fake = self._fake
        if not fake.initialized:
            raise cu_error("cuDeviceGet", CUDA_ERROR_NOT_INITIALIZED)
        if not 0 <= ordinal < fake.devices:
            raise cu_error("cuDeviceGet", CUDA_ERROR_INVALID_DEVICE)
        self._ordinal = ordinal

    @classmethod
    def count(cls) -> int:
        if not cls._fake.initialized:
            raise cu_error("cuDeviceGetCount", CUDA_ERROR_NOT_INITIALIZED)
        return cls._fake.devices

    def name(self) -> str:
        return self._fake.name

    def compute_capability(self) -> Tuple[int, int]:
        return self._fake.compute_capability

    def retain_primary_context(self) -> _Context:
        """The device's primary context (one handle per device), not pushed."""
        fake = self._fake
        handle = fake.primary_handles.setdefault(self._ordinal, fake._handle())
        return fake.driver.Context(handle, self._ordinal, True)

    def make_context(self, flags: int = 0) -> _Context:
        """A new context, pushed (``device::make_context``)."""
        fake = self._fake
        fake._prepare_context_switch()
        ctx = fake.driver.Context(fake._handle(), self._ordinal, False)
        fake.stacks().driver.append(ctx._handle)
        fake.stacks().stack.append(ctx)
        return ctx


class DeviceAllocation:
    """pycuda.driver.DeviceAllocation: ``int()`` is the device pointer; freed by ``free()`` or when collected."""

    def __init__(self, fake: FakePyCuda, ptr: int) -> None:
        self._fake, self._ptr, self._valid = fake, ptr, False
        self._ward = fake.acquire_context()  # raises with no pycuda context current (the memory then leaks)
        self._valid = True

    def __int__(self) -> int:
        return self._ptr

    __index__ = __int__

    def free(self) -> None:
        if not self._valid:
            raise cu_error("device_allocation::free", CUDA_ERROR_INVALID_HANDLE)
        self._fake.scoped_free(self._ward, "device_allocation", self._release)
        self._valid = False

    def _release(self) -> None:
        self._fake._need_cu_context("cuMemFree")
        self._fake.memory.release(self._ptr)

    def __del__(self) -> None:
        if getattr(self, "_valid", False):
            self.free()


class PagelockedHostAllocation:
    """The ``base`` of a ``pagelocked_empty`` array: real host memory, with ``free()``."""

    def __init__(self, fake: FakePyCuda, ward: _Context, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._fake, self._ward, self._valid = fake, ward, True
        self._buffer = (ctypes.c_ubyte * max(nbytes, 1))()
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "version": 3,
                                    "data": (ctypes.addressof(self._buffer), False)}
        fake.pinned_live += 1

    def free(self) -> None:
        if not self._valid:
            raise cu_error("pagelocked_host_allocation::free", CUDA_ERROR_INVALID_HANDLE)
        self._fake.scoped_free(self._ward, "pagelocked_host_allocation", self._release)
        self._valid = False

    def _release(self) -> None:
        self._fake._need_cu_context("cuMemFreeHost")
        self._fake.pinned_live -= 1  # the bytes stay readable here, unlike on a GPU, so a test cannot crash

    def __del__(self) -> None:
        if getattr(self, "_valid", False):
            self.free()


class _Stream:
    """pycuda.driver.Stream(flags=0)."""

    _fake: FakePyCuda

    def __init__(self, flags: int = 0) -> None:
        fake = self._fake
        self._made = False
        self._ward = fake.acquire_context()  # context_dependent base first, then cuStreamCreate
        fake._need_cu_context("cuStreamCreate")
        self._queue = WorkQueue()
        self._handle = fake._handle()
        self._made = True
        fake.streams_live += 1

    @property
    def handle(self) -> int:
        return self._handle

    def synchronize(self) -> None:
        self._fake._need_cu_context("cuStreamSynchronize")
        self._queue.run()

    def is_done(self) -> bool:
        return not self._queue.ops

    def _destroy(self) -> None:
        self._fake._need_cu_context("cuStreamDestroy")
        self._queue.run()
        self._fake.streams_live -= 1

    def __del__(self) -> None:
        if getattr(self, "_made", False):
            self._made = False
            self._fake.scoped_free(self._ward, "stream", self._destroy)


def install_fake_pycuda(monkeypatch: Any, **options: Any) -> FakePyCuda:
    """Put a fake ``pycuda`` and ``pycuda.driver`` in ``sys.modules``; returns its state (see ``FakePyCuda``).
    Call ``check_exit()`` at the end of a test: pycuda would abort for every thread it lists."""
    fake = FakePyCuda(**options)
    package = _fake_module("pycuda", driver=fake.driver, VERSION=(2025, 1))
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", fake.driver)
    return fake


# ---------------------------------------------------------------- cuda-python (the CUDA runtime bindings)

class cudaError_t(enum.IntEnum):  # the names below are the bindings'
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchFailure = 719
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureUnmatched = 903
    cudaErrorStreamCaptureWrongThread = 908


ERROR_STRINGS = {  # cudaGetErrorString, as cuda-bindings 13.5 returns them
    cudaError_t.cudaSuccess: b"no error",
    cudaError_t.cudaErrorInvalidValue: b"invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    cudaError_t.cudaErrorInitializationError: b"initialization error",
    cudaError_t.cudaErrorInvalidDevicePointer: b"invalid device pointer",
    cudaError_t.cudaErrorInvalidMemcpyDirection: b"invalid copy direction for memcpy",
    cudaError_t.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorNoDevice: b"no CUDA-capable device is detected",
    cudaError_t.cudaErrorInvalidDevice: b"invalid device ordinal",
    cudaError_t.cudaErrorInvalidResourceHandle: b"invalid resource handle",
    cudaError_t.cudaErrorIllegalState: b"the operation cannot be performed in the present state",
    cudaError_t.cudaErrorIllegalAddress: b"an illegal memory access was encountered",
    cudaError_t.cudaErrorLaunchFailure: b"unspecified launch failure",
    cudaError_t.cudaErrorStreamCaptureUnsupported: b"operation not permitted when stream is capturing",
    cudaError_t.cudaErrorStreamCaptureInvalidated: b"operation failed due to a previous error during capture",
    cudaError_t.cudaErrorStreamCaptureUnmatched: b"capture was not ended in the same stream as it began",
    cudaError_t.cudaErrorStreamCaptureWrongThread:
        b"attempt to terminate a thread-local capture sequence from another thread",
}


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


class cudaGraphInstantiateFlags(enum.IntEnum):
    cudaGraphInstantiateFlagAutoFreeOnLaunch = 1
    cudaGraphInstantiateFlagUpload = 2
    cudaGraphInstantiateFlagDeviceLaunch = 4
    cudaGraphInstantiateFlagUseNodePriority = 8


class _Handle:
    """cudaStream_t, cudaGraph_t, cudaGraphExec_t: an opaque pointer; ``int()`` gives it."""

    _label = "CUhandle"

    def __init__(self, init_value: int = 0) -> None:
        self._value = int(init_value)

    def __int__(self) -> int:
        return self._value

    def getPtr(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Handle) and type(other) is type(self) and other._value == self._value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._value))

    def __repr__(self) -> str:
        return f"<{self._label} 0x{self._value:x}>"


class cudaStream_t(_Handle):
    _label = "CUstream"


class cudaGraph_t(_Handle):
    _label = "CUgraph"


class cudaGraphExec_t(_Handle):
    _label = "CUgraphExec"


class cudaGraphNode_t(_Handle):
    _label = "CUgraphNode"


class cudaDeviceProp:
    """The fields fcnseg reads (``name`` is bytes in the bindings)."""

    def __init__(self, name: bytes = b"", major: int = 0, minor: int = 0, total: int = 0) -> None:
        self.name, self.major, self.minor, self.totalGlobalMem = name, major, minor, total


class _Capture:
    def __init__(self, mode: cudaStreamCaptureMode) -> None:
        self.mode, self.thread = mode, threading.current_thread()
        self.ops: List[Callable[[], None]] = []
        self.invalidated = False


class _Failure(Exception):
    def __init__(self, err: cudaError_t) -> None:
        super().__init__(err.name)
        self.err = err


class FakeCudaPython:
    """The state behind a fake ``cuda.bindings.runtime`` (``self.runtime``).

    Args:
        major: 11, 12 or 13, the cuda-python release whose signatures and results to mirror.
        driver: "ok", "insufficient" (cudaErrorInsufficientDriver from every call: cuda-bindings 13 on a
            driver < 580) or "no_device" (cudaErrorNoDevice).
        name: the device name ``cudaGetDeviceProperties`` reports.
        compute_capability: its (major, minor).
    """

    def __init__(self, *, major: int = 13, driver: str = "ok", name: str = "NVIDIA H200",
                 compute_capability: Tuple[int, int] = (9, 0)) -> None:
        if major not in (11, 12, 13) or driver not in ("ok", "insufficient", "no_device"):
            raise ValueError(f"expected major in 11/12/13 and driver ok/insufficient/no_device, got {major}, {driver}")
        self.major, self.driver = major, driver
        self.prop = cudaDeviceProp(name.encode(), *compute_capability, total=141 << 30)
        self.memory = DeviceMemory()
        self.pinned: Dict[int, Any] = {}       # address -> ctypes buffer
        self.freed_pinned: List[Any] = []      # kept alive: a stale view reads old bytes instead of crashing
        self.streams: Dict[int, WorkQueue] = {}
        self.captures: Dict[int, _Capture] = {}
        self.graphs: Dict[int, List[Callable[[], None]]] = {}
        self.execs: Dict[int, List[Callable[[], None]]] = {}
        self.calls: List[str] = []
        self._failures: Dict[str, List[cudaError_t]] = {}
        self._lock = threading.RLock()
        self._next = 0x5000
        self.runtime = self._module()

    def fail(self, function: str, error: cudaError_t, times: int = 1) -> None:
        """Make the next ``times`` calls of ``function`` return ``error`` (and do nothing else)."""
        self._failures.setdefault(function, []).extend([error] * times)

    # ---------------------------------------------------------------- call plumbing

    def _call(self, name: str, nresults: int, body: Callable[[], Tuple[Any, ...]]) -> Tuple[Any, ...]:
        with self._lock:
            self.calls.append(name)
            err = {"insufficient": cudaError_t.cudaErrorInsufficientDriver,
                   "no_device": cudaError_t.cudaErrorNoDevice}.get(self.driver)
            if err is None and self._failures.get(name):
                err = self._failures[name].pop(0)
            if err is None:
                try:
                    return (cudaError_t.cudaSuccess, *body())
                except _Failure as f:
                    err = f.err
            self.last_error = err   # what cudaGetLastError returns (and resets), as the runtime keeps it per thread
            # 12.9 and 13.x return None for every result after an error; 11.8 returned its placeholders.
            return (err, *([None] * nresults if self.major >= 12 else [0] * nresults))

    def cudaGetLastError(self) -> Tuple[Any, ...]:
        """The last error of a runtime call, reset to cudaSuccess (runtime.pyx: returns ``(cudaError_t,)``)."""
        with self._lock:
            self.calls.append("cudaGetLastError")
            err, self.last_error = getattr(self, "last_error", cudaError_t.cudaSuccess), cudaError_t.cudaSuccess
            return (err,)

    def _new_handle(self) -> int:
        self._next += 0x10
        return self._next

    @staticmethod
    def _int(value: Any) -> int:
        return 0 if value is None else int(value)

    def _queue(self, stream: Any) -> Optional[WorkQueue]:
        """The stream's queue; None for the legacy default stream (0)."""
        handle = self._int(stream)
        if handle == 0:
            return None
        if handle not in self.streams:
            raise _Failure(cudaError_t.cudaErrorInvalidResourceHandle)
        return self.streams[handle]

    def _synchronize_device(self) -> None:
        """cudaFree and cudaFreeHost wait for all work, as on a GPU (capturing streams excepted)."""
        for handle, queue in self.streams.items():
            if handle not in self.captures:
                queue.run()

    # ---------------------------------------------------------------- the functions

    def _module(self) -> types.ModuleType:
        fake = self

        def cudaGetErrorString(error: cudaError_t) -> Tuple[Any, ...]:
            if not isinstance(error, cudaError_t):
                raise TypeError("Argument 'error' has incorrect type (expected cudaError_t)")
            return cudaError_t.cudaSuccess, ERROR_STRINGS.get(error, b"unrecognized error code")

        def cudaGetErrorName(error: cudaError_t) -> Tuple[Any, ...]:
            if not isinstance(error, cudaError_t):
                raise TypeError("Argument 'error' has incorrect type (expected cudaError_t)")
            return cudaError_t.cudaSuccess, error.name.encode()

        functions = {name: getattr(fake, name) for name in dir(FakeCudaPython) if name.startswith("cuda")}
        if fake.major == 11:
            functions["cudaGraphInstantiate"] = fake._graph_instantiate_11
        module = _fake_module(
            "cuda.bindings.runtime", cudaError_t=cudaError_t, cudaMemcpyKind=cudaMemcpyKind,
            cudaStreamCaptureMode=cudaStreamCaptureMode, cudaStreamCaptureStatus=cudaStreamCaptureStatus,
            cudaStream_t=cudaStream_t, cudaGraph_t=cudaGraph_t, cudaGraphExec_t=cudaGraphExec_t,
            cudaGraphNode_t=cudaGraphNode_t, cudaDeviceProp=cudaDeviceProp, cudaStreamDefault=0,
            cudaStreamNonBlocking=1, cudaGetErrorString=cudaGetErrorString, cudaGetErrorName=cudaGetErrorName,
            **functions)
        module.cudaGraphInstantiateFlags = cudaGraphInstantiateFlags
        module.__spec__.submodule_search_locations = None
        del module.__path__
        return module

    def cudaGetDeviceCount(self) -> Tuple[Any, ...]:
        return self._call("cudaGetDeviceCount", 1, lambda: (1,))

    def cudaGetDevice(self) -> Tuple[Any, ...]:
        return self._call("cudaGetDevice", 1, lambda: (0,))

    def cudaSetDevice(self, device: int) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            if int(device) != 0:
                raise _Failure(cudaError_t.cudaErrorInvalidDevice)
            return ()
        return self._call("cudaSetDevice", 0, body)

    def cudaGetDeviceProperties(self, device: int) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            if int(device) != 0:
                raise _Failure(cudaError_t.cudaErrorInvalidDevice)
            return (self.prop,)
        return self._call("cudaGetDeviceProperties", 1, body)

    def cudaRuntimeGetVersion(self) -> Tuple[Any, ...]:
        return self._call("cudaRuntimeGetVersion", 1, lambda: (self.major * 1000 + 20,))

    def cudaMalloc(self, size: int) -> Tuple[Any, ...]:
        return self._call("cudaMalloc", 1, lambda: (self.memory.alloc(size),))

    def cudaFree(self, devPtr: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            ptr = self._int(devPtr)
            self._synchronize_device()
            if ptr and not self.memory.release(ptr):
                raise _Failure(cudaError_t.cudaErrorInvalidValue)
            return ()
        return self._call("cudaFree", 0, body)

    def cudaMallocHost(self, size: int) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            buffer = (ctypes.c_ubyte * max(int(size), 1))()
            self.pinned[ctypes.addressof(buffer)] = buffer
            return (ctypes.addressof(buffer),)
        return self._call("cudaMallocHost", 1, body)

    def cudaFreeHost(self, ptr: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            self._synchronize_device()
            buffer = self.pinned.pop(self._int(ptr), None)
            if buffer is None:
                raise _Failure(cudaError_t.cudaErrorInvalidValue)
            self.freed_pinned.append(buffer)
            return ()
        return self._call("cudaFreeHost", 0, body)

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: int, kind: cudaMemcpyKind,
                        stream: Any) -> Tuple[Any, ...]:
        if not isinstance(kind, cudaMemcpyKind):
            raise TypeError("Argument 'kind' has incorrect type (expected cudaMemcpyKind)")

        def body() -> Tuple[Any, ...]:
            op = self._copy(self._int(dst), self._int(src), int(count), kind)
            self._enqueue(stream, op)
            return ()
        return self._call("cudaMemcpyAsync", 0, body)

    def _copy(self, dst: int, src: int, count: int, kind: cudaMemcpyKind) -> Callable[[], None]:
        """The copy to run later; bad addresses fail now, with cudaErrorInvalidValue."""
        if kind == cudaMemcpyKind.cudaMemcpyDefault:  # the direction follows from the addresses (UVA)
            kind = cudaMemcpyKind(2 * self.memory.is_device(src) + self.memory.is_device(dst))
        from_device = kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        to_device = kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        source = self._device_bytes(src, count) if from_device else self._check_host(src, count)
        target = self._device_bytes(dst, count) if to_device else self._check_host(dst, count)

        def op() -> None:
            data = bytes(source[0][source[1]: source[1] + count]) if source else ctypes.string_at(src, count)
            if target:
                target[0][target[1]: target[1] + count] = data
            else:
                ctypes.memmove(dst, data, count)
        return op

    def _device_bytes(self, ptr: int, count: int) -> Tuple[bytearray, int]:
        found = self.memory.find(ptr, count)
        if found is None:
            raise _Failure(cudaError_t.cudaErrorInvalidValue)
        return found

    def _check_host(self, ptr: int, count: int) -> None:
        """A host pointer must not be a device address; one inside freed pinned memory is refused (undefined in
        CUDA) rather than read."""
        if not ptr or self.memory.is_device(ptr):
            raise _Failure(cudaError_t.cudaErrorInvalidValue)
        for buffer in self.freed_pinned:
            base = ctypes.addressof(buffer)
            if base <= ptr < base + ctypes.sizeof(buffer):
                raise _Failure(cudaError_t.cudaErrorInvalidValue)

    def _enqueue(self, stream: Any, op: Callable[[], None]) -> None:
        handle = self._int(stream)
        capture = self.captures.get(handle)
        if capture is not None:
            capture.ops.append(op)
            return
        queue = self._queue(stream)
        if queue is None:
            op()  # the legacy default stream: the fake runs it at once
        else:
            queue.ops.append(op)

    def cudaStreamCreateWithFlags(self, flags: int) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            handle = self._new_handle()
            self.streams[handle] = WorkQueue()
            return (cudaStream_t(handle),)
        return self._call("cudaStreamCreateWithFlags", 1, body)

    def cudaStreamSynchronize(self, stream: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            capture = self.captures.get(self._int(stream))
            if capture is not None:  # not allowed while capturing, and it breaks the capture
                capture.invalidated = True
                raise _Failure(cudaError_t.cudaErrorStreamCaptureUnsupported)
            queue = self._queue(stream)
            if queue is not None:
                queue.run()
            return ()
        return self._call("cudaStreamSynchronize", 0, body)

    def cudaStreamDestroy(self, stream: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            queue = self._queue(stream)
            if queue is None:
                raise _Failure(cudaError_t.cudaErrorInvalidResourceHandle)
            queue.run()
            del self.streams[self._int(stream)]
            self.captures.pop(self._int(stream), None)
            return ()
        return self._call("cudaStreamDestroy", 0, body)

    def cudaStreamBeginCapture(self, stream: Any, mode: cudaStreamCaptureMode) -> Tuple[Any, ...]:
        if not isinstance(mode, cudaStreamCaptureMode):
            raise TypeError("Argument 'mode' has incorrect type (expected cudaStreamCaptureMode)")

        def body() -> Tuple[Any, ...]:
            if self._queue(stream) is None:  # the legacy stream cannot be captured
                raise _Failure(cudaError_t.cudaErrorStreamCaptureUnsupported)
            if self._int(stream) in self.captures:
                raise _Failure(cudaError_t.cudaErrorIllegalState)
            self.captures[self._int(stream)] = _Capture(mode)
            return ()
        return self._call("cudaStreamBeginCapture", 0, body)

    def cudaStreamEndCapture(self, stream: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            capture = self.captures.get(self._int(stream))
            if capture is None:
                raise _Failure(cudaError_t.cudaErrorIllegalState)
            if (capture.mode != cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed
                    and capture.thread is not threading.current_thread()):
                raise _Failure(cudaError_t.cudaErrorStreamCaptureWrongThread)
            del self.captures[self._int(stream)]
            if capture.invalidated:
                raise _Failure(cudaError_t.cudaErrorStreamCaptureInvalidated)
            handle = self._new_handle()
            self.graphs[handle] = list(capture.ops)
            return (cudaGraph_t(handle),)
        return self._call("cudaStreamEndCapture", 1, body)

    def cudaStreamIsCapturing(self, stream: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            capture = self.captures.get(self._int(stream))
            if capture is None:
                return (cudaStreamCaptureStatus.cudaStreamCaptureStatusNone,)
            return (cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated if capture.invalidated
                    else cudaStreamCaptureStatus.cudaStreamCaptureStatusActive,)
        return self._call("cudaStreamIsCapturing", 1, body)

    def _instantiate(self, graph: Any) -> cudaGraphExec_t:
        ops = self.graphs.get(self._int(graph))
        if ops is None:
            raise _Failure(cudaError_t.cudaErrorInvalidValue)
        handle = self._new_handle()
        self.execs[handle] = list(ops)  # an executable graph outlives the graph it was made from
        return cudaGraphExec_t(handle)

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> Tuple[Any, ...]:
        """12.x and 13.x: ``cudaGraphInstantiate(graph, unsigned long long flags)``."""
        int(flags)
        return self._call("cudaGraphInstantiate", 1, lambda: (self._instantiate(graph),))

    def _graph_instantiate_11(self, graph: Any, pLogBuffer: bytes, bufferSize: int) -> Tuple[Any, ...]:
        """11.x: ``cudaGraphInstantiate(graph, char* pLogBuffer, size_t bufferSize)`` -> (err, exec, errorNode)."""
        if not isinstance(pLogBuffer, (bytes, bytearray)):
            raise TypeError("expected bytes for pLogBuffer")
        return self._call("cudaGraphInstantiate", 2, lambda: (self._instantiate(graph), cudaGraphNode_t()))

    def cudaGraphInstantiateWithFlags(self, graph: Any, flags: int) -> Tuple[Any, ...]:
        int(flags)
        return self._call("cudaGraphInstantiateWithFlags", 1, lambda: (self._instantiate(graph),))

    def cudaGraphLaunch(self, graphExec: Any, stream: Any) -> Tuple[Any, ...]:
        def body() -> Tuple[Any, ...]:
            ops = self.execs.get(self._int(graphExec))
            if ops is None:
                raise _Failure(cudaError_t.cudaErrorInvalidResourceHandle)
            for op in ops:
                self._enqueue(stream, op)
            return ()
        return self._call("cudaGraphLaunch", 0, body)

    def cudaGraphDestroy(self, graph: Any) -> Tuple[Any, ...]:
        return self._destroy("cudaGraphDestroy", self.graphs, graph)

    def cudaGraphExecDestroy(self, graphExec: Any) -> Tuple[Any, ...]:
        return self._destroy("cudaGraphExecDestroy", self.execs, graphExec)

    def _destroy(self, name: str, table: Dict[int, Any], handle: Any) -> Tuple[Any, ...]:
        """A graph or executable graph destroyed: cudaErrorInvalidValue for a handle not (or no longer) live."""
        def body() -> Tuple[Any, ...]:
            if table.pop(self._int(handle), None) is None:
                raise _Failure(cudaError_t.cudaErrorInvalidValue)
            return ()
        return self._call(name, 0, body)


def install_fake_cuda_python(monkeypatch: Any, major: int = 13, *, layout: str = "", **options: Any) -> FakeCudaPython:
    """Put a fake cuda-python in ``sys.modules``; returns its state (see ``FakeCudaPython``).

    Args:
        major: 11, 12 or 13.
        layout: "bindings" (``cuda.bindings.runtime`` only: 13.x), "both" (also the deprecated ``cuda.cudart``:
            12.6-12.9, 11.8.7) or "cudart" (``cuda.cudart`` only: before 12.6); default by ``major``.
        options: for ``FakeCudaPython`` (driver, name, compute_capability).
    """
    fake = FakeCudaPython(major=major, **options)
    layout = layout or ("bindings" if major >= 13 else "both")
    cuda = _fake_module("cuda")
    modules: Dict[str, Any] = {"cuda": cuda, "cuda.bindings": None, "cuda.bindings.runtime": None,
                               "cuda.cudart": None}
    if layout in ("bindings", "both"):
        bindings = _fake_module("cuda.bindings", runtime=fake.runtime, __version__=f"{major}.9.0")
        cuda.bindings = bindings  # type: ignore[attr-defined]
        modules.update({"cuda.bindings": bindings, "cuda.bindings.runtime": fake.runtime})
    if layout in ("cudart", "both"):
        cuda.cudart = fake.runtime  # type: ignore[attr-defined]
        modules["cuda.cudart"] = fake.runtime
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake
