"""The charts (``fcnseg.eval.plots``) on tiny data, and the two ``fcn-eval --json`` writes beside its JSON."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fcnseg.core.errors import FcnsegError
from fcnseg.core.metrics import ConfusionMatrix
from fcnseg.eval import plots
from fcnseg.eval.cli import eval_main
from fcnseg.eval.evaluate import ModelEval

CLASSES = ["background", "cat", "dog"]


def pixels(png: bytes) -> np.ndarray:
    """The PNG decoded to RGB; asserts it is a PNG of fcnseg's charts."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert img.info["Software"] == "fcnseg" and img.info["Title"].startswith(plots.CHART_TITLE)
        return np.asarray(img.convert("RGB"))


def differ(a: bytes, b: bytes) -> bool:
    pa, pb = pixels(a), pixels(b)
    return pa.shape != pb.shape or bool((pa != pb).any())


def iou_chart(delta: float) -> bytes:
    return plots.class_iou_png(CLASSES, [90.0, 40.0, float("nan")], {"m.onnx (openvino)": [0.0, delta, np.nan]},
                               reference="ref.pth (pytorch)")


def test_class_iou_chart_is_a_png_that_follows_its_data():
    assert differ(iou_chart(-2.0), iou_chart(+2.0))
    assert not differ(iou_chart(-2.0), iou_chart(-2.0))   # the same data draws the same pixels
    bars_only = plots.class_iou_png(CLASSES, [90.0, 40.0, 10.0])
    assert pixels(bars_only).shape[0] < pixels(iou_chart(1.0)).shape[0]   # no heatmap under the bars


def test_stage_latency_chart_is_a_png_that_follows_its_data():
    def chart(infer_ms):
        return plots.stage_latency_png(["a.onnx onnxruntime", "a.onnx openvino"],
                                       {"preprocess": [1.0, 1.0], "infer": [infer_ms, 3.0], "postprocess": [0.5, 0.5]},
                                       [infer_ms + 2.0, 5.0])

    assert differ(chart(4.0), chart(9.0))


def test_roofline_chart_is_a_png_that_follows_its_data():
    def chart(rate):
        return plots.roofline_png({"fp32 row": {"gmacs": rate, "ran_in": "fp32"},
                                   "int8 row": {"gmacs": 500.0, "ran_in": "int8"}},
                                  {"fp32": 240.0, "bf16": 400.0, "int8": 970.0}, gmac=12.5)

    assert differ(chart(100.0), chart(200.0))


def test_confusion_chart_is_row_normalised_and_follows_its_data():
    counts = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    norm = plots.row_normalised(counts)
    assert np.allclose(norm[[0, 2]].sum(axis=1), 1.0) and np.isnan(norm[1]).all()   # no pixels: no row
    assert norm[0, 1] == pytest.approx(0.2)
    assert differ(plots.confusion_png(counts, CLASSES), plots.confusion_png(counts.T, CLASSES))
    # the same counts at another scale draw the same row-normalised chart
    assert not differ(plots.confusion_png(counts, CLASSES), plots.confusion_png(counts * 10, CLASSES))


def row(path, miou, pred, backend="onnxruntime"):
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 2]), np.array(pred))
    return ModelEval(path=path, format="ONNX", precision="fp32", miou=miou, iou=[0.5, 0.5, 0.5],
                     classes=CLASSES, backend=backend, cm=cm)


def test_parity_charts_show_the_lowest_miou_rows_confusion():
    rows = [row("ref.pth", 0.9, [0, 0, 1, 2], "pytorch"), row("a.onnx", 0.4, [1, 1, 1, 1]),
            row("b.onnx", 0.7, [0, 0, 2, 2]), ModelEval(path="c.onnx", format="ONNX", precision="?", status="error: x")]
    assert plots.worst_row(rows).path == "a.onnx"   # the failed row has no matrix to show
    charts = plots.parity_charts(rows)
    assert set(charts) == {"iou", "confusion"}
    title = "a.onnx (onnxruntime): mIoU 40.0%, the lowest of 4 (row-normalised)"
    assert not differ(charts["confusion"], plots.confusion_png(rows[1].cm.mat, CLASSES, title=title))


