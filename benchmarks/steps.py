"""The pipeline's steps: each ``step_*(cfg, art, report)`` wraps one stage of ``fcnseg.benchmarks.pipeline`` for
the one step runner (``fcnseg.benchmarks.report.run_steps``), reads what earlier steps left in ``Artifacts`` and
records its data and tables. The demo, the GPU report and the CPU benchmark list the steps they run.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..core.backend_names import PARITY_PRECISION_HINT, BackendChoice
from ..core.errors import FcnsegError
from ..export.options import EngineOptions
from .pipeline import (INT8_MODELS, Artifacts, PipelineConfig, checkpoint_for, engine_from_onnx, engine_profile,
                       engine_row, engine_table, fp16_from_onnx, gpu_here, int8_from_onnx, int8_options,
                       onnx_from_checkpoint, synthetic_voc)
from .report import Report, SkipStage, need, write_chart, write_json
from ..eval.tables import format_table
from ..datasets import open_dataset
from ..train.rundir import read_metrics
from ..runtime.backends.tensorrt import import_tensorrt
from ..eval.evaluate import class_delta_table, compare_models, parity_table
from ..eval.plots import parity_charts
from ..runtime.backends.openvino import device_precision_hint, openvino_available
from . import bench
from .bench import bench_table
from ..runtime import Segmenter, overlay_with_legend, save_image
from .video import video_section


def step_data(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    root = cfg.data.root or synthetic_voc(cfg.out / "data", cfg.data)
    art.data = Path(root)
    report.add("data", {"root": str(root), "synthetic": cfg.data.root is None, **split_sizes(root)})


def split_sizes(root: Any, splits: Sequence[str] = ("train", "val")) -> Dict[str, int]:
    """Images per split, for the splits ``open_dataset`` finds under ``root`` (ROOT or ROOT/VOCdevkit/VOC2012)."""
    sizes = {}
    for split in splits:
        try:
            sizes[split] = len(open_dataset(root, split))
        except FcnsegError:   # no such (or an empty) split list, or no VOC layout at all: nothing to count
            continue
    return sizes


def step_model(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    m = cfg.model
    art.checkpoint, last = checkpoint_for(art.data, cfg.out, m, cfg.data.size)
    art.arch = _checkpoint_arch(art.checkpoint) or m.arch
    trained = last is not None
    report.add("model", {"checkpoint": str(art.checkpoint), "arch": art.arch, "trained": trained, "last": last},
               [("training", _training_table(cfg.out / "train" / "metrics.jsonl"))] if trained else (),
               [("loss and mIoU", "train/metrics.png")] if (cfg.out / "train" / "metrics.png").is_file() else ())


def _checkpoint_arch(ckpt: Path) -> Optional[str]:
    from ..train.checkpoint import load_checkpoint

    return load_checkpoint(ckpt).arch   # also checks the file early


def _training_table(metrics: Path) -> str:
    logs = read_metrics(metrics)
    return format_table(["epoch", "loss", "lr", "mIoU", "pixel acc", "s", "img/s"],
                        [[g["epoch"], g["train_loss"], g["lr"], g["miou"] * 100, g["global_acc"] * 100,
                          g["epoch_s"], g["train_img_s"]] for g in logs])


def step_export_onnx(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    res = onnx_from_checkpoint(need(art.checkpoint, "a checkpoint"), cfg.out / f"{cfg.export.stem}.onnx",
                               verify_shapes=cfg.export.verify_shapes)
    art.models["fp32"] = res.path
    report.add("export onnx", {"path": str(res.path), "opset": res.opset, "seconds": res.seconds,
                               "verified": [str(c) for c in res.comparisons]},
               [("ONNX Runtime vs PyTorch", "\n".join(map(str, res.comparisons)))])


def step_export_fp16(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    if "fp16" not in cfg.export.models:
        raise SkipStage("not asked for")
    res = fp16_from_onnx(need(art.models.get("fp32"), "the FP32 ONNX"), cfg.out / f"{cfg.export.stem}_fp16.onnx")
    art.models["fp16"] = res.path
    report.add("export fp16", {"path": str(res.path), "seconds": res.seconds,
                               "verified": [str(c) for c in res.comparisons]},
               [("FP16 vs FP32 (ONNX Runtime)", "\n".join(map(str, res.comparisons)))])


def step_export_int8(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    e, rows = cfg.export, []
    keys = [k for k in INT8_MODELS if k in e.models]
    for key in need(keys, "an INT8 model in the configuration"):
        target = INT8_MODELS[key][0]   # one calibration cache per target: int8_fp32 reuses int8's ranges
        options = int8_options(e, need(art.data, "a dataset"), key,
                               cfg.out / f"calib{'_cpu' if target == 'cpu' else ''}.json")
        res = int8_from_onnx(need(art.models.get("fp32"), "the FP32 ONNX"), cfg.out / f"{e.stem}_{key}.onnx",
                             int8=options)
        art.models[key] = res.path
        rows.append([target, res.high_precision, res.method, res.num_calib_images, res.miou_fp32 * 100,
                     res.miou_int8 * 100, res.drop, len(res.excluded)])
    report.add("export int8", [dict(zip(("target", "high_precision", "method", "calib_images", "miou_fp32", "miou_int8",
                                         "drop_points", "kept_in_float"), r)) for r in rows],
               [("INT8 vs FP32 (ONNX Runtime, val)", format_table(
                   ["layout", "elsewhere", "method", "calib images", "mIoU fp32", "mIoU int8", "drop", "kept in float"],
                   rows))])


def step_engines(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    """Build the engines; each is listed with its library and target GPUs, and whether it can run here."""
    s = cfg.engines
    try:
        import_tensorrt(s.library)
    except FcnsegError as e:
        raise SkipStage(str(e)) from None
    lo, opt, hi = engine_profile(cfg.shapes, cfg.bench.batches)
    options = EngineOptions(library=s.library, compute_capabilities=s.compute_capabilities, min_shape=lo,
                            opt_shape=opt, max_shape=hi, timing_cache=cfg.out / "trt_timing.cache")
    runnable = gpu_here()
    for precision in s.precisions:
        if precision in s.timing_only and not runnable:
            continue
        src = need(art.models.get(precision), f"the {precision} ONNX")
        plan = engine_from_onnx(src, cfg.out / f"{cfg.export.stem}_{precision}.plan", options)
        art.engines.append(engine_row(plan, runnable=runnable))
    report.add("engines", [vars(r) for r in art.engines], [("engines", engine_table(art.engines))])


def step_parity(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    paths = [str(need(art.checkpoint, "a checkpoint"))] + [str(p) for p in art.models.values()]
    paths += [str(p) for p in art.runnable_engines()]

    backends = [b for b in cfg.parity_backends if b != "openvino" or openvino_available()]
    # OpenVINO's rows in f32 (exact parity), and again in bf16 where that is the CPU's default (held to FP16's
    # tolerance): the precision a user gets without --precision-hint.
    own = device_precision_hint() if "openvino" in backends else PARITY_PRECISION_HINT
    extra = [own] if own != PARITY_PRECISION_HINT else []
    with _true_fp32():
        result = compare_models(paths, str(need(art.data, "a dataset")), "val", limit=cfg.parity_limit,
                                run=BackendChoice(tuple(backends) or (None,), precision_hint=PARITY_PRECISION_HINT),
                                extra_hints=extra)
    art.parity = result
    write_json(cfg.out / "parity.json", result.to_dict())
    report.failures += [Path(r.path).name for r in result.failed]
    report.add("parity", [r.to_dict() for r in result],
               [("parity (mIoU %, delta in points vs the checkpoint)", parity_table(result)),
                ("per-class IoU (%) and deltas (points)", class_delta_table(result))])
    charts = parity_charts(result)   # after the tables: a chart that fails leaves them in the report
    report.add("parity", images=[("per-class IoU and deltas", write_chart(cfg.out, "parity_iou.png", charts["iou"])),
                                 ("confusion matrix of the lowest mIoU, row-normalised",
                                  write_chart(cfg.out, "parity_confusion.png", charts["confusion"]))])


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


def bench_paths(art: Artifacts, keys: Sequence[str]) -> List[str]:
    """The models a bench row list names: "pytorch" (the checkpoint), model keys, "engines" (runnable ones)."""
    paths: List[Any] = []
    for key in keys:
        if key == "pytorch":
            paths.append(art.checkpoint)
        elif key == "engines":
            paths += art.runnable_engines()
        elif key in art.models:
            paths.append(art.models[key])
    return [str(p) for p in paths if p]


def bench_step(name: str, keys: Optional[Sequence[str]] = None, *, iters: Optional[int] = None,
               providers: Optional[Sequence[str]] = None) -> Any:
    """A step benchmarking the models ``keys`` names (default ``cfg.bench.models``) over every shape and batch."""
    return functools.partial(_bench, name=name, keys=keys, iters=iters, providers=providers)


def _bench(cfg: PipelineConfig, art: Artifacts, report: Report, *, name: str, keys: Optional[Sequence[str]],
           iters: Optional[int], providers: Optional[Sequence[str]]) -> None:
    b = cfg.bench
    paths = need(bench_paths(art, keys or b.models), "models to benchmark")
    n = iters or b.iters
    results = bench.bench_models(paths, list(cfg.shapes), list(b.batches), warmup=min(b.warmup, n), iters=n,
                           rounds=min(b.rounds, n), providers=providers, num_threads=b.threads)
    art.bench += results
    stem = name.replace(' ', '_')
    write_json(cfg.out / f"{stem}.json", [r.to_dict() for r in results])
    report.add(name, [r.to_dict() for r in results], [(f"{name}: ms, medians per stage; speed-up vs the first "
                                                      "row, same run", bench_table(results))])
    if results:
        report.add(name, images=[(f"{name}: latency per stage",
                                  write_chart(cfg.out, f"{stem}_latency.png", bench.latency_png(results)))])


def step_overlays(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    """Overlays of the first validation images through the INT8 CPU-layout model (else the best one exported)."""
    key, model = art.showcase_model()
    seg = Segmenter.load(model)
    layout, meta, images = open_dataset(need(art.data, "a dataset"), "val"), seg.metadata, []
    for i in range(min(cfg.overlay_images, len(layout))):
        image, _ = layout.load(i)
        vis = overlay_with_legend(image, seg(image), alpha=0.5, classes=meta.classes, palette=meta.palette)
        path = cfg.out / f"overlay_{layout.ids[i]}.png"
        save_image(path, vis)
        images.append((path.stem, path.name))
    report.add("overlays", {"model": key, "images": [p for _, p in images]}, images=images)


def step_video(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    """A short synthetic video through the INT8 model (``fcnseg.runtime.video.loop``; needs PyAV)."""
    import importlib.util

    if importlib.util.find_spec("av") is None:
        raise SkipStage("needs PyAV for video files: pip install av (or 'fcnseg[video]')")

    video_section(cfg, art, report)
