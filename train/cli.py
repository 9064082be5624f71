"""``fcn-train``: a thin click command over the training library (``fcn-data`` is ``fcnseg.datasets.cli``)."""

from __future__ import annotations

import click

from ..core.cli_args import OneLineCommand
from ..core.errors import cli_errors
from ..datasets.layouts import LAYOUTS
from .config import TrainConfig


def _d(name: str):
    return TrainConfig.default(name)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data-path", required=True, type=click.Path(), help="the dataset folder (VOC, CVAT, Cityscapes, "
              "ADE20K or images/ + masks/: docs/datasets.md)")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="the dataset's layout [default: detected]")
@click.option("--classes", default=None, type=click.Path(dir_okay=False),
              help="class file (JSON, YAML, labelmap.txt, names) [default: the layout's own]")
@click.option("--model", default=_d("model"), help="fcn_resnet50, fcn_resnet101, fcn8s_resnet18, fcn8s_resnet34")
@click.option("--aux-loss", is_flag=True, help="train the auxiliary head on layer3 (weight 0.5)")
@click.option("--epochs", default=_d("epochs"))
@click.option("-b", "--batch-size", default=_d("batch_size"), help="images per process")
@click.option("--lr", default=_d("lr"))
@click.option("-j", "--workers", default=_d("workers"), help="data loading workers")
@click.option("--output-dir", default=_d("output_dir"), type=click.Path())
@click.option("--resume", default=None, type=click.Path(), help="checkpoint.pth to continue from (same options; "
              "another --epochs or -b re-plans the LR decay)")
@click.option("--force", is_flag=True, help="start over in an --output-dir holding a previous run (it is moved to "
              "OUTPUT_DIR/previous-<time>/)")
@click.option("--skip-data-check", "--no-scan", "skip_data_check", is_flag=True,
              help="do not check every image/label pair before training (for huge datasets)")
@click.option("--amp", is_flag=True, help="mixed precision (CUDA)")
@click.option("--base-size", default=_d("base_size"))
@click.option("--crop-size", default=_d("crop_size"))
@click.option("--pretrained", default=None, type=click.Path(), help="local weights file (our or torchvision's FCN "
              "checkpoint, or an ImageNet ResNet); another class count fine-tunes: the class layers start anew")
@click.option("--freeze-backbone", is_flag=True, help="with --pretrained: train the heads only")
@click.option("--num-classes", type=int, default=None, help="checked against the dataset [default: its class count]")
@click.option("--class-weights", default=_d("class_weights"), metavar="auto|none|FILE",
              help="loss weight per class: auto = median-frequency balancing over the train split")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
@click.option("--sync-bn", is_flag=True, help="SyncBatchNorm under torchrun")
@click.option("--seed", default=_d("seed"))
@click.option("--val-split", default=_d("val_split"))
@cli_errors
def train_main(skip_data_check: bool, **opts) -> None:
    """Train an FCN on a dataset in any supported layout (torchvision reference recipe; works under torchrun)."""
    from .engine import train

    train(TrainConfig(check_data=not skip_data_check, **opts))
