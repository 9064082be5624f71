"""Real TensorRT engines, built on this CPU with TensorRT for RTX, for all four architectures in every form.

Random weights, small profiles (1x3x64x64 .. 1x3x128x128). Each engine is checked on the builder side
(running one needs an RTX GPU): zero parser errors, a serialized plan, the sidecar's I/O names, dtypes and
dynamic dims equal to the ONNX's and found in the plan, and INT8 < FP16 < FP32 in engine bytes. A table of
every engine built (architecture, precision, build seconds, MB) is written to the file named by the
environment variable FCNSEG_ENGINE_TABLE, when set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import pytest

from fcnseg.export.check import check_trt_ready
from fcnseg.export import chain
from fcnseg.export.fp16 import convert_fp16
from fcnseg.export.int8 import quantize_int8
from fcnseg.export.options import EngineOptions
from fcnseg.export.torch_export import export_onnx
from fcnseg.export.tensorrt import BuiltEngine, build_engine
from fcnseg.core.sidecar import EngineSidecar

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="needs TensorRT for RTX (pip install tensorrt-rtx)")

PROFILE = {"min_shape": (1, 3, 64, 64), "opt_shape": (1, 3, 96, 96), "max_shape": (1, 3, 128, 128)}
# Every architecture in every form: FP32, the FP16-typed graph, `fcn-export trt --fp16` on the FP32 graph
# ("fp16_flag": converted in a temporary folder, then built), the Q/DQ INT8 graph and the in-graph argmax graph.
ALL_KINDS = ("fp32", "fp16", "fp16_flag", "int8", "argmax")
# FCN-8s/ResNet-18 and FCN-ResNet50 stand for their families in every run; ResNet-34 and -101 (the same graphs with
# more blocks, 70 s of builds) only with FCNSEG_ALL_ARCHS=1, as when the docs' engine table is made.
ARCHS = ("fcn8s_resnet18", "fcn8s_resnet34", "fcn_resnet50", "fcn_resnet101") if os.environ.get("FCNSEG_ALL_ARCHS") \
    else ("fcn8s_resnet18", "fcn_resnet50")
KINDS = {arch: ALL_KINDS for arch in ARCHS}
PRECISION = {"argmax": "fp32", "fp16_flag": "fp16"}   # the engine's precision where the kind's name is not it
BUILT: list = []   # (arch, kind, BuiltEngine) for the table


@pytest.fixture(scope="session")
def rtx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("rtx")


@pytest.fixture(scope="session")
def engines(rtx_dir, checkpoint_factory, tiny_voc, r18_onnx, r18_argmax_onnx, r18_int8):
    """arch -> {kind: Engine}: every kind built with tensorrt_rtx, read, then deleted with its graphs.

    An architecture's graphs and plans reach about 1 GB (FCN-ResNet101), so each is removed once its facts are
    read: the suite's disk use stays at one architecture's files, not all four.
    """
    cache: dict = {}

    def make(arch: str) -> dict:
        if arch not in cache:
            folder = rtx_dir / arch
            folder.mkdir()
            graphs = _shared_r18_graphs(folder, r18_onnx, r18_argmax_onnx, r18_int8) if arch == "fcn8s_resnet18" \
                else _graphs(arch, folder, checkpoint_factory, tiny_voc)
            cache[arch] = {kind: _build(arch, kind, graphs[kind], folder) for kind in KINDS[arch]}
            shutil.rmtree(folder)
        return cache[arch]
    yield make
    _write_table(os.environ.get("FCNSEG_ENGINE_TABLE"))


def _shared_r18_graphs(folder, r18_onnx, r18_argmax_onnx, r18_int8):
    return {"fp32": r18_onnx, "argmax": r18_argmax_onnx, "int8": r18_int8.path, "fp16_flag": r18_onnx,
            "fp16": convert_fp16(r18_onnx, folder / "r18_fp16.onnx", verify=False).path}


def _graphs(arch, folder, make_checkpoint, voc):
    ckpt = make_checkpoint(folder / f"{arch}.pth", arch)
    fp32 = export_onnx(ckpt, folder / f"{arch}.onnx", verify=False).path
    out = {"fp32": fp32, "fp16_flag": fp32}
    kinds = KINDS[arch]
    if "argmax" in kinds:
        out["argmax"] = export_onnx(ckpt, folder / f"{arch}_argmax.onnx", argmax=True, verify=False).path
    ckpt.unlink()
    if "fp16" in kinds:
        out["fp16"] = convert_fp16(fp32, folder / f"{arch}_fp16.onnx", verify=False).path
    if "int8" in kinds:
        out["int8"] = quantize_int8(fp32, folder / f"{arch}_int8.onnx", calib_root=voc, num_images=2,
                                    method="minmax", eval_images=1, max_drop=100.0, progress=False).path
    return out


@dataclass
class Engine:
    """What the tests check of one built engine and its graph, read before both are deleted."""

    arch: str
    kind: str
    built: BuiltEngine
    size_bytes: int              # BuiltEngine.size_bytes
    plan_bytes: int              # bytes read back
    sidecar_on_disk: EngineSidecar
    names_in_plan: dict          # tensor name -> found in the serialized plan
    graph_io: dict
    graph_ready: bool            # check_trt_ready on the graph
    graph_parser_errors: list


def _build(arch, kind, graph, folder) -> Engine:
    options = EngineOptions(library="tensorrt_rtx", workspace_gib=1.0, **PROFILE)
    output = str(folder / f"{arch}_{kind}.plan")
    if kind == "fp16_flag":   # fcn-export trt --fp16 on the FP32 graph: the chain lowers it, then builds
        built = chain.engine(str(graph), output, replace(options, precision="fp16"))
    else:
        built = build_engine(str(graph), output=output, options=options)
    plan = built.path.read_bytes()
    side = EngineSidecar.read(built.path)
    engine = Engine(arch, kind, built, size_bytes=built.size_bytes, plan_bytes=len(plan), sidecar_on_disk=side,
                    names_in_plan={t["name"]: t["name"].encode() in plan
                                   for t in side.io["inputs"] + side.io["outputs"]},
                    graph_io=onnx_io(graph), graph_ready=check_trt_ready(graph),
                    graph_parser_errors=parser_errors(graph))
    BUILT.append(engine)
    built.path.unlink()
    return engine


def _write_table(path):
    if not path or not BUILT:
        return
    rows = ["| architecture | graph | precision | build s | engine MB | library |", "|---|---|---|---|---|---|"]
    for e in BUILT:
        side = e.built.sidecar
        rows.append(f"| {e.arch} | {e.kind} | {side.precision} | {e.built.build_seconds:.2f} | "
                    f"{e.size_bytes / 1e6:.1f} | {side.library} {side.library_version} |")
    Path(path).write_text("\n".join(rows) + "\n")


def onnx_io(path):
    """{"inputs": [...], "outputs": [...]} of an ONNX graph in the sidecar's form (-1 for symbolic dims)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}

    def describe(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]}
    return {"inputs": [describe(v) for v in model.graph.input if v.name not in inits],
            "outputs": [describe(v) for v in model.graph.output]}


