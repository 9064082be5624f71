"""One short run of everything here that needs a GPU, for a lent GPU machine: ``python -m fcnseg.benchmarks.gpu_smoke``.

Steps (each printed with its time; ``gpu_smoke.json`` and ``gpu_smoke.md`` rewritten atomically after each):

1. environment: torch and its CUDA, cuda-python and the device;
2. cuda memory: ``fcnseg.runtime.backends.cuda_memory``'s real buffers through cuda-python: pinned host and
   device memory, asynchronous copies both ways on a stream, stream synchronisation, and the same copies
   captured in a CUDA graph and replayed on new data; every byte compared after each round trip;
3. data: a tiny synthetic VOC (``fcnseg.datasets.synth``);
4. train step: ``fcnseg.train`` for one optimizer step on it (CUDA, AMP);
5. eval: ``fcnseg.eval.evaluate`` of that checkpoint with the PyTorch backend (CUDA);
6. pytorch cuda: ``benchmarks.torch_cuda``'s rows (eager FP32 and FP16, channels-last FP16, CUDA-graph FP16;
   CUDA events) with each mode's speed-up over FP32 in the same run.

A step that raises is recorded and the others still run; the exit code is 1 when one did, or a benchmark mode
failed. ``--dry-run`` runs the same steps on the CPU: the memory checks on a host-memory stand-in
(``HostCudaMemory``), training and evaluation on the CPU, the benchmark's FP32 eager mode timed on the CPU and
its CUDA-only modes marked skipped. The tests run it so.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click
import numpy as np

from ..core.errors import FcnsegError, cli_errors
from ..eval.tables import format_table
from .bench import Stats
from .report import Report, run_steps, to_jsonable, write_report
from .torch_cuda import TORCH_ARCHS, TORCH_MODES, TorchMode

ARCH = "fcn8s_resnet18"


@dataclass(frozen=True)
class SmokeConfig:
    """Every setting of one smoke run (``smoke_config`` gives the GPU and dry-run defaults).

    Attributes:
        out: folder for the data, the training run and the report.
        dry_run: every step on the CPU (see the module docstring).
        arch: the model trained for one step and evaluated.
        bench_archs: models benchmarked (the trained one first, with its weights; others random).
        shape / batches: benchmark input (H, W) and batch sizes.
        warmup / iters: untimed and timed iterations per benchmark mode.
        copy_mib: bytes moved by each memory check.
        image_size: synthetic image size (also the training base size).
    """

    out: Path
    dry_run: bool = False
    arch: str = ARCH
    bench_archs: Tuple[str, ...] = TORCH_ARCHS
    shape: Tuple[int, int] = (520, 520)
    batches: Tuple[int, ...] = (1, 8)
    warmup: int = 10
    iters: int = 50
    copy_mib: int = 64
    image_size: int = 128


def smoke_config(out: Path, *, dry_run: bool = False, iters: Optional[int] = None) -> SmokeConfig:
    """The run's settings: the GPU defaults, or small CPU ones for ``dry_run``."""
    cfg = SmokeConfig(Path(out), dry_run=dry_run)
    if dry_run:
        cfg = dataclasses.replace(cfg, bench_archs=(cfg.arch,), shape=(64, 64), batches=(1,), warmup=1, iters=2,
                                  copy_mib=1, image_size=64)
    if iters is not None:
        if iters < 1:
            raise FcnsegError(f"expected --iters >= 1, got {iters}")
        cfg = dataclasses.replace(cfg, iters=iters)
    return cfg


@dataclass
class SmokeArtifacts:
    """What the steps hand to each other."""

    data: Optional[Path] = None
    checkpoint: Optional[Path] = None
    device: str = "cpu"
    notes: List[str] = field(default_factory=list)


# ---------------------------------------------------------------- cuda memory

