"""Everything a GPU machine can tell about the pipeline, in one run: ``python -m fcnseg.benchmarks.gpu_report``.

Stages, each recorded (ok / skipped / error) and none stopping the others:

1. the environment (Python, torch + CUDA, GPU, driver, TensorRT libraries and bindings, cuda-python/pycuda,
   ONNX Runtime providers);
2. a dataset (synthetic VOC unless ``--data-path``) and a model (``--checkpoint``, or ``fcn8s_resnet18``
   trained for ``--epochs`` on CUDA with AMP);
3. ONNX FP32, FP16 and INT8 (calibrated on val), plus FP16 and INT8 TensorRT engines when TensorRT imports;
4. the parity table (checkpoint vs every exported model, same images, same runtime code path);
5. latency: TensorRT engines and ONNX Runtime (CPU) through the runtime (``bench_models``), and PyTorch on
   CUDA (``bench_torch_cuda``: FP32, FP16, channels-last FP16 and CUDA-graph FP16, CUDA-event timing) for
   the trained model and an FCN-ResNet50; speed-ups are ratios measured within this run.

``gpu_report.md`` and ``gpu_report.json`` are rewritten (atomically) after every stage, so an interrupted
run still leaves a readable report. The exit code is 1 when a parity tolerance failed or a stage raised;
skipped stages (no TensorRT, no CUDA) do not count.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import click

from ..runtime.atomic import write_text
from ..runtime.errors import FcnsegError, cli_errors, first_line
from .bench import Stats, parse_hw
from .tables import format_table

TORCH_MODES = ("fp32", "fp16", "channels_last_fp16", "cuda_graph_fp16")
TORCH_ARCHS = ("fcn8s_resnet18", "fcn_resnet50")
PACKAGES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim",
            "onnxconverter-common", "tensorrt", "cuda-python", "cuda-bindings", "pycuda")
_SMI_QUERY = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
_LDCONFIG_LINE = re.compile(r"^\s*(?P<soname>\S+)\s+\((?P<arch>[^)]*)\)\s+=>\s+(?P<path>\S+)\s*$")


# ---------------------------------------------------------------- environment

def environment_report() -> Dict[str, Any]:
    """What this machine offers the pipeline; works anywhere (absent pieces are None / False / []).

    Returns:
        A JSON-serialisable dict with keys ``python``, ``executable``, ``platform``, ``packages``
        (distribution -> version or None), ``torch``, ``torch_cuda``, ``cudnn``, ``cuda_available``,
        ``tf32`` (cuDNN / matmul TF32 flags), ``gpus`` (name, compute capability, memory), ``nvidia_smi``,
        ``driver``, ``tensorrt_libs`` (from ``ldconfig -p``), ``tensorrt_wheel_libs``, ``tensorrt``
        (importable, version, error), ``cuda_python``, ``pycuda``, ``onnxruntime`` and
        ``onnxruntime_providers``.
    """
    smi = parse_nvidia_smi(_run(["nvidia-smi", *_SMI_QUERY]) or "")
    ldconfig = _ldconfig_binary()
    libs = parse_ldconfig(_run([ldconfig, "-p"]) or "") if ldconfig else []
    env: Dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        **_torch_info(),
        "nvidia_smi": smi, "driver": smi[0]["driver_version"] if smi else None,
        "tensorrt_libs": [{**lib, "file_version": _file_version(lib["path"])} for lib in libs],
        "tensorrt_wheel_libs": _wheel_libs(), "tensorrt": _tensorrt_info(),
        "cuda_python": _module_version("cuda", "cuda-python", "cuda-bindings"),
        "pycuda": _module_version("pycuda", "pycuda"),
        **_onnxruntime_info(),
    }
    return env


def parse_ldconfig(text: str, pattern: str = "nvinfer") -> List[Dict[str, Optional[str]]]:
    """Libraries matching ``pattern`` in ``ldconfig -p`` output.

    Example line: ``libnvinfer.so.10 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvinfer.so.10``.

    Returns:
        One dict per line: ``name`` ("libnvinfer"), ``soname`` ("libnvinfer.so.10"), ``version`` ("10",
        None for the unversioned link), ``arch`` ("libc6,x86-64") and ``path``.
    """
    libs = []
    for line in text.splitlines():
        m = _LDCONFIG_LINE.match(line)
        if not m or pattern not in m["soname"]:
            continue
        name, _, version = m["soname"].partition(".so")
        libs.append({"name": name, "soname": m["soname"], "version": version.lstrip(".") or None,
                     "arch": m["arch"], "path": m["path"]})
    return libs


def parse_nvidia_smi(text: str) -> List[Dict[str, str]]:
    """``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader`` -> one dict a GPU."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(parts):
            gpus.append(dict(zip(("name", "driver_version", "memory_total"), parts)))
    return gpus


