"""The TensorRT build layer, driven by fake ``tensorrt`` modules that describe TensorRT 8.5, 8.6, 10.x, 11.x and RTX.

Each fake offers exactly the names its version has, with the enum values of that version (NVIDIA's
``include/NvInfer.h`` at release/8.5, v8.6.1, v10.3.0 and v11.1, and the installed ``tensorrt_rtx``), and checks
arguments the way pybind11 does: an enum parameter takes a member of that enum (not its int, not its name), an
int takes an int, shapes take ints. Tests below hold the tables against the real modules where installed
(``tensorrt_rtx``; ``tensorrt-stubs`` 10.13) and run one list of wrong calls against the fake and the real
TensorRT for RTX. Every builder call is recorded (enum members by name), so the tests check which flags,
profiles and limits the build sets on each version without TensorRT or a GPU.
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnseg.export import tensorrt as T
from fcnseg.export.chain import rebuild_engine
from fcnseg.core.atomic import file_sha256
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata


# ---------------------------------------------------------------- enum values per release

_FLAGS_85 = dict(FP16=0, INT8=1, DEBUG=2, GPU_FALLBACK=3, STRICT_TYPES=4, REFIT=5, DISABLE_TIMING_CACHE=6, TF32=7,
                 SPARSE_WEIGHTS=8, SAFETY_SCOPE=9, OBEY_PRECISION_CONSTRAINTS=10, PREFER_PRECISION_CONSTRAINTS=11,
                 DIRECT_IO=12, REJECT_EMPTY_ALGORITHMS=13, ENABLE_TACTIC_HEURISTIC=14)
_FLAGS_10 = dict(FP16=0, INT8=1, DEBUG=2, GPU_FALLBACK=3, REFIT=4, DISABLE_TIMING_CACHE=5, TF32=6, SPARSE_WEIGHTS=7,
                 SAFETY_SCOPE=8, OBEY_PRECISION_CONSTRAINTS=9, PREFER_PRECISION_CONSTRAINTS=10, DIRECT_IO=11,
                 REJECT_EMPTY_ALGORITHMS=12, VERSION_COMPATIBLE=13, EXCLUDE_LEAN_RUNTIME=14, FP8=15,
                 ERROR_ON_TIMING_CACHE_MISS=16, BF16=17, DISABLE_COMPILATION_CACHE=18, STRIP_PLAN=19,
                 REFIT_IDENTICAL=20, WEIGHT_STREAMING=21, INT4=22, REFIT_INDIVIDUAL=23)
_FLAGS_11 = dict(DEBUG=2, GPU_FALLBACK=3, REFIT=4, DISABLE_TIMING_CACHE=5, TF32=6, SPARSE_WEIGHTS=7, SAFETY_SCOPE=8,
                 DIRECT_IO=11, VERSION_COMPATIBLE=12, EXCLUDE_LEAN_RUNTIME=13, ERROR_ON_TIMING_CACHE_MISS=15,
                 DISABLE_COMPILATION_CACHE=17, STRIP_PLAN=18, REFIT_IDENTICAL=19, WEIGHT_STREAMING=20,
                 REFIT_INDIVIDUAL=22, STRICT_NANS=23, MONITOR_MEMORY=24, EDITABLE_TIMING_CACHE=26,
                 DISTRIBUTIVE_INDEPENDENCE=27)
_POOLS_85 = dict(WORKSPACE=0, DLA_MANAGED_SRAM=1, DLA_LOCAL_DRAM=2, DLA_GLOBAL_DRAM=3)
_POOLS_10 = dict(_POOLS_85, TACTIC_DRAM=4, TACTIC_SHARED_MEMORY=5)
_COMMON = dict(DeviceType=dict(GPU=0, DLA=1), Severity=dict(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4),
               DataType=dict(FLOAT=0, HALF=1, INT8=2, INT32=3, BOOL=4, UINT8=5))
ENUMS = {   # release -> enum -> {member: value}
    "8.5": dict(_COMMON, NetworkDefinitionCreationFlag=dict(EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1),
                BuilderFlag=_FLAGS_85, MemoryPoolType=_POOLS_85),
    "8.6": dict(_COMMON, NetworkDefinitionCreationFlag=dict(EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1),
                BuilderFlag=dict(_FLAGS_85, VERSION_COMPATIBLE=15, EXCLUDE_LEAN_RUNTIME=16, FP8=17),
                MemoryPoolType=dict(_POOLS_85, TACTIC_DRAM=4), HardwareCompatibilityLevel=dict(NONE=0, AMPERE_PLUS=1),
                OnnxParserFlag=dict(NATIVE_INSTANCENORM=0)),
    "10.3": dict(_COMMON, NetworkDefinitionCreationFlag=dict(EXPLICIT_BATCH=0, STRONGLY_TYPED=1),
                 BuilderFlag=_FLAGS_10, MemoryPoolType=_POOLS_10,
                 HardwareCompatibilityLevel=dict(NONE=0, AMPERE_PLUS=1),
                 OnnxParserFlag=dict(NATIVE_INSTANCENORM=0)),
    "11.1": dict(_COMMON, NetworkDefinitionCreationFlag=dict(STRONGLY_TYPED=0, PREFER_JIT_PYTHON_PLUGINS=1,
                                                             PREFER_AOT_PYTHON_PLUGINS=2),
                 BuilderFlag=_FLAGS_11, MemoryPoolType=_POOLS_10,
                 HardwareCompatibilityLevel=dict(NONE=0, AMPERE_PLUS=1, SAME_COMPUTE_CAPABILITY=2),
                 OnnxParserFlag=dict(NATIVE_INSTANCENORM=0)),
    "rtx": dict(_COMMON, NetworkDefinitionCreationFlag=dict(STRONGLY_TYPED=0),
                BuilderFlag=dict(DEBUG=2, GPU_FALLBACK=3, REFIT=4, DISABLE_TIMING_CACHE=5, EDITABLE_TIMING_CACHE=26,
                                 TF32=6, SPARSE_WEIGHTS=7, SAFETY_SCOPE=8, DIRECT_IO=11, VERSION_COMPATIBLE=12,
                                 EXCLUDE_LEAN_RUNTIME=13, ERROR_ON_TIMING_CACHE_MISS=15, DISABLE_COMPILATION_CACHE=17,
                                 STRIP_PLAN=18, REFIT_IDENTICAL=19, WEIGHT_STREAMING=20, REFIT_INDIVIDUAL=22,
                                 STRICT_NANS=23, MONITOR_MEMORY=24, DISTRIBUTIVE_INDEPENDENCE=27,
                                 REQUIRE_USER_ALLOCATION=28),
                MemoryPoolType=_POOLS_10,
                HardwareCompatibilityLevel=dict(NONE=0, AMPERE_PLUS=1, SAME_COMPUTE_CAPABILITY=2),
                OnnxParserFlag=dict(NATIVE_INSTANCENORM=0, ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA=1,
                                    REPORT_CAPABILITY_DLA=2, ENABLE_PLUGIN_OVERRIDE=3, ADJUST_FOR_DLA=4),
                ComputeCapability=dict(NONE=0, CURRENT=1, SM75=75, SM80=80, SM86=86, SM89=89, SM120=120, SM121=121)),
}


def release_of(version, rtx=False):
    return "rtx" if rtx else ".".join(version.split(".")[:2])


# ---------------------------------------------------------------- a fake tensorrt module

class FakeEnum:
    """A pybind11 enum member: ``int()``, ``.name`` and ``.value`` work; equal only to members of its own enum."""

    def __init__(self, name, value):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    __index__ = __int__

    def __eq__(self, other):
        return type(other) is type(self) and other.value == self.value

    def __hash__(self):
        return hash((type(self).__name__, self.value))

    def __repr__(self):
        return f"<{type(self).__name__}.{self.name}: {self.value}>"


def make_enum(name, members):
    cls = type(name, (FakeEnum,), {})
    for k, v in members.items():
        setattr(cls, k, cls(k, v))
    cls.__members__ = {k: getattr(cls, k) for k in members}
    return cls


def accept(where, value, kind):
    """pybind11's overload check: ``kind`` is a type (or tuple of types) or a predicate; TypeError otherwise."""
    ok = isinstance(value, kind) if isinstance(kind, (type, tuple)) else kind(value)
    if not ok or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{where}(): incompatible function arguments: got {value!r} ({type(value).__name__})")
    return value


