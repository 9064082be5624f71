import numpy as np
import pytest

from fcnseg.core.metrics import ConfusionMatrix


def brute_force(target, pred, n):
    """Per-class IoU and accuracies by explicit set counting (an independent implementation)."""
    keep = target != 255
    t, p = target[keep], pred[keep]
    iou, acc = [], []
    for c in range(n):
        inter = np.sum((t == c) & (p == c))
        union = np.sum((t == c) | (p == c))
        iou.append(inter / union if union else np.nan)
        acc.append(inter / np.sum(t == c) if np.sum(t == c) else np.nan)
    return np.array(iou), np.array(acc), np.mean(t == p)


def test_matches_brute_force_on_random_labels():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.7, target % 5, rng.integers(0, 5, size=target.shape))
    cm = ConfusionMatrix(5)
    cm.update(target[:2], pred[:2])
    cm.update(target[2], pred[2])
    r = cm.compute()
    iou, acc, gacc = brute_force(target, pred, 5)
    np.testing.assert_allclose(r["iou"], iou)
    np.testing.assert_allclose(r["class_acc"], acc)
    assert r["global_acc"] == pytest.approx(gacc)
    assert r["miou"] == pytest.approx(np.nanmean(iou))


def test_absent_class_is_left_out_of_miou_and_reset_clears():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]))
    r = cm.compute()
    assert np.isnan(r["iou"][2])
    assert r["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    cm.reset()
    assert cm.mat.sum() == 0


def test_merge_and_reduce_sum_matrices():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(np.array([0, 1]), np.array([0, 1]))
    b.update(np.array([1, 1]), np.array([0, 1]))
    a.merge(b)
    assert a.mat.tolist() == [[1, 0], [1, 2]]
    a.reduce(lambda m: m * 2)  # stands for an all-reduce over two identical processes
    assert a.mat.tolist() == [[2, 0], [2, 4]]


def test_rejects_mismatched_shapes_and_out_of_range_predictions():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="predictions in 0..2"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
