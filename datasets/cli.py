"""``fcn-data``: thin click commands over ``fcnseg.datasets`` (synthesize, convert and check datasets)."""

from __future__ import annotations

import click

from ..core.cli_args import OneLineGroup
from ..core.errors import cli_errors
from .synth import SYNTH_LAYOUTS, parse_classes, synthesize


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
@click.option("--layout", "synth_layout", type=click.Choice(SYNTH_LAYOUTS), default="voc",
              help="how the dataset is laid out: voc (ROOT/VOCdevkit/VOC2012), cvat (VOC with colour labels and "
                   "labelmap.txt), cityscapes, ade20k, folder (images/, masks/, classes.json), labelme or coco")
@click.option("--classes", "synth_classes", default=None, metavar="N|FILE",
              help="N classes (2-21: background and the first N-1 object styles) or a class file (JSON, YAML, "
                   "labelmap.txt, names) [default: VOC's 21; Cityscapes' 19 for --layout cityscapes]")
@cli_errors
def synth_cmd(root: str, num_train: int, num_val: int, size: int, seed: int, thin_structures: bool,
              synth_layout: str, synth_classes: str | None) -> None:
    """Write a synthetic dataset under ROOT in the real VOC 2012 layout (ROOT/VOCdevkit/VOC2012) or another one.

    With --layout voc and classes other than VOC's, the classes go to ROOT/classes.json: read the dataset with
    --classes ROOT/classes.json.
    """
    path = synthesize(root, num_train=num_train, num_val=num_val, size=size, seed=seed,
                      thin_structures=thin_structures, layout=synth_layout,
                      classes=parse_classes(synth_classes) if synth_classes is not None else None)
    click.echo(f"wrote {num_train} train + {num_val} val images ({synth_layout} layout) to {path}")
    if synth_layout == "voc" and (path / "classes.json").is_file():
        click.echo(f"its classes are in {path / 'classes.json'}: pass --classes {path / 'classes.json'} to read it")


# ---------------------------------------------------------------- fcn-data check
# Imported here, beside the one command that needs them (appended without touching the others' lines).
from typing import Optional, Tuple  # noqa: E402

from ..core.cli_args import force_option  # noqa: E402
from ..core.data_source import DataSource  # noqa: E402
from .layouts import LAYOUTS  # noqa: E402
from .report import DEFAULT_SPLITS, check_dataset, report_paths, write_report  # noqa: E402


@main.command("check")
@click.argument("root", type=click.Path())
@click.option("--layout", type=click.Choice(LAYOUTS), default=None, help="The dataset's layout [default: detected].")
@click.option("--classes", type=click.Path(), default=None,
              help="Class file (JSON, YAML, labelmap.txt or one name per line) [default: the layout's own].")
@click.option("--split", "splits", multiple=True,
              help="A split to check, repeatable; a split named here that is missing or empty is a problem "
                   "[default: train and val, each noted when missing].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON, with a bar chart of the class frequencies beside it (<stem>.png).")
@force_option()
@click.option("-j", "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Reader threads.")
@cli_errors
def check_cmd(root: str, layout: Optional[str], classes: Optional[str], splits: Tuple[str, ...],
              json_path: Optional[str], force: bool, threads: int) -> None:
    """Report on the dataset in ROOT (any layout): classes, pixels, sizes and every problem; exit 2 on a problem."""
    if json_path:
        report_paths(json_path, force=force, inputs=[classes] if classes else [])   # refused before the scan
    report = check_dataset(DataSource(root, layout, classes), splits or DEFAULT_SPLITS, threads=threads,
                           progress=None, strict=bool(splits))
    click.echo(report.text())
    if json_path:
        out, chart = write_report(report, json_path, force=force)
        click.echo(f"wrote {out} and {chart}")
    report.raise_for_problems("see the report above")


# ---------------------------------------------------------------- fcn-data convert
# Imported here, beside the commands that need them (appended without touching the others' lines).
from typing import Optional as _Optional, Tuple as _Tuple  # noqa: E402

from .convert import ConvertReport, convert_coco, convert_labelme, split_arg  # noqa: E402

_CONVERT_CLASSES_HELP = ("Class file (JSON, YAML, labelmap.txt or one name per line) whose names the labels must "
                         "use [default: background, then the labels found].")
_CONVERT_FORCE_HELP = "Write into OUT even when it holds files that fcn-data convert did not write."


@main.group("convert", cls=OneLineGroup)
def convert_group() -> None:
    """Convert polygon annotations into the VOC layout with a labelmap (layout cvat: OUT/VOCdevkit/VOC2012)."""


@convert_group.command("labelme")
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--classes", type=click.Path(), default=None, help=_CONVERT_CLASSES_HELP)
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.2, show_default=True,
              help="Part of the files drawn for val when SRC has no train/ and val/ folders.")
@click.option("--seed", default=0, show_default=True, help="Seed of the val draw.")
@click.option("--force", is_flag=True, help=_CONVERT_FORCE_HELP)
@cli_errors
def convert_labelme_cmd(src: str, out: str, classes: _Optional[str], val_fraction: float, seed: int,
                        force: bool) -> None:
    """Convert the labelme JSON files under SRC (train/ and val/ folders are the splits) into OUT."""
    _echo_report(convert_labelme(src, out, classes=classes, val_fraction=val_fraction, seed=seed, force=force))


@convert_group.command("coco")
@click.argument("out", type=click.Path())
@click.option("--images", required=True, type=click.Path(), help="Folder of the images (file_name is looked up "
              "in it, then in its subfolders such as train2017/ and val2017/).")
@click.option("--annotations", "annotations", required=True, multiple=True, metavar="FILE[:SPLIT]",
              help="COCO instances or stuff JSON and its split [default split: train]; repeat for each split, "
                   "e.g. --annotations instances_val2017.json:val.")
@click.option("--classes", type=click.Path(), default=None, help="Class file whose names the category names must "
              "use [default: background, then the categories by id].")
@click.option("--force", is_flag=True, help=_CONVERT_FORCE_HELP)
@cli_errors
def convert_coco_cmd(out: str, images: str, annotations: _Tuple[str, ...], classes: _Optional[str],
                     force: bool) -> None:
    """Convert COCO annotations (polygons and RLE; crowds and stuff's "other" ignored) into OUT."""
    _echo_report(convert_coco([split_arg(a) for a in annotations], images, out, classes=classes, force=force))


def _echo_report(report: ConvertReport) -> None:
    click.echo(report.summary())
    click.echo(f"wrote {report.out} (VOCdevkit/VOC2012 with labelmap.txt: --data-path {report.out})")
