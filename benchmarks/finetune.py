"""What a VOC-trained checkpoint is worth on a user's own classes: fine-tuning against training from scratch.

    python -m fcnseg.benchmarks.finetune --out finetune_out

A synthetic VOC set -> FCN-8s/ResNet-18 trained on it -> a synthetic 3-class folder-pair set (colour masks and a
class file: the user's own layout) -> the same epochs twice on it, once from the VOC checkpoint (``--pretrained``:
the class layers start anew, the rest is loaded; its one-line report is kept) and once from scratch. The report
gives both runs' val mIoU per epoch; ``docs/datasets.md`` keeps a run's figures.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Dict

import click

from ..core.atomic import write_text
from ..core.cli_args import OneLineCommand
from ..core.errors import cli_errors
from ..core.jsonio import write_json
from ..core.output_guard import check_output_dir
from ..datasets.synth import synthesize
from ..eval.tables import format_table
from ..train.config import TrainConfig
from ..train.engine import train

COMMON: Dict[str, Any] = dict(model="fcn8s_resnet18", batch_size=8, lr=0.02, workers=1, base_size=128,
                              crop_size=112, force=True, device="cpu")


def run_study(out: Path, *, voc_epochs: int = 8, epochs: int = 3, size: int = 128) -> Dict[str, Any]:
    """Data, the VOC run, then fine-tuned and scratch runs on the 3-class set; writes ``out/finetune.{json,md}``."""
    check_output_dir(out, "--out")
    synthesize(out / "voc", num_train=160, num_val=40, size=size, seed=0, progress=False)
    synthesize(out / "three", num_train=60, num_val=30, size=size, seed=1, layout="folder", classes=3,
               progress=False)
    train(TrainConfig(data_path=str(out / "voc"), epochs=voc_epochs, output_dir=str(out / "voc_run"), **COMMON))
    runs: Dict[str, Any] = {}
    for name, folder, extra in (("fine-tuned from VOC", "finetuned", {"pretrained": str(out / "voc_run" /
                                                                                         "model_best.pth")}),
                                ("from scratch", "scratch", {})):
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            train(TrainConfig(data_path=str(out / "three"), epochs=epochs, seed=1,
                              output_dir=str(out / folder), **COMMON, **extra))
        lines = (out / folder / "metrics.jsonl").read_text().splitlines()
        runs[name] = {"miou": [json.loads(ln)["miou"] for ln in lines],
                      "report": next((ln for ln in log.getvalue().splitlines() if ln.startswith("fine-tuning")), "")}
    result = {"epochs": epochs, "voc_epochs": voc_epochs, "runs": runs}
    write_json(out / "finetune.json", result)
    write_text(out / "finetune.md", _markdown(result))
    return result


def _markdown(result: Dict[str, Any]) -> str:
    rows = [[name, *(f"{100 * m:.1f}" for m in r["miou"])] for name, r in result["runs"].items()]
    header = ["run", *(f"epoch {i + 1} mIoU" for i in range(result["epochs"]))]
    report = result["runs"]["fine-tuned from VOC"]["report"]
    return (f"FCN-8s/ResNet-18, 3-class folder-pair set, {result['epochs']} epochs each (the VOC checkpoint: "
            f"{result['voc_epochs']} epochs)\n\n{format_table(header, rows)}\n\n`{report}`\n")


@click.command(cls=OneLineCommand)
@click.option("--out", default="finetune_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--voc-epochs", default=8, show_default=True, type=click.IntRange(min=1))
@cli_errors
def main(out: str, epochs: int, voc_epochs: int) -> None:
    """Fine-tuning a VOC checkpoint to 3 classes against training from scratch, the same epochs."""
    click.echo(_markdown(run_study(Path(out), voc_epochs=voc_epochs, epochs=epochs)))


if __name__ == "__main__":
    main()
