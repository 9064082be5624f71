import pytest
import torch

from fcnseg.runtime.errors import FcnsegError
from fcnseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.train.models import get_model


@pytest.fixture(scope="module")
def small_state():
    return get_model("fcn8s_resnet18", num_classes=21).state_dict()


def test_our_checkpoint_round_trip(tmp_path, small_state):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": small_state, "arch": "fcn8s_resnet18", "num_classes": 21, "epoch": 3,
                     "args": {"model": "fcn8s_resnet18"}, "base_size": 160, "miou": 0.5}, path)
    model, ckpt = model_from_checkpoint(path)
    assert ckpt.arch == "fcn8s_resnet18" and ckpt.num_classes == 21
    assert ckpt.metadata().input_size == 160 and ckpt.metadata().miou == 0.5
    assert torch.equal(model.state_dict()["score_fr.weight"], small_state["score_fr.weight"])


def test_raw_state_dict_needs_arch_and_class_count_is_read(tmp_path, small_state):
    path = tmp_path / "raw.pth"
    torch.save(small_state, path)
    with pytest.raises(FcnsegError, match="does not say its architecture"):
        model_from_checkpoint(path)
    _, ckpt = model_from_checkpoint(path, arch="fcn8s_resnet18")
    assert ckpt.num_classes == 21


def test_wrong_arch_and_class_count_are_refused(tmp_path, small_state):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": small_state, "arch": "fcn8s_resnet18", "num_classes": 21}, path)
    with pytest.raises(FcnsegError, match="expected a checkpoint of fcn8s_resnet34"):
        model_from_checkpoint(path, arch="fcn8s_resnet34")
    with pytest.raises(FcnsegError, match="with 5 classes, got 21"):
        model_from_checkpoint(path, num_classes=5)
    raw = tmp_path / "raw.pth"
    torch.save(small_state, raw)
    with pytest.raises(FcnsegError, match="does not fit fcn8s_resnet34"):
        model_from_checkpoint(raw, arch="fcn8s_resnet34")


def test_corrupt_missing_and_pickled_objects_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FcnsegError, match="could not read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FcnsegError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": object()}, evil)  # not loadable with weights_only=True
    with pytest.raises(FcnsegError, match="could not read checkpoint"):
        load_checkpoint(evil)
