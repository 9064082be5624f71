"""``fcn-export bundle``: the folder is complete, its scripts parse, ``build_engine.sh`` builds real engines with
TensorRT for RTX through ``fcn-export trt``, passes the profile and DLA flags to trtexec where that is the tool,
picks the INT8 graph the TensorRT found parses (issue 21: opset 17 for 8.x, FP16 elsewhere at opset 19 for 10+),
and the runtime wheel installs on Python 3.8."""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fcnseg.export.options import EngineOptions, Int8Options
from fcnseg.export.bundle import make_bundle
from fcnseg.export.cli import main as export_main
from fcnseg.export.fp16 import has_fp16_qdq, qdq_to_fp16
from fcnseg.export.runtime_wheel import build_runtime_wheel
from fcnseg.export.tensorrt import precision_of_onnx
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata
from fcnseg.core.onnx_props import read_onnx_metadata
from fcnseg.core.sidecar import EngineSidecar

NUM_CLASSES = 4
SHAPES = EngineOptions(min_shape=(1, 3, 32, 32), opt_shape=(1, 3, 64, 64), max_shape=(2, 3, 128, 128))
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def graphs(conv_onnx_factory, int8_qdq_factory, tmp_path_factory):
    """A 2-conv net with dynamic N/H/W shaped like fcn-export's graphs, FP32 and INT8 Q/DQ."""
    d = tmp_path_factory.mktemp("bundle_src")
    meta = ModelMetadata(arch="conv", num_classes=NUM_CLASSES, input_size=64, min_size=32, max_size=256)
    fp32 = conv_onnx_factory(d / "conv.onnx", meta)
    return {"fp32": fp32, "int8": int8_qdq_factory(fp32, d / "conv_int8.onnx")}