def _run(cmd: Sequence[str]) -> Optional[str]:
    """stdout of a command, or None when it is missing, fails or hangs."""
    exe = shutil.which(cmd[0]) or (cmd[0] if os.path.isabs(cmd[0]) else None)
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _ldconfig_binary() -> Optional[str]:
    # Non-root PATHs often lack /sbin, where ldconfig lives.
    for candidate in (shutil.which("ldconfig"), "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _file_version(path: Optional[str]) -> Optional[str]:
    """The full version a library link resolves to (libnvinfer.so.10 -> libnvinfer.so.10.3.0 -> "10.3.0")."""
    if not path:
        return None
    real = os.path.basename(os.path.realpath(path))
    return real.partition(".so.")[2] or None


def _wheel_libs() -> List[str]:
    """libnvinfer* shipped inside the pip wheels (``tensorrt_libs``), which ldconfig does not list."""
    spec = _find_spec("tensorrt_libs")
    folders = list(spec.submodule_search_locations or []) if spec else []
    return sorted(p.name for f in folders for p in Path(f).glob("libnvinfer*"))


def _find_spec(name: str) -> Any:
    """The module's spec without importing it (importing pycuda.autoinit would create a CUDA context)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _module_version(module: str, *dists: str) -> Optional[str]:
    """The first installed distribution's version when ``module`` is importable; None when it is not."""
    if _find_spec(module) is None:
        return None
    return next((v for v in map(_version, dists) if v), "installed (version unknown)")


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {"torch": None, "torch_cuda": None, "cudnn": None, "cuda_available": False,
                            "tf32": {}, "gpus": []}
    try:
        import torch
    except ImportError:
        return info
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                tf32={"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32})
    with contextlib.suppress(Exception):  # a CPU build or a broken cuDNN answers nothing useful
        info["cudnn"] = torch.backends.cudnn.version()
    for i in range(torch.cuda.device_count() if info["cuda_available"] else 0):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                             "memory_gib": round(p.total_memory / 2**30, 1),
                             "multiprocessors": p.multi_processor_count})
    return info


def _tensorrt_info() -> Dict[str, Any]:
    from ..runtime.backends.tensorrt import import_tensorrt

    try:
        trt = import_tensorrt()
    except FcnsegError as e:
        return {"importable": False, "version": None, "error": str(e)}
    except Exception as e:  # e.g. OSError: the bindings are there but libnvinfer is not
        return {"importable": False, "version": None, "error": _one_line(e)}
    return {"importable": True, "version": str(getattr(trt, "__version__", "unknown")), "error": None}


def _onnxruntime_info() -> Dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"onnxruntime": None, "onnxruntime_providers": []}
    return {"onnxruntime": ort.__version__, "onnxruntime_providers": list(ort.get_available_providers())}


def environment_table(env: Dict[str, Any]) -> str:
    """The environment report as a two-column table."""
    trt = env["tensorrt"]
    rows = [["python", f"{env['python']} ({env['executable']})"], ["platform", env["platform"]],
            ["torch", f"{env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}, "
                      f"available: {env['cuda_available']}, TF32 {env['tf32']})"]]
    rows += [[f"GPU {g['index']}", f"{g['name']}, compute {g['compute_capability']}, {g['memory_gib']} GiB, "
                                   f"{g['multiprocessors']} SMs"] for g in env["gpus"]]
    rows += [["nvidia-smi", "; ".join(", ".join(g.values()) for g in env["nvidia_smi"]) or "not found"],
             ["driver", env["driver"]],
             ["TensorRT libs (ldconfig)", ", ".join(f"{lib['soname']} -> {lib['file_version'] or '?'}"
                                                    for lib in env["tensorrt_libs"]) or "none"],
             ["TensorRT libs (wheel)", ", ".join(env["tensorrt_wheel_libs"]) or "none"],
             ["import tensorrt", trt["version"] if trt["importable"] else f"no: {trt['error']}"[:160]],
             ["cuda-python", env["cuda_python"]], ["pycuda", env["pycuda"]],
             ["onnxruntime", f"{env['onnxruntime']} ({', '.join(env['onnxruntime_providers'])})"]]
    rows += [[f"pip {k}", v] for k, v in env["packages"].items() if v and k not in ("torch", "onnxruntime")]
    return format_table(["item", "value"], rows)


# ---------------------------------------------------------------- PyTorch on CUDA