class HostCudaMemory:
    """A ``CudaMemory`` in host memory, for ``--dry-run``: "device" buffers are numpy arrays, a copy runs when it
    is queued, or, while a stream is being captured, is recorded and run by each ``graph_launch``."""

    name = "host memory (dry run)"
    supports_graphs = True

    def __init__(self) -> None:
        self._buffers: Dict[int, np.ndarray] = {}
        self._captures: Dict[int, List[Callable[[], None]]] = {}
        self._next = 1 << 20

    def bind_thread(self) -> None:
        pass

    def malloc(self, nbytes: int) -> int:
        ptr, self._next = self._next, self._next + nbytes + 256
        self._buffers[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self._buffers[ptr]

    def malloc_host(self, nbytes: int) -> np.ndarray:
        return np.zeros(nbytes, np.uint8)

    def free_host(self, array: np.ndarray) -> None:
        pass

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._queue(stream, lambda: np.copyto(self._buffers[dst][:src.nbytes], src.reshape(-1).view(np.uint8)))

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._queue(stream, lambda: np.copyto(dst.reshape(-1).view(np.uint8), self._buffers[src][:dst.nbytes]))

    def _queue(self, stream: int, op: Callable[[], None]) -> None:
        if stream in self._captures:
            self._captures[stream].append(op)
        else:
            op()

    def stream_create(self) -> int:
        self._next += 1
        return self._next

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        pass

    def stream_destroy(self, stream: Any) -> None:
        self._captures.pop(stream, None)

    def graph_capture_begin(self, stream: Any) -> None:
        self._captures[stream] = []

    def graph_capture_end(self, stream: Any) -> Any:
        return tuple(self._captures.pop(stream))

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        for op in graph_exec:
            self._queue(stream, op)

    def graph_destroy(self, graph_exec: Any) -> None:
        pass


def check_cuda_memory(mem: Any, nbytes: int, *, seed: int = 0) -> Dict[str, Any]:
    """Round-trip ``nbytes`` through ``mem`` (a ``CudaMemory``) and compare every byte.

    Pinned host -> device -> pinned host on one stream, synchronised; then the same two copies captured in a
    CUDA graph, and the graph replayed after the host buffer was refilled (a replay copies what the buffer holds
    then). Buffers, stream and graph are released whatever happens.

    Returns:
        ``{"library", "bytes", "rows": [{"check", "bytes", "seconds", "gb_per_s"} or {"check", "skipped"}]}``.

    Raises:
        FcnsegError: a byte came back different.
    """
    rng = np.random.default_rng(seed)
    src, dst, dev, stream, graph = mem.malloc_host(nbytes), mem.malloc_host(nbytes), mem.malloc(nbytes), None, None
    try:
        stream = mem.stream_create()
        rows = [_timed_round_trip(mem, "async copies host->device->host", src, dst, rng,
                                  lambda: _copy_both_ways(mem, dev, src, dst, stream), stream)]
        if not mem.supports_graphs:
            rows.append({"check": "CUDA graph of the copies", "skipped": f"{mem.name} cannot capture streams"})
            return {"library": mem.name, "bytes": nbytes, "rows": rows}
        mem.graph_capture_begin(stream)
        try:
            _copy_both_ways(mem, dev, src, dst, stream)
        finally:
            graph = mem.graph_capture_end(stream)   # ends the capture even after a failed copy
        rows.append(_timed_round_trip(mem, "CUDA graph replay of the copies", src, dst, rng,
                                      lambda: mem.graph_launch(graph, stream), stream))
        return {"library": mem.name, "bytes": nbytes, "rows": rows}
    finally:
        if graph is not None:
            mem.graph_destroy(graph)
        if stream is not None:
            mem.stream_destroy(stream)
        mem.free(dev)
        mem.free_host(src)
        mem.free_host(dst)


def _copy_both_ways(mem: Any, dev: int, src: np.ndarray, dst: np.ndarray, stream: Any) -> None:
    mem.memcpy_htod_async(dev, src, stream)
    mem.memcpy_dtoh_async(dst, dev, stream)


def _timed_round_trip(mem: Any, check: str, src: np.ndarray, dst: np.ndarray, rng: np.random.Generator,
                      run: Callable[[], None], stream: Any) -> Dict[str, Any]:
    src[:] = rng.integers(0, 256, src.size, dtype=np.uint8)
    dst[:] = ~src   # every byte differs from the source until the copy lands
    t0 = time.perf_counter()
    run()
    mem.stream_synchronize(stream)
    seconds = time.perf_counter() - t0
    wrong = int(np.count_nonzero(src != dst))
    if wrong:
        raise FcnsegError(f"expected {src.size} bytes back unchanged from {check} ({mem.name}), got {wrong} "
                          "different; try `nvidia-smi` and compute-sanitizer on this machine")
    return {"check": check, "bytes": int(src.size), "seconds": seconds,
            "gb_per_s": 2 * src.size / seconds / 1e9 if seconds > 0 else None}


# ---------------------------------------------------------------- steps

def step_environment(cfg: SmokeConfig, art: SmokeArtifacts, report: Report) -> None:
    import torch

    from ..runtime.backends.cuda_memory import device_info

    cuda = torch.cuda.is_available()
    art.device = "cuda" if cuda and not cfg.dry_run else "cpu"
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
            "cuda_python": _version("cuda-bindings") or _version("cuda-python"), "cudart_device": device_info(),
            "run_on": art.device}
    report.add("environment", info, [("environment", format_table(["what", "value"], list(info.items())))])


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def step_cuda_memory(cfg: SmokeConfig, art: SmokeArtifacts, report: Report) -> None:
    from ..runtime.backends.cuda_memory import load_cuda_memory

    mem = HostCudaMemory() if cfg.dry_run else load_cuda_memory()
    result = check_cuda_memory(mem, cfg.copy_mib << 20)
    rows = [[r["check"], r.get("bytes"), r.get("seconds"), r.get("gb_per_s"), r.get("skipped", "")]
            for r in result["rows"]]
    report.add("cuda memory", result, [(f"round trips through {result['library']}, every byte compared",
                                        format_table(["check", "bytes", "s", "GB/s", "note"], rows))])


