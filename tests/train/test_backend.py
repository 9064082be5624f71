"""The PyTorch reference backend: a .pth checkpoint run through the same Segmenter interface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
models = pytest.importorskip("fcnseg.train.models")

from fcnseg.runtime import FcnsegError, Segmenter  # noqa: E402
from fcnseg.runtime.preprocess import preprocess, resize_mask  # noqa: E402
from fcnseg.train.checkpoint import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = models.get_model("fcn8s_resnet18", num_classes=21).eval()
    path = tmp_path_factory.mktemp("ckpt") / "fcn8s.pth"
    save_checkpoint({"model": model.state_dict(), "arch": "fcn8s_resnet18", "num_classes": 21,
                     "base_size": 40, "miou": 0.5}, path)
    return path, model


def test_pth_runs_the_checkpoint_model(checkpoint):
    path, model = checkpoint
    seg = Segmenter.load(path)
    assert seg.backend.name == "pytorch" and seg.metadata.arch == "fcn8s_resnet18"
    assert seg.size == 40 and seg.metadata.miou == 0.5 and not seg.metadata.argmax
    image = np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    x = preprocess(image, size=40, mean=seg.metadata.mean, std=seg.metadata.std)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))["out"][0].numpy()
    scores = seg(image, logits=True)
    assert scores.shape == expected.shape == (21, 40, 57)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    mask = seg(image)
    assert mask.shape == (37, 53) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, resize_mask(expected.argmax(0).astype(np.uint8), 37, 53))
    assert seg.last_timing["h2d"] == 0.0 and seg.last_timing["infer"] > 0

    # Shared between threads (the backend serialises calls): same masks as sequential calls.
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, seg(image))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all((m == mask).all() for m in results.values())


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    save_checkpoint({"model": {"w": torch.zeros(2)}, "arch": "fcn8s_resnet18", "num_classes": 21}, path)
    with pytest.raises(FcnsegError, match="does not fit"):
        Segmenter.load(path)