def is_dims(value):
    """What pybind11 takes for ``Dims``: a sequence of ints (tuple, list or integer array); no floats."""
    return not isinstance(value, (str, bytes, FakeEnum)) and hasattr(value, "__len__") and \
        all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in value)


def make_trt(version, *, rtx=False, dla_cores=None):
    """A module object offering what TensorRT ``version`` offers; ``m.calls`` records builder calls.

    ``rtx=True`` describes TensorRT for RTX 1.x (module ``tensorrt_rtx``: 11.x's API plus compute-capability
    targets); ``dla_cores`` gives the builder DLA cores (Jetson AGX/NX; None: no DLA API at all).
    """
    release = release_of(version, rtx)
    major = 11 if rtx else int(version.split(".")[0])
    m = types.ModuleType("tensorrt_rtx" if rtx else "tensorrt")
    m.__version__ = version
    m.calls = []
    m.plan = b"PLAN-BYTES"
    m.parse_ok = True
    m.parser_errors = []
    m.cache_out = b"SERIALIZED-CACHE"
    enums = dict(ENUMS[release])
    if dla_cores is None:
        enums.pop("DeviceType")
    if not rtx:
        enums.pop("ComputeCapability", None)
    for name, members in enums.items():
        if name != "Severity":
            setattr(m, name, make_enum(name, members))
    flag_names = {v: k for k, v in ENUMS[release]["NetworkDefinitionCreationFlag"].items()}
    m.nptype = lambda dt: {"FLOAT": np.float32, "HALF": np.float16}[accept("nptype", dt, m.DataType).name]

    class ILogger:
        """The real bindings' abstract logger: Builder and OnnxParser take any ILogger; Logger is one."""
        Severity = make_enum("Severity", ENUMS[release]["Severity"])

        def log(self, severity, msg):
            raise RuntimeError('Tried to call pure virtual function "ILogger::log"')

    class Logger(ILogger):
        def __init__(self, severity=None):
            self.severity = accept("Logger", severity, (Logger.Severity, type(None)))

    for k in Logger.Severity.__members__:
        setattr(Logger, k, getattr(Logger.Severity, k))

    class Dims(list):  # real Dims index like a list
        pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.dtype, self.shape = name, m.DataType.FLOAT, Dims(shape)

    class Network:
        num_inputs = 1
        num_outputs = 1

        def get_input(self, i):
            return Tensor("input", [-1, 3, -1, -1])

        def get_output(self, i):
            return Tensor("logits", [-1, 4, -1, -1])

    class Cache:
        def serialize(self):
            return m.cache_out

    class OptProfile:
        def set_shape(self, name, lo, opt, hi):
            accept("set_shape", name, str)
            for dims in (lo, opt, hi):
                accept("set_shape", dims, is_dims)
            m.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            m.calls.append(("pool", accept("set_memory_pool_limit", pool, m.MemoryPoolType).name,
                            accept("set_memory_pool_limit", size, int)))

        def set_flag(self, flag):
            m.calls.append(("flag", accept("set_flag", flag, m.BuilderFlag).name))

        def add_optimization_profile(self, profile):
            accept("add_optimization_profile", profile, OptProfile)
            m.calls.append(("add_profile",))

        def create_timing_cache(self, data):
            m.calls.append(("create_cache", bytes(accept("create_timing_cache", data, (bytes, bytearray, memoryview)))))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            accept("set_timing_cache", cache, Cache)
            m.calls.append(("set_cache", accept("set_timing_cache", ignore_mismatch, bool)))

        def get_timing_cache(self):
            return Cache()

    def checked_property(name, kind, default, record):
        def get(self):
            return getattr(self, "_" + name, default)

        def put(self, value):
            setattr(self, "_" + name, accept(name, value, kind))
            m.calls.append((record, value.name if isinstance(value, FakeEnum) else value))
        setattr(Config, name, property(get, put))

    if hasattr(m, "HardwareCompatibilityLevel"):   # 8.6+
        checked_property("hardware_compatibility_level", m.HardwareCompatibilityLevel,
                         m.HardwareCompatibilityLevel.NONE, "hardware")
    if dla_cores is not None:
        checked_property("DLA_core", int, -1, "dla_core")
        checked_property("default_device_type", m.DeviceType, m.DeviceType.GPU, "device")
    if rtx:
        checked_property("num_compute_capabilities", int, 0, "num_cc")
        Config.set_compute_capability = lambda self, cc, i: m.calls.append(
            ("cc", accept("set_compute_capability", cc, m.ComputeCapability).name,
             accept("set_compute_capability", i, int)))

    def create_network(self, flags=0):
        flags = int(accept("create_network", flags, (int, FakeEnum)))   # a uint32: pybind11 takes an enum's __index__
        unknown = [b for b in range(32) if flags >> b & 1 and b not in flag_names]
        if unknown:
            raise ValueError(f"create_network: bit {unknown[0]} is no NetworkDefinitionCreationFlag in {version}")
        m.calls.append(("network", {flag_names[b] for b in range(32) if flags >> b & 1}))
        return Network()

    def build(self, net, cfg):
        accept("build_serialized_network", net, Network)
        accept("build_serialized_network", cfg, Config)
        m.calls.append(("build",))
        return m.plan

    builder_attrs = {
        "__init__": lambda self, logger: accept("Builder", logger, ILogger) and None,
        "create_network": create_network,
        "create_builder_config": lambda self: Config(),
        "create_optimization_profile": lambda self: OptProfile(),
        "build_serialized_network": build,
    }
    if major < 10:
        builder_attrs["max_batch_size"] = 1  # implicit batch still exists: EXPLICIT_BATCH is required
    if dla_cores is not None:
        builder_attrs["num_DLA_cores"] = dla_cores
    m.Builder = type("Builder", (), builder_attrs)

    class ParserError:
        def __init__(self, desc, node=-1, name="", op=""):
            self._desc, self._node, self._name, self._op = desc, node, name, op

        def desc(self):
            return self._desc

        def node(self):
            return self._node

    if major >= 10:
        ParserError.node_name = lambda self: self._name
        ParserError.node_operator = lambda self: self._op
    m.ParserError = ParserError

    class OnnxParser:
        def __init__(self, network, logger):
            accept("OnnxParser", network, Network)
            accept("OnnxParser", logger, ILogger)

        def parse_from_file(self, path):
            m.calls.append(("parse", accept("parse_from_file", path, str)))
            return m.parse_ok

        @property
        def num_errors(self):
            return len(m.parser_errors)

        def get_error(self, i):
            return m.parser_errors[i]

    if hasattr(m, "OnnxParserFlag"):   # 8.6+
        OnnxParser.set_flag = lambda self, flag: m.calls.append(
            ("parser_flag", accept("set_flag", flag, m.OnnxParserFlag).name))
    m.OnnxParser = OnnxParser
    m.ILogger, m.Logger = ILogger, Logger
    m.IBuilderConfig = Config
    m.ICudaEngine = type("ICudaEngine", (), {"device_memory_size_v2": 0} if major >= 10 else {})
    m.Runtime = type("Runtime", (), {})
    return m