@dataclass(frozen=True)
class TorchMode:
    """One way of running a model with PyTorch on CUDA, named like ``cuda_graph_channels_last_fp16``.

    Attributes:
        name: the mode's name.
        fp16: ``model.half()`` and half inputs: weights and activations in FP16 end to end, as in an FP16
            TensorRT engine (autocast would keep some ops in FP32 and add casts, which is a different thing).
        channels_last: model and input in ``torch.channels_last`` (NHWC), the layout Tensor Cores prefer.
        cuda_graph: capture one forward in a ``torch.cuda.CUDAGraph`` and replay it; each step first copies
            the input into the graph's static input buffer (counted in the timing).
    """

    name: str
    fp16: bool
    channels_last: bool
    cuda_graph: bool

    @classmethod
    def parse(cls, name: str) -> "TorchMode":
        """``[cuda_graph_][channels_last_](fp32|fp16)`` -> TorchMode; FcnsegError for anything else."""
        rest = name
        graph = rest.startswith("cuda_graph_")
        rest = rest[len("cuda_graph_"):] if graph else rest
        nhwc = rest.startswith("channels_last_")
        rest = rest[len("channels_last_"):] if nhwc else rest
        if rest not in ("fp32", "fp16"):
            raise FcnsegError(f"expected a mode [cuda_graph_][channels_last_](fp32|fp16) such as "
                              f"{', '.join(TORCH_MODES)}, got {name!r}")
        return cls(name, rest == "fp16", nhwc, graph)


def bench_torch_cuda(model: Any, *, shape: Tuple[int, int], batch: int, modes: Sequence[str] = TORCH_MODES,
                     warmup: int = 10, iters: int = 100) -> List[Dict[str, Any]]:
    """Latency of ``model(x)`` on CUDA in several modes, timed with CUDA events.

    Each mode runs on its own deep copy of ``model`` (left unchanged), with cuDNN autotuning on
    (``cudnn.benchmark``; the warm-up absorbs it). FP32 convolutions use TF32 when
    ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default); each row records the flag. Time per
    iteration is GPU time between two events around the call; iterations are queued back to back (no
    synchronisation between them), so launch overhead shows only where the CPU cannot keep ahead.

    Args:
        model: an ``nn.Module`` taking an NCHW batch (its output may be a tensor or a dict of tensors).
        shape: input (H, W).
        batch: batch size.
        modes: ``TorchMode`` names, e.g. ``("fp32", "fp16", "channels_last_fp16", "cuda_graph_fp16")``.
        warmup / iters: untimed and timed iterations per mode.

    Returns:
        One dict a mode: mode, precision, channels_last, cuda_graph, shape, batch, iters, median_ms,
        p90_ms, p99_ms, mean_ms, min_ms, max_ms, images_per_s, max_memory_mb
        (``torch.cuda.max_memory_allocated``: weights, activations and workspaces), tf32; a mode that fails
        (e.g. out of memory) gives a dict with ``error`` instead of the timings.

    Raises:
        FcnsegError: no CUDA, a bad mode name, shape, batch or iteration count.
    """
    torch = _require_cuda()
    parsed = [TorchMode.parse(m) for m in modes]
    if batch < 1 or iters < 1 or warmup < 0 or len(shape) != 2 or min(shape) < 1:
        raise FcnsegError(f"expected batch >= 1, iters >= 1, warmup >= 0 and a positive (H, W), got batch "
                          f"{batch}, iters {iters}, warmup {warmup}, shape {tuple(shape)}")
    rows = []
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        for mode in parsed:
            base = {"mode": mode.name, "precision": "fp16" if mode.fp16 else "fp32",
                    "channels_last": mode.channels_last, "cuda_graph": mode.cuda_graph,
                    "shape": list(shape), "batch": batch}
            try:
                rows.append({**base, **_bench_mode(torch, model, mode, (shape[0], shape[1]), batch, warmup, iters)})
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError and failed captures are RuntimeErrors
                rows.append({**base, "error": _one_line(e)})
            torch.cuda.empty_cache()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return rows


def _require_cuda() -> Any:
    try:
        import torch
    except ImportError:
        raise FcnsegError("expected torch to benchmark PyTorch on CUDA, got none installed; "
                          "try `pip install torch` (a CUDA build)") from None
    if not torch.cuda.is_available():
        raise FcnsegError(f"expected a CUDA GPU for the PyTorch benchmark, got torch.cuda.is_available() False "
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); try a machine with an "
                          "NVIDIA GPU and a CUDA build of torch")
    return torch