@pytest.fixture(scope="module")
def both_bundle(conv_onnx_factory, tiny_voc, wheel, tmp_path_factory):
    """A --calib-data bundle of the 2-conv net with VOC's 21 classes, calibrated on the tiny synthetic VOC: both
    INT8 graphs (opset 17 with FP32 elsewhere, opset 19 with FP16 elsewhere), from one calibration."""
    d = tmp_path_factory.mktemp("bundle_voc")
    meta = ModelMetadata(arch="conv", num_classes=21, input_size=64, min_size=32, max_size=256)
    fp32 = conv_onnx_factory(d / "conv21.onnx", meta)
    int8 = Int8Options(calib_root=tiny_voc, num_images=3, max_drop=100.0, progress=False)
    return make_bundle(fp32, d / "both", int8=int8, runtime_wheel=wheel, engine=SHAPES)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_runtime_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def bundle(graphs, wheel, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "gpu"
    return make_bundle(graphs["fp32"], out, int8_from=graphs["int8"], runtime_wheel=wheel, engine=SHAPES)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundle_is_complete(bundle, graphs, wheel):
    d = bundle.path
    names = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert names == ["README.md", "build_engine.sh", "bundle.json", "fcn_fp16.onnx", "fcn_int8.onnx", "labels.txt",
                     "run.py", f"wheels/{wheel.name}"]
    manifest = json.loads((d / "bundle.json").read_text())
    assert manifest["files"] == {n: sha256(d / n) for n in names if n != "bundle.json"}
    assert manifest["profile"] == {k: list(getattr(SHAPES, f"{k}_shape")) for k in ("min", "opt", "max")}
    assert precision_of_onnx(d / "fcn_fp16.onnx") == "fp16" and precision_of_onnx(d / "fcn_int8.onnx") == "int8"
    source = read_onnx_metadata(graphs["fp32"])
    assert (d / "labels.txt").read_text().splitlines() == list(source.classes)
    assert f"0 {source.classes[0]}, 1 {source.classes[1]}" in (d / "README.md").read_text()
    for precision in ("fp16", "int8"):
        assert read_onnx_metadata(d / f"fcn_{precision}.onnx").classes == source.classes
        sidecar = EngineSidecar.from_dict(manifest["graphs"][precision]["sidecar"])
        assert sidecar.precision == precision and sidecar.model_metadata().arch == "conv"
        meta = sidecar.model_metadata()   # the profile's side range, as fcn-export trt records it
        assert (meta.min_size, meta.max_size) == (SHAPES.min_shape[2], SHAPES.max_shape[3])
    for script in ("build_engine.sh", "run.py"):
        assert os.stat(d / script).st_mode & stat.S_IXUSR
    for text in ((d / n).read_text() for n in ("README.md", "build_engine.sh", "run.py")):
        assert "@" not in "".join(w for w in text.split() if w.startswith("@") and w.endswith("@")), "placeholder left"
    readme = (d / "README.md").read_text()
    for line in ("python3-libnvinfer", f"--no-deps wheels/{wheel.name}", '"cuda-python==12.6.*"',
                 '"cuda-python==13.0.*"', "pycuda", "nvpmodel", "jetson_clocks", "./build_engine.sh int8",
                 # JetPack 5.1: pycuda built against apt's numpy 1.17.4, not the numpy>=1.24 of its isolated build
                 'python3 -m pip install --user --no-build-isolation "pycuda==2024.1.2"'):
        assert line in readme


def working_python38() -> Optional[str]:
    """A Python 3.8 that runs: ``python3.8`` on PATH, else a pyenv install (a pyenv shim of a version not
    selected exits with "command not found", so each candidate must print (3, 8))."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.8"), *sorted(glob.glob(f"{root}/versions/3.8.*/bin/python3.8"))]
    for exe in filter(None, candidates):
        try:
            proc = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "(3, 8)":
            return exe
    return None


def compile_with(python: str, source: Path, out_dir: Path) -> subprocess.CompletedProcess:
    """Byte-compile ``source`` with ``python`` into ``out_dir`` (never beside the source, never /dev/null)."""
    return subprocess.run([python, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True, "
                           "cfile=sys.argv[2])", str(source), str(out_dir / (source.stem + ".pyc"))],
                          capture_output=True, text=True, timeout=120)


def test_scripts_parse(bundle, tmp_path):
    d = bundle.path
    subprocess.run(["bash", "-n", str(d / "build_engine.sh")], check=True)
    # run.py must parse with Python 3.8's grammar (JetPack 5): checked here on every interpreter ...
    ast.parse((d / "run.py").read_text(), filename="run.py", feature_version=(3, 8))
    proc = compile_with(sys.executable, d / "run.py", tmp_path)
    assert proc.returncode == 0 and (tmp_path / "run.pyc").stat().st_size > 0, proc.stderr


def test_run_py_compiles_on_python38(bundle, tmp_path):
    """... and compiled by a real Python 3.8 where one works here."""
    python = working_python38()
    if python is None:
        pytest.skip("no working Python 3.8 here (python3.8 on PATH or in pyenv printing (3, 8)); "
                    "run.py was checked with ast.parse(feature_version=(3, 8)) only")
    proc = compile_with(python, bundle.path / "run.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run.pyc").read_bytes()[:4] == _magic38(python)


def _magic38(python: str) -> bytes:
    code = "import importlib.util, sys; sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout
    return bytes.fromhex(out)


def test_python38_checks_reject_newer_syntax(tmp_path):
    """The two checks above can fail: a ``match`` statement (Python 3.10) is refused by both."""
    newer = tmp_path / "newer.py"
    newer.write_text("def f(x):\n    match x:\n        case 1:\n            return 1\n")
    with pytest.raises(SyntaxError):
        ast.parse(newer.read_text(), feature_version=(3, 8))
    python = working_python38()
    if python is None:
        pytest.skip("no working Python 3.8 here (python3.8 on PATH or in pyenv printing (3, 8))")
    proc = compile_with(python, newer, tmp_path)
    assert proc.returncode != 0 and "SyntaxError" in proc.stderr and not (tmp_path / "newer.pyc").exists()


def test_refuses_non_empty_folder_unless_forced(graphs, wheel, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FcnsegError, match="expected an empty or new folder for the bundle.*--force"):
        make_bundle(graphs["fp32"], out, runtime_wheel=wheel, engine=SHAPES)
    result = make_bundle(graphs["fp32"], out, runtime_wheel=wheel, force=True, engine=SHAPES)
    assert (out / "notes.txt").read_text() == "mine" and set(result.graphs) == {"fp16"}


@pytest.mark.parametrize("args,message", [
    (["--gpu-fallback"], "expected --dla-core N with --gpu-fallback"),
    (["--int8-from", "x.onnx", "--calib-data", "voc"], "expected at most one of --int8-from and --calib-data"),
    (["--dla-core", "0", "--min-shape", "1x3x64x64", "--opt-shape", "1x3x96x96", "--max-shape", "1x3x128x128"],
     "expected one shape for --dla-core 0"),   # refused here, not by build_engine.sh on the device
])
def test_cli_errors_are_one_line(graphs, tmp_path, args, message):
    result = CliRunner().invoke(export_main, ["bundle", str(graphs["fp32"]), "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output


def test_int8_from_must_be_qdq(graphs, wheel, tmp_path):
    with pytest.raises(FcnsegError, match="expected a Q/DQ INT8 ONNX for --int8-from, got an fp32 graph"):
        make_bundle(graphs["fp32"], tmp_path / "b", int8_from=graphs["fp32"], runtime_wheel=wheel, engine=SHAPES)


def test_failed_bundle_leaves_nothing(graphs, tmp_path):
    """A failure after the graphs were written (here: a wheel that is not one) leaves no folder, no temp folder."""
    bad = tmp_path / "fcnseg_runtime-0.1.0-py3-none-any.whl.txt"
    bad.write_text("not a wheel")
    with pytest.raises(FcnsegError, match="expected an fcnseg_runtime-\\*.whl file for --runtime-wheel"):
        make_bundle(graphs["fp32"], tmp_path / "b", runtime_wheel=bad, engine=SHAPES)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def run_script(bundle_dir: Path, *args: str, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run(["bash", str(bundle_dir / "build_engine.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_engine_sh_with_tensorrt_rtx(bundle, precision):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (pip install tensorrt-rtx) builds engines on a CPU")
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"   # fcn-export on PATH: the script uses it
    proc = run_script(bundle.path, precision, "--library", "tensorrt_rtx", "--force", path=path)
    assert proc.returncode == 0, proc.stderr
    plan = bundle.path / f"fcn_{precision}.plan"
    sidecar = EngineSidecar.read(plan)
    assert plan.stat().st_size > 0 and sidecar.library == "tensorrt_rtx" and sidecar.precision == precision
    manifest = json.loads((bundle.path / "bundle.json").read_text())
    assert {k: sidecar.profile[k] for k in ("min", "opt", "max")} == manifest["profile"]
    assert sidecar.model_metadata().classes == read_onnx_metadata(bundle.path / "fcn_fp16.onnx").classes
    again = run_script(bundle.path, precision, "--library", "tensorrt_rtx", path=path)
    assert again.returncode == 2 and "expected no engine at" in again.stderr and "--force" in again.stderr
    # this bundle's INT8 graph is the opset-17 one (--int8-from): the sidecar names what was parsed
    assert Path(sidecar.onnx).name == f"fcn_{precision}.onnx"


def test_build_engine_sh_with_tensorrt_rtx_takes_the_fp16_elsewhere_graph(both_bundle, tmp_path):
    """TensorRT for RTX is strongly typed: of a bundle's two INT8 graphs it builds fcn_int8_fp16.onnx."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX (pip install tensorrt-rtx) builds engines on a CPU")
    d = copy_bundle(both_bundle.path, tmp_path / "b")
    proc = run_script(d, "int8", "--library", "tensorrt_rtx", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    assert "int8: fcn_int8_fp16.onnx (TensorRT for RTX " in proc.stdout and "strongly typed" in proc.stdout
    sidecar = EngineSidecar.read(d / "fcn_int8.plan")
    assert Path(sidecar.onnx).name == "fcn_int8_fp16.onnx" and sidecar.precision == "int8"
    assert sidecar.library == "tensorrt_rtx" and (d / "fcn_int8.plan").stat().st_size > 0
    assert not (d / "fcn_int8_fp16.plan").exists()


def copy_bundle(src: Path, dest: Path) -> Path:
    """A copy of a bundle without the engines a test built in it."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.plan", "*.plan.json"))
    return dest


FAKE_TRTEXEC = """\
#!/bin/sh
# Stands in for JetPack's trtexec: prints trtexec's banner and help flags, records its arguments, writes a plan.
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{version}] # trtexec $*"
if [ "$1" = "--help" ]; then printf '  --fp16  Enable fp16 precision\\n  --int8  Enable int8\\n{strongly}'; exit 0; fi
echo "$@" > "{log}"
for a in "$@"; do case "$a" in --saveEngine=*) printf PLAN > "${{a#--saveEngine=}}" ;; esac; done
"""


STRONGLY = "  --stronglyTyped  Strongly typed\\n"   # in the help of trtexec 9+
TRT85, TRT103 = ("8502", ""), ("100300", STRONGLY)    # JetPack 5.1 and JetPack 6.1's trtexec


def fake_trtexec(folder: Path, version: str, strongly: str) -> tuple[str, Path]:
    """(PATH with a fake trtexec of ``version`` and no fcn-export, the file its arguments go to)."""
    fake = folder / "bin" / "trtexec"
    fake.parent.mkdir(parents=True)
    log = folder / "trtexec_args.txt"
    fake.write_text(FAKE_TRTEXEC.format(version=version, strongly=strongly, log=log))
    fake.chmod(0o755)
    return f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin", log


@pytest.mark.parametrize("version,strongly,dla,expected", [
    ("8502", "", True, ["--fp16", "--useDLACore=0", "--allowGPUFallback"]),             # JetPack 5.1, TensorRT 8.5
    ("100300", STRONGLY, False, ["--stronglyTyped"]),                                  # JetPack 6.1, TensorRT 10.3
    ("100300", STRONGLY, True, ["--fp16", "--useDLACore=0", "--allowGPUFallback"]),
])
def test_build_engine_sh_with_trtexec(graphs, wheel, tmp_path, version, strongly, dla, expected):
    # on a DLA without shapes: fixed at the default opt shape
    engine = EngineOptions(dla_core=0, gpu_fallback=True) if dla else SHAPES
    b = make_bundle(graphs["fp32"], tmp_path / "b", runtime_wheel=wheel, engine=engine)
    path, log = fake_trtexec(tmp_path, version, strongly)
    proc = run_script(b.path, "fp16", path=path)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().split()
    opt = json.loads((b.path / "bundle.json").read_text())["profile"]["opt"]
    shape = "x".join(map(str, opt))
    assert f"--onnx={b.path / 'fcn_fp16.onnx'}" in args and f"--saveEngine={b.path / 'fcn_fp16.plan'}" in args
    if dla:
        assert [a for a in args if a.startswith(("--minShapes", "--maxShapes"))] == \
            [f"--minShapes=input:{shape}", f"--maxShapes=input:{shape}"]
    else:
        assert "--minShapes=input:1x3x32x32" in args and "--maxShapes=input:2x3x128x128" in args
    assert [a for a in args if a in ("--fp16", "--int8", "--stronglyTyped") or a.startswith(("--useDLA", "--allow"))] \
        == expected
    sidecar = EngineSidecar.read(b.path / "fcn_fp16.plan")
    major = int(version[:-4]) if len(version) > 4 else int(version[0])
    assert sidecar.library_version.split(".")[0] == str(major) and sidecar.dla_core == (0 if dla else None)
    assert sidecar.gpu_fallback == dla and sidecar.model_metadata().num_classes == NUM_CLASSES


@pytest.mark.parametrize("trt,args,graph,flags,why", [
    (TRT85, [], "fcn_int8.onnx", ["--int8", "--fp16"], "TensorRT 8.5.2 parses opset <= 17"),
    (TRT103, [], "fcn_int8_fp16.onnx", ["--stronglyTyped"], "TensorRT 10.3.0 is strongly typed"),
    (TRT103, ["--high-precision", "fp32"], "fcn_int8.onnx", ["--stronglyTyped"], "--high-precision fp32"),
    (TRT103, ["--high-precision", "fp16"], "fcn_int8_fp16.onnx", ["--stronglyTyped"], "--high-precision fp16"),
], ids=["trt8.5", "trt10.3", "trt10.3-fp32", "trt10.3-fp16"])
def test_build_engine_sh_int8_takes_the_graph_its_tensorrt_parses(both_bundle, tmp_path, trt, args, graph, flags,
                                                                 why):
    """Of a --calib-data bundle's two INT8 graphs, trtexec 8.5 gets the opset-17 one (FP32 elsewhere, --int8
    --fp16), trtexec 10.3 the FP16-elsewhere one (strongly typed); the plan is fcn_int8.plan either way and its
    sidecar names the graph built; --high-precision chooses instead."""
    d = copy_bundle(both_bundle.path, tmp_path / "b")
    path, log = fake_trtexec(tmp_path, *trt)
    proc = run_script(d, "int8", *args, path=path)
    assert proc.returncode == 0, proc.stderr
    picked = [line for line in proc.stdout.splitlines() if line.startswith("int8: ")]
    assert len(picked) == 1 and picked[0].startswith(f"int8: {graph} ({why}"), proc.stdout
    seen = log.read_text().split()
    assert [a for a in seen if a.startswith("--onnx=")] == [f"--onnx={d / graph}"]
    assert f"--saveEngine={d / 'fcn_int8.plan'}" in seen and not list(d.glob("fcn_int8_fp16.plan*"))
    assert [a for a in seen if a in ("--fp16", "--int8", "--stronglyTyped")] == flags
    sidecar = EngineSidecar.read(d / "fcn_int8.plan")
    assert sidecar.onnx == graph and sidecar.precision == "int8"
    assert sidecar.library_version == {"8502": "8.5.2", "100300": "10.3.0"}[trt[0]]


@pytest.mark.parametrize("which,trt,args,message", [
    ("bundle", TRT103, ["int8", "--high-precision", "fp16"],
     "expected fcn_int8_fp16.onnx (FP16 elsewhere) for --high-precision fp16, got a bundle without it"),
    ("both_bundle", TRT85, ["int8", "--high-precision", "fp16"],
     "expected TensorRT 10+ for fcn_int8_fp16.onnx (opset 19), got TensorRT 8.5.2"),
    ("both_bundle", TRT85, ["fp16", "--high-precision", "fp32"], "expected --high-precision with int8"),
    ("both_bundle", TRT85, ["int8", "--high-precision", "bf16"], "expected --high-precision fp32 or fp16, got 'bf16'"),
])
def test_build_engine_sh_refuses_a_graph_it_cannot_build(request, tmp_path, which, trt, args, message):
    """One line, exit 2, trtexec never run, no plan."""
    d = copy_bundle(request.getfixturevalue(which).path, tmp_path / "b")
    path, log = fake_trtexec(tmp_path, *trt)
    proc = run_script(d, *args, path=path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not log.exists() and not list(d.glob("*.plan*"))


def test_int8_from_an_fp16_elsewhere_graph_ships_for_tensorrt_10(graphs, wheel, tmp_path):
    """--int8-from an opset-19 FP16-elsewhere graph ships as it is, as fcn_int8_fp16.onnx (never under the name
    TensorRT 8.x is given): trtexec 10.3 builds it, trtexec 8.5 is refused in one line."""
    src = tmp_path / "conv_int8_fp16.onnx"
    onnx.save(qdq_to_fp16(onnx.load(str(graphs["int8"]))), str(src))
    b = make_bundle(graphs["fp32"], tmp_path / "b", int8_from=src, runtime_wheel=wheel, engine=SHAPES)
    assert set(b.graphs) == {"fp16", "int8_fp16"} and not (b.path / "fcn_int8.onnx").exists()
    assert sha256(b.graphs["int8_fp16"]) == sha256(src)
    manifest = json.loads((b.path / "bundle.json").read_text())
    assert manifest["graphs"]["int8_fp16"]["plan"] == "fcn_int8.plan" and "int8" not in manifest["graphs"]
    assert "`fcn_int8_fp16.onnx` (opset 19, FP16 elsewhere): TensorRT 10+" in (b.path / "README.md").read_text()
    path, log = fake_trtexec(tmp_path / "trt8", *TRT85)
    refused = run_script(b.path, "int8", path=path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and not log.exists()
    assert "expected TensorRT 10+ for this bundle's only INT8 graph fcn_int8_fp16.onnx" in refused.stderr
    path, log = fake_trtexec(tmp_path / "trt10", *TRT103)
    proc = run_script(b.path, "int8", path=path)
    assert proc.returncode == 0, proc.stderr
    assert f"--onnx={b.path / 'fcn_int8_fp16.onnx'}" in log.read_text().split()
    assert EngineSidecar.read(b.path / "fcn_int8.plan").onnx == "fcn_int8_fp16.onnx"


def test_int8_from_refuses_fp32_elsewhere_past_opset_17(graphs, tmp_path):
    """An opset-19 graph with FP32 elsewhere is neither bundle INT8 graph: one line, exit 2, nothing left."""
    model = onnx.version_converter.convert_version(onnx.load(str(graphs["int8"])), 19)
    model.ir_version = 9
    src = tmp_path / "in" / "conv_int8_opset19.onnx"
    src.parent.mkdir()
    onnx.save(model, str(src))
    result = CliRunner().invoke(export_main, ["bundle", str(graphs["fp32"]), "--out", str(tmp_path / "b"),
                                              "--int8-from", str(src)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "expected --int8-from at opset <= 17 (fcn_int8.onnx, every JetPack) or FP16 elsewhere" in result.output
    assert "got an FP32-elsewhere graph at opset 19" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def check_int8_graphs(b, arch: str) -> None:
    """A --calib-data bundle's two INT8 graphs: fcn_int8.onnx at opset 17 with FP32 elsewhere (every JetPack),
    fcn_int8_fp16.onnx lowered from it at opset 19 with FP16 elsewhere (TensorRT 10+), its fcnseg.int8 metadata
    saying so and the rest kept; both in bundle.json with the plan fcn_int8.plan and an "int8" sidecar naming
    their own ONNX; every file's SHA-256 in the manifest."""
    d = b.path
    assert set(b.graphs) == {"fp16", "int8", "int8_fp16"}
    assert (b.graphs["int8"].name, b.graphs["int8_fp16"].name) == ("fcn_int8.onnx", "fcn_int8_fp16.onnx")
    models = {k: onnx.load(str(b.graphs[k])) for k in ("int8", "int8_fp16")}
    assert {k: [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] for k, m in models.items()} == \
        {"int8": [17], "int8_fp16": [19]}
    fp16 = onnx.TensorProto.FLOAT16
    assert not any(t.data_type == fp16 for t in models["int8"].graph.initializer) and not has_fp16_qdq(models["int8"])
    assert any(t.data_type == fp16 for t in models["int8_fp16"].graph.initializer) and has_fp16_qdq(models["int8_fp16"])
    assert precision_of_onnx(b.graphs["int8"]) == "int8" and precision_of_onnx(b.graphs["int8_fp16"]) == "int8"
    props = {k: {p.key: p.value for p in m.metadata_props} for k, m in models.items()}
    info = {k: json.loads(p.pop("fcnseg.int8")) for k, p in props.items()}
    assert (info["int8"]["high_precision"], info["int8"]["trt_version"]) == ("fp32", "8.5")
    assert info["int8_fp16"] == {**info["int8"], "high_precision": "fp16", "trt_version": "10"}
    assert props["int8_fp16"] == props["int8"] and read_onnx_metadata(b.graphs["int8_fp16"]).arch == arch
    assert read_onnx_metadata(b.graphs["int8_fp16"]).precision == "int8"
    manifest = json.loads((d / "bundle.json").read_text())
    for key, name in (("int8", "fcn_int8.onnx"), ("int8_fp16", "fcn_int8_fp16.onnx")):
        entry = manifest["graphs"][key]
        assert (entry["onnx"], entry["plan"], entry["sidecar"]["precision"], entry["sidecar"]["onnx"]) == \
            (name, "fcn_int8.plan", "int8", name)
    names = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != "bundle.json")
    assert manifest["files"] == {n: sha256(d / n) for n in names} and "fcn_int8_fp16.onnx" in names
    build = (d / "build_engine.sh").read_text()
    assert 'GRAPHS="fp16 int8 int8_fp16"' in build and 'PRECISIONS="fp16 int8"' in build
    readme = (d / "README.md").read_text()
    assert "| 6.1 / 6.2 | 10.3 | `fcn_int8_fp16.onnx`" in readme and "| 5.1.x | 8.5.2 | `fcn_int8.onnx`" in readme


