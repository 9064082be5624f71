"""PyTorch on CUDA: latency of ``model(x)`` in FP32, FP16, channels-last and CUDA-graph modes (CUDA events),
and the model-only latency summary that puts every runtime of one run side by side.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..core.errors import FcnsegError, one_line
from .bench import Stats
from ..eval.tables import format_table

TORCH_MODES = ("fp32", "fp16", "channels_last_fp16", "cuda_graph_fp16")
TORCH_ARCHS = ("fcn8s_resnet18", "fcn_resnet50")


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
    torch = require_cuda()
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
                rows.append({**base, "error": one_line(e)})
            torch.cuda.empty_cache()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return rows


def require_cuda() -> Any:
    """``torch`` when it has a CUDA device; FcnsegError saying what is missing otherwise."""
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


def torch_model(arch: str, checkpoint: Any = None) -> Any:
    """The trained model where the checkpoint is this arch; else random weights (speed does not depend on them)."""
    from ..train.checkpoint import load_checkpoint, model_from_checkpoint
    from ..train.models import get_model

    loaded = load_checkpoint(checkpoint) if checkpoint is not None else None
    if loaded is not None and loaded.arch == arch:
        return model_from_checkpoint(checkpoint, loaded=loaded)[0]   # the file is read once
    return get_model(arch).eval()
