"""The runtime installs and runs on the Pythons of JetPack 5.1, 6 and 7 with their numpy and Pillow, without torch.

For each JetPack a virtual environment is made with that Python and the numpy/Pillow JetPack ships
(cached under ``.venv-jetpack/`` keyed by the pins, so only the first run downloads; the three are built
side by side), the runtime wheel
built from ``runtime/pyproject.toml`` is installed into it with pip's dependency check, and
``jetpack_checks.py`` runs there and here on the same inputs. Every array and metadata document it writes
must be equal in both. Interpreters that are not installed are skipped with the reason.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np
import pytest

from fcnseg.core.metadata import ModelMetadata
from fcnseg.core.sidecar import EngineSidecar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHECKS = HERE / "jetpack_checks.py"
VENVS = Path(os.environ.get("FCNSEG_JETPACK_VENVS", ROOT / ".venv-jetpack"))
# (name, Python, numpy, Pillow) as each JetPack's Ubuntu ships them (python3-numpy / python3-pil).
JETPACKS = [("jetpack5.1", "3.8", "1.17.4", "7.0.0"),
            ("jetpack6", "3.10", "1.21.5", "9.0.1"),
            ("jetpack7", "3.12", "1.26.4", "10.2.0")]
PIP = ["--disable-pip-version-check", "--no-input"]
ENV_ONLY = ("versions.json", "imports.json")   # describe the environment; checked on their own, not compared
CLI_EXTRA = ("click", "tqdm")                   # fcnseg-runtime[cli]: what fcn-predict needs besides the runtime


def find_python(version: str) -> Optional[str]:
    """An interpreter for ``version``: on PATH, or a pyenv install (its shim only works when selected)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python{version}")] + sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return exe
    return None


def pip_command(python: str, venv: Path) -> list:
    """pip for ``venv``: the base interpreter's pip driving it (``--python``, pip >= 22.3), so the venv is made
    without pip in a fraction of a second; else (an old or missing base pip) pip bootstrapped into the venv."""
    target = str(venv / "bin/python")
    driven = [python, "-m", "pip", "--python", target, *PIP]
    if subprocess.run(driven + ["--version"], capture_output=True, timeout=60).returncode == 0:
        return driven
    _run([target, "-m", "ensurepip", "--default-pip"], timeout=300)
    return [target, "-m", "pip", *PIP]


