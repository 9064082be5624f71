"""TensorRTBackend on fake TensorRT modules of every supported version (``tests/fakes/tensorrt.py``), plus real engines.

The fakes mirror the real bindings (names, enum values, return values, the TypeErrors pybind11 raises); their
"device memory" is numpy bytes addressed by int pointers, and the fake execution context reads its input from and
writes its output to the addresses the backend set, with reads and writes outside an allocation failing. So buffer
sizing, shapes, copies, per-thread contexts, CUDA graphs, DLA and the RTX runtime cache all run without a GPU,
through the backend, the stream loop, a thread pool, ``fcn-bench --engine`` and the bundle's ``run.py``. Two tests
hold the fakes to the real thing: the RTX fake against the installed ``tensorrt_rtx``, the 10.x fake against the
tensorrt-stubs 10.13. The ``tensorrt``-marked tests at the end build real engines and skip without a GPU.

``tests/runtime/jetpack_checks.py`` loads this file on JetPack's Pythons (3.8, numpy 1.17): module-level code stays
Python 3.8 and runtime-wheel only (``FakeCuda``, ``backend``, ``reference``).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fcnseg.runtime.backends.cuda_memory import CudaRuntime, load_cuda_memory
from fcnseg.runtime.backends.tensorrt import (CudaGraphFallbackWarning, TensorRTBackend, engine_mismatch_message,
                                              numpy_dtype, runtime_cache_path, sidecar_path)
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata

HERE = Path(__file__).resolve().parent
FAKES = HERE.parent / "fakes" / "tensorrt.py"


def _load_fakes():
    """``tests.fakes.tensorrt`` under pytest; loaded by path elsewhere (jetpack_checks.py, a subprocess)."""
    try:
        from tests.fakes import tensorrt as module
        return module
    except ImportError:
        name = "fcnseg_test_fakes_tensorrt"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, str(FAKES))
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return sys.modules[name]


fakes = _load_fakes()
VERSIONS = fakes.ALL            # "8.5", "8.6", "10.x", "11.x", "rtx"
PROFILE, NUM_CLASSES, PLAN, GPU = fakes.PROFILE, fakes.NUM_CLASSES, fakes.PLAN, fakes.GPU
FakeCuda = fakes.FakeCudaMemory
reference = fakes.reference


# ---------------------------------------------------------------- helpers

def write_plan(path, version="10.x", spec=None, **sidecar):
    """The fake engine's plan at ``path`` with a sidecar for ``version`` (``sidecar`` overrides its keys)."""
    spec = spec or fakes.EngineSpec()
    path.write_bytes(spec.plan)
    doc = fakes.sidecar_for(version, spec=spec)
    doc.update(sidecar)
    sidecar_path(path).write_text(json.dumps(doc))
    return path


def load(monkeypatch, plan, cuda, version="10.x", *, spec=None, failures=None, dla_cores=0, numpy_version=None,
         **kwargs):
    """(backend, fake module): the fake TensorRT of ``version`` imported by the backend, on ``cuda``."""
    module = fakes.make_tensorrt(version, spec=spec, memory=cuda, failures=failures, dla_cores=dla_cores,
                                 numpy_version=numpy_version)
    monkeypatch.setitem(sys.modules, fakes.library(version), module)
    return TensorRTBackend(plan, cuda=cuda, gpu=GPU, **kwargs), module


def backend(monkeypatch, plan, cuda, **kwargs):
    """The backend alone (``jetpack_checks.py`` calls this with a stand-in monkeypatch)."""
    return load(monkeypatch, plan, cuda, **kwargs)[0]


