"""One pipeline for the demo, the GPU report and the CPU benchmark, in small composable stages.

    data (synthetic VOC) -> model (train / given / random init) -> ONNX FP32 -> FP16 -> INT8 (TensorRT and
    CPU layouts) -> engines -> parity -> bench -> (overlays, video) -> report

As with Polygraphy's loaders, each build stage is a small function taking the previous artifact and
returning the next (``synthetic_voc``, ``checkpoint_for``, ``onnx_from_checkpoint``, ``fp16_from_onnx``,
``int8_from_onnx``, ``engine_from_onnx``), over the one export chain ``fcn-export`` calls (``fcnseg.export.chain``). Each *step* in
``fcnseg.benchmarks.steps`` (signature ``(cfg, art, report)``) wraps one stage for the one step runner,
``fcnseg.benchmarks.report.run_steps``, and records its tables in the one report writer. ``PipelineConfig`` holds every
default once; ``demo``, ``gpu_report`` and ``cpu_speed`` differ only in their configuration, the steps
they list and their report.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.errors import FcnsegError
from ..export import chain
from ..export.options import EngineOptions, Int8Options
from .report import echo, need
from ..eval.tables import format_table
from ..datasets.synth import synthesize
from ..export.torch_export import export_onnx
from ..core.sidecar import EngineSidecar
from .gpu_env import gpu_count

Shape = Tuple[int, ...]
VAL_LIST = "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"   # written last by synthesize: present = complete
# model key -> (quantize_int8 target, what the other layers run in; None: the target's default). "int8_fp32" is
# the TensorRT graph with FP32 elsewhere (opset 17, TensorRT 8.x; the default before FP16 elsewhere), measured
# beside the default "int8" where a run compares the two.
INT8_MODELS = {"int8": ("tensorrt", None), "int8_fp32": ("tensorrt", "fp32"), "int8_cpu": ("cpu", None)}
SHOWCASE_MODELS = ("int8_cpu", "int8", "fp32")                   # overlays and video: the first exported of these


@dataclass
class DataSettings:
    """The dataset: a VOC root, or a synthetic one written into ``OUT/data``."""

    root: Optional[Path] = None
    num_train: int = 300
    num_val: int = 100
    size: int = 160            # synthetic image size; also the training base size and the bench shape
    seed: int = 0


@dataclass
class ModelSettings:
    """The model: a given checkpoint, a random-init one (speed only), or one trained here."""

    arch: str = "fcn8s_resnet18"
    checkpoint: Optional[Path] = None
    random_init: bool = False
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.02
    amp: bool = False
    workers: int = 1
    device: Optional[str] = None   # None: CUDA when available


@dataclass
class ExportSettings:
    """ONNX exports; None leaves an option at the library's own default."""

    models: Tuple[str, ...] = ("fp32", "fp16", "int8", "int8_cpu")
    stem: str = "model"                              # model.onnx, model_fp16.onnx, model_int8.onnx, ...
    verify_shapes: Optional[Sequence[Shape]] = None
    calib_images: int = 100
    calib_method: Optional[str] = None
    int8_eval_images: Optional[int] = None
    max_drop: Optional[float] = None


@dataclass
class EngineSettings:
    """TensorRT engines from the FP16 and INT8 graphs (built wherever a TensorRT library imports)."""

    precisions: Tuple[str, ...] = ("fp16", "int8")
    # built only where a GPU runs them: their one use is a latency comparison (INT8 with FP32 elsewhere)
    timing_only: Tuple[str, ...] = ()
    library: str = "auto"                            # "tensorrt", "tensorrt_rtx" or "auto"
    compute_capabilities: Optional[Tuple[str, ...]] = None


@dataclass
class BenchSettings:
    """Latency side by side; ``shapes`` None means the data size, square."""

    models: Tuple[str, ...] = ("pytorch", "fp32", "fp16", "int8", "int8_cpu", "engines")
    shapes: Optional[Tuple[Tuple[int, int], ...]] = None
    batches: Tuple[int, ...] = (1,)
    warmup: int = 3
    iters: int = 30
    rounds: int = 3
    threads: Optional[int] = None