def assert_io_matches(engine, graph):
    """Same names and dtypes; inputs' dims equal; outputs keep N, H, W dynamic (-1) and every fixed ONNX dim.

    An ONNX output may leave the class dim symbolic where TensorRT infers it (21): that is allowed.
    """
    assert engine["inputs"] == graph["inputs"]
    assert [(t["name"], t["dtype"]) for t in engine["outputs"]] == [(t["name"], t["dtype"]) for t in graph["outputs"]]
    for e, o in zip(engine["outputs"], graph["outputs"]):
        assert len(e["shape"]) == len(o["shape"]) and all(d in (-1, x) for d, x in zip(o["shape"], e["shape"]))
        assert e["shape"][0] == -1 and e["shape"][-2:] == [-1, -1], e


def parser_errors(path):
    from fcnseg.export.tensorrt import create_network, detect_features, parse_onnx_errors

    features = detect_features(importlib.import_module("tensorrt_rtx"))
    trt = features.module
    logger = trt.Logger(trt.Logger.ERROR)
    network = create_network(trt.Builder(logger), features, strongly_typed=True)
    return parse_onnx_errors(network, logger, Path(path), features)[1]


@pytest.mark.parametrize("arch", list(KINDS))
def test_real_engines_match_their_onnx(arch, engines):
    built = engines(arch)
    assert set(built) == set(KINDS[arch])
    for kind, e in built.items():
        assert e.graph_ready and e.graph_parser_errors == [], (arch, kind)   # checker and parser agree
        assert e.plan_bytes > 1000 and e.size_bytes == e.plan_bytes
        side = e.sidecar_on_disk
        assert side == e.built.sidecar and side.library == "tensorrt_rtx" and side.compute_capabilities == [
            "8.6", "8.9", "12.0"]
        assert side.precision == PRECISION.get(kind, kind) and side.strongly_typed
        assert_io_matches(side.io, e.graph_io)
        assert e.names_in_plan and all(e.names_in_plan.values()), e.names_in_plan   # the engine binds the same names
        assert side.profile == {"input": "input", "min": [1, 3, 64, 64], "opt": [1, 3, 96, 96], "max": [1, 3, 128, 128]}
        assert side.model_metadata().arch == arch


