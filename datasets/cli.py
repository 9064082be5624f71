"""``fcn-data``: thin click commands over ``fcnseg.datasets`` (synthesize, convert and check datasets)."""

from __future__ import annotations

import click

from ..core.cli_args import OneLineGroup
from ..core.errors import cli_errors
from .synth import synthesize


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Dataset tools."""


@main.command("synth", context_settings={"show_default": True})
@click.argument("root", type=click.Path())
@click.option("--num-train", default=300)
@click.option("--num-val", default=100)
@click.option("--size", default=160, help="approximate image side in pixels")
@click.option("--seed", default=0)
@click.option("--thin-structures", is_flag=True, help="only lines 1-4 px wide (cracks, wires, roads: classes 1-3), "
              "for large images: see docs/large-images.md")
@cli_errors
def synth_cmd(root: str, num_train: int, num_val: int, size: int, seed: int, thin_structures: bool) -> None:
    """Write a synthetic dataset in the real VOC 2012 layout under ROOT/VOCdevkit/VOC2012."""
    path = synthesize(root, num_train=num_train, num_val=num_val, size=size, seed=seed,
                      thin_structures=thin_structures)
    click.echo(f"wrote {num_train} train + {num_val} val images to {path}")