def test_bundle_calibrates_once_for_both_int8_graphs(both_bundle):
    check_int8_graphs(both_bundle, "conv")


def _jetpack_compat():
    """tests/runtime/test_jetpack_compat.py: its interpreter finder (PATH, then pyenv) and venv pip driver."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "jetpack_compat", Path(__file__).resolve().parents[1] / "runtime" / "test_jetpack_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_installs_into_a_clean_python38(bundle, tmp_path):
    compat = _jetpack_compat()
    python = compat.find_python("3.8")
    if python is None:
        pytest.skip("Python 3.8 (JetPack 5's) is not installed here")
    venv = tmp_path / "clean38"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True, timeout=120)
    wheel = next((bundle.path / "wheels").glob("fcnseg_runtime-*.whl"))
    pip = compat.pip_command(python, venv) + ["install", "-q", "--only-binary=:all:"]
    proc = subprocess.run(pip + [str(wheel)], capture_output=True, text=True, timeout=300)   # deps from the index
    assert proc.returncode == 0, proc.stderr
    code = ("import sys, numpy, PIL; from fcnseg.core.onnx_props import read_onnx_metadata; "
            "m = read_onnx_metadata(sys.argv[1]); print(sys.version.split()[0], numpy.__version__, PIL.__version__, "
            "m.arch, m.num_classes)")
    run = subprocess.run([str(venv / "bin/python"), "-c", code, str(bundle.path / "fcn_fp16.onnx")],
                         capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0].startswith("3.8.") and run.stdout.split()[3:] == ["conv", str(NUM_CLASSES)]


def test_run_py_segments_a_video_through_the_stream_api(bundle, tmp_path):
    """run.py end to end on a 3-frame video, with the bundled FP16 ONNX standing in for the device's engine."""
    av = pytest.importorskip("av", reason="PyAV reads and writes the videos")
    video = tmp_path / "in.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(3):
            frame = np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, str(bundle.path / "run.py"), str(video), str(out), "--engine",
                           str(bundle.path / "fcn_fp16.onnx"), "--max-frames", "2", "--alpha", "0.6"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "StreamStats(frames=2" in proc.stdout and out.stat().st_size > 0


@pytest.mark.slow
def test_bundle_quantizes_with_calib_data(r18_onnx, tiny_voc, wheel, tmp_path):
    """--calib-data: the INT8 graph is calibrated here (FCN-8s/ResNet-18 on the tiny synthetic VOC)."""
    b = make_bundle(r18_onnx, tmp_path / "b", int8=Int8Options(calib_root=tiny_voc), runtime_wheel=wheel)
    assert read_onnx_metadata(b.graphs["int8"]).arch == "fcn8s_resnet18"
    assert "./build_engine.sh int8" in (b.path / "README.md").read_text()
    # issue 21: opset 17 with FP32 elsewhere for every JetPack, opset 19 with FP16 elsewhere for TensorRT 10+
    check_int8_graphs(b, "fcn8s_resnet18")
