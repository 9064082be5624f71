from fcnseg.benchmarks.bench import Stats, parse_hw
from fcnseg.eval.tables import format_table
from fcnseg.core.errors import FcnsegError

import pytest


def test_table_aligns_numbers_right_and_text_left():
    out = format_table(["name", "ms"], [["a", 1.5], ["longer", 12.25]]).splitlines()
    assert out[0].startswith("name") and out[2].endswith(" 1.50") and out[3].endswith("12.25")
    assert len({len(line) for line in out[2:]}) == 1


def test_stats_percentiles_in_ms():
    s = Stats.of([0.001 * i for i in range(1, 101)])
    assert s.min == pytest.approx(1.0) and s.max == pytest.approx(100.0)
    assert s.median == pytest.approx(50.5) and s.p90 == pytest.approx(90.1)


def test_parse_hw():
    assert parse_hw("375x500") == (375, 500)
    with pytest.raises(FcnsegError, match="520x520 \\(HxW\\)"):
        parse_hw("375")


def test_class_delta_columns_name_the_backend_when_a_model_runs_on_several():
    import numpy as np

    from fcnseg.eval.evaluate import ModelEval, class_delta_table
    from fcnseg.eval.parity import MiouComparison

    classes = ["background", "cat"]

    def row(path, backend, delta, hint=""):
        r = ModelEval(path=path, format="ONNX", precision="int8", miou=0.5, global_acc=0.9, iou=[0.5, 0.5],
                      classes=classes, backend=backend, precision_hint=hint)
        r.comparison = MiouComparison(0.5, 0.5, np.array([delta, -delta]), 1.0, classes)
        return r

    rows = [row("ref.pth", "pytorch", 0.0), row("m.onnx", "onnxruntime", 0.25), row("m.onnx", "openvino", 0.5),
            row("other.onnx", "openvino", 0.75)]
    header = class_delta_table(rows).splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["class", "IoU ref.pth", "d m.onnx onnxruntime",
                                                         "d m.onnx openvino", "d other.onnx"]
    # the same file on OpenVINO in f32 and in bf16 (the demo's parity step): two columns, told apart by the hint
    rows = [row("ref.pth", "pytorch", 0.0), row("m.onnx", "openvino", 0.25, "f32"), row("m.onnx", "openvino", 0.5,
                                                                                       "bf16")]
    header = class_delta_table(rows).splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["class", "IoU ref.pth", "d m.onnx openvino/f32",
                                                         "d m.onnx openvino/bf16"]