def batch(n, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


@pytest.fixture
def cuda():
    return FakeCuda()


@pytest.fixture
def plan(tmp_path):
    return write_plan(tmp_path / "model.plan")


@pytest.fixture(params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture
def vplan(tmp_path, version):
    """The fake plan with a sidecar naming the library of ``version``."""
    return write_plan(tmp_path / "model.plan", version)


# ---------------------------------------------------------------- the fakes against the real API

def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def _members(enum_type):
    return {k: int(v) for k, v in enum_type.__members__.items()}


def test_rtx_fake_has_the_names_and_enum_values_of_tensorrt_rtx():
    real = pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX (pip install tensorrt-rtx)")
    fake = fakes.make_tensorrt("rtx")
    assert fake.__version__ == real.__version__ and fake.__name__ == "tensorrt_rtx"
    for cls in fakes.SURFACES["rtx"]:
        assert _public(getattr(fake, cls)) == _public(getattr(real, cls)), cls
    for enum_name in ("DataType", "TensorIOMode", "ExecutionContextAllocationStrategy"):
        assert _members(getattr(fake, enum_name)) == _members(getattr(real, enum_name)), enum_name
    assert _members(fake.Logger.Severity) == _members(real.Logger.Severity)
    assert _public(fake) <= _public(real), _public(fake) - _public(real)
    for alias in fakes.DTYPE_ALIASES.values():
        assert getattr(fake, alias).name == getattr(real, alias).name


def _stub_text(name="tensorrt.pyi"):
    for folder in sys.path:
        path = Path(folder) / "tensorrt_bindings" / name
        if path.is_file():
            return path.read_text()
    pytest.skip("needs tensorrt-stubs 10.13 (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")


def _stub_class(text, name):
    """Public names and ``# value = <X.Y: n>`` enum values of one top-level class of the stubs."""
    block = re.search(r"^class %s\b.*?(?=^class |\Z)" % name, text, re.S | re.M).group(0)
    names = set(re.findall(r"^    def (\w+)", block, re.M)) | set(re.findall(r"^    (\w+)\s*:", block, re.M))
    names |= set(re.findall(r"^    class (\w+)", block, re.M))
    values = {m: int(v) for m, v in re.findall(r"# value = <\w+\.(\w+): (-?\d+)>", block)}
    return {n for n in names if not n.startswith("_")}, values


def test_10x_fake_has_the_names_and_enum_values_of_the_tensorrt_stubs():
    text = _stub_text()
    fake = fakes.make_tensorrt("10.x")
    assert re.search(r"^__version__: str = '([\d.]+)'", _stub_text("__init__.pyi"), re.M).group(1) == fake.__version__
    # Properties without a getter are not in generated stubs (pyCore.cpp: def_property(name, nullptr, setter)).
    write_only = {"Runtime": {"gpu_allocator"}, "IExecutionContext": {"device_memory"}}
    for cls in fakes.SURFACES["10.x"]:
        names, _ = _stub_class(text, cls)
        assert _public(getattr(fake, cls)) - write_only.get(cls, set()) == names, cls
    for enum_name in ("DataType", "TensorIOMode", "ExecutionContextAllocationStrategy"):
        assert _members(getattr(fake, enum_name)) == _stub_class(text, enum_name)[1], enum_name
    severity = {m: int(v) for m, v in re.findall(r"# value = <Severity\.(\w+): (\d+)>", text)}
    assert _members(fake.Logger.Severity) == severity


@pytest.mark.parametrize("which", ["fake", "real"])
def test_rtx_fake_behaves_as_tensorrt_rtx_where_no_gpu_is_needed(which):
    """The same calls on the fake and on the installed tensorrt_rtx give the same results and errors."""
    trt = pytest.importorskip("tensorrt_rtx") if which == "real" else fakes.make_tensorrt("rtx")
    assert trt.DataType.FLOAT != 0 and int(trt.DataType.HALF) == 1 and repr(trt.DataType.HALF) == "<DataType.HALF: 1>"
    assert trt.Logger.WARNING is trt.Logger.Severity.WARNING and repr(trt.Logger.WARNING) == "<Severity.WARNING: 2>"
    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        trt.Logger(2)
    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    assert (runtime.DLA_core, runtime.num_DLA_cores) == (-1, 0)
    runtime.DLA_core = 1   # no such core on this machine: unchanged, no exception
    assert runtime.DLA_core == -1
    with pytest.raises(TypeError, match="incompatible function arguments"):
        runtime.deserialize_cuda_engine("not bytes")
    assert runtime.deserialize_cuda_engine(b"not an engine") is None
    dims = trt.Dims([1, 3, 8, 8])
    assert len(dims) == 4 and dims[3] == 8 and list(dims) == [1, 3, 8, 8] and dims == (1, 3, 8, 8)
    with pytest.raises(IndexError, match="Out of bounds"):
        dims[7]
    assert trt.nptype(trt.DataType.BOOL) is np.bool_ and trt.nptype(trt.float32) is np.float32
    with pytest.raises(TypeError, match="Could not resolve TensorRT datatype"):
        trt.nptype(trt.DataType.BF16)


def test_fake_contexts_behave_as_the_bindings_document(cuda):
    """What the fakes do that cannot be checked against tensorrt_rtx without a GPU (pyCore.cpp, NvInferRuntime.h)."""
    trt = fakes.make_tensorrt("10.x", memory=cuda)
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(PLAN)
    ctx = engine.create_execution_context()
    assert list(ctx.get_tensor_shape("logits")) == [-1, NUM_CLASSES, -1, -1]   # dynamic until the input shape is set
    assert ctx.set_input_shape("input", (1, 3, 8, 8)) is True
    assert list(ctx.get_tensor_shape("logits")) == [1, NUM_CLASSES, 8, 8]
    assert ctx.set_input_shape("input", (1, 3, 64, 64)) is False               # outside the profile
    assert ctx.set_tensor_address("logits", 0x1001) is False                   # not 256-byte aligned
    assert ctx.set_tensor_address("nope", 0x1000) is False
    assert ctx.execute_async_v3(0) is False                                    # addresses not set
    for call in (lambda: ctx.set_tensor_address("logits", "0x1000"), lambda: ctx.execute_async_v3(-1),
                 lambda: ctx.set_input_shape("input", np.array([1, 3, 8, 8])),
                 lambda: engine.create_execution_context(3)):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            call()
    with pytest.warns(DeprecationWarning):
        assert engine.device_memory_size == engine.device_memory_size_v2


@pytest.mark.parametrize("version, present, absent", [
    ("8.5", ["get_binding_name", "execute_async_v2", "execute_async_v3", "set_input_shape", "device_memory_size"],
     ["device_memory_size_v2", "get_device_memory_size_for_profile_v2", "create_runtime_config"]),
    ("8.6", ["get_binding_name", "execute_async_v2", "hardware_compatibility_level"], ["device_memory_size_v2"]),
    ("10.x", ["device_memory_size", "device_memory_size_v2", "create_runtime_config"],
     ["get_binding_name", "execute_async_v2", "num_bindings", "is_stream_capturable"]),
    ("11.x", ["device_memory_size_v2", "get_device_memory_size_for_profile_v2"],
     ["device_memory_size", "get_device_memory_size_for_profile", "is_stream_capturable"]),
    ("rtx", ["device_memory_size_v2", "is_stream_capturable"], ["device_memory_size", "get_binding_name"]),
])
def test_fake_versions_have_their_own_api(version, present, absent):
    trt = fakes.make_tensorrt(version)
    api = _public(trt.ICudaEngine) | _public(trt.IExecutionContext)
    assert set(present) <= api and not set(absent) & api
    assert hasattr(trt, "IRuntimeCache") == (version == "rtx")
    assert hasattr(trt, "IRuntimeConfig") == (version not in ("8.5", "8.6"))


def test_fake_85_nptype_fails_as_on_numpy_124():
    trt = fakes.make_tensorrt("8.5", numpy_version="1.24.4")
    with pytest.raises(AttributeError, match="module 'numpy' has no attribute 'bool'"):
        trt.nptype(trt.DataType.FLOAT)
    older = fakes.make_tensorrt("8.5", numpy_version="1.23.5")
    assert older.nptype(older.DataType.FLOAT) is np.float32


# ---------------------------------------------------------------- defect 2: dtypes without trt.nptype

def test_tensorrt_85_with_numpy_124_loads_and_runs(monkeypatch, tmp_path, cuda):
    """JetPack 5.1 (TensorRT 8.5.2, Python 3.8) with numpy 1.24: trt.nptype raises, our table does not."""
    plan = write_plan(tmp_path / "m.plan", "8.5")
    b, _ = load(monkeypatch, plan, cuda, "8.5", numpy_version="1.24.4")
    x = batch(1, 8, 8)
    np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    b.close()


@pytest.mark.parametrize("name, dtype", [("FLOAT", np.float32), ("HALF", np.float16), ("INT8", np.int8),
                                         ("INT32", np.int32), ("INT64", np.int64), ("BOOL", np.bool_),
                                         ("UINT8", np.uint8)])
def test_numpy_dtype_by_name_on_every_version(name, dtype):
    for version in VERSIONS:
        trt = fakes.make_tensorrt(version)
        if name in trt.DataType.__members__:
            assert numpy_dtype(getattr(trt.DataType, name)) == np.dtype(dtype)


def test_numpy_dtype_without_a_numpy_type_is_one_line():
    trt = fakes.make_tensorrt("10.x")
    with pytest.raises(FcnsegError) as e:
        numpy_dtype(trt.DataType.BF16, "logits")
    assert str(e.value).startswith("expected engine tensors of a type numpy holds") and "got BF16 for 'logits'" in \
        str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- defect 4b: DLA core from the sidecar

def test_dla_engine_runs_on_the_core_its_sidecar_records(monkeypatch, tmp_path, cuda):
    spec = fakes.EngineSpec(dla_core=1)
    plan = write_plan(tmp_path / "dla1.plan", "8.5", spec)
    b, trt = load(monkeypatch, plan, cuda, "8.5", spec=spec, dla_cores=2)
    assert trt._fake.dla_core_used == 1   # without Runtime.DLA_core set, TensorRT runs it on core 0
    b.close()


def test_dla_engine_on_a_device_without_that_core_is_one_line(monkeypatch, tmp_path, cuda):
    spec = fakes.EngineSpec(dla_core=1)
    plan = write_plan(tmp_path / "dla1.plan", "10.x", spec)
    with pytest.raises(FcnsegError) as e:
        load(monkeypatch, plan, cuda, "10.x", spec=spec, dla_cores=0)
    assert str(e.value) == ("expected DLA core 1 to run 'dla1.plan' (it was built for that core), got 0 DLA cores on "
                            f"this device; try an engine built for the GPU: fcn-export trt model.onnx -o {plan}")


# ---------------------------------------------------------------- defect 5: CUDA graph fallback, RTX runtime cache

@pytest.mark.parametrize("mode", ["enqueue_false", "invalidated"])
def test_failed_capture_falls_back_to_plain_enqueues_with_one_warning(monkeypatch, plan, cuda, mode):
    failures = fakes.Failures(capture=mode)
    b, _ = load(monkeypatch, plan, cuda, failures=failures, cuda_graphs=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for shape in [(1, 16, 16), (2, 8, 24), (1, 16, 16)]:
            x = batch(*shape, seed=sum(shape))
            np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    graph_warnings = [w for w in caught if issubclass(w.category, CudaGraphFallbackWarning)]
    assert len(graph_warnings) == 1 and "plain enqueues" in str(graph_warnings[0].message)
    assert not b.cuda_graphs and cuda.launches == 0 and cuda.graphs_live == 0 and cuda.last_error_cleared == 1
    b.close()


def test_rtx_context_not_capturable_is_never_captured(monkeypatch, tmp_path, cuda):
    plan = write_plan(tmp_path / "rtx.plan", "rtx")
    b, _ = load(monkeypatch, plan, cuda, "rtx", failures=fakes.Failures(not_capturable=True), cuda_graphs=True)
    began = []
    monkeypatch.setattr(cuda, "graph_capture_begin", lambda stream: began.append(stream))
    with pytest.warns(CudaGraphFallbackWarning, match="is_stream_capturable"):
        x = batch(1, 16, 16)
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    assert began == [] and cuda.captures == 0
    b.close()


def test_cuda_graph_per_shape(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda, cuda_graphs=True)
    x1, x2 = batch(1, 16, 16), batch(1, 8, 24, seed=1)   # x2 fits x1's buffers: x1's graph stays valid
    for x in (x1, x1, x2, x1):
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    assert cuda.captures == 2 and cuda.launches == 2   # the first call of a shape runs the plain enqueue
    x1b = batch(1, 16, 16, seed=5)  # same shape, new data: the replayed graph must read the new input
    np.testing.assert_array_equal(b.infer(x1b)["logits"], reference(x1b))
    assert cuda.launches == 3
    b.close()
    assert cuda.graphs_live == 0


def test_rtx_runtime_cache_is_kept_beside_the_engine(monkeypatch, tmp_path, cuda):
    plan = write_plan(tmp_path / "rtx.plan", "rtx")
    b, _ = load(monkeypatch, plan, cuda, "rtx")
    for shape in [(1, 8, 8), (2, 16, 12)]:
        b.infer(batch(*shape))
    assert not runtime_cache_path(plan).exists()
    b.close()
    assert runtime_cache_path(plan) == tmp_path / "rtx.plan.rtcache" and runtime_cache_path(plan).is_file()
    b, trt = load(monkeypatch, plan, FakeCuda(), "rtx")
    b.infer(batch(1, 8, 8))
    assert trt._fake.cache_loaded == [[(1, 3, 8, 8), (2, 3, 16, 12)]]
    b.close()
    assert [p.name for p in tmp_path.iterdir() if "rtcache" in p.name] == ["rtx.plan.rtcache"]   # no temporary left


def test_rtx_runtime_cache_from_elsewhere_is_replaced(monkeypatch, tmp_path, cuda):
    """Our cache from another GPU or driver (TensorRT refuses its contents) is replaced at close."""
    from fcnseg.runtime.backends.tensorrt import _RuntimeCacheFile

    plan = write_plan(tmp_path / "rtx.plan", "rtx")
    runtime_cache_path(plan).write_bytes(_RuntimeCacheFile.MAGIC + b"a cache from another GPU")
    b, trt = load(monkeypatch, plan, cuda, "rtx")
    b.infer(batch(1, 8, 8))
    b.close()
    assert trt._fake.cache_loaded == []
    assert runtime_cache_path(plan).read_bytes().startswith(_RuntimeCacheFile.MAGIC + b"FAKERTCACHE1")


def test_a_file_named_like_the_runtime_cache_that_is_not_ours_is_left_alone(monkeypatch, tmp_path, cuda):
    """No command replaces a file the user did not name: without fcnseg's header it is not a cache of ours."""
    plan = write_plan(tmp_path / "rtx.plan", "rtx")
    runtime_cache_path(plan).write_bytes(b"my notes")
    b, trt = load(monkeypatch, plan, cuda, "rtx")
    with pytest.warns(RuntimeWarning, match="is not an fcnseg runtime cache; it is left as it is"):
        x = batch(1, 8, 8)
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    b.close()
    assert runtime_cache_path(plan).read_bytes() == b"my notes" and trt._fake.cache_loaded == []


def test_rtx_runtime_cache_that_cannot_be_read_or_written_only_warns(monkeypatch, tmp_path, cuda):
    plan = write_plan(tmp_path / "rtx.plan", "rtx")
    runtime_cache_path(plan).mkdir()   # neither readable nor replaceable as a file
    b, _ = load(monkeypatch, plan, cuda, "rtx")
    with pytest.warns(RuntimeWarning, match="could not read the runtime cache"):
        x = batch(1, 8, 8)
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    with pytest.warns(RuntimeWarning, match="could not write the runtime cache"):
        b.close()
    assert cuda.device == {} and cuda.host_live == 0 and runtime_cache_path(plan).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rtx.plan", "rtx.plan.json", "rtx.plan.rtcache"]


@pytest.mark.parametrize("version", ["8.5", "10.x", "11.x"])
def test_no_runtime_cache_without_the_api(monkeypatch, tmp_path, cuda, version):
    plan = write_plan(tmp_path / "m.plan", version)
    b, _ = load(monkeypatch, plan, cuda, version)
    b.infer(batch(1, 8, 8))
    b.close()
    assert not runtime_cache_path(plan).exists()


# ---------------------------------------------------------------- defect 7: buffers grow to the shapes run

def test_buffers_grow_only_when_a_larger_shape_arrives(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda)
    for shape in [(1, 8, 8), (1, 16, 16), (1, 8, 8), (1, 12, 12), (2, 32, 32), (1, 9, 9)]:
        x = batch(*shape, seed=sum(shape))
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    expected = []
    for n, h, w in [(1, 8, 8), (1, 16, 16), (2, 32, 32)]:
        expected += [n * 3 * h * w * 4, n * NUM_CLASSES * h * w * 4]
    assert cuda.mallocs == expected and len(cuda.device) == 2 and cuda.host_live == 2
    b.close()
    assert cuda.device == {} and cuda.host_live == 0


def test_graphs_are_captured_again_after_buffers_move(monkeypatch, plan, cuda):
    b = backend(monkeypatch, plan, cuda, cuda_graphs=True)
    small, large = batch(1, 8, 8), batch(2, 32, 32, seed=1)
    for x in (small, small, large, small, small):   # the large batch moves the buffers the small graph froze
        np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    assert cuda.captures == 3 and cuda.graphs_live == 2
    b.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_context_memory_is_reported_without_deprecated_calls(monkeypatch, tmp_path, cuda, version):
    spec = fakes.EngineSpec(context_memory=12345)
    plan = write_plan(tmp_path / "m.plan", version, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        b, _ = load(monkeypatch, plan, cuda, version, spec=spec)
        assert b.context_memory_bytes == 12345
    b.close()


# ---------------------------------------------------------------- defect 9: addresses checked, FP16 logits cast

def test_refused_tensor_address_is_one_line(monkeypatch, plan, cuda):
    b, _ = load(monkeypatch, plan, cuda, failures=fakes.Failures(address_refused=True))
    with pytest.raises(FcnsegError) as e:
        b.infer(batch(1, 8, 8))
    assert re.fullmatch(r"expected TensorRT to accept the device address 0x[0-9a-f]+ for tensor 'input', got a "
                        r"refusal \(set_tensor_address returned False\); try the TensorRT log above for why \(an "
                        r"unknown tensor name, or an address not 256-byte aligned\)", str(e.value)), str(e.value)
    b.close()


@pytest.mark.parametrize("version", ["8.6", "10.x", "rtx"])
def test_fp16_logits_come_back_as_float32(monkeypatch, tmp_path, cuda, version):
    spec = fakes.EngineSpec(output_dtype="HALF")
    plan = write_plan(tmp_path / "fp16.plan", version, spec)
    b, _ = load(monkeypatch, plan, cuda, version, spec=spec)
    x = batch(2, 10, 12)
    out = b.infer(x)["logits"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, reference(x).astype(np.float16).astype(np.float32))
    b.close()


# ---------------------------------------------------------------- failure modes: one line each

@pytest.mark.parametrize("mode, start", [
    ("shape_refused", "expected TensorRT to accept input shape 1x3x8x8 for 'input', got a refusal; try"),
    ("context_none", "expected TensorRT to create an execution context, got None (out of GPU memory?); try"),
    ("execute_false", "expected TensorRT's execute_async_v3 to enqueue the engine, got False; try"),
    ("negative_dims", "expected a static output shape for 'logits' once the input shape is set, got "
                      f"(-1, {NUM_CLASSES}, -1, -1); try"),
])
def test_failure_modes_are_one_line_errors(monkeypatch, plan, cuda, mode, start):
    b, _ = load(monkeypatch, plan, cuda, failures=fakes.Failures(**{mode: True}))
    with pytest.raises(FcnsegError) as e:
        b.infer(batch(1, 8, 8))
    assert str(e.value).startswith(start) and "\n" not in str(e.value), str(e.value)
    b.close()
    assert cuda.device == {} and cuda.host_live == 0 and cuda.streams == {}


# ---------------------------------------------------------------- the CUDA context, version-compatible engines

@pytest.mark.parametrize("version", ["8.5", "10.x", "rtx"])
def test_tensorrt_calls_run_with_the_cuda_context_bound(monkeypatch, tmp_path, version):
    """Deserialize, contexts, enqueues, graphs, the runtime cache and close, from pool threads, all inside
    ``CudaMemory.bound()`` (pycuda has no context current in a new thread)."""
    plan = write_plan(tmp_path / "m.plan", version)
    if version == "rtx":
        b, _ = load(monkeypatch, plan, FakeCuda(), version)
        b.infer(batch(1, 8, 8))
        b.close()   # writes the runtime cache the strict run reads
    strict = FakeCuda(strict=True)
    b, _ = load(monkeypatch, plan, strict, version, cuda_graphs=True)
    with ThreadPoolExecutor(3) as pool:
        for x, y in zip(pool.map(lambda s: b.infer(batch(1, 8, 8, seed=s))["logits"], range(6)), range(6)):
            np.testing.assert_array_equal(x, reference(batch(1, 8, 8, seed=y)))
    b.close()
    assert strict.device == {} and strict.captures >= 1


@pytest.mark.parametrize("version", ["8.6", "10.x", "11.x"])
def test_version_compatible_engine_is_loaded_with_its_host_code(monkeypatch, tmp_path, cuda, version):
    spec = fakes.EngineSpec(version_compatible=True)
    plan = write_plan(tmp_path / "vc.plan", version, spec, version_compatible=True)
    b, _ = load(monkeypatch, plan, cuda, version, spec=spec)
    x = batch(1, 8, 8)
    np.testing.assert_array_equal(b.infer(x)["logits"], reference(x))
    b.close()


# ---------------------------------------------------------------- every version through every path

@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 13, 27), (2, 32, 32), (2, 9, 31)])
def test_path_backend(monkeypatch, cuda, version, vplan, shape):
    with backend(monkeypatch, vplan, cuda, version=version) as b:
        x = batch(*shape)
        out = b.infer(x)
        assert list(out) == ["logits"] and out["logits"].dtype == np.float32
        np.testing.assert_array_equal(out["logits"], reference(x))
        assert set(b.last_timing) == {"h2d", "infer", "d2h"} and all(v >= 0 for v in b.last_timing.values())
        assert b.name == "tensorrt" and b.metadata.arch == "tiny" and b.metadata.num_classes == NUM_CLASSES
        assert b.library == fakes.library(version)
    assert cuda.device == {} and cuda.host_live == 0


def test_path_thread_pool(monkeypatch, cuda, version, vplan):
    b, trt = load(monkeypatch, vplan, cuda, version)
    inputs = [batch(1 + i % 2, 8 + i, 30 - i, seed=i) for i in range(8)]
    results = {}
    start = threading.Barrier(4)   # four threads at once: an idle pool thread must not take two tasks

    def work(t):
        start.wait()
        for i, x in enumerate(inputs):
            results[(t, i)] = b.infer(x)["logits"]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))  # re-raises a worker's exception here
    assert len(results) == 32
    for (t, i), y in results.items():
        np.testing.assert_array_equal(y, reference(inputs[i]))
    assert trt._fake.contexts == 4
    b.close()
    assert cuda.device == {} and cuda.host_live == 0 and cuda.streams == {}