@pytest.mark.parametrize("arch", [a for a, k in KINDS.items() if {"fp32", "fp16", "int8"} <= set(k)])
def test_int8_smaller_than_fp16_smaller_than_fp32(arch, engines):
    sizes = {kind: e.size_bytes for kind, e in engines(arch).items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"], sizes


@pytest.mark.parametrize("arch", list(KINDS))
def test_argmax_engine_outputs_a_uint8_mask(arch, engines):
    side = engines(arch)["argmax"].sidecar_on_disk
    assert side.io["outputs"] == [{"name": "mask", "dtype": "uint8", "shape": [-1, -1, -1]}]
    assert side.model_metadata().argmax


@pytest.mark.parametrize("arch", list(KINDS))
def test_fp16_flag_engine_equals_the_fp16_typed_one_in_size_class(arch, engines):
    """`--fp16` on the FP32 graph gives an FP16 engine: about the FP16-typed graph's size, well under FP32's."""
    built = engines(arch)
    flag, typed, fp32 = (built[k].size_bytes for k in ("fp16_flag", "fp16", "fp32"))
    assert abs(flag - typed) < 0.1 * typed and flag < 0.75 * fp32, (flag, typed, fp32)


def test_trt_fp16_on_an_fp32_graph_keeps_intermediates_in_a_temp_folder(r18_onnx, tmp_path):
    """`fcn-export trt model.onnx --fp16`: an FP16 engine, and no model_fp16.onnx written next to the input."""
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    src = tmp_path / "model.onnx"
    src.write_bytes(r18_onnx.read_bytes())
    shapes = [f"--{k.replace('_', '-')}={'x'.join(map(str, v))}" for k, v in PROFILE.items()]
    result = CliRunner().invoke(main, ["trt", str(src), "--fp16", "--library", "tensorrt_rtx", *shapes])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.plan", "model.plan.json"]
    side = EngineSidecar.read(tmp_path / "model.plan")
    assert side.precision == "fp16" and side.onnx == "model.onnx"   # the FP32 graph, beside the plan
    saved = tmp_path / "kept_fp16.onnx"
    result = CliRunner().invoke(main, ["trt", str(src), "--fp16", "--library", "tensorrt_rtx", "--save-onnx",
                                       str(saved), "-o", str(tmp_path / "b.plan"), *shapes])
    assert result.exit_code == 0, result.output
    assert saved.is_file() and EngineSidecar.read(tmp_path / "b.plan").onnx == "kept_fp16.onnx"


# ---------------------------------------------------------------- engines that rebuild themselves (issue 20)

SMALL = {"min_shape": (1, 3, 32, 32), "opt_shape": (1, 3, 64, 64), "max_shape": (2, 3, 96, 128)}


@pytest.fixture
def conv_graph(tmp_path, conv_onnx_factory):
    from fcnseg.core.metadata import ModelMetadata

    return conv_onnx_factory(tmp_path / "m.onnx", ModelMetadata(arch="conv", num_classes=3, min_size=32,
                                                                max_size=256))


def _rebuild_facts(side):
    """What a rebuild must reproduce (not the build time, not the GPU of the machine that rebuilt it)."""
    return {k: v for k, v in side.to_dict().items() if k not in ("build_seconds", "gpu")}


def test_rebuild_from_the_sidecar_on_this_cpu(conv_graph, tmp_path):
    """Build for sm_86 with TensorRT for RTX, then rebuild from the sidecar alone: same options, a real plan."""
    import hashlib

    from fcnseg.export.chain import rebuild_engine

    built = build_engine(conv_graph, output=tmp_path / "m.plan", library="tensorrt_rtx", compute_capabilities=["8.6"],
                         workspace_gib=0.5, **SMALL)
    side = built.sidecar
    assert side.onnx == "m.onnx" and side.onnx_sha256 == hashlib.sha256(conv_graph.read_bytes()).hexdigest()
    assert (side.compute_capabilities, side.workspace_gib, side.precision) == (["8.6"], 0.5, "fp32")
    assert side.profile == {"input": "input", "min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [2, 3, 96, 128]}
    first = built.path.read_bytes()
    (tmp_path / "m.plan").write_bytes(b"stale")   # in place: the rebuilt plan replaces it
    assert rebuild_engine(tmp_path / "m.plan") == tmp_path / "m.plan"
    again = (tmp_path / "m.plan").read_bytes()
    assert len(again) > 1000 and abs(len(again) - len(first)) < 0.05 * len(first)
    assert _rebuild_facts(EngineSidecar.read(tmp_path / "m.plan")) == _rebuild_facts(side)
    # for another GPU (what the runtime's rebuild="auto" asks), into another folder: that target only
    (tmp_path / "cache").mkdir()
    other = rebuild_engine(tmp_path / "m.plan", output=tmp_path / "cache" / "sm89.plan", compute_capability="8.9")
    rebuilt = EngineSidecar.read(other)
    assert rebuilt.compute_capabilities == ["8.9"] and rebuilt.profile == side.profile
    assert rebuilt.onnx == str(conv_graph.resolve()) and rebuilt.onnx_sha256 == side.onnx_sha256


def test_rebuild_lowers_again_what_was_lowered(conv_graph, tmp_path):
    """`fcn-export trt --fp16` on an FP32 graph: the sidecar names the FP32 graph; the rebuild makes FP16 again."""
    from fcnseg.export.chain import rebuild_engine

    built = chain.engine(str(conv_graph), str(tmp_path / "m.plan"),
                         EngineOptions(library="tensorrt_rtx", precision="fp16", **SMALL))
    assert built.sidecar.precision == "fp16" and built.sidecar.onnx == "m.onnx"
    rebuild_engine(tmp_path / "m.plan", output=tmp_path / "again.plan")
    again = EngineSidecar.read(tmp_path / "again.plan")
    assert _rebuild_facts(again) == _rebuild_facts(built.sidecar)   # precision fp16, strongly typed, same graph
    assert again.model_metadata().precision == "fp16"
    size, first = (tmp_path / "again.plan").stat().st_size, built.size_bytes
    assert abs(size - first) < 0.05 * first
    # the FP16 graph was made again in a temporary folder, as the first build made it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.plan", "again.plan.json", "m.onnx", "m.plan",
                                                          "m.plan.json"]


def _cli(*args):
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    result = CliRunner().invoke(main, ["trt", *map(str, args), "--library", "tensorrt_rtx"])
    return result, [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("flags, message", [
    (["--version-compatible"], "expected a TensorRT with BuilderFlag.VERSION_COMPATIBLE"),
    (["--hardware-compatibility", "ampere+"], "expected a TensorRT with HardwareCompatibilityLevel.AMPERE_PLUS"),
])
def test_compatibility_refused_by_the_real_tensorrt_for_rtx(conv_graph, tmp_path, flags, message):
    """The real library has both names; the level is ignored ("unsupported in TensorRT-RTX") and the flag's build
    fails for want of libnvinfer_lean: one line before building instead."""
    result, lines = _cli(conv_graph, *flags)
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0] and "tensorrt_rtx" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_trt8_refuses_the_argmax_graph_the_rtx_parser_takes(r18_argmax_onnx, tmp_path):
    """--trt8: the fcn8s_resnet18 --argmax graph (which TensorRT for RTX builds) is refused for TensorRT 8.5."""
    src = tmp_path / "argmax.onnx"
    src.write_bytes(r18_argmax_onnx.read_bytes())
    result, lines = _cli(src, "--trt8", "--min-shape", "1x3x64x64", "--opt-shape", "1x3x64x64",
                         "--max-shape", "1x3x64x64")
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert "expected a graph the ONNX parser of TensorRT 8.5 accepts, got Cast" in lines[0]
    assert "INT64 -> UINT8 (ArgMax's indices: INT32 in TensorRT)" in lines[0] and "without --argmax" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argmax.onnx"]


# ---------------------------------------------------------------- build progress (IProgressMonitor)

def _recording_progress(monkeypatch, base=None):
    """Replace ``BuildProgress`` with a subclass (of ``base``) shown even off a terminal; returns those made."""
    from fcnseg.export import tensorrt as T

    made = []

    class Recording(base or T.BuildProgress):
        def __init__(self):
            super().__init__(disable=False)
            made.append(self)

    monkeypatch.setattr(T, "BuildProgress", Recording)
    return made


def test_the_build_shows_tensorrt_phases_through_its_progress_monitor(conv_graph, tmp_path, monkeypatch, capsys):
    made = _recording_progress(monkeypatch)
    built = build_engine(conv_graph, output=tmp_path / "m.plan", library="tensorrt_rtx", compute_capabilities=["8.6"],
                         **SMALL)
    assert built.path.stat().st_size > 0 and len(made) == 1
    progress = made[0]
    assert progress.mode == "phases" and progress.phases[0] == "Building engine" and len(progress.phases) > 2
    assert "Building engine" in capsys.readouterr().err


def test_a_failing_progress_display_never_stops_the_build(conv_graph, tmp_path, monkeypatch):
    """What the display raises stays in the monitor: TensorRT gets True from step_complete and builds on."""
    from fcnseg.export import tensorrt as T

    class Broken(T.BuildProgress):
        def phase_start(self, *args):
            raise RuntimeError("display broke")

        def step_complete(self, *args):
            raise RuntimeError("display broke")

    made = _recording_progress(monkeypatch, Broken)
    built = build_engine(conv_graph, output=tmp_path / "m.plan", library="tensorrt_rtx", compute_capabilities=["8.6"],
                         **SMALL)
    assert built.path.stat().st_size > 0 and made[0].mode == "phases"


def test_tensorrt_warnings_come_once_each_with_how_often_they_repeated(conv_graph, int8_qdq_factory, tmp_path,
                                                                        caplog):
    """An FP16 Q/DQ graph: TensorRT for RTX warns "Converting conv ... scales to fp32" per convolution (48 lines for
    FCN-8s/ResNet-18 in the demo); fcnseg's log carries each message once, then how often it came."""
    import logging

    from fcnseg.export.fp16 import qdq_to_fp16
    from fcnseg.export.onnx_graph import load_onnx, save_onnx

    fp16_qdq = tmp_path / "q16.onnx"
    save_onnx(qdq_to_fp16(load_onnx(int8_qdq_factory(conv_graph, tmp_path / "q.onnx"))), fp16_qdq)
    with caplog.at_level(logging.INFO, logger="fcnseg.export"):
        build_engine(fp16_qdq, output=tmp_path / "m.plan", library="tensorrt_rtx", compute_capabilities=["8.6"],
                     **SMALL)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TensorRT: ")]
    converting = [m for m in said if "Converting conv" in m]
    assert converting and len(converting) == len(set(converting)), said   # each message once
    repeats = [m for m in said if " times in all: " in m]
    assert repeats and all(m.split(":", 2)[2].strip() in " ".join(converting) for m in repeats), said