def enum_values(module, name):
    """{member: int} of an enum of a real or fake module (``Severity`` is ``Logger.Severity``)."""
    enum = module.Logger.Severity if name == "Severity" else getattr(module, name)
    return {k: int(v) for k, v in enum.__members__.items()}


def test_fake_rtx_enums_are_the_installed_tensorrt_rtx_ones():
    real = pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX (pip install tensorrt-rtx)")
    fake = make_trt(real.__version__, rtx=True, dla_cores=0)
    for name in ENUMS["rtx"]:
        assert enum_values(fake, name) == {k: v for k, v in enum_values(real, name).items()
                                           if name != "DataType" or k in ENUMS["rtx"]["DataType"]}, name


def _stub_enums():
    try:
        root = Path(importlib.metadata.distribution("tensorrt-stubs").locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    pyi = root / "tensorrt_bindings" / "tensorrt.pyi"
    if not pyi.is_file():
        pytest.skip(f"no {pyi}")
    found = {}
    for enum, body in re.findall(r"__members__: typing\.ClassVar\[dict\[str, (\w+)\]\]\s+# value = \{(.*)\}",
                                 pyi.read_text()):
        found[enum] = {k: int(v) for k, v in re.findall(r"'(\w+)': <\w+\.\w+: (\d+)>", body)}
    return found


def test_fake_10x_enums_agree_with_tensorrt_stubs():
    """Every member the 10.3 fake has, 10.13's stubs have with the same value (10.x only adds members)."""
    stubs = _stub_enums()
    fake = make_trt("10.3.0", dla_cores=1)
    for name in ENUMS["10.3"]:
        if name == "Severity":
            continue
        assert {k: v for k, v in enum_values(fake, name).items()} == \
            {k: v for k, v in stubs[name].items() if k in ENUMS["10.3"][name]}, name


def _wrong_calls(trt):
    """Calls pybind11 refuses: an enum's int or name for the enum, a float for an int, an enum for an int."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    return {
        "set_flag(int)": lambda: config.set_flag(int(trt.BuilderFlag.VERSION_COMPATIBLE)),
        "set_flag(name)": lambda: config.set_flag("VERSION_COMPATIBLE"),
        "pool as int": lambda: config.set_memory_pool_limit(0, 1 << 20),
        "pool size float": lambda: config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1.5),
        "network flags as float": lambda: builder.create_network(1.0),
        "hardware level as int": lambda: setattr(config, "hardware_compatibility_level", 1),
        "DLA core as str": lambda: setattr(config, "DLA_core", "1"),
        "shape of floats": lambda: profile.set_shape("input", (1.0, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),
        "logger severity as int": lambda: trt.Logger(2),
        "compute capability as int": lambda: config.set_compute_capability(86, 0),
    }


@pytest.mark.parametrize("which", ["fake", "real tensorrt_rtx"])
def test_fake_refuses_what_pybind11_refuses(which):
    """One list of wrong calls, refused by the fake as by the real bindings; the right calls pass on both."""
    if which == "fake":
        trt = make_trt("1.7.1.116", rtx=True, dla_cores=0)
    else:
        trt = pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX (pip install tensorrt-rtx)")
    for name, call in _wrong_calls(trt).items():
        with pytest.raises(TypeError):
            call()
            pytest.fail(f"{which} accepted {name}")
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    trt.Builder(trt.Logger(trt.Logger.WARNING)).create_optimization_profile().set_shape(
        "input", [1, 3, 8, 8], np.array([1, 3, 8, 8]), (1, 3, 8, 8))


@pytest.fixture(params=["8.5.2", "8.6.2", "10.3.0", "11.1.0"])
def fake_trt(request, monkeypatch):
    m = make_trt(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", m)
    return m


def use_trt(monkeypatch, version):
    m = make_trt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", m)
    return m


# ---------------------------------------------------------------- tiny ONNX graphs

def tiny_onnx(path, kind="fp32", *, dims=("N", 3, "H", "W"), props=None, node_name="conv0"):
    """Conv 3->4 (1x1); "fp16": FP16 weights between casts; "int8": Q/DQ on the input and the weights;
    "argmax": as ``fcn-export onnx --argmax`` ends, ArgMax -> Cast(UINT8) to a ``mask``."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 4, dims[2], dims[3]])
    if kind in ("fp32", "argmax"):
        inits, nodes = [numpy_helper.from_array(w, "w")], [helper.make_node("Conv", ["input", "w"], ["logits"],
                                                                            name=node_name)]
    elif kind == "fp16":
        inits = [numpy_helper.from_array(w.astype(np.float16), "w16")]
        nodes = [helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16, name="cast_in"),
                 helper.make_node("Conv", ["x16", "w16"], ["y16"], name=node_name),
                 helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT, name="cast_out")]
    else:
        wq = np.clip(np.round(w / 0.02), -127, 127).astype(np.int8)
        inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                 numpy_helper.from_array(np.array(0, np.int8), "z"),
                 numpy_helper.from_array(wq, "wq"),
                 numpy_helper.from_array(np.full(4, 0.02, np.float32), "ws"),
                 numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"], name="q_in"),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
                 helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0, name="dq_w"),
                 helper.make_node("Conv", ["xd", "wd"], ["logits"], name=node_name)]
    if kind == "argmax":
        nodes = [helper.make_node("Conv", ["input", "w"], ["scores"], name=node_name),
                 helper.make_node("ArgMax", ["scores"], ["ids"], axis=1, keepdims=0, name="argmax"),
                 helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.UINT8, name="to_uint8")]
        inits = [numpy_helper.from_array(w, "w")]
        y = helper.make_tensor_value_info("mask", TensorProto.UINT8, [dims[0], dims[2], dims[3]])
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    all_props = ModelMetadata(arch="tiny", num_classes=4).to_props()
    all_props.update(props or {})
    for k, v in all_props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fp32_onnx(tmp_path):
    return tiny_onnx(tmp_path / "m.onnx")


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix not in (".onnx",))


# ---------------------------------------------------------------- shapes and profiles

@pytest.mark.parametrize("text", ["", "1x3x", "1x3xabcx4", "0x3x4x4", "-1x3x4x4", "1.5x3x4x4", "1,3,4,4"])
def test_profile_shape_text_is_checked(text):
    from fcnseg.core.shapes import parse_dims

    with pytest.raises(FcnsegError, match="expected a shape like 1x3x520x520"):
        parse_dims(text)


def test_default_profile_fills_symbolic_and_fixed_dims():
    assert T.derive_profile(["N", 3, "H", "W"]) == T.Profile((1, 3, 256, 256), (1, 3, 520, 520), (1, 3, 1024, 1024))
    fixed = T.derive_profile([2, 3, 97, 131])
    assert fixed.min == fixed.opt == fixed.max == (2, 3, 97, 131)


def test_default_profile_is_clamped_into_declared_sizes():
    p = T.derive_profile(["N", 3, "H", "W"], size_range=(300, 600))
    assert p == T.Profile((1, 3, 300, 300), (1, 3, 520, 520), (1, 3, 600, 600))


def test_explicit_profile_is_kept():
    p = T.derive_profile(["N", 3, "H", "W"], min_shape=(1, 3, 64, 96), opt_shape=(2, 3, 128, 128),
                         max_shape=(4, 3, 512, 640))
    assert (p.min, p.opt, p.max) == ((1, 3, 64, 96), (2, 3, 128, 128), (4, 3, 512, 640))


