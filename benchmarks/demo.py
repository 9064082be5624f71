"""``make demo``: the whole pipeline on the embedded synthetic VOC, into one output folder.

synthesise data -> train FCN-8s/ResNet-18 on the CPU -> export ONNX FP32 / FP16 / INT8 (and TensorRT engines
when TensorRT is present) -> parity table -> benchmark table -> overlays -> ``report.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

from ..runtime.atomic import write_text
from ..runtime.errors import cli_errors


@dataclass
class DemoConfig:
    """Sizes chosen so the whole demo runs in well under 15 minutes on a 2-core CPU."""

    out: Path
    model: str = "fcn8s_resnet18"
    num_train: int = 300
    num_val: int = 100
    size: int = 160
    crop_size: int = 144
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.02
    calib_images: int = 100
    bench_iters: int = 30
    seed: int = 0


def _step(title: str) -> Callable:
    """Decorate a pipeline step: announce it and time it."""

    def wrap(fn: Callable) -> Callable:
        def run(*args, **kwargs):
            click.secho(f"\n== {title}", bold=True)
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            click.echo(f"   ({title}: {time.perf_counter() - t0:.0f} s)")
            return result

        return run

    return wrap


@_step("1/7 synthesise a VOC-layout dataset")
def make_data(cfg: DemoConfig) -> Path:
    from ..train.synth import synthesize

    root = cfg.out / "data"
    if (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").exists():
        click.echo(f"   reusing {root}")
        return root
    return synthesize(root, num_train=cfg.num_train, num_val=cfg.num_val, size=cfg.size, seed=cfg.seed)


@_step("2/7 train")
def train_model(cfg: DemoConfig, data: Path) -> Path:
    from ..train.engine import TrainConfig, train

    out = cfg.out / "train"
    train(TrainConfig(data_path=str(data), model=cfg.model, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      lr=cfg.lr, workers=1, output_dir=str(out), base_size=cfg.size, crop_size=cfg.crop_size,
                      seed=cfg.seed))
    return out / "model_best.pth"


@_step("3/7 export ONNX FP32, FP16, INT8 (TensorRT layout and ONNX Runtime CPU layout)")
def export_models(cfg: DemoConfig, ckpt: Path, data: Path) -> dict:
    from ..export.fp16 import convert_fp16
    from ..export.int8 import quantize_int8
    from ..export.onnx_export import export_onnx

    fp32 = export_onnx(ckpt, cfg.out / "model.onnx")
    for c in fp32.comparisons:
        click.echo(f"   ONNX vs PyTorch {c}")
    convert_fp16(fp32.path, cfg.out / "model_fp16.onnx")
    int8 = {target: quantize_int8(fp32.path, cfg.out / f"model_int8{suffix}.onnx", calib_root=data,
                                  calib_split="val", num_images=cfg.calib_images, target=target,
                                  cache=cfg.out / f"calib{suffix}.json").path
            for target, suffix in (("tensorrt", ""), ("cpu", "_cpu"))}
    return {"fp32": fp32.path, "fp16": cfg.out / "model_fp16.onnx", "int8": int8["tensorrt"],
            "int8_cpu": int8["cpu"]}


@_step("4/7 TensorRT engines (when TensorRT is installed)")
def build_engines(cfg: DemoConfig, onnx_models: dict) -> list:
    from ..runtime.backends.tensorrt import import_tensorrt
    from ..runtime.errors import FcnsegError

    try:
        import_tensorrt()
    except FcnsegError as e:
        click.echo(f"   skipped: {e}")
        return []
    from ..export.tensorrt import build_engine

    s = cfg.size
    shapes = {"min_shape": (1, 3, s // 2, s // 2), "opt_shape": (1, 3, s, s), "max_shape": (1, 3, 2 * s, 2 * s)}
    return [build_engine(onnx_models[p], output=cfg.out / f"fcn_{p}.plan", **shapes) for p in ("fp16", "int8")]


@_step("5/7 parity: the same mIoU through every backend")
def parity(cfg: DemoConfig, ckpt: Path, models: list, data: Path) -> tuple:
    from .evaluate import class_delta_table, compare_models, parity_table

    rows = compare_models([str(ckpt)] + [str(m) for m in models], str(data), "val")
    table, classes = parity_table(rows), class_delta_table(rows)
    click.echo(table)
    write_text(cfg.out / "parity.json", json.dumps([r.to_dict() for r in rows], indent=2))
    return rows, table, classes


@_step("6/7 benchmark: latency per stage, side by side")
def benchmark(cfg: DemoConfig, ckpt: Path, models: list) -> str:
    from .bench import bench_models, bench_table

    results = bench_models([str(ckpt)] + [str(m) for m in models], [(cfg.size, cfg.size)], [1],
                           warmup=3, iters=cfg.bench_iters, rounds=3)
    table = bench_table(results)
    click.echo(table)
    write_text(cfg.out / "bench.json", json.dumps([r.to_dict() for r in results], indent=2))
    return table


@_step("7/7 overlays of validation images")
def overlays(cfg: DemoConfig, model: Path, data: Path, n: int = 4) -> list:
    from ..runtime.postprocess import overlay_with_legend, save_image
    from ..runtime.segmenter import Segmenter
    from ..runtime.vocdata import VOCLayout

    seg, layout = Segmenter.load(model), VOCLayout(data, "val")
    paths = []
    for i in range(min(n, len(layout))):
        image, _ = layout.load(i)
        meta = seg.metadata
        vis = overlay_with_legend(image, seg(image), alpha=0.5, classes=meta.classes, palette=meta.palette)
        paths.append(cfg.out / f"overlay_{layout.ids[i]}.png")
        save_image(paths[-1], vis)
    return paths


def write_report(cfg: DemoConfig, parity_tables: tuple, bench: str, images: list, seconds: float) -> Path:
    """A Markdown report with the tables, the training curve and the overlays."""
    rows, table, classes = parity_tables
    lines = ["# fcnseg demo report", "",
             f"Model `{cfg.model}` trained {cfg.epochs} epochs on {cfg.num_train} synthetic VOC images "
             f"({cfg.size} px), evaluated on {cfg.num_val} val images; whole demo {seconds / 60:.1f} min.", "",
             "## Parity (mIoU %, delta in points vs PyTorch)", "", "```", table, "```", "",
             "Per-class IoU and deltas:", "", "```", classes, "```", "",
             "## Latency (ms, medians per stage; speed-up vs the first row, same run)", "", "```", bench, "```", "",
             "## Training", "", "![loss and mIoU](train/metrics.png)", "", "## Overlays (INT8 ONNX, CPU layout)", ""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    write_text(cfg.out / "report.md", "\n".join(lines) + "\n")
    return cfg.out / "report.md"


def run_demo(cfg: DemoConfig) -> tuple:
    """Run every step; returns (report path, parity rows)."""
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    data = make_data(cfg)
    ckpt = train_model(cfg, data)
    onnx_models = export_models(cfg, ckpt, data)
    models = [onnx_models[k] for k in ("fp32", "fp16", "int8", "int8_cpu")] + build_engines(cfg, onnx_models)
    tables = parity(cfg, ckpt, models, data)
    bench = benchmark(cfg, ckpt, models)
    images = overlays(cfg, onnx_models["int8_cpu"], data)
    report = write_report(cfg, tables, bench, images, time.perf_counter() - t0)
    return report, tables[0]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", default="demo_out", type=click.Path(), help="output folder")
@click.option("--epochs", default=DemoConfig.epochs)
@click.option("--num-train", default=DemoConfig.num_train)
@click.option("--num-val", default=DemoConfig.num_val)
@cli_errors
def main(out: str, epochs: int, num_train: int, num_val: int) -> None:
    """Run the whole pipeline on a synthetic VOC dataset and write a report."""
    report, rows = run_demo(DemoConfig(Path(out), epochs=epochs, num_train=num_train, num_val=num_val))
    click.secho(f"\nreport: {report}", bold=True)
    failed = [r.path for r in rows if not r.ok]
    if failed:
        raise SystemExit(f"error: outside tolerance: {', '.join(failed)}")


if __name__ == "__main__":
    main()
