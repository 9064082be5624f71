"""Real faults for the commands: a full filesystem (a small tmpfs, or RLIMIT_FSIZE), SIGKILL, a read-only
filesystem, a busy port, a 24-megapixel photo. Each command runs in its own Python process, as a user runs it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import pytest

# The entry points, as `python -c` programs (the console scripts may not be on PATH in a test run).
ENTRIES = {
    "fcn-export": "from fcnseg.export.cli import main; main()",
    "fcn-train": "from fcnseg.train.cli import train_main; train_main()",
    "fcn-predict": "from fcnseg.runtime.cli import predict_main; predict_main()",
    "fcn-serve": "from fcnseg.serve.cli import main; main()",
}
TEMP_MARKS = (".tmp", ".tmpdir")


def command(name: str, args: Sequence[str]) -> List[str]:
    return [sys.executable, "-c", ENTRIES[name], *map(str, args)]


def _limits(fsize: Optional[int]) -> Callable[[], None]:
    def apply() -> None:
        if fsize is not None:
            # Past the limit a write fails with EFBIG, as on a full disk, instead of killing the process.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return apply


def run(name: str, args: Sequence[str], *, fsize: Optional[int] = None, timeout: float = 300,
        cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Run an fcn-* command to completion (with a file-size limit when given)."""
    return subprocess.run(command(name, args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          preexec_fn=_limits(fsize), env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start(name: str, args: Sequence[str], *, cwd: Optional[Path] = None) -> subprocess.Popen:
    """Start an fcn-* command in the background (to be killed)."""
    return subprocess.Popen(command(name, args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float = 240,
              after: float = 0.0) -> bool:
    """SIGKILL ``proc`` once ``ready()`` holds (polled), ``after`` seconds later; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            time.sleep(after)
            if proc.poll() is not None:
                return False
            proc.kill()
            proc.wait(timeout=30)
            return True
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)
    return False


def temporaries(folder: Path) -> List[str]:
    """fcnseg's temporary files and scratch folders (``.<name>.fcnseg-<pid>-<random>.tmp[dir]``) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".fcnseg-" in p.name and p.name.endswith(TEMP_MARKS))


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The command's last stderr line, checked to be the one-line error of a refused run (exit 2)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    return lines[-1]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A real small filesystem at ``path`` (root only: CI runs as root); skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); RLIMIT_FSIZE covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def fault_inputs(tmp_path_factory) -> Dict[str, Path]:
    """A random-weight FCN-8s/ResNet-18 checkpoint (small base size), its ONNX, and a tiny synthetic VOC."""
    import torch

    from fcnseg.datasets.synth import synthesize
    from fcnseg.export.torch_export import export_onnx
    from fcnseg.train.checkpoint import save_checkpoint
    from fcnseg.train.models import get_model

    root = tmp_path_factory.mktemp("fault_inputs")
    torch.manual_seed(0)
    ckpt = root / "model.pth"
    save_checkpoint({"model": get_model("fcn8s_resnet18", num_classes=21).state_dict(), "arch": "fcn8s_resnet18",
                     "num_classes": 21, "base_size": 64, "epoch": 0}, ckpt)
    onnx_path = export_onnx(ckpt, root / "model.onnx", verify=False).path
    voc = synthesize(root / "voc", num_train=4, num_val=6, size=64, seed=0, progress=False)
    return {"ckpt": ckpt, "onnx": Path(onnx_path), "voc": voc}


@pytest.fixture(scope="session")
def fx() -> SimpleNamespace:
    """The helpers above (test modules do not import conftest)."""
    return SimpleNamespace(run=run, start=start, kill_when=kill_when, temporaries=temporaries, sha1=sha1,
                           one_error_line=one_error_line, tmpfs=tmpfs)
