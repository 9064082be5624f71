"""What resizing a large image loses, measured: resize vs whole vs slide (three strides) on thin structures.

    python -m fcnseg.benchmarks.large_images --out large_out

A synthetic dataset of large images with only thin lines (``fcn-data synth --thin-structures``: 1-2 px cracks,
2-3 px wires, 3-4 px roads) -> FCN-8s/ResNet-18 trained on 256-pixel crops at the images' own scale -> its FP32
ONNX -> the same val images through the runtime in every mode (``fcnseg.eval.evaluate``). The report gives the
mIoU, each thin class's IoU, the time per image and the slide/whole agreement; ``docs/large-images.md`` keeps a
run's figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import click
import numpy as np

from ..core.atomic import write_text
from ..core.cli_args import OneLineCommand
from ..core.errors import cli_errors
from ..core.jsonio import write_json
from ..core.output_guard import check_output, check_output_dir
from ..datasets.synth import THIN_CLASSES, synthesize
from ..datasets import open_dataset, take
from ..eval.evaluate import evaluate_model
from ..eval.tables import format_table
from ..runtime import Segmenter
from ..train.config import TrainConfig
from ..train.engine import train
from ..export.artifacts import ONNX_MODEL
from ..export.torch_export import export_onnx

STRIDES = (256, 192, 128)   # no overlap, a quarter, a half: tile 256, the training crop


def study_views(tile: int = 256) -> Dict[str, Dict[str, Any]]:
    """Each row's name and how its images meet the network."""
    views = {"resize (520)": {"size": 520}, "whole": {"mode": "whole"}}
    views.update({f"slide {tile}/{s}": {"mode": "slide", "tile": tile, "stride": s} for s in STRIDES})
    return views


def run_study(out: Path, *, size: int = 1024, num_train: int = 48, num_val: int = 4, epochs: int = 40) -> List[dict]:
    """Data, training, export and one evaluation per view; writes ``out/large_images.{json,md}``."""
    # Refused before minutes of work: a file as OUT, an OUT/model.onnx that is not fcnseg's, bad training options.
    check_output(check_output_dir(out, "--out") / "model.onnx", ONNX_MODEL, option="--out")
    cfg = TrainConfig(data_path=str(out / "data"), model="fcn8s_resnet18", epochs=epochs, batch_size=8, lr=0.02,
                      workers=1, output_dir=str(out / "train"), base_size=size, crop_size=256, force=True,
                      num_classes=21)
    cfg.validate()
    synthesize(out / "data", num_train=num_train, num_val=num_val, size=size, seed=0, thin_structures=True,
               progress=False)
    train(cfg)
    onnx_path = export_onnx(out / "train" / "model_best.pth", out / "model.onnx", verify=False).path
    rows = []
    for name, view in study_views().items():
        size_opt = view.pop("size", None)
        start = time.perf_counter()
        row = evaluate_model(str(onnx_path), cfg.data_path, "val", size=size_opt, view=view, progress=False)
        rows.append({"view": name, "miou": row.miou * 100, "seconds_per_image": (time.perf_counter() - start) / num_val,
                     **{f"iou_{label}": row.iou[cls] * 100 for cls, label, *_ in THIN_CLASSES}})
    rows.append({"view": "slide vs whole: pixel agreement %", "miou": _agreement(onnx_path, out / "data")})
    for backend, agree in _slide_parity(out / "train" / "model_best.pth", onnx_path, out / "data").items():
        rows.append({"view": f"slide {backend} vs PyTorch: pixel agreement %", "miou": agree})
    write_json(out / "large_images.json", rows)
    write_text(out / "large_images.md", table(rows) + "\n")
    return rows


def _agreement(onnx_path: Path, data: Path) -> float:
    layout = open_dataset(data, "val")
    with Segmenter.load(onnx_path, mode="whole") as whole, \
            Segmenter.load(onnx_path, mode="slide", tile=256, stride=STRIDES[-1]) as slide:
        return float(np.mean([(whole(img) == slide(img)).mean() for img, _ in take(layout, 3)]) * 100)


def _slide_parity(ckpt: Path, onnx_path: Path, data: Path) -> Dict[str, float]:
    """Slide masks of two val images on ONNX Runtime and OpenVINO against the PyTorch checkpoint's."""
    view = {"mode": "slide", "tile": 256, "stride": STRIDES[1]}
    images = [img for img, _ in take(open_dataset(data, "val"), 2)]
    with Segmenter.load(ckpt, **view) as ref:
        reference = [ref(img) for img in images]
    agreement = {}
    for backend in ("onnxruntime", "openvino"):
        with Segmenter.load(onnx_path, backend=backend, **view) as seg:
            agreement[backend] = float(np.mean([(seg(img) == r).mean() for img, r in zip(images, reference)]) * 100)
    return agreement


def table(rows: List[dict]) -> str:
    names = [label for _, label, *_ in THIN_CLASSES]
    body = [[r["view"], r["miou"], *(r.get(f"iou_{n}") for n in names), r.get("seconds_per_image")] for r in rows]
    return format_table(["view", "mIoU", *(f"IoU {n}" for n in names), "s/image"], body)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", default="large_out", type=click.Path(file_okay=False))
@click.option("--size", default=1024, help="image side (within the model's declared 64..2048)")
@click.option("--num-train", default=48)
@click.option("--num-val", default=4)
@click.option("--epochs", default=40)
@cli_errors
def main(out: str, size: int, num_train: int, num_val: int, epochs: int) -> None:
    """Train on thin structures at 256-pixel crops, then compare resize, whole and slide on the val images."""
    rows = run_study(Path(out), size=size, num_train=num_train, num_val=num_val, epochs=epochs)
    click.echo(table(rows))
    sys.exit(0)


if __name__ == "__main__":
    main()
