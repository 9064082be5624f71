"""fcn-train's options are refused with one line before any work (the CLI rows: tests/test_bad_inputs.py)."""

import pytest
import torch

from fcnseg.core.errors import FcnsegError
from fcnseg.train.config import TrainConfig, resolve_device


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "expected -b/--batch-size to be an integer >= 1, got 0; try -b 8"),
    ({"lr": -1.0}, "expected --lr > 0, got -1.0; try --lr 0.01"),
    ({"lr": float("nan")}, "expected --lr > 0, got nan"),
    ({"workers": -1}, "expected -j/--workers to be an integer >= 0, got -1; try -j 0"),
    ({"epochs": 0}, "expected --epochs to be an integer >= 1, got 0"),
    ({"crop_size": 0}, "expected --crop-size to be an integer >= 1, got 0"),
    ({"model": "fcn_nope"}, "expected --model to be one of fcn_resnet50, .*, got 'fcn_nope'"),
    ({"resume": "c.pth", "force": True}, "expected --resume .* or --force .*, got both"),
])
def test_impossible_options_are_refused(kw, message):
    with pytest.raises(FcnsegError, match=message):
        TrainConfig(data_path="-", **kw).validate()


def test_defaults_are_valid():
    TrainConfig(data_path="-").validate()


@pytest.mark.parametrize("name, message", [
    ("gpu", "expected --device cpu, cuda or cuda:N, got 'gpu'; try --device cpu"),
    ("meta", "expected --device cpu, cuda or cuda:N, got 'meta'"),
    pytest.param("cuda", "expected a CUDA GPU for --device cuda, got none", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_devices_this_machine_cannot_run_are_refused(name, message):
    with pytest.raises(FcnsegError, match=message):
        resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
