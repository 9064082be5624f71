"""Engines that rebuild themselves when they do not fit: ``Segmenter.load("fcn.plan", rebuild="auto")``.

A TensorRT engine runs only on the GPU generation and the TensorRT version it was built for ("expecting compute
6.1 got compute 7.5", NVIDIA/TensorRT#818). Before the engine is deserialised, ``engine_for_gpu`` compares what
its sidecar ``<plan>.json`` recorded (library and version, compute capabilities, the GPU it was built on) with
this machine's GPU and installed library:

- it fits: the engine is used as it is;
- it does not, with ``rebuild="never"`` (the default): one line says why and how to rebuild (``--rebuild auto``);
- it does not, with ``rebuild="auto"``: the engine is rebuilt once from the ONNX the sidecar names (beside the
  engine, or ``onnx=``), with a line naming the reason and one giving the time taken, into a cache keyed by the
  GPU, its compute capability, the TensorRT version and what the engine was built from (``source_id``):
  ``<plan>.rebuilt/`` beside the engine where that folder can be written, else
  ``~/.cache/fcnseg/engines/<engine hash>/``. The next load finds it there.

The rebuild itself needs the builder (``fcnseg.export``), which the torch-free runtime does not import: it is
found through the ``fcnseg.rebuilders`` entry point (``tensorrt = fcnseg.export.chain:rebuild_engine``), as
the PyTorch backend is found through ``fcnseg.backends``.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from ..core.atomic import file_sha256
from ..core.errors import FcnsegError
from ..core.sidecar import EngineSidecar, sm_name

PathLike = Union[str, "os.PathLike[str]"]
REBUILD_MODES = ("never", "auto")
REBUILDER_ENTRY_POINTS = "fcnseg.rebuilders"
Say = Callable[[str], None]


def engine_for_gpu(plan: PathLike, *, rebuild: str = "never", onnx: Optional[PathLike] = None,
                   gpu: Optional[Dict[str, str]] = None, installed: Optional[str] = None,
                   say: Optional[Say] = None) -> Path:
    """The engine to load for this GPU: ``plan`` itself, or its rebuilt copy (see the module docstring).

    Args:
        plan: the engine; its sidecar says what it was built for.
        rebuild: "never" (a mismatch is a one-line error) or "auto" (rebuild once, cached).
        onnx: the ONNX to rebuild from (default: the one the sidecar names, beside the engine).
        gpu: {"name", "compute_capability"} of this machine's GPU; {}: there is none (``plan`` is returned, the
            backend says so); None: asked of the driver.
        installed: the TensorRT library version here (default: imported from the library the sidecar names).
        say: where the progress lines go (default: stderr).

    Raises:
        FcnsegError: a mismatch with ``rebuild="never"``, an unknown mode, no ONNX to rebuild from, a failed
            rebuild.
    """
    if rebuild not in REBUILD_MODES:
        raise FcnsegError(f"expected --rebuild {' or '.join(REBUILD_MODES)}, got {rebuild!r}; try --rebuild auto")
    path = Path(plan)
    sidecar = EngineSidecar.read(path)
    gpu = gpu if gpu is not None else _probe()
    if sidecar is None or not gpu:
        return path
    reason = mismatch(sidecar, gpu, installed if installed is not None else _installed_version(sidecar.library))
    if reason is None:
        return path
    source = _source_onnx(path, sidecar, onnx)
    if rebuild == "never":
        raise FcnsegError(f"cannot run TensorRT engine {path.name!r} here: {reason}; try --rebuild auto (rebuilds it "
                          f"once from {source.name if source else 'its ONNX'} and caches it), or `fcn-export trt "
                          f"{source or 'MODEL.onnx'}` on this machine")
    target = cached_engine(path, gpu, sidecar.library, installed or _installed_version(sidecar.library),
                           source_id(path, sidecar))
    out = say or (lambda line: print(line, file=sys.stderr))
    if target.is_file():
        out(f"fcnseg: {path.name} does not fit this GPU ({reason}); using the engine rebuilt for it earlier: {target}")
        return target
    if source is None:
        raise FcnsegError(f"expected the ONNX model {path.name!r} was built from, to rebuild it ({reason}), got "
                          f"none beside it; try --onnx PATH")
    out(f"fcnseg: rebuilding {path.name} from {source.name} for {gpu.get('name', 'this GPU')}: {reason} (once; "
        f"cached in {target.parent})")
    t0 = time.perf_counter()
    _rebuilder(sidecar.library)(path, onnx_path=source, output=target,
                                compute_capability=gpu.get("compute_capability"))
    out(f"fcnseg: rebuilt {target.name} in {time.perf_counter() - t0:.1f} s")
    return target


def mismatch(sidecar: EngineSidecar, gpu: Dict[str, str], installed: Optional[str]) -> Optional[str]:
    """Why the engine of ``sidecar`` does not fit ``gpu`` and the ``installed`` library; None when it fits."""
    cc = str(gpu.get("compute_capability", ""))
    here = f"this GPU is {sm_name(cc)} ({gpu.get('name', 'unknown GPU')})"
    if sidecar.library == "tensorrt_rtx" and sidecar.compute_capabilities and cc not in sidecar.compute_capabilities:
        return f"built for {sidecar.targets()}; {here}"
    built_cc = (sidecar.gpu or {}).get("compute_capability", "unknown")
    hardware = getattr(sidecar, "hardware_compatibility", None)
    if sidecar.library != "tensorrt_rtx" and built_cc not in ("", "unknown", cc) and not _portable(hardware, cc):
        return f"built on {sm_name(str(built_cc))}" + (f" ({hardware})" if hardware else "") + f"; {here}"
    version = sidecar.library_version
    if installed and version not in ("", "unknown", installed) and not getattr(sidecar, "version_compatible", False):
        return f"built with {sidecar.library} {version}, this machine has {installed}"
    return None


def _portable(hardware: Optional[str], cc: str) -> bool:
    """An engine built with ``--hardware-compatibility ampere+`` runs on any GPU of compute capability 8.0 or
    later; ``same-cc`` (and none) only on the compute capability it was built on."""
    try:
        return hardware == "ampere+" and int(cc.split(".")[0]) >= 8
    except ValueError:
        return False


def source_id(plan: Path, sidecar: EngineSidecar) -> str:
    """What the engine was built from, short: its ONNX's recorded SHA-256, else the engine file's own. Part of the
    cache key, so an engine replaced by another model is never answered with the old model's rebuild."""
    return (sidecar.onnx_sha256 or file_sha256(plan))[:12]


