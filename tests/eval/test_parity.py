import numpy as np

from fcnseg.core.metrics import ConfusionMatrix
from fcnseg.eval.parity import compare_logits, compare_miou, evaluate


def test_compare_logits_passes_small_noise_and_fails_large():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 4, 8, 9)).astype(np.float32)
    ok = compare_logits(ref, ref + 1e-5)
    assert ok and ok.argmax_agreement == 1.0 and ok.max_abs < 2e-5
    bad = compare_logits(ref, ref + rng.normal(scale=1.0, size=ref.shape))
    assert not bad and "FAIL" in str(bad)


def test_compare_miou_delta_in_points_and_tolerance():
    target = np.array([0, 0, 1, 1, 2, 2])
    ref, test = ConfusionMatrix(3), ConfusionMatrix(3)
    ref.update(target, target)
    test.update(target, np.array([0, 0, 1, 1, 2, 0]))
    c = compare_miou(ref, test, tolerance=1.0, classes=["a", "b", "c"])
    assert c.delta < -10 and not c
    assert c.worst_classes(1)[0][0] in ("a", "c")
    assert compare_miou(ref, ref, tolerance=0.0)


def test_evaluate_accumulates_predictions():
    samples = [(np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), np.uint8))] * 3
    cm = evaluate(lambda img: np.ones(img.shape[:2], np.uint8), samples, 2)
    assert cm.mat[1, 1] == 60 and cm.compute()["miou"] == 1.0


class _Row:
    def __init__(self, path, ok, delta):
        self.path, self.ok, self.delta = path, ok, delta

    def to_dict(self):
        return {"path": self.path, "delta_points": self.delta, "passed": self.ok}


def test_parity_result_is_truthy_only_when_every_row_passes_and_keeps_failed_deltas():
    from fcnseg.eval.parity import ParityResult

    good = ParityResult([_Row("ref.pth", True, None), _Row("a.onnx", True, 0.01)])
    assert good and good.failed == [] and "parity OK" in good.summary() and len(good) == 2
    bad = ParityResult([_Row("ref.pth", True, None), _Row("a.onnx", True, 0.01), _Row("b.onnx", False, -3.5)])
    assert not bad and [r.path for r in bad.failed] == ["b.onnx"] and bad.reference.path == "ref.pth"
    assert "b.onnx" in bad.summary() and [r.path for r in bad] == ["ref.pth", "a.onnx", "b.onnx"]
    doc = bad.to_dict()
    assert doc["passed"] is False and doc["failed"] == ["b.onnx"] and doc["models"][2]["delta_points"] == -3.5
