"""Latency of models end to end through the runtime, per stage, compared side by side in one run.

Stages come from ``Segmenter.last_timing`` (preprocess, host->device, inference, device->host,
postprocess); end to end is timed around the call. After warm-up, each model runs ``iters`` times per
(shape, batch); models are interleaved round-robin in blocks so that drift in a noisy machine's speed
hits all of them alike, and speed-ups are reported as ratios to the first model.

A model is a ``ModelSpec``: a file, the backend to run it on (None: the Segmenter's choice) and a mode:
"e2e" (``Segmenter``: preprocess + inference + postprocess) or "model" (the inference library alone on a
preprocessed float32 NCHW input, as its own user would run it: OpenVINO compiled with its defaults,
ONNX Runtime's and PyTorch's backends without the Segmenter around them).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.backend_names import BackendChoice
from ..core.errors import FcnsegError
from ..core.output_guard import ArtifactKind, read_json
from ..core.shapes import parse_hw  # noqa: F401  (re-exported for the CLIs)
from ..eval.model_specs import ModelSpec, backend_note, model_specs  # noqa: F401  (re-exported)
from ..runtime import Segmenter, Tiling, engine_for_gpu, preprocess, tile_count
from ..runtime.backends.onnxruntime import providers_for
from ..runtime.backends.openvino import _read_metadata, import_openvino
from ..eval.tables import format_table
from ..core.atomic import write_text
from .power import open_power_monitor, power_table

STAGES = ("preprocess", "h2d", "infer", "d2h", "postprocess")


def _is_bench_json(path: Path) -> bool:
    doc = read_json(path)
    return isinstance(doc, list) and bool(doc) and all(isinstance(r, dict) and "model" in r and "e2e" in r
                                                       for r in doc)


def _is_bench_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
        return header.startswith("model,backend,precision,") and "e2e_median_ms" in header
    except (OSError, UnicodeDecodeError):
        return False


# What fcn-bench writes, for the output guard: an existing file of the kind may be replaced without --force.
BENCH_JSON = ArtifactKind("fcnseg benchmark JSON", _is_bench_json)
BENCH_CSV = ArtifactKind("fcnseg benchmark CSV", _is_bench_csv)
# ONNX Runtime's idle threads spin for a while after its runs and slow the next model's; OpenVINO's do not. An
# untimed pause before each timed block keeps the rows independent (the measurement: docs/cpu.md).
SETTLE_S = 0.1


@dataclass
class Stats:
    """Summary of a list of durations, in milliseconds."""

    mean: float
    median: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Stats":
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 90)),
                   float(np.percentile(ms, 99)), float(ms.min()), float(ms.max()))


@dataclass
class BenchResult:
    """One model at one input shape and batch size."""

    model: str
    backend: str
    precision: str
    shape: tuple
    batch: int
    iters: int
    e2e: Stats
    stages: dict
    images_per_s: float
    peak_host_mb: float
    peak_device_mb: Optional[float] = None
    speedup: Optional[float] = None
    extra: dict = field(default_factory=dict)
    mode: str = "e2e"
    precision_hint: str = ""
    label: str = ""

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


MODES = ("e2e", "model")


@dataclass
class _Runner:
    spec: ModelSpec
    seg: Any                 # the Segmenter (e2e), the backend (model only) or None (OpenVINO's own)
    call: Callable[[], Any]
    backend: str
    precision: str
    hint: str = ""
    e2e: list = field(default_factory=list)
    stages: dict = field(default_factory=lambda: {s: [] for s in STAGES})

    def once(self) -> None:
        t0 = time.perf_counter()
        self.call()
        dt = time.perf_counter() - t0
        self.e2e.append(dt)
        timing = {"infer": dt}   # model only: all of it is inference
        if self.spec.mode == "e2e":
            timing = getattr(self.seg, "last_timing", None) or {}
        for s in STAGES:
            self.stages[s].append(float(timing.get(s, 0.0)))


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (Linux) so each model's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _runner(spec: ModelSpec, images: np.ndarray, hw: tuple, providers, num_threads,
            view: Optional[dict] = None) -> _Runner:
    prov = providers_for(spec.path, spec.backend, providers)
    if spec.mode == "model" and spec.backend == "openvino":
        return _native_openvino(spec, images, hw, num_threads)
    # size = the shorter side makes the runtime's resize a no-op, so the network sees exactly HxW; the whole and
    # slide modes (``view``) feed the image at its own size by themselves.
    sized = {"size": min(hw)} if not view or view.get("mode", "resize") == "resize" else {}
    seg = Segmenter.load(spec.path, backend=spec.backend, providers=prov, num_threads=num_threads,
                         precision_hint=spec.precision_hint, **sized, **(view or {}))
    hint = str(getattr(seg.backend, "precision_hint", "") or "")
    if spec.mode == "e2e":
        batch: Any = images if len(images) > 1 else images[0]
        return _Runner(spec, seg, lambda: seg(batch), seg.backend.name, seg.metadata.precision, hint)
    x = _network_input(images, seg.metadata)
    return _Runner(spec, seg.backend, lambda: seg.backend.infer(x), seg.backend.name, seg.metadata.precision, hint)


def _network_input(images: np.ndarray, meta: Any) -> np.ndarray:
    """The float32 NCHW batch the Segmenter would compute (images already at the network's size)."""
    return np.concatenate([preprocess(im, size=None, mean=meta.mean, std=meta.std) for im in images])


def _native_openvino(spec: ModelSpec, images: np.ndarray, hw: tuple, num_threads: Optional[int]) -> _Runner:
    """OpenVINO as its own user runs it: compile the .onnx with OpenVINO's defaults, infer a float32 NCHW batch.

    ``InferRequest.infer`` with its defaults, as OpenVINO's samples call it: the logits come back as a numpy
    array the caller owns (copied out of the request, which the next call reuses).
    """
    ov = import_openvino()
    core = ov.Core()
    model = core.read_model(spec.path)   # what OpenVINO's own user writes
    config: dict = {}
    if spec.precision_hint:
        config["INFERENCE_PRECISION_HINT"] = spec.precision_hint
    if num_threads:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    compiled = core.compile_model(model, "CPU", config)
    meta = _read_metadata(model, spec.path)
    request = compiled.create_infer_request()
    x = _network_input(images, meta)
    hint = spec.precision_hint or compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return _Runner(spec, None, lambda: request.infer({0: x}), "openvino", meta.precision, hint)


def _device_mb(seg) -> Optional[float]:
    """PyTorch's CUDA peak since this model was loaded; None for other backends (not measured for them)."""
    backend = getattr(seg, "backend", None)
    device = getattr(backend, "device", None)
    if getattr(backend, "name", "") != "pytorch" or getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 1e6


def _reset_device_peak() -> None:
    torch = sys.modules.get("torch")   # only if a PyTorch backend already imported it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def bench_shape(specs: Sequence[Union[str, ModelSpec]], hw: tuple, batch: int, *, warmup: int = 5, iters: int = 50,
                rounds: int = 5, providers=None, num_threads: Optional[int] = None, seed: int = 0,
                power=None, settle_s: float = SETTLE_S, view: Optional[dict] = None) -> list:
    """Benchmark every model at one (H, W, batch), interleaving models in ``rounds`` blocks.

    ``power``: a ``power.PowerMonitor``; each result then gets ``extra["power"]`` over the model's own blocks.
    ``view``: ``Segmenter`` options ``mode``/``tile``/``stride``; with ``mode="slide"`` each result gets
    ``extra["tiles_per_image"]`` and ``extra["tiles_per_s"]``.
    ``settle_s``: an untimed pause before each block, so that the previous runtime's idle threads have stopped
    spinning (ONNX Runtime's do for tens of ms after a run) before the next one is timed.
    """
    images = np.random.default_rng(seed).integers(0, 256, size=(batch, *hw, 3), dtype=np.uint8)
    runners, peaks = [], []
    for spec in specs:
        reset_peak_rss()
        _reset_device_peak()
        r = _runner(spec if isinstance(spec, ModelSpec) else ModelSpec(str(spec)), images, hw, providers,
                    num_threads, view)
        for _ in range(warmup):
            r.once()
        r.e2e.clear()
        r.stages = {s: [] for s in STAGES}
        runners.append(r)
        peaks.append(peak_rss_mb())
    windows = _timed_rounds(runners, rounds, max(1, iters // rounds), settle_s)
    results = [_result(r, hw, batch, peak) for r, peak in zip(runners, peaks)]
    if view and view.get("mode") == "slide":
        tiles = tile_count(hw, Tiling(view.get("tile", Tiling.tile), view.get("stride", Tiling.stride)))
        for res in results:
            res.extra.update(tiles_per_image=tiles, tiles_per_s=tiles * batch * 1e3 / res.e2e.median)
    if power is not None:
        for res, w in zip(results, windows):
            res.extra["power"] = power.summarize(w, images=res.iters * batch)
    return results


def _timed_rounds(runners: Sequence[_Runner], rounds: int, per_round: int, settle_s: float) -> List[list]:
    """Each runner ``per_round`` times per round, round-robin; the (start, end) of each runner's blocks.

    One progress bar per runner over its rounds, on stderr and only on a terminal; each bar moves between
    blocks, outside the timed calls.
    """
    windows: List[list] = [[] for _ in runners]   # (start, end) of each model's blocks, for power per model
    bars = _round_bars(runners, rounds)
    try:
        for _ in range(rounds):
            for r, w, bar in zip(runners, windows, bars):
                time.sleep(settle_s)
                start = time.perf_counter()
                for _ in range(per_round):
                    r.once()
                w.append((start, time.perf_counter()))
                bar.update()
    finally:
        for bar in bars:
            bar.close()
    return windows


def _round_bars(runners: Sequence[_Runner], rounds: int) -> list:
    from tqdm import tqdm

    # disable=None: no bars when stderr is not a terminal (logs, CI), so the table and errors stay clean
    return [tqdm(total=rounds, desc=r.spec.name(r.backend), unit="round", position=i, leave=False,
                 dynamic_ncols=True, disable=None, file=sys.stderr) for i, r in enumerate(runners)]


def _result(r: _Runner, hw: tuple, batch: int, peak: float) -> BenchResult:
    e2e = Stats.of(r.e2e)
    return BenchResult(model=r.spec.path, backend=r.backend, precision=r.precision,
                       shape=tuple(hw), batch=batch, iters=len(r.e2e), e2e=e2e,
                       stages={s: Stats.of(v) for s, v in r.stages.items()},
                       images_per_s=batch * 1e3 / e2e.median, peak_host_mb=peak,
                       peak_device_mb=_device_mb(r.seg) if r.spec.mode == "e2e" else None, mode=r.spec.mode,
                       precision_hint=r.hint, label=r.spec.name(r.backend),
                       extra={"hint_requested": r.spec.precision_hint or ""})


@dataclass(frozen=True)
class Timing:
    """How each model is timed: untimed warm-up runs, timed runs per (shape, batch), interleaved blocks."""

    warmup: int = 5
    iters: int = 50
    rounds: int = 5


@dataclass
class BenchRun:
    """What ``run_benchmark`` measured: the rows, the power table (``--power``) and a note on the backends."""

    results: List["BenchResult"]
    power_table: str = ""
    note: str = ""


def run_benchmark(paths: Sequence[str], shapes: Sequence[Tuple[int, int]], batches: Sequence[int], *,
                  timing: Timing = Timing(), run: BackendChoice = BackendChoice(), model_only: bool = False,
                  power_interval_ms: Optional[int] = None, view: Optional[dict] = None) -> BenchRun:
    """``fcn-bench``: every model on every backend asked, side by side in one interleaved run.

    Args:
        paths: model files (.onnx, .plan/.engine, .pth); the first is the reference of the speed-ups.
        shapes / batches: the (H, W) sizes and batch sizes to time at.
        timing: warm-up, timed runs and interleaved blocks.
        run: backends (each .onnx once per backend), ONNX Runtime providers, OpenVINO's hint, CPU threads.
        model_only: also time each library alone on a preprocessed input.
        power_interval_ms: sample a Jetson's board power every this many ms (None: no power).
        view: ``Segmenter`` options ``mode``/``tile``/``stride`` (large images: ``mode="slide"``).
    """
    if not paths:
        raise FcnsegError("expected --engine PATH or --model PATH, got neither; try fcn-bench -h")
    # An engine built for another GPU or TensorRT: one line, or (--rebuild auto) its rebuilt copy, timed instead.
    paths = [str(engine_for_gpu(p, rebuild=run.rebuild, onnx=run.onnx)) if Path(p).suffix in (".plan", ".engine")
             else p for p in paths]
    specs = model_specs(paths, run.backends, precision_hint=run.precision_hint, providers=run.providers,
                        modes=("e2e", "model") if model_only else ("e2e",))
    # Opened first: off a Jetson it is one error line before any model loads.
    monitor = open_power_monitor(power_interval_ms) if power_interval_ms else None
    try:
        check_fits_in_memory(shapes, batches)
        results = bench_models(specs, list(shapes), list(batches), warmup=timing.warmup, iters=timing.iters,
                               rounds=timing.rounds, providers=run.providers, num_threads=run.threads, power=monitor,
                               view=view)
    finally:
        if monitor is not None:
            monitor.close()
    return BenchRun(results, power_table(results, monitor) if monitor is not None else "", backend_note(specs))


def check_fits_in_memory(shapes: Sequence[Tuple[int, int]], batches: Sequence[int]) -> None:
    """Refuse a --shape/--batch whose images and network input would not fit in memory (instead of an OOM kill)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    for h, w in shapes:
        for b in batches:
            need = b * h * w * 3 * (1 + 4 + 4)   # uint8 images, float32 input, float32 logits of >= 3 classes
            if need > total // 2:
                raise FcnsegError(f"expected --shape and --batch that fit in half of this machine's "
                                  f"{total / 2**30:.0f} GiB, got {h}x{w} x {b} needing about {need / 2**30:.0f} GiB; "
                                  "try --shape 520x520")


def bench_models(specs: Sequence[Union[str, ModelSpec]], shapes: Sequence[tuple], batches: Sequence[int],
                 **kw) -> list:
    """All (shape, batch) combinations; ``speedup`` = first model's median e2e / this model's."""
    results = []
    for hw in shapes:
        for batch in batches:
            group = bench_shape(specs, hw, batch, **kw)
            for res in group:
                res.speedup = group[0].e2e.median / res.e2e.median
            results.extend(group)
    return results


def bench_table(results: Sequence[BenchResult]) -> str:
    """Readable table: medians per stage, end-to-end statistics, throughput and speed-up."""
    headers = ["model", "backend", "prec", "hint", "mode", "shape", "batch", "pre ms", "h2d", "infer", "d2h", "post", "e2e med",
               "mean", "p90", "p99", "min", "max", "img/s", "speedup", "pre+post %", "host MB", "dev MB"]
    rows = []
    for r in results:
        s = {k: v.median for k, v in r.stages.items()}
        pp = (s["preprocess"] + s["postprocess"]) / r.e2e.median * 100
        rows.append([r.label or Path(r.model).name, r.backend, r.precision, r.precision_hint, r.mode,
                     "x".join(map(str, r.shape)), r.batch,
                     s["preprocess"], s["h2d"], s["infer"], s["d2h"], s["postprocess"], r.e2e.median, r.e2e.mean,
                     r.e2e.p90, r.e2e.p99, r.e2e.min, r.e2e.max, r.images_per_s, r.speedup, pp, r.peak_host_mb,
                     r.peak_device_mb])
    return format_table(headers, rows)


def latency_png(results: Sequence[BenchResult]) -> bytes:
    """The stage medians of every row as stacked bars, with its end-to-end median (``eval.plots``)."""
    from ..eval.plots import stage_latency_png

    several = len({(tuple(r.shape), r.batch) for r in results}) > 1
    labels = [(r.label or f"{Path(r.model).name} {r.backend}")
              + (f" {'x'.join(map(str, r.shape))} b{r.batch}" if several else "") for r in results]
    return stage_latency_png(labels, {s: [r.stages[s].median for r in results] for s in STAGES},
                             [r.e2e.median for r in results], title="latency per stage (ms, medians)")


def write_csv(results: Sequence[BenchResult], path: "str | os.PathLike[str]") -> None:
    """One CSV row per result, stage medians and end-to-end statistics in ms."""
    import csv
    import io


    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "backend", "precision", "precision_hint", "mode", "shape", "batch", *[f"{s}_ms" for s in STAGES], "e2e_median_ms",
                "e2e_mean_ms", "e2e_p90_ms", "e2e_p99_ms", "e2e_min_ms", "e2e_max_ms", "images_per_s", "speedup",
                "peak_host_mb", "peak_device_mb"])
    for r in results:
        e = r.e2e
        w.writerow([r.model, r.backend, r.precision, r.precision_hint, r.mode, "x".join(map(str, r.shape)), r.batch,
                    *[f"{r.stages[s].median:.4f}" for s in STAGES], f"{e.median:.4f}", f"{e.mean:.4f}",
                    f"{e.p90:.4f}", f"{e.p99:.4f}", f"{e.min:.4f}", f"{e.max:.4f}", f"{r.images_per_s:.3f}",
                    f"{r.speedup:.3f}" if r.speedup else "", f"{r.peak_host_mb:.1f}",
                    "" if r.peak_device_mb is None else f"{r.peak_device_mb:.1f}"])
    write_text(path, buf.getvalue())