def test_chart_outputs_follow_the_json_rules(tmp_path):
    data = tmp_path / "eval.json"
    paths = plots.check_chart_outputs(data, ["iou"])
    assert paths == {"iou": tmp_path / "eval_iou.png"}
    plots.write_charts(paths, {"iou": iou_chart(1.0)})
    plots.check_chart_outputs(data, ["iou"])   # an earlier fcnseg chart is replaced
    Image.new("RGB", (4, 4)).save(paths["iou"])   # someone else's PNG
    with pytest.raises(FcnsegError, match="pass --force"):
        plots.check_chart_outputs(data, ["iou"])
    plots.check_chart_outputs(data, ["iou"], force=True)
    with pytest.raises(FcnsegError, match="own input"):
        plots.check_chart_outputs(data, ["iou"], inputs=[paths["iou"]], force=True)


@pytest.fixture(scope="module")
def four_class_data(tmp_path_factory):
    """Three 48 px validation images of a 4-class folder dataset (the tiny models' class count)."""
    from fcnseg.datasets.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("data4"), num_train=1, num_val=3, size=48, layout="folder",
                      classes=4, progress=False)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, conv_onnx_factory):
    from fcnseg.core.metadata import ModelMetadata

    return conv_onnx_factory(tmp_path_factory.mktemp("m4") / "conv4.onnx", ModelMetadata(num_classes=4))


def test_fcn_eval_json_writes_the_iou_and_confusion_charts_beside_it(tmp_path, four_class_data, tiny_conv_onnx,
                                                                     second_model):
    out = tmp_path / "eval.json"
    args = ["--data-path", str(four_class_data), "--backend", "onnxruntime", "--json", str(out), "--tol-fp32", "100",
            "--compare", str(tiny_conv_onnx), str(second_model)]
    r = CliRunner().invoke(eval_main, args)
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["models"]) == 2
    iou, confusion = tmp_path / "eval_iou.png", tmp_path / "eval_confusion.png"
    compared = pixels(iou.read_bytes())
    pixels(confusion.read_bytes())
    # a single model: the same names, its bars without a row of deltas under them (and an earlier chart replaced)
    r = CliRunner().invoke(eval_main, args[:-1])
    assert r.exit_code == 0, r.output
    assert pixels(iou.read_bytes()).shape[0] < compared.shape[0]


def test_fcn_eval_refuses_a_foreign_file_where_a_chart_goes_before_any_work(tmp_path, four_class_data,
                                                                            tiny_conv_onnx):
    (tmp_path / "eval_confusion.png").write_text("my notes")
    r = CliRunner().invoke(eval_main, ["--data-path", str(four_class_data), "--model", str(tiny_conv_onnx),
                                       "--json", str(tmp_path / "eval.json")])
    assert r.exit_code == 2 and "eval_confusion.png exists" in r.output and "--force" in r.output
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "eval_iou.png").exists()
    assert (tmp_path / "eval_confusion.png").read_text() == "my notes"


class RecordingBar:
    """Stands in for tqdm: records each bar's description, total, postfixes and updates."""

    bars: list = []

    def __init__(self, iterable=None, **kw):
        self.iterable, self.kw, self.n, self.postfix = iterable, kw, 0, []
        RecordingBar.bars.append(self)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text):
        self.postfix.append(text)

    def close(self):
        pass


def test_a_comparison_shows_a_models_bar_over_the_per_image_bars(monkeypatch, four_class_data, tiny_conv_onnx,
                                                                  second_model):
    import tqdm

    from fcnseg.core.backend_names import BackendChoice
    from fcnseg.eval.evaluate import compare_models

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    RecordingBar.bars = []
    compare_models([str(tiny_conv_onnx), str(second_model)], four_class_data, run=BackendChoice(("onnxruntime",)))
    models = [b for b in RecordingBar.bars if b.kw.get("desc") == "models"]
    assert len(models) == 1 and models[0].kw["total"] == 2 and models[0].n == 2
    assert models[0].kw["disable"] is None   # shown on a terminal only
    assert models[0].postfix == ["tiny.onnx onnxruntime", "conv4.onnx onnxruntime"]
    images = [b for b in RecordingBar.bars if b is not models[0]]
    assert [b.kw["desc"] for b in images] == ["eval tiny.onnx", "eval conv4.onnx"] and all(b.n == 3 for b in images)