@dataclass
class PipelineConfig:
    """Every setting of a pipeline run, each default in one place."""

    out: Path
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    engines: EngineSettings = field(default_factory=EngineSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    parity_limit: Optional[int] = None               # parity on the first N val images (None: all)
    # Every .onnx is evaluated on each of these that is installed; () = the runtime's default for the file.
    parity_backends: Tuple[str, ...] = ()
    overlay_images: int = 4

    @property
    def shapes(self) -> Tuple[Tuple[int, int], ...]:
        return self.bench.shapes or ((self.data.size, self.data.size),)

    def check(self) -> "PipelineConfig":
        """Validate counts and shapes before anything runs."""
        d, m, b = self.data, self.model, self.bench
        counts = {"epochs": m.epochs, "iters": b.iters, "num-train": d.num_train, "num-val": d.num_val,
                  "calib-images": self.export.calib_images, "rounds": b.rounds}
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad or b.warmup < 0 or not self.shapes or not b.batches or min(b.batches) < 1:
            raise FcnsegError(f"expected positive counts, warmup >= 0, shapes and batch sizes >= 1, got {bad or ''} "
                              f"warmup {b.warmup}, shapes {self.shapes}, batches {b.batches}; "
                              "try --shapes 520x520,375x500 --batches 1,8")
        if m.checkpoint is not None and not Path(m.checkpoint).is_file():
            raise FcnsegError(f"expected --checkpoint to be a file, got {str(m.checkpoint)!r}; "
                              "try leaving it out to train one")
        return self


@dataclass
class EngineRow:
    """A built engine as the report lists it."""

    path: Path
    size_mb: float
    library: str
    version: str
    targets: str
    precision: str
    runnable: bool                   # a GPU is here to execute it

    @property
    def note(self) -> str:
        return "" if self.runnable else "not executed here: no GPU"


@dataclass
class Artifacts:
    """What the steps hand to each other."""

    data: Optional[Path] = None
    checkpoint: Optional[Path] = None
    arch: Optional[str] = None
    models: Dict[str, Path] = field(default_factory=dict)     # "fp32", "fp16", "int8", "int8_cpu"
    engines: List[EngineRow] = field(default_factory=list)
    parity: Any = None                                         # a ParityResult
    bench: List[Any] = field(default_factory=list)             # BenchResults

    def runnable_engines(self) -> List[Path]:
        return [e.path for e in self.engines if e.runnable]

    def showcase_model(self) -> Tuple[str, Path]:
        """(key, path) of the model the overlays and the video run: the first of ``SHOWCASE_MODELS`` exported.

        Raises:
            SkipStage: no ONNX model was exported.
        """
        key = need(next((k for k in SHOWCASE_MODELS if k in self.models), None), "an ONNX model")
        return key, self.models[key]


# ---------------------------------------------------------------- stages: previous artifact in, next out

def synthetic_voc(root: Path, s: DataSettings, *, progress: bool = True) -> Path:
    """A synthetic VOC root (reused when complete)."""
    if (root / VAL_LIST).is_file():
        echo(f"   reusing {root}")
        return root
    return synthesize(root, num_train=s.num_train, num_val=s.num_val, size=s.size, seed=s.seed, progress=progress)


def checkpoint_for(data: Optional[Path], out: Path, m: ModelSettings, size: int) -> Tuple[Path, Optional[dict]]:
    """The model's checkpoint: given, random-init (written once) or trained on ``data``; and the last epoch."""
    if m.checkpoint is not None:
        return Path(m.checkpoint), None
    if m.random_init:
        from ..train.checkpoint import save_checkpoint
        from ..train.models import get_model

        ckpt = out / f"{m.arch}.pth"
        if not ckpt.exists():
            save_checkpoint({"model": get_model(m.arch, num_classes=21).state_dict(), "arch": m.arch,
                             "num_classes": 21, "base_size": size}, ckpt)
        return ckpt, None
    from ..train.engine import TrainConfig, train

    tc = TrainConfig(data_path=str(need(data, "a dataset")), model=m.arch, epochs=m.epochs, batch_size=m.batch_size,
                     lr=m.lr, workers=m.workers, output_dir=str(out / "train"), amp=m.amp, base_size=size,
                     crop_size=size - 16, device=m.device, force=True)  # a rerun moves the old run aside
    last = train(tc)
    return out / "train" / "model_best.pth", last


def onnx_from_checkpoint(ckpt: Path, output: Path, *, verify_shapes: Optional[Sequence[Shape]] = None) -> Any:
    return export_onnx(ckpt, output, verify_shapes=verify_shapes)


def fp16_from_onnx(onnx_path: Any, output: Optional[Path] = None) -> Any:
    """The FP16-typed graph of an FP32 one (``fcnseg.export.chain.lower``)."""
    return chain.lower(onnx_path, "fp16", output)


def int8_from_onnx(onnx_path: Any, output: Optional[Path] = None, *, int8: Int8Options) -> Any:
    """The calibrated Q/DQ INT8 graph of an FP32 one (``fcnseg.export.chain.lower``)."""
    return chain.lower(onnx_path, "int8", output, int8=int8)


def int8_options(e: ExportSettings, calib_root: Path, key: str, cache: Path) -> Int8Options:
    """The INT8 options of the pipeline graph ``key`` (``INT8_MODELS``); settings left as None keep
    ``Int8Options``' defaults."""
    target, high = INT8_MODELS[key]
    given = {"num_images": e.calib_images, "method": e.calib_method, "eval_images": e.int8_eval_images,
             "max_drop": e.max_drop, "high_precision": high}
    return replace(Int8Options(calib_root=calib_root, target=target, cache=cache),
                   **{k: v for k, v in given.items() if v is not None})


def engine_from_onnx(onnx_path: Any, output: Path, options: EngineOptions) -> Path:
    """A TensorRT engine built from an FP32, FP16-typed or Q/DQ graph as it is (``fcnseg.export.chain.build``)."""
    return Path(chain.build(onnx_path, output, options))


def engine_profile(shapes: Sequence[Tuple[int, int]], batches: Sequence[int]) -> Tuple[Shape, Shape, Shape]:
    """min/opt/max NCHW covering the benchmark shapes and batches and the parity images (64 ... 1024 px)."""
    h = max(1024, *(s[0] for s in shapes))
    w = max(1024, *(s[1] for s in shapes))
    return (1, 3, 64, 64), (1, 3, *shapes[0]), (max(batches), 3, h, w)


def engine_row(plan: Path, *, runnable: bool) -> EngineRow:
    """What the engine's sidecar says of it, for the report."""
    side = EngineSidecar.read(plan)
    size = plan.stat().st_size / 1e6
    if side is None:
        return EngineRow(plan, size, "?", "?", "?", "?", runnable)
    return EngineRow(plan, size, side.library, side.library_version, side.targets(), side.precision, runnable)


def engine_table(rows: Sequence[EngineRow]) -> str:
    return format_table(["file", "size MB", "library", "version", "target GPUs", "precision", "note"],
                        [[r.path.name, r.size_mb, r.library, r.version, r.targets, r.precision, r.note] for r in rows])


def gpu_here() -> bool:
    """Whether a GPU is here to execute engines (NVML, else torch)."""
    if gpu_count():
        return True
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