@pytest.mark.parametrize("kwargs, expected", [
    (dict(max_shape=(1, 3, 480, 400)), ((1, 3, 256, 256), (1, 3, 480, 400), (1, 3, 480, 400))),
    (dict(min_shape=(2, 3, 1200, 600)), ((2, 3, 1200, 600), (2, 3, 1200, 600), (2, 3, 1200, 1024))),
    (dict(opt_shape=(1, 3, 128, 2000)), ((1, 3, 128, 256), (1, 3, 128, 2000), (1, 3, 1024, 2000))),
])
def test_defaults_move_around_given_shapes(kwargs, expected):
    p = T.derive_profile(["N", 3, "H", "W"], **kwargs)
    assert (p.min, p.opt, p.max) == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_shape=(1, 3, 600, 600), max_shape=(1, 3, 512, 512)), "expected min <= opt <= max"),
    (dict(min_shape=(2, 3, 256, 256), opt_shape=(1, 3, 520, 520)), r"dim 0: 2, 1, 2"),
    (dict(min_shape=(1, 4, 256, 256)), "expected dim 1 of --min-shape to be 3"),
    (dict(max_shape=(1, 3, 1024)), "expected a 4-D --max-shape"),
    (dict(max_shape=(1, 3, 4096, 4096)), r"within \[64, 2048\]"),
    (dict(min_shape=(1, 3, 32, 256)), r"got --min-shape 1x3x32x256"),
])
def test_profile_errors(kwargs, message):
    with pytest.raises(FcnsegError, match=message):
        T.derive_profile(["N", 3, "H", "W"], size_range=(64, 2048), **kwargs)


def test_channels_must_agree_when_symbolic():
    with pytest.raises(FcnsegError, match="same channel count"):
        T.derive_profile(["N", "C", "H", "W"], min_shape=(1, 1, 64, 64), max_shape=(1, 3, 64, 64),
                         opt_shape=(1, 1, 64, 64))


