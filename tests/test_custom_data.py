"""A user's own dataset and classes through every stage, once per layout they bring.

For each layout (VOC with its own class file, CVAT's colour-mask export, Cityscapes with real label ids,
ADE20K, a folder pair with colour masks, labelme JSON and COCO, the last two through ``fcn-data convert``), a
tiny synthetic dataset of that exact layout with 4 classes goes through the commands a user runs, in process
(click's runner): ``fcn-data check`` -> ``fcn-train`` (1 epoch) -> ``fcn-export onnx`` -> ``fcn-export int8``
calibrated on that dataset -> ``fcn-predict`` (overlay with legend, stream statistics) -> ``fcn-eval``; the
dataset's class names must come out of the checkpoint, the ONNX metadata, the INT8 graph, the stats JSON and
the evaluation table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fcnseg.core.class_map import VOID_COLOUR, ClassMap
from fcnseg.datasets import open_dataset
from fcnseg.datasets.cli import main as data_cli
from fcnseg.eval.cli import eval_main
from fcnseg.export.cli import main as export_cli
from fcnseg.runtime import Segmenter
from fcnseg.runtime.cli import predict_main
from fcnseg.train.cli import train_main

pytest.importorskip("pycocotools")
pytest.importorskip("cityscapesscripts")

CLASSES = 4
# layout -> (the layout open_dataset reports, how the data is prepared)
LAYOUTS = {"voc": "voc", "cvat": "cvat", "cityscapes": "cityscapes", "ade20k": "ade20k", "folder": "folder",
           "labelme": "cvat", "coco": "cvat"}


def run(cli, args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"{args[:2]}: {result.output}"
    return result.output


def prepare(layout: str, tmp: Path) -> tuple:
    """(data folder, extra options naming its classes) for a synthetic dataset in ``layout``."""
    raw = tmp / "raw"
    run(data_cli, ["synth", raw, "--layout", layout, "--classes", CLASSES, "--num-train", 4, "--num-val", 2,
                   "--size", 64])
    if layout == "labelme":
        run(data_cli, ["convert", "labelme", raw, tmp / "data"])
        return tmp / "data", []
    if layout == "coco":
        run(data_cli, ["convert", "coco", tmp / "data", "--images", raw / "images",
                       "--annotations", f"{raw / 'annotations/instances_train.json'}:train",
                       "--annotations", f"{raw / 'annotations/instances_val.json'}:val"])
        return tmp / "data", []
    if layout == "voc":   # plain VOC stores ids only: its class file comes beside it
        return raw, ["--classes", raw / "classes.json"]
    return raw, []


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_own_dataset_through_every_stage(layout, tmp_path):
    data, classes = prepare(layout, tmp_path)
    dataset = open_dataset(data, "val", classes=classes[1] if classes else None)
    names = list(dataset.class_map.names)
    assert dataset.layout == LAYOUTS[layout] and dataset.num_classes == (19 if layout == "cityscapes" else
                                                                       150 if layout == "ade20k" else CLASSES)

    report = run(data_cli, ["check", data, "--json", tmp_path / "check.json", *classes])
    assert report.startswith(f"layout: {LAYOUTS[layout]}")
    checked = json.loads((tmp_path / "check.json").read_text())
    assert checked["classes"]["names"] == names and checked["ok"]
    assert Image.open(tmp_path / "check.png").format == "PNG"

    run(train_main, ["--data-path", data, *classes, "--model", "fcn8s_resnet18", "--epochs", 1, "-b", 2,
                     "--base-size", 64, "--crop-size", 64, "-j", 0, "--device", "cpu", "--output-dir",
                     tmp_path / "run"])
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    run(export_cli, ["onnx", tmp_path / "run/model_best.pth", "-o", fp32, "--verify-shapes", "1x64x80"])
    run(export_cli, ["int8", fp32, "--calib-data", data, *classes, "--num-images", 1, "--eval-images", 1,
                     "--max-drop", 100, "--no-progress", "-o", int8])
    for model in (fp32, int8):
        with Segmenter.load(model, backend="onnxruntime") as seg:
            assert seg.metadata.classes == names and seg.metadata.num_classes == len(names)
            assert [tuple(c) for c in seg.metadata.palette[:len(names)]] == list(dataset.class_map.colours)

    image = dataset.image_path(0)
    run(predict_main, [image, "-m", int8, "-o", tmp_path / "pred", "--overlay"])
    assert (tmp_path / "pred" / f"{image.stem}_overlay.png").is_file()
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.open(image).convert("RGB").save(frames / "000001.png")
    run(predict_main, [frames, "-m", int8, "-o", tmp_path / "frames_out", "--stats", tmp_path / "stats.jsonl"])
    shares = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[0])["shares"]
    assert set(shares) <= set(names) | {"void"} and abs(sum(shares.values()) - 1) < 1e-3

    run(eval_main, ["--model", int8, "--data-path", data, *classes, "--json", tmp_path / "eval.json"])
    rows = json.loads((tmp_path / "eval.json").read_text())["models"]
    assert rows[0]["classes"] == names and len(rows[0]["iou"]) == len(names)


def test_fine_tuning_from_voc_to_three_classes(tmp_path):
    """A 21-class checkpoint fine-tuned to a 3-class dataset: the one-line report says what was loaded and what
    starts anew; a checkpoint of another architecture is refused in one line before any work."""
    voc, three = tmp_path / "voc", tmp_path / "three"
    run(data_cli, ["synth", voc, "--num-train", 4, "--num-val", 2, "--size", 64])
    run(data_cli, ["synth", three, "--layout", "folder", "--classes", 3, "--num-train", 4, "--num-val", 2,
                   "--size", 64])
    common = ["--model", "fcn8s_resnet18", "--epochs", 1, "-b", 2, "--base-size", 64, "--crop-size", 64, "-j", 0,
              "--device", "cpu"]
    run(train_main, ["--data-path", voc, *common, "--output-dir", tmp_path / "voc_run"])
    out = run(train_main, ["--data-path", three, *common, "--output-dir", tmp_path / "ft",
                           "--pretrained", tmp_path / "voc_run/model_best.pth", "--freeze-backbone"])
    line = next(ln for ln in out.splitlines() if ln.startswith("fine-tuning from"))
    assert "reinitialised 9 (score_fr, score_pool3, score_pool4, upscore2.up, upscore8.up, upscore_pool4.up) for " \
           "3 classes (the file has 21)" in line
    import torch

    before = torch.load(tmp_path / "voc_run/model_best.pth", weights_only=True)["model"]
    after = torch.load(tmp_path / "ft/model_best.pth", weights_only=True)["model"]
    backbone = [k for k in after if k.startswith("backbone.")]
    assert backbone and all(torch.equal(after[k], before[k]) for k in backbone)   # --freeze-backbone kept them
    assert after["score_fr.weight"].shape[0] == 3 and not torch.equal(after["score_pool4.weight"][:3],
                                                                       before["score_pool4.weight"][:3])
    result = CliRunner().invoke(train_main, ["--data-path", str(three), *map(str, common), "--model",
                                             "fcn8s_resnet34", "--output-dir", str(tmp_path / "bad"),
                                             "--pretrained", str(tmp_path / "voc_run/model_best.pth")])
    assert result.exit_code != 0 and "expected --pretrained weights of fcn8s_resnet34, got fcn8s_resnet18" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_thirty_class_onnx_without_metadata(tmp_path, conv_onnx_factory):
    """An ONNX from another tool with 30 output channels and no fcnseg metadata: fcn-eval, fcn-export int8 and
    fcn-predict take 30 classes from its output (was: VOC's 21, then a traceback), with generic names."""
    from fcnseg.core.metadata import ModelMetadata

    import onnx

    model = conv_onnx_factory(tmp_path / "m30.onnx", ModelMetadata(num_classes=30))
    graph = onnx.load(str(model))
    del graph.metadata_props[:]
    onnx.save(graph, str(model))
    run(data_cli, ["synth", tmp_path / "data", "--layout", "folder", "--classes", 20, "--num-train", 2,
                   "--num-val", 2, "--size", 64])
    thirty = ClassMap(tuple(f"c{i}" for i in range(30)))
    (tmp_path / "classes30.json").write_text(json.dumps(thirty.to_json_obj()))
    masks = sorted((tmp_path / "data/masks").rglob("*.png"))
    for m in masks:   # recolour into the 30-class map: ids 0..19 stay, colours are the new map's
        ids = open_dataset(tmp_path / "data", m.parent.name).class_map.lookup_colours(np.asarray(Image.open(m)))[0]
        rgb = thirty.palette()[np.minimum(ids, 29)]
        rgb[ids == 255] = VOID_COLOUR
        Image.fromarray(rgb).save(m)
    classes = ["--classes", tmp_path / "classes30.json"]
    out = run(eval_main, ["--model", model, "--data-path", tmp_path / "data", *classes, "--json",
                          tmp_path / "e.json"])
    assert json.loads((tmp_path / "e.json").read_text())["models"][0]["classes"] == list(thirty.names), out
    run(export_cli, ["int8", model, "--calib-data", tmp_path / "data", *classes, "--num-images", 1,
                     "--eval-images", 1, "--max-drop", 100, "--no-progress", "-o", tmp_path / "m30_int8.onnx"])
    with Segmenter.load(tmp_path / "m30_int8.onnx") as seg:
        assert seg.metadata.num_classes == 30 and seg.metadata.classes == list(thirty.names)
    run(predict_main, [masks[0].parent.parent.parent / "images/val", "-m", model, "-o", tmp_path / "pred"])
    assert len(list((tmp_path / "pred").glob("*.png"))) == 2
