"""The TensorRT build layer, driven by fake ``tensorrt`` modules that describe TensorRT 8.5, 10.x and 11.x.

Each fake offers exactly the names its version has (the facts in /work/shared/docs/tensorrt.md, checked
against NVIDIA/TensorRT pyCore.cpp / pyOnnx.cpp) and records every builder call, so the tests check
which flags, profiles and limits the build sets on each version without TensorRT or a GPU.
"""

import json
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnseg.export import tensorrt as T
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata

EXPLICIT, STRONG = 1 << 0, 1 << 1  # 1 << int(flag), as TensorRT numbers the creation flags


# ---------------------------------------------------------------- a fake tensorrt module

def make_trt(version, *, rtx=False, dla_cores=None):
    """A module object offering what TensorRT ``version`` offers; ``m.calls`` records builder calls.

    ``rtx=True`` describes TensorRT for RTX 1.x (module ``tensorrt_rtx``: 11.x's API plus compute-capability
    targets); ``dla_cores`` gives the builder DLA cores (Jetson AGX/NX; None: no DLA API at all).
    """
    major = 11 if rtx else int(version.split(".")[0])
    m = types.ModuleType("tensorrt_rtx" if rtx else "tensorrt")
    m.__version__ = version
    m.calls = []
    m.plan = b"PLAN-BYTES"
    m.parse_ok = True
    m.parser_errors = []
    m.cache_out = b"SERIALIZED-CACHE"

    flags = {"EXPLICIT_BATCH": 0} if major < 11 else {}
    if major >= 9:
        flags["STRONGLY_TYPED"] = 1
    m.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), flags)
    m.BuilderFlag = type("BuilderFlag", (), {"FP16": "FP16", "INT8": "INT8"} if major < 11 else {"TF32": "TF32"})
    m.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": "WORKSPACE"})
    m.DataType = type("DataType", (), {"FLOAT": "float", "HALF": "half"})
    m.nptype = lambda dt: {"float": np.float32, "half": np.float16}[dt]

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            self.severity = severity

    class Dims(list):  # real Dims index like a list
        pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.dtype, self.shape = name, "float", Dims(shape)

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

    class Config:
        def set_memory_pool_limit(self, pool, size):
            m.calls.append(("pool", pool, size))

        def set_flag(self, flag):
            m.calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            m.calls.append(("add_profile",))

        def create_timing_cache(self, data):
            m.calls.append(("create_cache", bytes(data)))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            m.calls.append(("set_cache", ignore_mismatch))

        def get_timing_cache(self):
            return Cache()

    if dla_cores is not None:
        m.DeviceType = type("DeviceType", (), {"GPU": "GPU", "DLA": "DLA"})
        Config.DLA_core = -1
        Config.default_device_type = "GPU"
        m.BuilderFlag.GPU_FALLBACK = "GPU_FALLBACK"
    if rtx:
        m.ComputeCapability = type("ComputeCapability", (), {"__members__": {
            n: n for n in ("NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89", "SM120", "SM121")}, **{
            n: n for n in ("SM75", "SM80", "SM86", "SM89", "SM120", "SM121")}})
        Config.num_compute_capabilities = 0
        Config.set_compute_capability = lambda self, cc, i: m.calls.append(("cc", cc, i))

    class OptProfile:
        def set_shape(self, name, lo, opt, hi):
            m.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    builder_attrs = {
        "__init__": lambda self, logger: None,
        "create_network": lambda self, flags=0: (m.calls.append(("network", flags)), Network())[1],
        "create_builder_config": lambda self: Config(),
        "create_optimization_profile": lambda self: OptProfile(),
        "build_serialized_network": lambda self, net, cfg: (m.calls.append(("build",)), m.plan)[1],
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
            pass

        def parse_from_file(self, path):
            m.calls.append(("parse", path))
            return m.parse_ok

        @property
        def num_errors(self):
            return len(m.parser_errors)

        def get_error(self, i):
            return m.parser_errors[i]

    m.OnnxParser = OnnxParser
    m.Logger = Logger
    m.IBuilderConfig = Config
    m.ICudaEngine = type("ICudaEngine", (), {"device_memory_size_v2": 0} if major >= 10 else {})
    m.Runtime = type("Runtime", (), {})
    return m


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
    """Conv 3->4 (1x1); "fp16": FP16 weights between casts; "int8": Q/DQ on the input and the weights."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 4, dims[2], dims[3]])
    if kind == "fp32":
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
    ("8.5.2", "fp32", None, EXPLICIT, []),
    ("8.5.2", "fp32", "fp16", EXPLICIT, ["FP16"]),
    ("8.5.2", "fp16", None, EXPLICIT, ["FP16"]),
    ("8.5.2", "int8", None, EXPLICIT, ["INT8", "FP16"]),
    ("8.6.2", "fp32", "fp16", EXPLICIT, ["FP16"]),   # JetPack 6.0
    ("8.6.2", "int8", None, EXPLICIT, ["INT8", "FP16"]),
    ("10.3.0", "fp32", None, 0, []),
    ("10.3.0", "fp32", "fp16", 0, ["FP16"]),
    ("10.3.0", "fp16", None, STRONG, []),
    ("10.3.0", "int8", None, STRONG, []),
    ("11.1.0", "fp16", None, STRONG, []),
    ("11.1.0", "int8", None, STRONG, []),
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
    assert out.path.read_bytes() == m.plan and out.build_seconds >= 0
    side = json.loads(T.sidecar_path(out).read_text())
    assert side["precision"] == (precision or kind) and side["metadata"]["precision"] == (precision or kind)
    assert side["strongly_typed"] == bool(network_flags & STRONG)


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
    assert side["onnx"] == str(fp32_onnx)
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
    cli = pytest.importorskip("fcnseg.export.cli", reason="export/cli.py not written yet")
    if "trt" not in getattr(cli.main, "commands", {}):
        pytest.skip("fcn-export has no trt subcommand yet")
    from click.testing import CliRunner

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
    assert ("network", STRONG) in m.calls   # always strongly typed, even for an FP32 graph
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
    assert (cfg.default_device_type, cfg.DLA_core) == ("DLA", 1) and ("flag", "GPU_FALLBACK") in m.calls
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