def test_engine_spec_reads_declared_sizes_and_metadata(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", props={"fcnseg.min_size": "64", "fcnseg.max_size": "512"})
    spec = T.engine_spec(path)
    assert spec.profile.max == (1, 3, 512, 512) and spec.input_name == "input"
    assert spec.metadata.arch == "tiny" and spec.metadata.num_classes == 4
    assert spec.nodes == (("conv0", "Conv"),)
    with pytest.raises(FcnsegError, match=r"within \[64, 512\]"):
        T.engine_spec(path, max_shape=(1, 3, 1024, 1024))


def test_engine_spec_rejects_bad_options(fp32_onnx, tmp_path):
    with pytest.raises(FcnsegError, match="expected a precision"):
        T.engine_spec(fp32_onnx, precision="int4")
    with pytest.raises(FcnsegError, match="positive workspace"):
        T.engine_spec(fp32_onnx, workspace_gib=0)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(fp32_onnx.read_bytes()[:40])
    with pytest.raises(FcnsegError, match="could not read"):
        T.engine_spec(broken)


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_precision_of_onnx(tmp_path, kind):
    path = tiny_onnx(tmp_path / "m.onnx", kind)
    assert T.precision_of_onnx(onnx.load(str(path))) == kind == T.precision_of_onnx(path)


# ---------------------------------------------------------------- features and build modes

def test_detect_features_per_version():
    f85, f10, f11 = (T.detect_features(make_trt(v)) for v in ("8.5.2", "10.3.0", "11.1.0"))
    assert (f85.version, f85.explicit_batch, f85.strongly_typed, f85.fp16_flag, f85.int8_flag) == \
        ("8.5.2", True, False, True, True)
    assert not f85.parser_node_names and not f85.device_memory_size_v2
    assert (f10.explicit_batch, f10.strongly_typed, f10.fp16_flag, f10.parser_node_names,
            f10.device_memory_size_v2) == (False, True, True, True, True)
    assert (f11.explicit_batch, f11.strongly_typed, f11.fp16_flag, f11.int8_flag) == (False, True, False, False)
    assert all(f.memory_pool_limit for f in (f85, f10, f11))


def test_detect_features_of_an_empty_module():
    f = T.detect_features(types.ModuleType("tensorrt"))
    assert f.version == "unknown" and not (f.explicit_batch or f.strongly_typed or f.fp16_flag)


@pytest.mark.parametrize("version, graph, wanted, expected", [
    ("8.5.2", "fp32", None, ("fp32", False, ())),
    ("8.5.2", "fp32", "fp16", ("fp16", False, ("FP16",))),
    ("8.5.2", "fp16", None, ("fp16", False, ("FP16",))),
    ("8.5.2", "int8", None, ("int8", False, ("INT8", "FP16"))),
    ("10.3.0", "fp32", "fp16", ("fp16", False, ("FP16",))),
    ("10.3.0", "fp16", None, ("fp16", True, ())),
    ("10.3.0", "int8", "int8", ("int8", True, ())),
    ("11.1.0", "fp32", None, ("fp32", True, ())),  # 11.x: always strongly typed
    ("11.1.0", "fp16", None, ("fp16", True, ())),
    ("11.1.0", "int8", None, ("int8", True, ())),
])
def test_choose_build_mode(version, graph, wanted, expected):
    mode = T.choose_build_mode(graph, wanted, T.detect_features(make_trt(version)))
    assert (mode.precision, mode.strongly_typed, mode.flags) == expected


@pytest.mark.parametrize("version, graph, wanted, strongly, message", [
    ("11.1.0", "fp32", "fp16", None, "fcn-export fp16"),
    ("10.3.0", "fp32", "int8", None, "fcn-export int8"),
    ("10.3.0", "fp16", "fp32", None, "expected the FP32 ONNX"),
    ("10.3.0", "fp32", "fp16", True, "expected an FP16-typed ONNX"),
    ("8.5.2", "fp16", None, True, "strongly typed networks"),
])
def test_choose_build_mode_errors(version, graph, wanted, strongly, message):
    with pytest.raises(FcnsegError, match=message):
        T.choose_build_mode(graph, wanted, T.detect_features(make_trt(version)), strongly_typed=strongly)


# ---------------------------------------------------------------- the build against fakes

@pytest.mark.parametrize("version, kind, precision, network_flags, builder_flags", [
    ("8.5.2", "fp32", None, {"EXPLICIT_BATCH"}, []),
    ("8.5.2", "fp32", "fp16", {"EXPLICIT_BATCH"}, ["FP16"]),
    ("8.5.2", "fp16", None, {"EXPLICIT_BATCH"}, ["FP16"]),
    ("8.5.2", "int8", None, {"EXPLICIT_BATCH"}, ["INT8", "FP16"]),
    ("8.6.2", "fp32", "fp16", {"EXPLICIT_BATCH"}, ["FP16"]),   # JetPack 6.0
    ("8.6.2", "int8", None, {"EXPLICIT_BATCH"}, ["INT8", "FP16"]),
    ("10.3.0", "fp32", None, set(), []),
    ("10.3.0", "fp32", "fp16", set(), ["FP16"]),
    ("10.3.0", "fp16", None, {"STRONGLY_TYPED"}, []),
    ("10.3.0", "int8", None, {"STRONGLY_TYPED"}, []),
    ("11.1.0", "fp16", None, {"STRONGLY_TYPED"}, []),   # 11.x: STRONGLY_TYPED is bit 0 (deprecated, harmless)
    ("11.1.0", "int8", None, {"STRONGLY_TYPED"}, []),
])
def test_build_sets_flags_per_version(monkeypatch, tmp_path, version, kind, precision, network_flags,
                                      builder_flags):
    m = use_trt(monkeypatch, version)
    onnx_path = tiny_onnx(tmp_path / "m.onnx", kind)
    out = T.build_engine(onnx_path, output=tmp_path / "m.plan", precision=precision, workspace_gib=0.5)
    assert ("network", network_flags) in m.calls
    assert [c[1] for c in m.calls if c[0] == "flag"] == builder_flags
    assert ("pool", "WORKSPACE", 1 << 29) in m.calls
    assert ("set_shape", "input", (1, 3, 256, 256), (1, 3, 520, 520), (1, 3, 1024, 1024)) in m.calls
    assert ("parse", str(onnx_path)) in m.calls
    assert not any(c[0] in ("hardware", "parser_flag") for c in m.calls)   # no compatibility asked
    assert out.path.read_bytes() == m.plan and out.build_seconds >= 0
    side = json.loads(T.sidecar_path(out).read_text())
    assert side["precision"] == (precision or kind) and side["metadata"]["precision"] == (precision or kind)
    assert side["strongly_typed"] == ("STRONGLY_TYPED" in network_flags)


def test_sidecar_contents(fake_trt, tmp_path, fp32_onnx):
    out = T.build_engine(fp32_onnx, output=tmp_path / "m.engine", min_shape=(1, 3, 64, 64),
                         opt_shape=(1, 3, 96, 96), max_shape=(2, 3, 128, 160))
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["library"] == "tensorrt" and side["library_version"] == fake_trt.__version__
    assert side["compute_capabilities"] == [] and side["format"] == 2 and side["dla_core"] is None
    assert set(side["gpu"]) == {"name", "compute_capability"}
    assert side["profile"] == {"input": "input", "min": [1, 3, 64, 64], "opt": [1, 3, 96, 96], "max": [2, 3, 128, 160]}
    assert side["io"]["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    assert side["io"]["outputs"][0]["name"] == "logits"
    meta = ModelMetadata.from_dict(side["metadata"])
    assert meta.arch == "tiny" and meta.num_classes == 4 and len(meta.classes) == 4
    # what a rebuild needs: the ONNX beside the plan (relative), its SHA-256, the workspace, no compatibility
    assert side["onnx"] == "m.onnx" and side["onnx_sha256"] == hashlib.sha256(fp32_onnx.read_bytes()).hexdigest()
    assert side["workspace_gib"] == 4.0 and side["hardware_compatibility"] is None
    assert side["version_compatible"] is False
    assert leftovers(tmp_path) == ["m.engine", "m.engine.json"]  # no temporary files
    assert out.path == tmp_path / "m.engine" and str(out) == str(tmp_path / "m.engine")
    assert out.sidecar == T.EngineSidecar.read(out) and out.size_bytes == len(fake_trt.plan)


def test_parser_errors_name_node_and_op_10x(monkeypatch, tmp_path, fp32_onnx):
    m = use_trt(monkeypatch, "10.3.0")
    m.parse_ok = False
    m.parser_errors = [m.ParserError("Unsupported mode", 0, "Resize_7", "Resize"),
                       m.ParserError("bad attr", 0, "conv0", "Conv")]
    with pytest.raises(FcnsegError) as e:
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan")
    msg = str(e.value)
    assert "node 'Resize_7' (Resize): Unsupported mode" in msg and "node 'conv0' (Conv): bad attr" in msg
    assert "2 error(s)" in msg and "\n" not in msg
    assert leftovers(tmp_path) == []


def test_parser_errors_8x_take_node_name_from_onnx(monkeypatch, tmp_path):
    m = use_trt(monkeypatch, "8.5.2")
    onnx_path = tiny_onnx(tmp_path / "m.onnx", node_name="head_conv")
    m.parse_ok = False
    m.parser_errors = [m.ParserError("Assertion failed: weights", 0)]
    with pytest.raises(FcnsegError, match=r"node 'head_conv' \(Conv\): Assertion failed: weights"):
        T.build_engine(onnx_path, output=tmp_path / "m.plan")


def test_format_parser_error_without_node():
    m = make_trt("10.3.0")
    assert T.format_parser_error(m.ParserError("model has no graph")) == "model has no graph"


def test_build_returning_none_leaves_nothing(fake_trt, tmp_path, fp32_onnx):
    fake_trt.plan = None
    with pytest.raises(FcnsegError, match="build_serialized_network"):
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan", timing_cache=tmp_path / "cache.bin")
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_previous_files_untouched(monkeypatch, fake_trt, tmp_path, fp32_onnx):
    (tmp_path / "m.plan").write_bytes(b"OLD")
    (tmp_path / "m.plan.json").write_text("{}")
    real_write_text = type(tmp_path).write_text

    def failing_write_text(self, *args, **kwargs):
        if self.name.startswith(".m.plan.json"):
            raise OSError("disk full")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan")
    assert (tmp_path / "m.plan").read_bytes() == b"OLD" and (tmp_path / "m.plan.json").read_text() == "{}"
    assert leftovers(tmp_path) == ["m.plan", "m.plan.json"]


def test_timing_cache_loaded_and_saved(fake_trt, tmp_path, fp32_onnx):
    cache = tmp_path / "timing.cache"
    T.build_engine(fp32_onnx, output=tmp_path / "a.plan", timing_cache=cache)
    assert ("create_cache", b"") in fake_trt.calls and ("set_cache", False) in fake_trt.calls
    assert cache.read_bytes() == fake_trt.cache_out
    fake_trt.calls.clear()
    fake_trt.cache_out = b"UPDATED"
    T.build_engine(fp32_onnx, output=tmp_path / "b.plan", timing_cache=cache)
    assert ("create_cache", b"SERIALIZED-CACHE") in fake_trt.calls
    assert cache.read_bytes() == b"UPDATED"


def test_no_timing_cache_by_default(fake_trt, tmp_path, fp32_onnx):
    T.build_engine(fp32_onnx, output=tmp_path / "m.plan")
    assert not any(c[0] in ("create_cache", "set_cache") for c in fake_trt.calls)


def test_output_suffix_checked(fake_trt, tmp_path, fp32_onnx):
    with pytest.raises(FcnsegError, match=r"ending in \.plan or \.engine"):
        T.build_engine(fp32_onnx, output=tmp_path / "m.trt")


def test_11x_refuses_fp16_from_fp32_graph(monkeypatch, tmp_path, fp32_onnx):
    use_trt(monkeypatch, "11.1.0")
    with pytest.raises(FcnsegError, match="fcn-export fp16"):
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan", precision="fp16")
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- TensorRT missing

NOT_INSTALLED = "TensorRT is not installed: expected the `tensorrt` Python package"


@pytest.mark.parametrize("module", [None, types.ModuleType("tensorrt")], ids=["absent", "stubs-only"])
def test_tensorrt_not_installed(monkeypatch, tmp_path, fp32_onnx, module):
    monkeypatch.setitem(sys.modules, "tensorrt", module)  # None makes `import tensorrt` raise ImportError
    with pytest.raises(FcnsegError) as e:
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan", library="tensorrt")
    assert str(e.value).startswith(NOT_INSTALLED) and "pip install tensorrt-cu12" in str(e.value)
    assert "python3-libnvinfer" in str(e.value) and "ImportError" in str(e.value)
    assert leftovers(tmp_path) == []


def test_tensorrt_not_installed_through_the_cli(monkeypatch, tmp_path, fp32_onnx):
    from click.testing import CliRunner

    from fcnseg.export import cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(cli.main, ["trt", str(fp32_onnx), "-o", str(tmp_path / "m.plan"), "--library", "tensorrt"])
    assert result.exit_code != 0
    assert sum(NOT_INSTALLED in line for line in result.output.splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- TensorRT for RTX and DLA (fakes)

def use_rtx(monkeypatch):
    m = make_trt("1.7.1.116", rtx=True, dla_cores=0)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", m)
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # `auto` must fall back to RTX
    return m


def test_rtx_features_and_default_targets(monkeypatch, tmp_path, fp32_onnx):
    m = use_rtx(monkeypatch)
    f = T.detect_features(m)
    assert f.library == "tensorrt_rtx" and f.compute_capabilities and f.always_strongly_typed and not f.timing_cache
    out = T.build_engine(fp32_onnx, output=tmp_path / "m.plan", timing_cache=tmp_path / "t.cache")
    assert ("network", {"STRONGLY_TYPED"}) in m.calls   # always strongly typed, even for an FP32 graph
    assert [c for c in m.calls if c[0] == "cc"] == [("cc", "SM86", 0), ("cc", "SM89", 1), ("cc", "SM120", 2)]
    assert not any(c[0] in ("create_cache", "set_cache") for c in m.calls) and not (tmp_path / "t.cache").exists()
    side = out.sidecar
    assert (side.library, side.library_version, side.compute_capabilities) == ("tensorrt_rtx", "1.7.1.116",
                                                                              ["8.6", "8.9", "12.0"])


def test_rtx_chosen_targets_and_unknown_ones(monkeypatch, tmp_path, fp32_onnx):
    m = use_rtx(monkeypatch)
    out = T.build_engine(fp32_onnx, output=tmp_path / "m.plan", compute_capabilities=["7.5", "12.0"])
    assert [c for c in m.calls if c[0] == "cc"] == [("cc", "SM75", 0), ("cc", "SM120", 1)]
    assert out.sidecar.compute_capabilities == ["7.5", "12.0"] and out.sidecar.targets() == "sm_75/sm_120"
    with pytest.raises(FcnsegError, match=r"expected compute capabilities .*, got 9.0; Hopper"):
        T.build_engine(fp32_onnx, output=tmp_path / "n.plan", compute_capabilities=["9.0"])
    with pytest.raises(FcnsegError, match="expected compute capabilities like 8.6,8.9,12.0, got 'sm86'"):
        T.parse_compute_capabilities("sm86")


def test_full_tensorrt_refuses_compute_capabilities(fake_trt, tmp_path, fp32_onnx):
    with pytest.raises(FcnsegError, match="expected TensorRT for RTX .* for --compute-capability"):
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan", library="tensorrt", compute_capabilities=["8.6"])
    assert leftovers(tmp_path) == []


def test_library_choice_is_checked(tmp_path, fp32_onnx):
    with pytest.raises(FcnsegError, match="expected --library in"):
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan", library="trt")


@pytest.mark.parametrize("version", ["8.5.2", "10.3.0"])
def test_dla_core_with_gpu_fallback(monkeypatch, tmp_path, version):
    m = make_trt(version, dla_cores=2)
    monkeypatch.setitem(sys.modules, "tensorrt", m)
    configs = []
    real = m.Builder.create_builder_config
    monkeypatch.setattr(m.Builder, "create_builder_config", lambda self: configs.append(real(self)) or configs[-1])
    out = T.build_engine(tiny_onnx(tmp_path / "m.onnx", "int8"), output=tmp_path / "m.plan", dla_core=1,
                         gpu_fallback=True)
    cfg, = configs
    assert (cfg.default_device_type, cfg.DLA_core) == (m.DeviceType.DLA, 1) and ("flag", "GPU_FALLBACK") in m.calls
    assert out.sidecar.dla_core == 1 and out.sidecar.gpu_fallback


@pytest.mark.parametrize("kwargs, cores, message", [
    (dict(dla_core=2), 2, r"expected --dla-core between 0 and 1 \(this device has 2 DLA cores\), got 2"),
    (dict(dla_core=0), 0, "no DLA cores on this machine"),
    (dict(gpu_fallback=True), 2, "expected --dla-core N with --gpu-fallback"),
    (dict(dla_core=0, precision="fp32"), 2, "expected an FP16 or INT8 engine for DLA"),
])
def test_dla_errors(monkeypatch, tmp_path, fp32_onnx, kwargs, cores, message):
    monkeypatch.setitem(sys.modules, "tensorrt", make_trt("8.5.2", dla_cores=cores))
    kind = "fp32" if kwargs.get("precision") == "fp32" else "int8"
    with pytest.raises(FcnsegError, match=message):
        T.build_engine(tiny_onnx(tmp_path / "g.onnx", kind), output=tmp_path / "m.plan", **kwargs)
    assert not (tmp_path / "m.plan").exists()


def test_dla_absent_from_the_api(fake_trt, tmp_path):
    with pytest.raises(FcnsegError, match=r"no DLA API in this TensorRT\); try without --dla-core"):
        T.build_engine(tiny_onnx(tmp_path / "m.onnx", "int8"), output=tmp_path / "m.plan", library="tensorrt",
                       dla_core=0)


# ---------------------------------------------------------------- build progress

def recording_progress(monkeypatch):
    made = []

    class Recording(T.BuildProgress):
        def __init__(self):
            super().__init__(disable=False)   # shown even off a terminal
            made.append(self)

    monkeypatch.setattr(T, "BuildProgress", Recording)
    return made


@pytest.mark.parametrize("version", ["8.5.2", "8.6.2"])
def test_tensorrt_8_builds_show_the_elapsed_time(monkeypatch, tmp_path, fp32_onnx, capsys, version):
    """8.x has no IProgressMonitor: one elapsed-time line instead of TensorRT's phases."""
    m = use_trt(monkeypatch, version)
    assert not hasattr(m, "IProgressMonitor")
    made = recording_progress(monkeypatch)
    T.build_engine(fp32_onnx, output=tmp_path / "m.plan")
    assert ("build",) in m.calls and len(made) == 1
    assert made[0].mode == "elapsed" and made[0].phases == []
    assert "building engine: 00:0" in capsys.readouterr().err


def test_builds_work_without_tqdm(monkeypatch, tmp_path, fp32_onnx, capsys):
    m = use_trt(monkeypatch, "8.5.2")
    monkeypatch.setitem(sys.modules, "tqdm", None)   # import tqdm now raises ImportError
    made = recording_progress(monkeypatch)
    assert T.build_engine(fp32_onnx, output=tmp_path / "m.plan").path.read_bytes() == m.plan
    assert made[0].mode == "elapsed" and "building engine:" not in capsys.readouterr().err


def test_the_progress_monitor_never_raises_into_tensorrt():
    class IProgressMonitor:   # what pybind11 gives a subclass to initialise
        def __init__(self):
            self.initialised = True

    class Broken(T.BuildProgress):
        def phase_start(self, *args):
            raise RuntimeError("display broke")

        step_complete = phase_finish = phase_start

    monitor = T.progress_monitor(types.SimpleNamespace(IProgressMonitor=IProgressMonitor), Broken(disable=True))
    assert isinstance(monitor, IProgressMonitor) and monitor.initialised
    monitor.phase_start("Building engine", None, 3)
    assert monitor.step_complete("Building engine", 0) is True   # True: TensorRT goes on
    monitor.phase_finish("Building engine")
    assert monitor.failed
    assert T.progress_monitor(types.SimpleNamespace(), T.BuildProgress()) is None   # 8.x: nothing to subclass


def test_dla_on_real_tensorrt_rtx_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX")
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    onnx_path = tiny_onnx(tmp_path / "m.onnx", "int8")
    result = CliRunner().invoke(main, ["trt", str(onnx_path), "--library", "tensorrt_rtx", "--dla-core", "0",
                                       "--min-shape", "1x3x8x8", "--opt-shape", "1x3x8x8", "--max-shape", "1x3x8x8"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "TensorRT for RTX targets RTX GPUs, which have no DLA" in lines[0], result.stderr
    assert leftovers(tmp_path) == []


def test_sidecar_names_an_onnx_elsewhere_by_its_absolute_path(fake_trt, tmp_path):
    for folder in ("graphs", "engines", "engines/sub"):
        (tmp_path / folder).mkdir()
    onnx_path = tiny_onnx(tmp_path / "graphs" / "m.onnx")
    side = T.build_engine(onnx_path, output=tmp_path / "engines" / "m.plan").sidecar
    assert side.onnx == str(onnx_path.resolve()) and side.onnx_sha256 == file_sha256(onnx_path)
    below = tiny_onnx(tmp_path / "engines" / "sub" / "n.onnx")
    assert T.build_engine(below, output=tmp_path / "engines" / "n.plan").sidecar.onnx == "sub/n.onnx"


# ---------------------------------------------------------------- DLA runs one shape (defect 4a)

def use_dla(monkeypatch, version="8.5.2", cores=2):
    m = make_trt(version, dla_cores=cores)
    monkeypatch.setitem(sys.modules, "tensorrt", m)
    return m


@pytest.mark.parametrize("given, shape", [({}, (1, 3, 520, 520)), ({"opt_shape": (1, 3, 96, 128)}, (1, 3, 96, 128))])
def test_dla_fixes_the_profile_at_opt(monkeypatch, tmp_path, given, shape):
    """--dla-core without explicit min/max: min = opt = max = opt, in the build and in the sidecar."""
    m = use_dla(monkeypatch)
    out = T.build_engine(tiny_onnx(tmp_path / "m.onnx", "int8"), output=tmp_path / "m.plan", dla_core=1, **given)
    assert [c for c in m.calls if c[0] == "set_shape"] == [("set_shape", "input", shape, shape, shape)]
    side = out.sidecar
    assert side.profile == {"input": "input", "min": list(shape), "opt": list(shape), "max": list(shape)}
    assert side.dla_core == 1 and ("dla_core", 1) in m.calls and ("device", "DLA") in m.calls
    assert side.model_metadata().min_size == min(shape[2:]) and side.model_metadata().max_size == max(shape[2:])


@pytest.mark.parametrize("given", [dict(min_shape=(1, 3, 64, 64), max_shape=(1, 3, 128, 128)),
                                   dict(max_shape=(1, 3, 600, 600))])
def test_dla_refuses_a_dynamic_profile_given(monkeypatch, tmp_path, given):
    """An explicit dynamic profile with --dla-core is one line, before TensorRT is even looked for."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # absent: the profile error must come first
    with pytest.raises(FcnsegError, match=r"expected one shape for --dla-core 0 \(DLA runs static shapes: min = opt "
                                          r"= max\), got min 1x3x\S+, opt .*; try --opt-shape 1x3x\S+ alone") as e:
        T.build_engine(tiny_onnx(tmp_path / "m.onnx", "int8"), output=tmp_path / "m.plan", library="tensorrt",
                       dla_core=0, **given)
    assert "\n" not in str(e.value) and leftovers(tmp_path) == []
    m = use_dla(monkeypatch)
    same = (1, 3, 64, 64)   # one shape given three times is what DLA wants
    T.build_engine(tiny_onnx(tmp_path / "m.onnx", "int8"), output=tmp_path / "m.plan", dla_core=0,
                   min_shape=same, opt_shape=same, max_shape=same)
    assert ("set_shape", "input", same, same, same) in m.calls


def test_dla_dynamic_profile_through_the_cli(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    use_dla(monkeypatch)
    onnx_path = tiny_onnx(tmp_path / "m.onnx", "int8")
    result = CliRunner().invoke(main, ["trt", str(onnx_path), "--library", "tensorrt", "--dla-core", "0",
                                       "--min-shape", "1x3x64x64", "--max-shape", "1x3x128x128"])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "expected one shape for --dla-core 0" in lines[0]
    assert leftovers(tmp_path) == []
    result = CliRunner().invoke(main, ["trt", str(onnx_path), "--library", "tensorrt", "--dla-core", "0"])
    assert result.exit_code == 0, result.output
    assert T.EngineSidecar.read(tmp_path / "m.plan").profile["min"] == [1, 3, 520, 520]


# ---------------------------------------------------------------- --argmax graphs on TensorRT 8.5 (defect 3)

ARGMAX_85 = (r"expected a graph the ONNX parser of TensorRT 8\.5\S* accepts, got Cast 'to_uint8' INT64 -> UINT8 "
             r"\(ArgMax's indices: INT32 in TensorRT\) in m\.onnx, which it refuses .*; try exporting without "
             r"--argmax .*a graph whose mask stays INT32")


def test_argmax_graph_refused_by_tensorrt_85_before_parsing(monkeypatch, tmp_path):
    """onnx-tensorrt release/8.5-GA's Cast asserts an FP input for UINT8: one line, and TensorRT never asked."""
    m = use_trt(monkeypatch, "8.5.2")
    with pytest.raises(FcnsegError, match=ARGMAX_85) as e:
        T.build_engine(tiny_onnx(tmp_path / "m.onnx", "argmax"), output=tmp_path / "m.plan")
    assert "\n" not in str(e.value) and not any(c[0] in ("parse", "network") for c in m.calls)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0", "11.1.0"])
def test_argmax_graph_builds_from_86_on(monkeypatch, tmp_path, version):
    m = use_trt(monkeypatch, version)
    T.build_engine(tiny_onnx(tmp_path / "m.onnx", "argmax"), output=tmp_path / "m.plan")
    assert ("build",) in m.calls


def test_trt_version_85_refuses_argmax_whatever_library_builds(monkeypatch, tmp_path):
    """--trt-version 8.5 (a JetPack 5 target) refuses the graph even where 10.x would build it, before TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(FcnsegError, match=ARGMAX_85):
        T.build_engine(tiny_onnx(tmp_path / "m.onnx", "argmax"), output=tmp_path / "m.plan", library="tensorrt",
                       trt_version="8.5")
    with pytest.raises(FcnsegError, match=r"expected a TensorRT version like 8\.5 or 10\.3, got 'eight'"):
        T.build_engine(tiny_onnx(tmp_path / "m.onnx", "argmax"), output=tmp_path / "m.plan", trt_version="eight")
    m = use_trt(monkeypatch, "10.3.0")
    T.build_engine(tiny_onnx(tmp_path / "m.onnx", "fp32"), output=tmp_path / "m.plan", trt_version="8.5")
    assert ("build",) in m.calls   # nothing 8.5 refuses in a logits graph


@pytest.mark.parametrize("flags", [["--trt8"], ["--trt-version", "8.5"], []])
def test_argmax_85_through_the_cli(monkeypatch, tmp_path, flags):
    """One line on stderr, exit 2, nothing written: with --trt8/--trt-version 8.5 on 10.x, or on 8.5 itself."""
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    use_trt(monkeypatch, "10.3.0" if flags else "8.5.2")
    onnx_path = tiny_onnx(tmp_path / "m.onnx", "argmax")
    result = CliRunner().invoke(main, ["trt", str(onnx_path), "--library", "tensorrt", *flags])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and re.search(ARGMAX_85, lines[0]), result.stderr
    assert "Traceback" not in result.output and leftovers(tmp_path) == []


# ---------------------------------------------------------------- hardware and version compatibility (issue 20)

@pytest.mark.parametrize("version, level", [("8.6.2", "ampere+"), ("10.3.0", "ampere+"), ("11.1.0", "same-cc")])
def test_compatibility_is_set_and_recorded(monkeypatch, tmp_path, fp32_onnx, version, level):
    m = use_trt(monkeypatch, version)
    out = T.build_engine(fp32_onnx, output=tmp_path / "m.plan", hardware_compatibility=level, version_compatible=True)
    assert ("hardware", T.HARDWARE_ENUM[level]) in m.calls and ("flag", "VERSION_COMPATIBLE") in m.calls
    assert ("parser_flag", "NATIVE_INSTANCENORM") in m.calls   # as trtexec does for compatible engines
    side = T.EngineSidecar.read(out)
    assert (side.hardware_compatibility, side.version_compatible) == (level, True)
    assert side.describe().startswith(f"tensorrt {version}, version-compatible, fp32, for ")
    assert f"and {level} GPUs" in side.describe()


@pytest.mark.parametrize("version, kwargs, message", [
    ("8.5.2", dict(hardware_compatibility="ampere+"),
     r"expected a TensorRT with HardwareCompatibilityLevel\.AMPERE_PLUS for --hardware-compatibility ampere\+, got "
     r"tensorrt 8\.5\.2; try full TensorRT 8\.6\+"),
    ("10.3.0", dict(hardware_compatibility="same-cc"), r"SAME_COMPUTE_CAPABILITY .*got tensorrt 10\.3\.0"),
    ("8.5.2", dict(version_compatible=True), r"expected a TensorRT with BuilderFlag\.VERSION_COMPATIBLE for "
                                             r"--version-compatible, got tensorrt 8\.5\.2 \(TensorRT 8\.6\+ has it\)"),
    ("8.6.2", dict(hardware_compatibility="ampere++"), r"expected --hardware-compatibility in \('ampere\+', "
                                                       r"'same-cc'\), got 'ampere\+\+'"),
])
def test_compatibility_refused_where_the_library_lacks_it(monkeypatch, tmp_path, fp32_onnx, version, kwargs, message):
    m = use_trt(monkeypatch, version)
    with pytest.raises(FcnsegError, match=message) as e:
        T.build_engine(fp32_onnx, output=tmp_path / "m.plan", **kwargs)
    assert "\n" not in str(e.value) and not any(c[0] in ("parse", "build") for c in m.calls)
    assert leftovers(tmp_path) == []


def test_compatibility_refused_on_tensorrt_for_rtx(monkeypatch, tmp_path, fp32_onnx):
    """TensorRT for RTX has both names, but ignores the level (its builder says so) and cannot build the flag."""
    m = use_rtx(monkeypatch)
    assert hasattr(m, "HardwareCompatibilityLevel") and hasattr(m.BuilderFlag, "VERSION_COMPATIBLE")
    for kwargs in (dict(hardware_compatibility="ampere+"), dict(version_compatible=True)):
        with pytest.raises(FcnsegError, match=r"got tensorrt_rtx 1\.7\.1\.116 \(TensorRT for RTX: engines run where "
                                              r"--compute-capability says\); try full TensorRT 8\.6\+"):
            T.build_engine(fp32_onnx, output=tmp_path / "m.plan", **kwargs)
    assert not any(c[0] == "build" for c in m.calls) and leftovers(tmp_path) == []


def test_compatibility_and_dla_exclude_each_other(monkeypatch, tmp_path):
    use_dla(monkeypatch, "10.3.0")
    with pytest.raises(FcnsegError, match="expected --dla-core or --hardware-compatibility, got both"):
        T.build_engine(tiny_onnx(tmp_path / "m.onnx", "int8"), output=tmp_path / "m.plan", dla_core=0,
                       hardware_compatibility="ampere+")


def test_compatibility_through_the_cli(monkeypatch, tmp_path, fp32_onnx):
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    use_trt(monkeypatch, "10.3.0")
    result = CliRunner().invoke(main, ["trt", str(fp32_onnx), "--library", "tensorrt", "--hardware-compatibility",
                                       "ampere+", "--version-compatible"])
    assert result.exit_code == 0, result.output
    side = T.EngineSidecar.read(tmp_path / "m.plan")
    assert (side.hardware_compatibility, side.version_compatible) == ("ampere+", True)
    use_trt(monkeypatch, "8.5.2")
    result = CliRunner().invoke(main, ["trt", str(fp32_onnx), "--library", "tensorrt", "--version-compatible",
                                       "-o", str(tmp_path / "n.plan")])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "BuilderFlag.VERSION_COMPATIBLE" in lines[0]
    assert not (tmp_path / "n.plan").exists()


# ---------------------------------------------------------------- rebuilding from the sidecar (fakes)

def test_rebuild_replays_the_recorded_options(monkeypatch, tmp_path):
    """Profile, workspace, precision flags and compatibility of the first build, set again by the rebuild."""
    m = use_trt(monkeypatch, "10.3.0")
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    T.build_engine(onnx_path, output=tmp_path / "m.plan", precision="fp16", workspace_gib=0.25,
                   min_shape=(1, 3, 64, 64), opt_shape=(1, 3, 96, 96), max_shape=(2, 3, 128, 160),
                   hardware_compatibility="ampere+", version_compatible=True)
    first, m.calls[:] = list(m.calls), []
    m.plan = b"REBUILT"
    assert rebuild_engine(tmp_path / "m.plan") == tmp_path / "m.plan"
    assert m.calls == first and (tmp_path / "m.plan").read_bytes() == b"REBUILT"
    assert ("pool", "WORKSPACE", 1 << 28) in first and ("flag", "FP16") in first
    side = T.EngineSidecar.read(tmp_path / "m.plan")
    assert (side.precision, side.workspace_gib, side.hardware_compatibility, side.onnx) == ("fp16", 0.25, "ampere+",
                                                                                           "m.onnx")


def test_rebuild_refusals(monkeypatch, tmp_path):
    use_trt(monkeypatch, "10.3.0")
    with pytest.raises(FcnsegError, match=r"expected the sidecar m\.plan\.json .* got none"):
        rebuild_engine(tmp_path / "m.plan")
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    T.build_engine(onnx_path, output=tmp_path / "m.plan")
    other = tiny_onnx(tmp_path / "other.onnx", node_name="another")
    with pytest.raises(FcnsegError, match=r"expected the ONNX m\.plan was built from \(sha256 [0-9a-f]{12}\.\.\.\), "
                                          r"got .*other\.onnx' with sha256"):
        rebuild_engine(tmp_path / "m.plan", onnx_path=other)
    onnx_path.rename(tmp_path / "moved.onnx")
    with pytest.raises(FcnsegError, match=r"got m\.onnx beside it, which is not a file; try onnx_path="):
        rebuild_engine(tmp_path / "m.plan")
    assert rebuild_engine(tmp_path / "m.plan", onnx_path=tmp_path / "moved.onnx", output=tmp_path / "b.plan") \
        == tmp_path / "b.plan"
    side = T.EngineSidecar.read(tmp_path / "m.plan")
    side.precision = "int8"   # as if built by `trt --int8` from this FP32 graph (the Q/DQ graph was temporary)
    side.write(tmp_path / "q.plan")
    (tmp_path / "q.plan").write_bytes(b"PLAN")
    with pytest.raises(FcnsegError, match=r"expected the Q/DQ INT8 graph q\.plan was built from, got the fp32 graph "
                                          r"moved\.onnx \(the INT8 graph was a temporary file\)"):
        rebuild_engine(tmp_path / "q.plan", onnx_path=tmp_path / "moved.onnx")


@pytest.mark.parametrize("change, message", [
    (dict(hardware_compatibility="ampere"), r"expected 'hardware_compatibility' .* one of \('ampere\+', 'same-cc'\)"),
    (dict(onnx_sha256="abc"), "expected 'onnx_sha256' .* 64 lowercase hex digits"),
    (dict(workspace_gib=0), "expected 'workspace_gib' .* a positive number"),
    (dict(version_compatible="yes"), "expected 'version_compatible' .* true or false"),
])
def test_sidecar_rebuild_fields_are_validated(tmp_path, change, message):
    doc = {"library": "tensorrt", "library_version": "10.3.0", "precision": "fp16", "onnx": "m.onnx"}
    (tmp_path / "m.plan.json").write_text(json.dumps(doc))   # a format-2 document from before these keys
    side = T.EngineSidecar.read(tmp_path / "m.plan")
    assert (side.onnx_sha256, side.workspace_gib, side.hardware_compatibility, side.version_compatible) == \
        ("", None, None, False)
    (tmp_path / "m.plan.json").write_text(json.dumps({**doc, **change}))
    with pytest.raises(FcnsegError, match=message):
        T.EngineSidecar.read(tmp_path / "m.plan")
