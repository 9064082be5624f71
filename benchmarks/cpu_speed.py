"""FCN-ResNet50 at 520x520 on this CPU, end to end through the runtime: PyTorch FP32 eager vs ONNX Runtime
FP32 vs ONNX Runtime INT8 in both Q/DQ layouts (TensorRT's, and the CPU one), side by side in one run.

Speed does not depend on the weights, so the model is randomly initialised (no download here); INT8 is
calibrated on a few synthetic images only to get realistic activation ranges. Accuracy is measured
elsewhere (the parity table on a trained model). ``python -m fcnseg.benchmarks.cpu_speed --out bench_out``
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..runtime.atomic import write_text
from ..runtime.errors import cli_errors


def prepare_models(out: Path, *, arch: str, size: int, calib_images: int) -> list:
    """Write a random-init checkpoint, its verified FP32 ONNX and both INT8 layouts; return the four paths."""
    from ..export.int8 import quantize_int8
    from ..export.onnx_export import export_onnx
    from ..train.checkpoint import save_checkpoint
    from ..train.models import get_model
    from ..train.synth import synthesize

    ckpt = out / f"{arch}.pth"
    if not ckpt.exists():
        model = get_model(arch, num_classes=21)
        save_checkpoint({"model": model.state_dict(), "arch": arch, "num_classes": 21, "base_size": size}, ckpt)
    data = synthesize(out / "calib_data", num_train=1, num_val=calib_images, size=size, seed=0, progress=False)
    fp32 = export_onnx(ckpt, out / f"{arch}.onnx", verify_shapes=[(1, size, size)])
    # Random weights have no meaningful mIoU: evaluate on one image and accept any drop.
    int8 = [quantize_int8(fp32.path, out / f"{arch}_int8{suffix}.onnx", calib_root=data, num_images=calib_images,
                          method="minmax", eval_images=1, max_drop=100.0, cache=out / f"calib{suffix}.json",
                          target=target).path for target, suffix in (("tensorrt", ""), ("cpu", "_cpu"))]
    return [ckpt, fp32.path, *int8]


def summarize(results: list) -> dict:
    """Speed-up of each model over the first (PyTorch) and the pre+post share of end to end."""
    base = results[0].e2e.median
    return {Path(r.model).name: {"e2e_median_ms": r.e2e.median, "speedup_vs_pytorch": base / r.e2e.median,
                                 "pre_post_share": (r.stages["preprocess"].median + r.stages["postprocess"].median)
                                 / r.e2e.median} for r in results}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", default="bench_out", type=click.Path())
@click.option("--arch", default="fcn_resnet50")
@click.option("--size", default=520)
@click.option("--iters", default=20)
@click.option("--calib-images", default=8)
@click.option("--threads", type=int, default=None, help="intra-op threads for both runtimes")
@cli_errors
def main(out: str, arch: str, size: int, iters: int, calib_images: int, threads) -> None:
    """Benchmark PyTorch FP32 vs ONNX Runtime FP32 / INT8 end to end on this CPU."""
    from .bench import bench_models, bench_table

    out_dir = Path(out)
    paths = prepare_models(out_dir, arch=arch, size=size, calib_images=calib_images)
    results = bench_models([str(p) for p in paths], [(size, size)], [1], warmup=2, iters=iters, rounds=4,
                           num_threads=threads)
    click.echo(bench_table(results))
    summary = summarize(results)
    for name, s in summary.items():
        click.echo(f"{name}: {s['e2e_median_ms']:.0f} ms, x{s['speedup_vs_pytorch']:.2f} vs PyTorch FP32, "
                   f"pre+post {s['pre_post_share'] * 100:.1f}% of end to end")
    write_text(out_dir / "cpu_speed.json", json.dumps({"results": [r.to_dict() for r in results],
                                                       "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