def cached_engine(plan: Path, gpu: Dict[str, str], library: str, version: Optional[str], source: str) -> Path:
    """Where the engine built from ``source`` (``source_id``) and rebuilt for ``gpu`` and ``library`` ``version``
    lives (the folder is created)."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", str(gpu.get("name", "gpu"))).strip("-").lower() or "gpu"
    key = (f"{name}_sm{str(gpu.get('compute_capability', '')).replace('.', '')}_{library}-{version or 'unknown'}"
           f"_{source}")
    beside = plan.parent / f"{plan.name}.rebuilt"
    if _writable(beside):
        return beside / f"{key}{plan.suffix}"
    user = _user_cache(plan)   # hashes the engine (hundreds of MB): only when the folder beside it is refused
    if _writable(user):
        return user / f"{key}{plan.suffix}"
    raise FcnsegError(f"expected a writable folder for the rebuilt engine ({beside} or {user}), got "
                      "neither; try running where the engine's folder can be written, or set XDG_CACHE_HOME")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _user_cache(plan: Path) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = file_sha256(plan)[:16] if plan.is_file() else "unknown"
    return root / "fcnseg" / "engines" / digest


def _source_onnx(plan: Path, sidecar: EngineSidecar, onnx: Optional[PathLike]) -> Optional[Path]:
    if onnx is not None:
        given = Path(onnx)
        if not given.is_file():
            raise FcnsegError(f"expected the ONNX model to rebuild {plan.name!r} from, got {str(given)!r} which does "
                              "not exist; check --onnx")
        return given
    named = sidecar.onnx
    if not named:
        return None
    for candidate in (plan.parent / named, plan.parent / Path(named).name, Path(named)):
        if candidate.is_file():
            return candidate
    return None


def _probe() -> Optional[Dict[str, str]]:
    try:
        from .backends.tensorrt import probe_gpu
    except ImportError:   # the backend says what is missing when it loads
        return None
    return probe_gpu()[0]


def _installed_version(library: str) -> Optional[str]:
    import importlib

    try:
        return str(importlib.import_module(library).__version__)
    except Exception:   # not installed, or stubs without bindings: the backend says so when it loads
        return None


def _rebuilder(library: str) -> Any:
    """The ``fcnseg.rebuilders`` entry point for TensorRT engines (``fcnseg.export.chain.rebuild_engine``)."""
    from importlib import metadata

    eps = metadata.entry_points()
    group = eps.select(group=REBUILDER_ENTRY_POINTS) if hasattr(eps, "select") else eps.get(REBUILDER_ENTRY_POINTS, ())
    for ep in group:
        if ep.name == "tensorrt":
            return ep.load()
    raise FcnsegError(f"expected fcnseg's export package to rebuild a {library} engine, got the runtime alone; "
                      "try `pip install fcnseg` (the full package), or rebuild it with fcn-export trt elsewhere")
