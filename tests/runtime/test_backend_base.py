"""BaseBackend: one input check, metadata set once, per-thread timing, context manager, idempotent close."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fcnseg.runtime import FcnsegError
from fcnseg.runtime.backends.base import BaseBackend
from fcnseg.core.metadata import ModelMetadata


class Doubling(BaseBackend):
    """A backend whose "model" doubles its input: enough to exercise the template methods."""

    name = "doubling"
    thread_safe = True

    def __init__(self, max_batch=None):
        super().__init__()
        self.metadata = ModelMetadata()
        self.max_batch = max_batch
        self.closed_times = 0

    def _infer(self, batch):
        return {"logits": batch * 2}

    def _close(self):
        self.closed_times += 1


@pytest.mark.parametrize("batch, expected", [
    (np.zeros((2, 3, 4, 4), np.uint8), "dtype uint8"),
    (np.zeros((3, 4, 4), np.float32), "got 3x4x4"),
    (np.zeros((1, 1, 4, 4), np.float32), "got 1x1x4x4"),
    (np.zeros((0, 3, 4, 4), np.float32), "got 0x3x4x4"),
    (np.zeros((3, 3, 4, 4), np.float32), "at most 2 images"),
])
def test_bad_inputs_are_refused_before_the_model_runs(batch, expected):
    with pytest.raises(FcnsegError, match=expected) as e:
        Doubling(max_batch=2).infer(batch)
    assert "expected" in str(e.value) and "try" in str(e.value)


def test_infer_casts_to_float32_and_times_the_call():
    b = Doubling()
    assert b.last_timing == {"h2d": 0.0, "infer": 0.0, "d2h": 0.0}
    out = b.infer(np.ones((1, 3, 2, 2), np.float64))
    assert out["logits"].dtype == np.float32 and float(out["logits"].sum()) == 24.0
    assert b.last_timing["infer"] > 0 and b.last_timing["h2d"] == 0.0


def test_last_timing_is_per_thread():
    b = Doubling()
    b.infer(np.ones((1, 3, 2, 2), np.float32))
    seen = []
    t = threading.Thread(target=lambda: seen.append(b.last_timing["infer"]))
    t.start()
    t.join()
    assert seen == [0.0] and b.last_timing["infer"] > 0


def test_metadata_is_set_once():
    b = Doubling()
    with pytest.raises(AttributeError, match="set once"):
        b.metadata = ModelMetadata()


def test_context_manager_closes_once_and_refuses_later_calls():
    with Doubling() as b:
        b.infer(np.ones((1, 3, 2, 2), np.float32))
    b.close()
    assert b.closed_times == 1
    with pytest.raises(FcnsegError, match="closed"):
        b.infer(np.ones((1, 3, 2, 2), np.float32))
