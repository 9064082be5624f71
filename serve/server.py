"""Start, watch and stop the ``tritonserver`` bundled by ``nvidia-pytriton`` on a model repository.

The wheel ships the server binary, its Python backend and one backend stub per Python version; the stub
links ``libpython3.X.so.1.0``, which must be the environment's own interpreter's (its ``LIBDIR`` goes on
``LD_LIBRARY_PATH``: an older system libpython of the same version crashes the stub), and it imports the
environment's packages because the environment's ``bin`` leads ``PATH``. The server gets a folder of its
own holding that backend layout (links), and is stopped with SIGINT (Triton's graceful shutdown), then
SIGKILL after a timeout.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Sequence, Union

from ..core.errors import FcnsegError
from ..export.triton import Batching, export_segmenter

PathLike = Union[str, "os.PathLike[str]"]
ENV_VAR = "FCNSEG_TRITON_ENV"
DEFAULT_HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
_PROJECT_ENV = Path(__file__).resolve().parents[1] / ".venv-triton"
_SERVER_GLOB = "lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"


@dataclass(frozen=True)
class TritonInstall:
    """A Python environment with ``nvidia-pytriton``: its server binary, Python backend and stub.

    Attributes:
        env: the environment's root (``.venv-triton``).
        binary: ``tritonserver``.
        backend: the folder holding ``libtriton_python.so`` and ``triton_python_backend_utils.py``.
        stub: ``triton_python_backend_stub`` for the environment's Python version.
        libs: the wheel's bundled shared libraries.
        libpython_dir: where the environment's interpreter keeps ``libpython3.X.so.1.0``.
    """

    env: Path
    binary: Path
    backend: Path
    stub: Path
    libs: Path
    libpython_dir: Path

    @classmethod
    def find(cls, env: Optional[PathLike] = None) -> "TritonInstall":
        """Locate pytriton in ``env``, else ``$FCNSEG_TRITON_ENV``, the project's ``.venv-triton``, this Python.

        Raises:
            FcnsegError: none of them has pytriton, or its Python has no shared libpython.
        """
        given = env or os.environ.get(ENV_VAR)
        candidates = [Path(given)] if given else [_PROJECT_ENV, Path(sys.prefix)]
        for root in candidates:
            found = sorted(glob.glob(str(root / _SERVER_GLOB)))
            if found:
                return cls._from_binary(root, Path(found[-1]))
        raise FcnsegError(f"expected nvidia-pytriton (the bundled tritonserver) in {', '.join(map(str, candidates))}, "
                          "got none; try `make .venv-triton/.fcnseg-installed` (or `python3 -m venv .venv-triton && "
                          ".venv-triton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime pillow && "
                          f".venv-triton/bin/pip install --no-deps -e .`), or set {ENV_VAR}")

    @classmethod
    def _from_binary(cls, root: Path, binary: Path) -> "TritonInstall":
        dist = binary.parents[1]
        version = dist.parents[2].name.replace("python", "")          # site-packages/.. = lib/python3.X
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        python = root / "bin" / "python"
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, timeout=60).stdout.strip()
        if not stub.is_file() or not list(Path(libdir).glob(f"libpython{version}.so*")):
            raise FcnsegError(f"expected a Python backend stub for Python {version} and the interpreter's shared "
                              f"libpython{version}.so in {libdir!r}, got stub {stub.is_file()} and no library; "
                              "try an environment made from a Python built with --enable-shared (pyenv's are)")
        return cls(root, binary, dist / "backends" / "python", stub, dist.parents[1] / "nvidia_pytriton.libs",
                   Path(libdir))

    def environ(self) -> dict:
        """The server's environment: bundled libraries and the interpreter's libpython, the env's bin first."""
        env = os.environ.copy()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.libs), str(self.libpython_dir),
                                                               env.get("LD_LIBRARY_PATH", "")]))
        env["PATH"] = os.pathsep.join([str(self.env / "bin"), env.get("PATH", "")])
        env.pop("PYTHONHOME", None)
        return env

    def backend_dir(self, where: Path) -> Path:
        """A ``--backend-directory`` under ``where``: the Python backend with this Python's stub (links)."""
        python = where / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (self.backend / "libtriton_python.so", self.backend / "triton_python_backend_utils.py",
                       self.stub):
            link = python / source.name
            if not link.exists():
                link.symlink_to(source)
        return where / "backends"


