import numpy as np

from fcnseg.runtime.metrics import ConfusionMatrix
from fcnseg.runtime.parity import compare_logits, compare_miou, evaluate


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