def _bench_mode(torch: Any, model: Any, mode: TorchMode, hw: Tuple[int, int], batch: int, warmup: int,
                iters: int) -> Dict[str, Any]:
    dtype = torch.float16 if mode.fp16 else torch.float32
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    net = copy.deepcopy(model).eval().to(device="cuda", dtype=dtype, memory_format=fmt)
    x = torch.randn(batch, 3, *hw, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    with torch.no_grad():
        step = _graph_step(torch, net, x, warmup) if mode.cuda_graph else functools.partial(net, x)
        seconds = _time_with_events(torch, step, warmup, iters)
    stats = Stats.of(seconds)
    peak = torch.cuda.max_memory_allocated() / 2**20
    del net, x, step
    return {"iters": iters, "median_ms": stats.median, "p90_ms": stats.p90, "p99_ms": stats.p99,
            "mean_ms": stats.mean, "min_ms": stats.min, "max_ms": stats.max,
            "images_per_s": batch * 1e3 / stats.median, "max_memory_mb": peak,
            "tf32": bool(torch.backends.cudnn.allow_tf32) and not mode.fp16}


def _graph_step(torch: Any, net: Any, src: Any, warmup: int) -> Callable[[], Any]:
    """Capture ``net`` on a static input buffer; the step copies ``src`` into it and replays the graph."""
    static_x = src.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # Lazy initialisation and cuDNN autotuning must happen before the capture, on a side stream.
        for _ in range(max(3, warmup)):
            net(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = net(static_x)

    def step() -> Any:
        static_x.copy_(src)
        graph.replay()
        return static_out

    return step  # its closure keeps the graph and its memory pool alive


def _time_with_events(torch: Any, step: Callable[[], Any], warmup: int, iters: int) -> List[float]:
    """Seconds of GPU time per call, from a pair of CUDA events around each."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def torch_table(rows: Sequence[Dict[str, Any]]) -> str:
    """PyTorch CUDA rows: latency statistics (ms per batch), throughput, peak memory and speed-up vs fp32."""
    headers = ["arch", "mode", "shape", "batch", "median", "mean", "p90", "p99", "min", "max", "img/s",
               "peak MB", "x fp32", "note"]
    fp32 = {_key(r): r["median_ms"] for r in rows if r.get("mode") == "fp32" and "median_ms" in r}
    body = []
    for r in rows:
        ref = fp32.get(_key(r))
        t = [r.get(k, float("nan")) for k in ("median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")]
        body.append([r.get("arch", "?"), r["mode"], "x".join(map(str, r["shape"])), r["batch"], *t,
                     r.get("images_per_s"), r.get("max_memory_mb"),
                     ref / r["median_ms"] if ref and "median_ms" in r else None, r.get("error", "")[:60]])
    return format_table(headers, body)


def _key(row: Dict[str, Any]) -> Tuple[Any, ...]:
    return row.get("arch"), tuple(row["shape"]), row["batch"]


# ---------------------------------------------------------------- latency summary across runtimes

def latency_summary(torch_rows: Sequence[Dict[str, Any]], bench_results: Sequence[Any],
                    arch: str) -> List[Dict[str, Any]]:
    """Model-only time of every runtime in this run, side by side per (arch, shape, batch).

    PyTorch rows give CUDA-event time; ``BenchResult`` rows (TensorRT engines, ONNX Runtime) give the
    runtime's ``infer`` stage (host to host around the backend call, without pre/postprocessing).
    ``x_ort_cpu`` is ONNX Runtime CPU FP32's time over this row's, ``x_torch_fp32`` PyTorch CUDA FP32's.
    """
    rows = [{"arch": r.get("arch"), "shape": list(r["shape"]), "batch": r["batch"], "runtime": "pytorch-cuda",
             "variant": r["mode"], "precision": r["precision"], "median_ms": r["median_ms"]}
            for r in torch_rows if "median_ms" in r]
    rows += [{"arch": arch, "shape": list(b.shape), "batch": b.batch, "runtime": b.backend, "precision": b.precision,
              "variant": Path(b.model).name, "median_ms": b.stages["infer"].median} for b in bench_results]
    ort = {_key(r): r["median_ms"] for r in rows
           if r["runtime"].startswith("onnxruntime") and r["precision"] == "fp32"}
    fp32 = {_key(r): r["median_ms"] for r in rows if r["runtime"] == "pytorch-cuda" and r["variant"] == "fp32"}
    for r in rows:
        r["images_per_s"] = r["batch"] * 1e3 / r["median_ms"] if r["median_ms"] > 0 else None
        r["x_ort_cpu"] = ort[_key(r)] / r["median_ms"] if _key(r) in ort and r["median_ms"] > 0 else None
        r["x_torch_fp32"] = fp32[_key(r)] / r["median_ms"] if _key(r) in fp32 and r["median_ms"] > 0 else None
    return sorted(rows, key=lambda r: (str(r["arch"]), r["shape"], r["batch"], r["median_ms"]))


def summary_table(rows: Sequence[Dict[str, Any]]) -> str:
    headers = ["arch", "shape", "batch", "runtime", "variant", "prec", "ms/batch", "img/s", "x ORT-CPU fp32",
               "x torch fp32"]
    return format_table(headers, [[r["arch"], "x".join(map(str, r["shape"])), r["batch"], r["runtime"],
                                   r["variant"], r["precision"], r["median_ms"], r["images_per_s"], r["x_ort_cpu"],
                                   r["x_torch_fp32"]] for r in rows])


# ---------------------------------------------------------------- the report

class SkipStage(Exception):
    """A stage that cannot run here (no TensorRT, no CUDA, an earlier stage failed): recorded as skipped."""


@dataclass
class GpuReportConfig:
    """Options of the GPU report (see ``main`` for their meaning); ``check()`` validates them."""

    out: Path
    checkpoint: Optional[Path] = None
    data_path: Optional[Path] = None
    epochs: int = 6
    iters: int = 100
    ort_iters: int = 10
    warmup: int = 10
    shapes: Tuple[Tuple[int, int], ...] = ((520, 520), (375, 500))
    batches: Tuple[int, ...] = (1, 8)
    limit: Optional[int] = None
    num_train: int = 300
    num_val: int = 100
    image_size: int = 160
    arch: str = "fcn8s_resnet18"
    batch_size: int = 8
    lr: float = 0.02
    calib_images: int = 100
    torch_archs: Tuple[str, ...] = TORCH_ARCHS
    torch_modes: Tuple[str, ...] = TORCH_MODES

    def check(self) -> "GpuReportConfig":
        counts = {"epochs": self.epochs, "iters": self.iters, "ort-iters": self.ort_iters,
                  "num-train": self.num_train, "num-val": self.num_val, "calib-images": self.calib_images}
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad or self.warmup < 0 or not self.shapes or not self.batches or min(self.batches) < 1:
            raise FcnsegError(f"expected positive counts, warmup >= 0, shapes and batch sizes >= 1, got {bad or ''} "
                              f"warmup {self.warmup}, shapes {self.shapes}, batches {self.batches}; "
                              "try --shapes 520x520,375x500 --batches 1,8")
        for m in self.torch_modes:
            TorchMode.parse(m)
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise FcnsegError(f"expected --checkpoint to be a file, got {str(self.checkpoint)!r}; "
                              "try leaving it out to train one")
        return self


@dataclass
class StageRecord:
    """How one stage went: status "ok", "skipped" or "error", its time and (for errors) the traceback."""

    name: str
    status: str = "running"
    seconds: float = 0.0
    message: str = ""
    traceback: str = ""


@dataclass
class GpuReport:
    """Everything the run found: stage records, JSON data per stage and the readable tables."""

    config: Dict[str, Any]
    started: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    stages: List[StageRecord] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    tables: List[Tuple[str, str, str]] = field(default_factory=list)  # (stage, title, table)
    parity_failures: List[str] = field(default_factory=list)

    def add(self, stage: str, data: Any = None, tables: Sequence[Tuple[str, str]] = ()) -> None:
        """Record a stage's data (JSON side) and tables (readable side)."""
        if data is not None:
            self.data[stage] = data
        self.tables += [(stage, title, text) for title, text in tables]

    @property
    def exit_code(self) -> int:
        """1 when a parity tolerance failed or a stage raised, else 0."""
        return int(bool(self.parity_failures) or any(s.status == "error" for s in self.stages))

    def to_dict(self) -> Dict[str, Any]:
        return {"config": self.config, "started": self.started, "exit_code": self.exit_code,
                "parity_failures": self.parity_failures, "stages": [dataclasses.asdict(s) for s in self.stages],
                "data": self.data}


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples, numpy values -> JSON types; NaN and infinities -> None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def render_markdown(report: GpuReport) -> str:
    """The report as Markdown: the stage summary, then each stage's tables in code blocks."""
    lines = ["# fcnseg GPU report", "", f"started {report.started}; exit code {report.exit_code}", "",
             "```text", format_table(["stage", "status", "s", "note"],
                                     [[s.name, s.status, s.seconds, s.message[:120]] for s in report.stages]), "```"]
    if report.parity_failures:
        lines += ["", "**Parity failed:** " + ", ".join(report.parity_failures)]
    for s in report.stages:
        lines += ["", f"## {s.name}: {s.status} ({s.seconds:.1f} s)"]
        if s.message:
            lines += ["", f"> {s.message}"]
        for stage, title, text in report.tables:
            if stage == s.name:
                lines += ["", f"{title}:", "", "```text", text, "```"]
    lines += ["", "## configuration", "", "```json", json.dumps(to_jsonable(report.config), indent=2), "```", ""]
    return "\n".join(lines)


def write_report(report: GpuReport, out_dir: "str | os.PathLike[str]") -> Tuple[Path, Path]:
    """Write ``gpu_report.md`` and ``gpu_report.json`` in ``out_dir``, each atomically."""
    out = Path(out_dir)
    md, js = out / "gpu_report.md", out / "gpu_report.json"
    write_text(js, json.dumps(to_jsonable(report.to_dict()), indent=2, allow_nan=False) + "\n")
    write_text(md, render_markdown(report))
    return md, js


@contextlib.contextmanager
def stage(report: GpuReport, name: str, out_dir: Path, *, index: int = 0, total: int = 0) -> Iterator[StageRecord]:
    """Run a stage: print its progress, record ok/skipped/error (never raising), rewrite the report."""
    rec = StageRecord(name)
    report.stages.append(rec)
    prefix = f"[{index}/{total}] " if total else ""
    _echo(f"{prefix}{name} ...")
    t0 = time.perf_counter()
    try:
        yield rec
        rec.status = "ok"
    except SkipStage as e:
        rec.status, rec.message = "skipped", str(e)
    except Exception as e:  # any failure: recorded, and the other stages still run
        rec.status, rec.message, rec.traceback = "error", _one_line(e), traceback.format_exc()
    finally:
        rec.seconds = time.perf_counter() - t0
        _echo(f"{prefix}{name}: {rec.status} ({rec.seconds:.1f} s){': ' + rec.message if rec.message else ''}")
        write_report(report, out_dir)


def _echo(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _one_line(e: BaseException) -> str:
    return first_line(e) if isinstance(e, FcnsegError) else f"{type(e).__name__}: {first_line(e)}"


# ---------------------------------------------------------------- the stages

@dataclass
class Artifacts:
    """What the stages hand to each other."""

    data: Optional[Path] = None
    checkpoint: Optional[Path] = None
    arch: Optional[str] = None
    onnx: Dict[str, Path] = field(default_factory=dict)
    plans: Dict[str, Path] = field(default_factory=dict)
    bench: List[Any] = field(default_factory=list)
    torch_rows: List[Dict[str, Any]] = field(default_factory=list)


def _need(value: Any, what: str) -> Any:
    if not value:
        raise SkipStage(f"needs {what}, which an earlier stage did not produce")
    return value


def step_environment(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    env = environment_report()
    write_text(cfg.out / "environment.json", json.dumps(to_jsonable(env), indent=2) + "\n")
    report.add("environment", env, [("environment", environment_table(env))])
    _echo(environment_table(env))


def step_data(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    from ..runtime.vocdata import VOCLayout

    root = Path(cfg.data_path) if cfg.data_path else cfg.out / "data"
    if cfg.data_path is None and not (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").is_file():
        from ..train.synth import synthesize  # the split lists are written last: present means complete

        synthesize(root, num_train=cfg.num_train, num_val=cfg.num_val, size=cfg.image_size, seed=0)
    splits = ("val",) if cfg.checkpoint else ("train", "val")  # train only when a model is to be trained
    sizes = {split: len(VOCLayout(root, split)) for split in splits}
    art.data = root
    report.add("data", {"root": str(root), "synthetic": cfg.data_path is None, **sizes})


def step_model(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    if cfg.checkpoint is not None:
        from ..train.checkpoint import load_checkpoint

        art.arch = load_checkpoint(cfg.checkpoint).arch or cfg.arch  # also checks the file early
        art.checkpoint = Path(cfg.checkpoint)
        report.add("model", {"checkpoint": str(art.checkpoint), "arch": art.arch, "trained": False})
        return
    import torch

    from ..train.engine import TrainConfig, train

    out = cfg.out / "train"
    tc = TrainConfig(data_path=str(_need(art.data, "a dataset")), model=cfg.arch, epochs=cfg.epochs,
                     batch_size=cfg.batch_size, lr=cfg.lr, workers=min(8, os.cpu_count() or 1),
                     output_dir=str(out), amp=True, base_size=cfg.image_size, crop_size=cfg.image_size - 16,
                     device="cuda" if torch.cuda.is_available() else "cpu")
    last = train(tc)
    art.checkpoint, art.arch = out / "model_best.pth", cfg.arch
    report.add("model", {"checkpoint": str(art.checkpoint), "arch": cfg.arch, "trained": True, "device": tc.device,
                         "last": last},
               [("training", _training_table(out / "metrics.jsonl"))])


def _training_table(metrics: Path) -> str:
    logs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return format_table(["epoch", "loss", "lr", "mIoU", "pixel acc", "s", "img/s"],
                        [[g["epoch"], g["train_loss"], g["lr"], g["miou"] * 100, g["global_acc"] * 100,
                          g["epoch_s"], g["train_img_s"]] for g in logs])


def step_export_onnx(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    from ..export.onnx_export import export_onnx

    res = export_onnx(_need(art.checkpoint, "a checkpoint"), cfg.out / "model.onnx")
    art.onnx["fp32"] = res.path
    report.add("export onnx", {"path": str(res.path), "opset": res.opset, "seconds": res.seconds,
                               "verified": [str(c) for c in res.comparisons]},
               [("ONNX Runtime vs PyTorch", "\n".join(map(str, res.comparisons)))])


def step_export_fp16(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    from ..export.fp16 import convert_fp16

    res = convert_fp16(_need(art.onnx.get("fp32"), "the FP32 ONNX"), cfg.out / "model_fp16.onnx")
    art.onnx["fp16"] = res.path
    report.add("export fp16", {"path": str(res.path), "seconds": res.seconds,
                               "verified": [str(c) for c in res.comparisons]},
               [("FP16 vs FP32 (ONNX Runtime)", "\n".join(map(str, res.comparisons)))])


def step_export_int8(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    from ..export.int8 import quantize_int8

    res = quantize_int8(_need(art.onnx.get("fp32"), "the FP32 ONNX"), cfg.out / "model_int8.onnx",
                        calib_root=_need(art.data, "a dataset"), calib_split="val", num_images=cfg.calib_images,
                        cache=cfg.out / "model_int8.calib.json", eval_split="val", eval_images=cfg.limit)
    art.onnx["int8"] = res.path
    report.add("export int8", {"path": str(res.path), "seconds": res.seconds, "miou_fp32": res.miou_fp32,
                               "miou_int8": res.miou_int8, "drop_points": res.drop, "excluded": res.excluded,
                               "calib_images": res.num_calib_images, "method": res.method},
               [("INT8 vs FP32 (ONNX Runtime, val)", format_table(
                   ["method", "calib images", "mIoU fp32", "mIoU int8", "drop", "kept in float"],
                   [[res.method, res.num_calib_images, res.miou_fp32 * 100, res.miou_int8 * 100, res.drop,
                     len(res.excluded)]]))])


def step_engine(cfg: GpuReportConfig, art: Artifacts, report: GpuReport, *, precision: str) -> None:
    from ..export.tensorrt import build_engine
    from ..runtime.backends.tensorrt import import_tensorrt

    try:
        import_tensorrt()
    except FcnsegError as e:
        raise SkipStage(str(e)) from None
    src = _need(art.onnx.get(precision), f"the {precision} ONNX")
    lo, opt, hi = engine_profile(cfg.shapes, cfg.batches)
    # The FP16-typed / Q-DQ graphs carry their precision: built as they are on TensorRT 8.5 ... 11.
    plan = build_engine(src, output=cfg.out / f"model_{precision}.plan", min_shape=lo, opt_shape=opt, max_shape=hi,
                        timing_cache=cfg.out / "trt_timing.cache")
    art.plans[precision] = plan
    report.add(f"engine {precision}", {"path": str(plan), "onnx": str(src), "profile": [lo, opt, hi]})


def engine_profile(shapes: Sequence[Tuple[int, int]],
                   batches: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """min/opt/max NCHW covering the benchmark shapes and batches and the parity images (64 ... 1024 px)."""
    h = max(1024, *(s[0] for s in shapes))
    w = max(1024, *(s[1] for s in shapes))
    return (1, 3, 64, 64), (1, 3, *shapes[0]), (max(batches), 3, h, w)


def step_parity(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    from .evaluate import class_delta_table, compare_models, parity_table

    paths = [str(_need(art.checkpoint, "a checkpoint"))]
    paths += [str(art.onnx[p]) for p in ("fp32", "fp16", "int8") if p in art.onnx]
    paths += [str(p) for p in art.plans.values()]
    with _true_fp32():
        rows = compare_models(paths, str(_need(art.data, "a dataset")), "val", limit=cfg.limit)
    report.parity_failures = [Path(r.path).name for r in rows if not r.ok]
    report.add("parity", [r.to_dict() for r in rows],
               [("parity (reference: the checkpoint)", parity_table(rows)),
                ("per-class IoU (%) and deltas (points)", class_delta_table(rows))])


@contextlib.contextmanager
def _true_fp32() -> Iterator[None]:
    """TF32 off while the PyTorch reference runs on CUDA, so the reference is real FP32."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _bench_runtime(cfg: GpuReportConfig, art: Artifacts, report: GpuReport, name: str, paths: Sequence[Path],
                   iters: int, warmup: int, providers: Optional[Sequence[str]] = None) -> None:
    from tqdm import tqdm

    from .bench import bench_models, bench_table

    results = []
    combos = [(hw, b) for hw in cfg.shapes for b in cfg.batches]
    for hw, b in tqdm(combos, desc=name, unit="shape", file=sys.stderr, dynamic_ncols=True):
        results += bench_models([str(p) for p in paths], [hw], [b], warmup=warmup, iters=iters,
                                rounds=min(5, iters), providers=providers)
    art.bench += results
    report.add(name, [r.to_dict() for r in results], [(f"{name} (speed-up vs the first model)",
                                                       bench_table(results))])


def step_bench_engines(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    plans = _need(list(art.plans.values()), "TensorRT engines")
    _bench_runtime(cfg, art, report, "bench tensorrt", plans, cfg.iters, cfg.warmup)


def step_bench_onnx(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    models = _need(list(art.onnx.values()), "ONNX models")
    # CPU explicitly: with onnxruntime-gpu installed, the default would pick CUDA/TensorRT providers.
    _bench_runtime(cfg, art, report, "bench onnxruntime", models, cfg.ort_iters, min(cfg.warmup, 2),
                   providers=["CPUExecutionProvider"])


def step_bench_torch(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    from tqdm import tqdm

    try:
        _require_cuda()
    except FcnsegError as e:
        raise SkipStage(str(e)) from None
    archs = dict.fromkeys([art.arch or cfg.arch, *cfg.torch_archs])  # the exported model's first
    combos = [(a, hw, b) for a in archs for hw in cfg.shapes for b in cfg.batches]
    models: Dict[str, Any] = {}
    for arch, hw, b in tqdm(combos, desc="bench pytorch cuda", file=sys.stderr, dynamic_ncols=True):
        if arch not in models:
            models[arch] = _torch_model(arch, art.checkpoint)
        rows = bench_torch_cuda(models[arch], shape=hw, batch=b, modes=cfg.torch_modes, warmup=cfg.warmup,
                                iters=cfg.iters)
        art.torch_rows += [{"arch": arch, **r} for r in rows]
    report.add("bench pytorch cuda", art.torch_rows, [("PyTorch on CUDA, ms per batch (CUDA events)",
                                                       torch_table(art.torch_rows))])


def _torch_model(arch: str, checkpoint: Optional[Path]) -> Any:
    """The trained model where the checkpoint is this arch; else random weights (speed does not depend on them)."""
    from ..train.checkpoint import load_checkpoint, model_from_checkpoint
    from ..train.models import get_model

    if checkpoint is not None and load_checkpoint(checkpoint).arch == arch:
        return model_from_checkpoint(checkpoint)[0]
    return get_model(arch).eval()


def step_summary(cfg: GpuReportConfig, art: Artifacts, report: GpuReport) -> None:
    rows = latency_summary(art.torch_rows, art.bench, art.arch or cfg.arch)
    _need(rows, "latency results")
    report.add("summary", rows, [("model-only latency of every runtime (ms per batch; ratios within this run)",
                                  summary_table(rows))])


STEPS: Tuple[Tuple[str, Callable[..., None]], ...] = (
    ("environment", step_environment), ("data", step_data), ("model", step_model),
    ("export onnx", step_export_onnx), ("export fp16", step_export_fp16), ("export int8", step_export_int8),
    ("engine fp16", functools.partial(step_engine, precision="fp16")),
    ("engine int8", functools.partial(step_engine, precision="int8")),
    ("parity", step_parity), ("bench tensorrt", step_bench_engines), ("bench onnxruntime", step_bench_onnx),
    ("bench pytorch cuda", step_bench_torch), ("summary", step_summary),
)


def run_gpu_report(cfg: GpuReportConfig) -> GpuReport:
    """Run every stage in order, writing ``gpu_report.md`` / ``.json`` into ``cfg.out`` after each.

    Returns:
        The report; ``report.exit_code`` is 1 when a parity tolerance failed or a stage raised.

    Raises:
        FcnsegError: invalid options (before anything runs).
    """
    cfg.check()
    cfg.out.mkdir(parents=True, exist_ok=True)
    report = GpuReport(config=to_jsonable(dataclasses.asdict(cfg)))
    art = Artifacts()
    for i, (name, fn) in enumerate(STEPS, 1):
        with stage(report, name, cfg.out, index=i, total=len(STEPS)):
            fn(cfg, art, report)
    return report


def _parse_list(text: str, parse: Callable[[str], Any], what: str) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(parse(t) for t in items)
    except ValueError:
        raise FcnsegError(f"expected a comma-separated list of {what}, got {text!r}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for every artifact")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="use this instead of training")
@click.option("--data-path", default=None, type=click.Path(), help="VOC root (default: synthesize one in OUT/data)")
@click.option("--epochs", default=6)
@click.option("--iters", default=100, help="timed iterations (GPU runtimes)")
@click.option("--ort-iters", default=10, help="timed iterations for ONNX Runtime on the CPU")
@click.option("--warmup", default=10)
@click.option("--shapes", default="520x520,375x500", help="HxW list")
@click.option("--batches", default="1,8")
@click.option("--limit", type=int, default=None, help="parity on the first N val images")
@click.option("--num-train", default=300, help="synthetic train images")
@click.option("--num-val", default=100, help="synthetic val images")
@click.option("--image-size", default=160, help="synthetic image size (also the training base size)")
@cli_errors
def main(out, checkpoint, data_path, epochs, iters, ort_iters, warmup, shapes, batches, limit, num_train,
         num_val, image_size) -> None:
    """Environment, model, FP32/FP16/INT8 ONNX (+ TensorRT engines), parity and latency in one go.

    \b
    python -m fcnseg.benchmarks.gpu_report --out gpu_out
    python -m fcnseg.benchmarks.gpu_report --out gpu_out --checkpoint runs/r18/model_best.pth --batches 1
    """
    cfg = GpuReportConfig(out=Path(out), checkpoint=Path(checkpoint) if checkpoint else None,
                          data_path=Path(data_path) if data_path else None, epochs=epochs, iters=iters,
                          ort_iters=ort_iters, warmup=warmup, shapes=_parse_list(shapes, parse_hw, "HxW"),
                          batches=_parse_list(batches, int, "batch sizes"), limit=limit, num_train=num_train,
                          num_val=num_val, image_size=image_size)
    report = run_gpu_report(cfg)
    click.echo(render_markdown(report))
    click.echo(f"wrote {cfg.out / 'gpu_report.md'} and {cfg.out / 'gpu_report.json'}; exit code "
               f"{report.exit_code}", err=True)
    sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