def step_data(cfg: SmokeConfig, art: SmokeArtifacts, report: Report) -> None:
    from .pipeline import DataSettings, synthetic_voc

    art.data = synthetic_voc(cfg.out / "data", DataSettings(num_train=2, num_val=2, size=cfg.image_size),
                             progress=False)
    report.add("data", {"root": str(art.data), "train": 2, "val": 2, "size": cfg.image_size})


def step_train(cfg: SmokeConfig, art: SmokeArtifacts, report: Report) -> None:
    from ..train.engine import TrainConfig, train

    if art.data is None:
        raise FcnsegError("expected the data step to write a dataset, got none; see its error above")
    # Two training images, batch 2: one optimizer step (then the val pass and the checkpoint).
    out = cfg.out / "train"
    log = train(TrainConfig(data_path=str(art.data), model=cfg.arch, epochs=1, batch_size=2, lr=0.01, workers=0,
                            output_dir=str(out), amp=art.device == "cuda", base_size=cfg.image_size,
                            crop_size=cfg.image_size - 16, device=art.device, force=True, plot=False))
    art.checkpoint = out / "model_best.pth"
    report.add("train step", {"device": art.device, "checkpoint": str(art.checkpoint), **log},
               [("one optimizer step", format_table(["device", "loss", "lr", "val mIoU", "s"],
                                                    [[art.device, log["train_loss"], log["lr"], log["miou"],
                                                      log["epoch_s"]]]))])


def step_eval(cfg: SmokeConfig, art: SmokeArtifacts, report: Report) -> None:
    from ..core.backend_names import BackendChoice
    from ..eval.evaluate import evaluate_model

    if art.checkpoint is None:
        raise FcnsegError("expected the train step to write a checkpoint, got none; see its error above")
    row = evaluate_model(str(art.checkpoint), art.data, "val", run=BackendChoice(("pytorch",)), progress=False)
    device = _pytorch_backend_device()
    if device != art.device and not cfg.dry_run:
        raise FcnsegError(f"expected the PyTorch backend to evaluate on {art.device}, got {device}")
    result = {"device": device, "backend": row.backend, "miou": row.miou, "global_acc": row.global_acc,
              "ms_per_image": row.ms_per_image, "images": 2}
    report.add("eval", result, [("fcn-eval, PyTorch backend", format_table(
        ["device", "backend", "mIoU", "pixel acc", "ms/image"],
        [[device, row.backend, row.miou, row.global_acc, row.ms_per_image]]))])