def check_port_free(host: str, port: int, option: str) -> None:
    """Refuse a port another process listens on, naming it (tritonserver itself would only exit with status 1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a port in TIME_WAIT is free to listen on
        try:
            s.bind((host, port))
        except OSError as e:
            raise FcnsegError(f"expected port {port} on {host} to be free for {option}, got it in use "
                              f"({e.strerror}); try {option.split()[0]} 0 (a free port) or stop the process "
                              "listening there") from None


def _tee(stream: IO[bytes], log: IO[Any], path: Path) -> None:
    """Copy the server's output to ``log`` and to the file at ``path`` until it closes."""
    with open(path, "wb") as keep:
        for line in iter(stream.readline, b""):
            keep.write(line)
            keep.flush()
            with contextlib.suppress(ValueError, OSError):   # a closed or broken log stream: keep the file
                if hasattr(log, "buffer"):
                    log.buffer.write(line)
                    log.flush()
                else:
                    log.write(line.decode(errors="replace"))


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TritonServer:
    """A ``tritonserver`` process on a model repository; a context manager that stops it on exit.

    Args:
        repo: the model repository.
        host: the address every endpoint binds to.
        http_port, grpc_port, metrics_port: 0 picks a free port.
        models: load only these models (explicit model control); None loads the whole repository.
        install: the pytriton environment (default ``TritonInstall.find()``).
        log: a file object for the server's output; None writes it to ``<work dir>/tritonserver.log``.
        cleanup: paths removed after the server stops (a temporary repository).
    """

    def __init__(self, repo: PathLike, *, host: str = DEFAULT_HOST, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, models: Optional[Sequence[str]] = None,
                 install: Optional[TritonInstall] = None, log: Optional[IO[Any]] = None,
                 cleanup: Sequence[PathLike] = ()) -> None:
        self.repo = Path(repo)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = (p or free_port(host) for p in
                                                             (http_port, grpc_port, metrics_port))
        self.models = list(models) if models is not None else None
        self.install = install or TritonInstall.find()
        self._log = log
        self._cleanup = [Path(p) for p in cleanup]
        self.workdir = Path(tempfile.mkdtemp(prefix="fcnseg-triton-"))
        self.log_path = self.workdir / "tritonserver.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> List[str]:
        """The ``tritonserver`` command line."""
        cmd = [str(self.install.binary), f"--model-repository={self.repo.resolve()}",
               f"--backend-directory={self.install.backend_dir(self.workdir)}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--allow-gpu-metrics=false", "--exit-timeout-secs=5"]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in self.models]
        return cmd

    def start(self) -> "TritonServer":
        """Start the server (returns at once; see ``wait_ready``)."""
        if not self.repo.is_dir():
            raise FcnsegError(f"expected a model repository folder, got {str(self.repo)!r}; try fcn-export triton")
        for port, option in ((self.http_port, "--port (HTTP)"), (self.grpc_port, "--grpc-port"),
                             (self.metrics_port, "--metrics-port")):
            check_port_free(self.host, port, option)
        if self._log is None:
            with open(self.log_path, "wb") as out:
                self.process = self._popen(out)
            return self
        # Shown as it comes (fcn-serve: stderr) and kept in the log file, whose tail goes into error messages.
        self.process = self._popen(subprocess.PIPE)
        threading.Thread(target=_tee, args=(self.process.stdout, self._log, self.log_path), daemon=True,
                         name="tritonserver-log").start()
        return self

    def _popen(self, out: Any) -> subprocess.Popen:
        return subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.install.environ(), start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll ``/v2/health/ready`` until the server and every model are ready.

        Raises:
            FcnsegError: the server exited, or was not ready within ``timeout`` seconds (with its log's tail).
        """
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise FcnsegError(f"expected tritonserver to start, got exit status {code}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise FcnsegError(f"expected tritonserver ready within {timeout:.0f} s, got not ready: {self.log_tail()}; "
                          "try a longer timeout")

    def log_tail(self, lines: int = 5) -> str:
        """The last error-looking lines of the server's log file (for messages)."""
        if not self.log_path.is_file():
            return "(log not captured)"
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [ln for ln in text if ln[:1] == "E" or "rror" in ln] or text
        return " | ".join(ln.strip()[:300] for ln in errors[-lines:])

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGINT (Triton's graceful shutdown), SIGKILL to its process group after ``timeout``; idempotent."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self.process is not None:
            code = self.process.returncode
        for path in [self.workdir, *self._cleanup]:
            shutil.rmtree(path, ignore_errors=True)
        return code

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_model(model: PathLike, *, repo: Optional[PathLike] = None, name: str = "fcnseg",
                max_batch: Optional[int] = None, instances: int = 1, max_queue_delay_us: Optional[int] = None,
                force: bool = False, view: Optional[Dict[str, Any]] = None, precision_hint: Optional[str] = None,
                classes: Optional[PathLike] = None, **server_options: Any) -> TritonServer:
    """Write a repository serving ``model`` through ``Segmenter`` (Python backend) and return its server.

    Args:
        model: any file ``Segmenter.load`` opens.
        repo: where to write the repository; None uses a temporary folder removed when the server stops.
        name, max_batch, instances, max_queue_delay_us, force, view, precision_hint, classes: see
            ``fcnseg.export.triton.export_segmenter``.
        **server_options: ``TritonServer`` arguments (host, ports, install, log).
    """
    batching = Batching(kind="cpu", max_batch=max_batch, instances=instances,
                        **({"max_queue_delay_us": max_queue_delay_us} if max_queue_delay_us is not None else {}))
    install = server_options.pop("install", None) or TritonInstall.find()   # fail before writing anything
    folder = Path(repo) if repo is not None else Path(tempfile.mkdtemp(prefix="fcnseg-repo-"))
    export_segmenter(model, folder, name=name, batching=batching, force=force, view=view, precision_hint=precision_hint,
                     classes=classes)
    return TritonServer(folder, install=install, cleanup=[] if repo is not None else [folder], **server_options)
