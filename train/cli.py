"""``fcn-train`` and ``fcn-data``: thin click commands over the training library."""

from __future__ import annotations

import os

import click

from ..runtime.errors import cli_errors
from ..runtime.voc import BASE_SIZE, CROP_SIZE, NUM_CLASSES


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data-path", required=True, type=click.Path(), help="folder containing VOCdevkit/VOC2012")
@click.option("--model", default="fcn_resnet50", help="fcn_resnet50, fcn_resnet101, fcn8s_resnet18, fcn8s_resnet34")
@click.option("--aux-loss", is_flag=True, help="train the auxiliary head on layer3 (weight 0.5)")
@click.option("--epochs", default=30)
@click.option("-b", "--batch-size", default=8, help="images per process")
@click.option("--lr", default=0.01)
@click.option("-j", "--workers", default=min(4, os.cpu_count() or 1), help="data loading workers")
@click.option("--output-dir", default="runs/fcn", type=click.Path())
@click.option("--resume", default=None, type=click.Path(), help="checkpoint.pth to continue from")
@click.option("--amp", is_flag=True, help="mixed precision (CUDA)")
@click.option("--base-size", default=BASE_SIZE)
@click.option("--crop-size", default=CROP_SIZE)
@click.option("--pretrained", default=None, type=click.Path(), help="local weights file (torchvision FCN or ResNet)")
@click.option("--num-classes", default=NUM_CLASSES)
@click.option("--device", default=None, help="cuda, cpu (default: cuda when available)")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm under torchrun")
@click.option("--seed", default=0)
@click.option("--val-split", default="val")
@cli_errors
def train_main(**opts) -> None:
    """Train an FCN on a VOC-layout dataset (torchvision reference recipe; works under torchrun)."""
    from .engine import TrainConfig, train

    train(TrainConfig(**opts))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def data_main() -> None:
    """Dataset tools."""


@data_main.command("synth", context_settings={"show_default": True})
@click.argument("root", type=click.Path())
@click.option("--num-train", default=300)
@click.option("--num-val", default=100)
@click.option("--size", default=160, help="approximate image side in pixels")
@click.option("--seed", default=0)
@cli_errors
def synth_cmd(root: str, num_train: int, num_val: int, size: int, seed: int) -> None:
    """Write a synthetic dataset in the real VOC 2012 layout under ROOT/VOCdevkit/VOC2012."""
    from .synth import synthesize

    path = synthesize(root, num_train=num_train, num_val=num_val, size=size, seed=seed)
    click.echo(f"wrote {num_train} train + {num_val} val images to {path}")
