"""The ``fcnseg-runtime`` wheel: ``fcnseg.runtime`` and the ``fcnseg.core`` it imports (numpy + Pillow, Python >= 3.8),
for devices.

Built from ``runtime/pyproject.toml`` in a source checkout; ``fcn-export bundle`` ships it and
``tests/runtime/test_jetpack_compat.py`` installs it into JetPack-like environments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Union

from .. import core, runtime
from ..core.atomic import atomic_path
from ..core.errors import FcnsegError

PathLike = Union[str, "os.PathLike[str]"]


def build_runtime_wheel(out_dir: PathLike, *, python: str = sys.executable) -> Path:
    """Build the ``fcnseg-runtime`` wheel (``runtime/pyproject.toml``) into ``out_dir``; returns its path.

    The runtime and core sources are copied to a temporary folder first, so the build leaves nothing in the tree.
    Uses ``pip wheel --no-build-isolation`` (no download: setuptools >= 61 must be installed).
    """
    src = Path(runtime.__file__).resolve().parent
    core_src = Path(core.__file__).resolve().parent
    if not (src / "pyproject.toml").is_file():
        raise FcnsegError(f"expected runtime/pyproject.toml next to the runtime sources in {str(src)!r}, got none "
                          "(fcnseg installed from a wheel); try `fcn-export bundle --runtime-wheel PATH` with a "
                          "wheel built by `pip wheel --no-deps ./runtime` in a source checkout")
    with tempfile.TemporaryDirectory(prefix="fcnseg-wheel-") as tmp:
        stage, dist = Path(tmp) / "runtime", Path(tmp) / "dist"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
        shutil.copytree(src, stage, ignore=ignore)
        shutil.copytree(core_src, Path(tmp) / "core", ignore=ignore)   # runtime/pyproject.toml takes ../core
        cmd = [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(stage)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        wheels = sorted(dist.glob("fcnseg_runtime-*.whl"))
        if proc.returncode or not wheels:
            last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise FcnsegError(f"expected pip to build the runtime wheel, got exit code {proc.returncode} ({last}); "
                              "try `pip install 'setuptools>=61'` in this environment")
        dest = Path(out_dir) / wheels[0].name
        with atomic_path(dest) as t:
            shutil.copyfile(wheels[0], t)
    return dest