def test_path_segment_stream_pipelined(monkeypatch, tmp_path, cuda, version, vplan):
    from fcnseg.runtime import Segmenter
    from fcnseg.runtime.video.loop import Source, segment_stream

    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(5)]

    class Frames(Source):
        def __iter__(self):
            return iter(frames)

    with Segmenter(backend(monkeypatch, vplan, cuda, version=version)) as seg:
        stats = segment_stream(seg, Frames(), None, save_masks=tmp_path / "masks", mask_format="npy",
                               pipelined=True)
        assert stats.frames == 5 and stats.error is None and stats.batch == 2   # the profile's max batch
        expected = [seg(f) for f in frames]
    masks = [np.load(p) for p in sorted((tmp_path / "masks").iterdir())]
    assert len(masks) == 5
    for got, want in zip(masks, expected):
        np.testing.assert_array_equal(got, want)
    assert cuda.device == {} and cuda.host_live == 0


def test_loading_an_engine_asks_the_driver_for_the_gpu_once(monkeypatch, plan):
    """The rebuild check and the backend share one answer (each asked libcuda itself before)."""
    import fcnseg.runtime.backends.tensorrt as backend_module
    from fcnseg.runtime import Segmenter

    fakes.install("10.x", setitem=monkeypatch.setitem, setattr_=monkeypatch.setattr)
    asked = []
    probe = backend_module.probe_gpu
    monkeypatch.setattr(backend_module, "probe_gpu", lambda: asked.append(1) or probe())
    with Segmenter.load(plan) as seg:
        assert seg.backend.name == "tensorrt" and seg(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)
    assert len(asked) == 1