def _pytorch_backend_device() -> str:
    """Where ``fcnseg.train.backend.PyTorchBackend`` runs a checkpoint: CUDA whenever torch sees a GPU (a dry
    run on a GPU machine too)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def step_bench_torch(cfg: SmokeConfig, art: SmokeArtifacts, report: Report) -> None:
    from .torch_cuda import bench_torch_cuda, torch_model

    rows: List[Dict[str, Any]] = []
    for arch in dict.fromkeys([cfg.arch, *cfg.bench_archs]):
        model = torch_model(arch, art.checkpoint)   # the trained weights where the arch matches, else random
        for batch in cfg.batches:
            bench = cpu_rows if cfg.dry_run else bench_torch_cuda
            rows += [{"arch": arch, **r} for r in bench(model, shape=cfg.shape, batch=batch, modes=TORCH_MODES,
                                                       warmup=cfg.warmup, iters=cfg.iters)]
    rows = with_speedups(rows)
    report.failures += [f"pytorch cuda {r['arch']} {r['mode']} batch {r['batch']}" for r in rows if "error" in r]
    report.add("pytorch cuda", rows, [("PyTorch, ms per batch; x fp32 = FP32's median over this mode's",
                                       speed_table(rows))])


def cpu_rows(model: Any, *, shape: Tuple[int, int], batch: int, modes: Sequence[str] = TORCH_MODES,
             warmup: int = 1, iters: int = 2) -> List[Dict[str, Any]]:
    """``--dry-run``'s stand-in for ``bench_torch_cuda``: the FP32 eager mode timed on the CPU (wall clock), the
    same keys; FP16, channels-last FP16 and CUDA-graph modes marked skipped."""
    import torch

    rows: List[Dict[str, Any]] = []
    for mode in map(TorchMode.parse, modes):
        base: Dict[str, Any] = {"mode": mode.name, "precision": "fp16" if mode.fp16 else "fp32",
                                "channels_last": mode.channels_last, "cuda_graph": mode.cuda_graph,
                                "shape": list(shape), "batch": batch, "device": "cpu"}
        if mode.fp16 or mode.cuda_graph:
            rows.append({**base, "skipped": "needs CUDA (dry run)"})
            continue
        fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
        net = copy.deepcopy(model).eval().to(memory_format=fmt)
        x = torch.randn(batch, 3, *shape).contiguous(memory_format=fmt)
        seconds = []
        with torch.inference_mode():
            for i in range(warmup + iters):
                t0 = time.perf_counter()
                net(x)
                if i >= warmup:
                    seconds.append(time.perf_counter() - t0)
        s = Stats.of(seconds)
        rows.append({**base, "iters": iters, "median_ms": s.median, "p90_ms": s.p90, "p99_ms": s.p99,
                     "mean_ms": s.mean, "min_ms": s.min, "max_ms": s.max, "images_per_s": batch * 1e3 / s.median})
    return rows


def with_speedups(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each timed row with ``x_fp32``: the FP32 eager median of its (arch, shape, batch) over its own median."""
    def key(r: Dict[str, Any]) -> Tuple[Any, ...]:
        return r.get("arch"), tuple(r["shape"]), r["batch"]

    fp32 = {key(r): r["median_ms"] for r in rows if r["mode"] == "fp32" and r.get("median_ms")}
    return [{**r, "x_fp32": fp32[key(r)] / r["median_ms"] if key(r) in fp32 and r.get("median_ms") else None}
            for r in rows]


def speed_table(rows: Sequence[Dict[str, Any]]) -> str:
    return format_table(
        ["arch", "mode", "shape", "batch", "median ms", "p90 ms", "img/s", "peak MB", "x fp32", "note"],
        [[r["arch"], r["mode"], "x".join(map(str, r["shape"])), r["batch"], r.get("median_ms"), r.get("p90_ms"),
          r.get("images_per_s"), r.get("max_memory_mb"), r.get("x_fp32"),
          (r.get("error") or r.get("skipped") or "")[:60]] for r in rows])


STEPS = (("environment", step_environment), ("cuda memory", step_cuda_memory), ("data", step_data),
         ("train step", step_train), ("eval", step_eval), ("pytorch cuda", step_bench_torch))


def run_gpu_smoke(cfg: SmokeConfig) -> Report:
    """Run every step in order, rewriting ``gpu_smoke.md`` / ``.json`` in ``cfg.out`` after each.

    Returns:
        The report; ``report.exit_code`` is 1 when a step raised or a benchmark mode failed.

    Raises:
        FcnsegError: no CUDA GPU for a run that is not a dry run (before any step).
    """
    if not cfg.dry_run:
        from .torch_cuda import require_cuda

        try:
            require_cuda()
        except FcnsegError as e:
            raise FcnsegError(f"{e}; or try --dry-run to run the same steps on the CPU") from None
    intro = ["Dry run on the CPU: the memory checks on host memory, CUDA-only benchmark modes skipped.", ""] \
        if cfg.dry_run else []
    report = Report("gpu_smoke", "fcnseg GPU smoke test", config=to_jsonable(dataclasses.asdict(cfg)), intro=intro)
    t0 = time.perf_counter()
    run_steps(STEPS, cfg, SmokeArtifacts(), report, cfg.out)
    report.data["total_seconds"] = time.perf_counter() - t0
    write_report(report, cfg.out)
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", default="gpu_smoke_out", type=click.Path(file_okay=False), help="folder for everything")
@click.option("--dry-run", is_flag=True, help="run every step on the CPU (CUDA parts on stand-ins or skipped)")
@click.option("--iters", type=int, default=None, help="timed iterations per benchmark mode (default 50; dry run 2)")
@cli_errors
def main(out: str, dry_run: bool, iters: Optional[int]) -> None:
    """CUDA memory, one training step, evaluation and the PyTorch CUDA benchmark, in a few minutes.

    \b
    python -m fcnseg.benchmarks.gpu_smoke --out gpu_smoke_out
    python -m fcnseg.benchmarks.gpu_smoke --dry-run --out /tmp/smoke
    """
    report = run_gpu_smoke(smoke_config(Path(out), dry_run=dry_run, iters=iters))
    click.echo(f"wrote {Path(out) / 'gpu_smoke.md'} and {Path(out) / 'gpu_smoke.json'} in "
               f"{report.data['total_seconds']:.1f} s; exit code {report.exit_code}", err=True)
    sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
