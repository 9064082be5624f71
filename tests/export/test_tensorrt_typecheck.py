"""Type-check the TensorRT layer against tensorrt-stubs (10.13) with mypy, without TensorRT installed.

The stubs do not parse as shipped; a copy is patched under tmp_path (parameters named ``in``/``out``,
a non-default ``channel_axis`` after defaults, an import of the uninstallable ``tensorrt_libs``).
mypy runs with ``mypy-trt.ini`` at the repo root over a scratch ``fcnseg`` tree that links to
the package folders (the editable install is an import hook mypy cannot follow).
"""

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKED = ("fcnseg/export/tensorrt.py", "fcnseg/export/trt_features.py", "fcnseg/export/inspection.py",
           "fcnseg/runtime/backends/tensorrt.py", "fcnseg/runtime/backends/cuda_memory.py", "fcnseg/core/sidecar.py")
# Removed in TensorRT 11 (migration guide): code that runs on 11 may reach these only via getattr/hasattr.
REMOVED_IN_11 = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", "int8_calibrator", "set_calibration_profile",
                 "get_calibration_profile", "platform_has_fast_fp16", "platform_has_fast_int8", "EXPLICIT_BATCH",
                 "device_memory_size", "max_workspace_size", "max_batch_size"}


def _stub_root():
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    root = Path(dist.locate_file(""))
    if not (root / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        pytest.skip(f"tensorrt-stubs has no tensorrt_bindings/tensorrt.pyi under {root}")
    return root


def _patch_stubs(src_root, dst):
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(src_root / pkg, dst / pkg)
    pyi = dst / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"\b(in|out): ", r"\1_: ", pyi.read_text())
    pyi.write_text(text.replace("channel_axis: int)", "channel_axis: int = ...)"))
    init = dst / "tensorrt" / "__init__.pyi"
    init.write_text(init.read_text().replace("import tensorrt_libs as tensorrt_libs\n", ""))


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory):
    """Patched stubs, a scratch source tree and a mypy cache shared by this module's runs."""
    pytest.importorskip("mypy", reason="mypy is not installed")
    root = tmp_path_factory.mktemp("mypy")
    _patch_stubs(_stub_root(), root / "stubs")
    pkg = root / "src" / "fcnseg"
    pkg.mkdir(parents=True)
    for sub in ("core", "datasets", "eval", "export", "runtime"):
        (pkg / sub).symlink_to(REPO / sub, target_is_directory=True)
    return root


def run_mypy(env_root, files):
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(env_root / "stubs"), str(env_root / "src")]))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "mypy-trt.ini"),
           "--cache-dir", str(env_root / "cache"), "--no-error-summary", *files]
    return subprocess.run(cmd, cwd=env_root / "src", env=env, capture_output=True, text=True, timeout=300)


def test_tensorrt_layer_typechecks(mypy_env):
    result = run_mypy(mypy_env, CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in result.stdout


def test_misspelt_attribute_is_reported(mypy_env):
    scratch = mypy_env / "src" / "typo_check.py"
    scratch.write_text("import tensorrt as trt\n\nflag = trt.BuilderFlag.FP16_TYPO\n")
    result = run_mypy(mypy_env, ["typo_check.py"])
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "FP16_TYPO" in errors[0] and "[attr-defined]" in errors[0], result.stdout


@pytest.mark.parametrize("path", CHECKED)
def test_names_removed_in_11_only_via_getattr(path):
    """The 10.13 stubs still list names TensorRT 11 removed; plain attribute access to them would pass mypy."""
    tree = ast.parse((REPO / path.split("/", 1)[1]).read_text())
    used = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in REMOVED_IN_11})
    assert used == [], f"{path} reads {used} as plain attributes; use getattr/hasattr (feature detection)"