def test_path_fcn_bench_engine(monkeypatch, tmp_path, version, vplan):
    from click.testing import CliRunner
    from fcnseg.benchmarks.cli import bench_main

    fakes.install(version, setitem=monkeypatch.setitem, setattr_=monkeypatch.setattr)
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(bench_main, ["--engine", str(vplan), "--shape", "16x16", "--batch", "2", "--iters", "2",
                                        "--warmup", "1", "--rounds", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["backend"] == "tensorrt" and np.isfinite(rows[0]["e2e"]["median"])


SITECUSTOMIZE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("fcnseg_test_fakes_tensorrt", {fakes!r})
fakes = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fakes
spec.loader.exec_module(fakes)
fakes.install({version!r})
"""


def test_path_bundle_run_py(tmp_path, version, vplan):
    """The bundle's run.py, unchanged, in a subprocess whose sitecustomize (on PYTHONPATH) installs the fake."""
    from PIL import Image

    import fcnseg.export.templates as templates

    site, frames = tmp_path / "site", tmp_path / "frames"
    site.mkdir()
    frames.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(fakes=str(FAKES), version=version))
    rng = np.random.default_rng(5)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(frames / f"{i}.png")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    run_py = Path(next(iter(templates.__path__))) / "run.py"   # the template fcn-export bundle copies
    proc = subprocess.run([sys.executable, str(run_py), str(frames), str(tmp_path / "out"), "--engine", str(vplan),
                           "--visualize", "mask"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 frames" in proc.stdout or "frames=3" in proc.stdout, proc.stdout
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_mask_output(monkeypatch, plan, cuda):
    for dtype in ("UINT8", "INT32", "INT64"):
        spec = fakes.EngineSpec(output="mask", output_dtype=dtype)
        b = backend(monkeypatch, plan, cuda, spec=spec)
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


# ---------------------------------------------------------------- closing, loading errors

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


def test_version_mismatch_message(monkeypatch, tmp_path, cuda):
    path = tmp_path / "old.plan"
    path.write_bytes(b"ENGINE FROM ELSEWHERE")
    sidecar_path(path).write_text(json.dumps({
        "tensorrt_version": "8.6.2", "gpu": {"name": "Orin", "compute_capability": "8.7"},
        "onnx": "fcn_int8.onnx", "metadata": ModelMetadata().to_dict()}))
    with pytest.raises(FcnsegError) as e:
        backend(monkeypatch, path, cuda, version="10.x")
    msg = str(e.value)
    assert "built with tensorrt 8.6.2 for Orin (compute capability 8.7)" in msg and "\n" not in msg
    assert "expected an engine built with tensorrt 10.13.0.35 on NVIDIA RTX A4000 (compute capability 8.6)" in msg
    assert "rebuilt on this device: fcn-export trt fcn_int8.onnx --library tensorrt -o " + str(path) in msg


def test_deserialize_exception_is_reported(monkeypatch, tmp_path, cuda):
    path = tmp_path / "bad.engine"
    path.write_bytes(PLAN)
    with pytest.raises(FcnsegError) as e:
        load(monkeypatch, path, cuda, failures=fakes.Failures(deserialize="raise"))
    assert "stdVersionRead" in str(e.value) and "tensorrt unknown for unknown GPU" in str(e.value)


def test_mismatch_message_is_one_line_without_sidecar():
    msg = engine_mismatch_message("m.plan", None, version="11.1.0", gpu={"name": "H200", "compute_capability": "9.0"})
    assert "\n" not in msg and "tensorrt 11.1.0 on H200" in msg and "fcn-export trt MODEL.onnx --library tensorrt -o m.plan" in msg


def test_no_sidecar_uses_defaults(monkeypatch, tmp_path, cuda):
    path = tmp_path / "bare.plan"
    path.write_bytes(PLAN)
    b = backend(monkeypatch, path, cuda, spec=fakes.EngineSpec(output="mask", output_dtype="UINT8"))
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
            assert b.context_memory_bytes is None or b.context_memory_bytes >= 0
            for shape in [(1, 16, 16), (1, 37, 53), (2, 128, 128)]:
                x = batch(*shape, seed=shape[1])
                # INT8 is compared with ORT running the same Q/DQ graph; FP16 with the FP32 graph.
                ref = ort_logits(graph if precision == "int8" else fp32, x)
                cmp = compare_logits(ref, b.infer(x)["logits"], atol=0.05 if precision == "fp16" else 0.25,
                                     min_agreement=0.98)
                assert cmp, f"{precision} {shape} graphs={graphs}: {cmp}"