def jetpack_venv(python: str, version: str, numpy_pin: str, pillow_pin: str) -> Tuple[Path, list]:
    """A venv with the pinned numpy and Pillow (+ the cli extra), cached across runs; returns it and its pip command."""
    VENVS.mkdir(parents=True, exist_ok=True)
    venv = VENVS / f"py{version}-numpy{numpy_pin}-pillow{pillow_pin}-cli"
    with open(VENVS / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two test runs at once must not build the same venv
        if _ready(venv) is None:
            shutil.rmtree(venv, ignore_errors=True)
            _run([python, "-m", "venv", "--without-pip", str(venv)], timeout=120)
            pip = pip_command(python, venv)
            _run(pip + ["install", "-q", "--only-binary=:all:", f"numpy=={numpy_pin}", f"pillow=={pillow_pin}",
                        *CLI_EXTRA], timeout=300)
            (venv / ".ready").write_text(json.dumps(pip) + "\n")
        return venv, _ready(venv)


def _ready(venv: Path) -> Optional[list]:
    """The pip command recorded when the venv was completed; None for a missing or unfinished one."""
    try:
        return json.loads((venv / ".ready").read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def venvs():
    """Every JetPack venv, built side by side (downloads overlap); None where the interpreter is missing."""
    def build(jetpack):
        name, version, numpy_pin, pillow_pin = jetpack
        python = find_python(version)
        return name, (jetpack_venv(python, version, numpy_pin, pillow_pin) if python else None)

    with ThreadPoolExecutor(len(JETPACKS)) as pool:
        return dict(pool.map(build, JETPACKS))


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONNOUSERSITE": "1"}, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def runtime_wheel(tmp_path_factory):
    from fcnseg.export.runtime_wheel import build_runtime_wheel

    return build_runtime_wheel(tmp_path_factory.mktemp("wheel"))


def tiny_onnx(path: Path, meta: ModelMetadata) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """Images of every layout the runtime accepts, a tiny ONNX with metadata, a fake engine with its sidecar."""
    d = tmp_path_factory.mktemp("jetpack_inputs")
    rng = np.random.default_rng(13)
    images = {"rgb": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
              "gray": rng.integers(0, 256, (20, 31), dtype=np.uint8),
              "rgba": rng.integers(0, 256, (24, 18, 4), dtype=np.uint8),
              "u16": rng.integers(0, 65536, (19, 25, 3), dtype=np.uint16),
              "float": rng.random((30, 22, 3), dtype=np.float32)}
    np.savez(d / "images.npz", **images)
    tiny_onnx(d / "tiny.onnx", ModelMetadata(arch="fcn8s_resnet18", num_classes=3, input_size=97, miou=0.61))
    plan = d / "engine.plan"
    plan.write_bytes(b"FAKEPLAN")   # what the fake TensorRT runtime of test_tensorrt_backend.py deserializes
    EngineSidecar(library="tensorrt", library_version="8.5.2", precision="fp16",
                  gpu={"name": "Orin", "compute_capability": "8.7"}, onnx="tiny.onnx",
                  metadata=ModelMetadata(arch="tiny", num_classes=4, input_size=16).to_dict()).write(plan)
    return d


@pytest.fixture(scope="session")
def reference(inputs, tmp_path_factory):
    """The checks' results in this (the main) environment."""
    out = tmp_path_factory.mktemp("jetpack_ref")
    _run([sys.executable, str(CHECKS), str(inputs), str(out)], cwd=str(out), timeout=300)
    return out


def compare(ref: Path, got: Path) -> list:
    """Names of the results that differ (every .npy array equal, every .json document equal)."""
    names = sorted(p.name for p in ref.iterdir() if p.suffix in (".npy", ".json") and p.name not in ENV_ONLY)
    assert names, f"no results written to {ref}"
    missing = [n for n in names if not (got / n).is_file()]
    assert not missing, f"results missing in {got}: {missing}"
    differ = []
    for name in names:
        if name.endswith(".npy"):
            a, b = np.load(ref / name), np.load(got / name)
            if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                differ.append(name)
        elif json.loads((ref / name).read_text()) != json.loads((got / name).read_text()):
            differ.append(name)
    return differ


@pytest.mark.parametrize("name,version,numpy_pin,pillow_pin", JETPACKS, ids=[j[0] for j in JETPACKS])
def test_runtime_on_jetpack_python(name, version, numpy_pin, pillow_pin, venvs, runtime_wheel, inputs, reference,
                                   tmp_path):
    if venvs[name] is None:
        pytest.skip(f"Python {version} ({name}) is not installed here (looked on PATH and in pyenv)")
    venv, pip = venvs[name]
    py = str(venv / "bin/python")
    # pip must accept the interpreter (requires-python), and `pip check` JetPack's numpy/Pillow as the deps.
    _run(pip + ["install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(runtime_wheel)], timeout=120)
    _run(pip + ["check"], timeout=60)
    proc = _run([py, str(CHECKS), str(inputs), str(tmp_path)], cwd=str(tmp_path), timeout=300)
    print(f"{name}: {proc.stdout.strip()}")
    info = json.loads((tmp_path / "versions.json").read_text())
    assert (info["python"].rsplit(".", 1)[0], info["numpy"], info["pillow"]) == (version, numpy_pin, pillow_pin)
    assert Path(info["runtime_path"]).is_relative_to(venv), "the runtime must come from the installed wheel"
    assert not info["torch"] and not info["onnx"] and not info["onnxruntime"]
    assert json.loads((tmp_path / "imports.json").read_text())["failed"] == {}, "every runtime module must import"
    assert "Usage: fcn-predict" in _run([str(venv / "bin/fcn-predict"), "--help"], timeout=120).stdout
    differ = compare(reference, tmp_path)
    assert not differ, f"{name} ({proc.stdout.strip()}) differs from the main environment in: {differ}"


def test_runtime_wheel_matches_the_package_version(runtime_wheel):
    """runtime/pyproject.toml follows the main pyproject.toml's version (one release, two distributions)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    runtime = tomllib.loads((ROOT / "runtime/pyproject.toml").read_text())["project"]
    assert runtime["version"] == main and runtime_wheel.name == f"fcnseg_runtime-{main}-py3-none-any.whl"
    assert runtime["requires-python"] == ">=3.8" and runtime["dependencies"] == ["numpy>=1.17", "pillow>=7"]
    assert runtime["scripts"]["fcn-predict"] == \
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["fcn-predict"]
    # Every subpackage of the runtime and of the core it imports is listed, so the wheel is the whole runtime.
    listed = set(tomllib.loads((ROOT / "runtime/pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("fcnseg", pkg) + p.parent.relative_to(ROOT / pkg).parts)
             for pkg in ("runtime", "core") for p in (ROOT / pkg).rglob("__init__.py")}
    assert found == listed


# ---------------------------------------------------------------- building the runtime from source on Python 3.8

LAST_SETUPTOOLS_FOR_PY38 = "75.3.0"   # setuptools 75.3.x is the last release that runs on Python 3.8
WHEELS_PY38 = "FCNSEG_WHEELS_PY38"   # a folder with a setuptools wheel for Python 3.8, for the offline 3.8 build


def _stage_runtime(tmp: Path) -> Path:
    """runtime/ and the ../core it ships, copied as they are in the checkout (the build then writes nothing here)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for pkg in ("runtime", "core"):
        shutil.copytree(ROOT / pkg, tmp / pkg, ignore=ignore)
    return tmp / "runtime"


def _build_leftovers() -> set:
    return {str(p.relative_to(ROOT)) for pkg in ("runtime", "core") for p in (ROOT / pkg).iterdir()
            if p.name == "build" or p.name.endswith(".egg-info")}


def test_runtime_build_requirement_admits_python38():
    """`pip install ./runtime` on JetPack 5's Python 3.8: the build backend it asks for must exist there."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from packaging.requirements import Requirement

    doc = tomllib.loads((ROOT / "runtime/pyproject.toml").read_text())
    reqs = [Requirement(r) for r in doc["build-system"]["requires"]]
    setuptools = [r for r in reqs if r.name == "setuptools" and (r.marker is None or r.marker.evaluate(
        {"python_version": "3.8", "python_full_version": "3.8.10"}))]
    assert setuptools, f"no setuptools requirement applies on Python 3.8: {doc['build-system']['requires']}"
    for req in setuptools:
        assert req.specifier.contains(LAST_SETUPTOOLS_FOR_PY38), \
            f"{req} admits no setuptools that runs on Python 3.8 (the last is {LAST_SETUPTOOLS_FOR_PY38})"
    # An SPDX string ("BSD-3-Clause") needs setuptools >= 77; the table form is read from setuptools 61 on.
    assert isinstance(doc["project"].get("license", {}), dict), "license as a string needs setuptools >= 77"


def test_runtime_builds_from_source_and_leaves_the_checkout_clean(tmp_path):
    """The wheel builds from runtime/pyproject.toml with this environment's setuptools (no download)."""
    before = _build_leftovers()
    src = _stage_runtime(tmp_path / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", *PIP, "-w",
          str(tmp_path / "dist"), str(src)], timeout=300)
    wheel = next((tmp_path / "dist").glob("fcnseg_runtime-*-py3-none-any.whl"))
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        names = z.namelist()
    assert "Requires-Python: >=3.8" in meta.splitlines() and "License: BSD-3-Clause" in meta.splitlines()
    assert "fcnseg/runtime/segmenter.py" in names and "fcnseg/core/errors.py" in names
    assert _build_leftovers() == before, "building the runtime left build/ or .egg-info folders in the checkout"


def _py38_build_args(python: str) -> Optional[list]:
    """pip wheel's build arguments for ``python`` without a download, or None when it cannot build offline."""
    wheels = os.environ.get(WHEELS_PY38)
    if wheels and glob.glob(os.path.join(wheels, "setuptools-*.whl")):
        return ["--no-index", "--find-links", wheels]     # an isolated build from local wheels
    probe = subprocess.run([python, "-c", "import setuptools; print(setuptools.__version__)"],
                           capture_output=True, text=True, timeout=60)
    major = probe.stdout.strip().split(".")[0]
    return ["--no-build-isolation"] if probe.returncode == 0 and major.isdigit() and int(major) >= 61 else None


def test_runtime_builds_and_installs_on_python38(venvs, tmp_path):
    """Built from source by Python 3.8 itself, installed into JetPack 5.1's environment, imported there."""
    python = find_python("3.8")
    if python is None or venvs["jetpack5.1"] is None:
        pytest.skip("Python 3.8 (JetPack 5's) is not installed here (looked on PATH and in pyenv)")
    args = _py38_build_args(python)
    if args is None:
        pytest.skip(f"Python 3.8 here ({python}) has no setuptools >= 61 and tests do not download one; set "
                    f"{WHEELS_PY38} to a folder holding setuptools-{LAST_SETUPTOOLS_FOR_PY38}-py3-none-any.whl "
                    f"(pip download --no-deps setuptools=={LAST_SETUPTOOLS_FOR_PY38}) to run it")
    src = _stage_runtime(tmp_path / "src")
    _run([python, "-m", "pip", "wheel", "-q", "--no-deps", *PIP, *args, "-w", str(tmp_path / "dist"), str(src)],
         timeout=300)
    wheel = next((tmp_path / "dist").glob("fcnseg_runtime-*-py3-none-any.whl"))
    venv, pip = venvs["jetpack5.1"]
    _run(pip + ["install", "-q", "--no-index", "--no-deps", "--force-reinstall", str(wheel)], timeout=120)
    code = ("import sys, fcnseg.runtime, fcnseg.core.onnx_props; "
            "print('%d.%d' % sys.version_info[:2], fcnseg.runtime.__file__)")
    out = _run([str(venv / "bin/python"), "-c", code], cwd=str(tmp_path), timeout=120).stdout.split()
    assert out[0] == "3.8" and Path(out[1]).is_relative_to(venv)
