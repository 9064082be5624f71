import pytest
import torch

from fcnseg.core.errors import FcnsegError
from fcnseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.train.models import MODELS, get_model
from fcnseg.train.weights import arch_from_state, classes_from_state


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


def test_raw_state_dict_arch_and_class_count_are_read_from_its_keys(tmp_path, small_state):
    path = tmp_path / "raw.pth"
    torch.save(small_state, path)
    _, ckpt = model_from_checkpoint(path)
    assert (ckpt.arch, ckpt.num_classes) == ("fcn8s_resnet18", 21)
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(FcnsegError, match="does not say its architecture"):
        model_from_checkpoint(foreign)


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_architecture_is_told_from_its_state_dict_keys(arch):
    with torch.device("meta"):  # keys and shapes without allocating or initialising weights
        sd = get_model(arch, num_classes=7, aux_loss=True).state_dict()
    assert arch_from_state(sd) == arch and classes_from_state(sd) == 7


def test_wrong_arch_and_class_count_are_refused(tmp_path, small_state):
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": small_state, "arch": "fcn8s_resnet18", "num_classes": 21}, path)
    with pytest.raises(FcnsegError, match="expected a checkpoint of fcn8s_resnet34"):
        model_from_checkpoint(path, arch="fcn8s_resnet34")
    with pytest.raises(FcnsegError, match="with 5 classes, got 21"):
        model_from_checkpoint(path, num_classes=5)
    raw = tmp_path / "raw.pth"
    torch.save(small_state, raw)
    with pytest.raises(FcnsegError, match="got one of fcn8s_resnet18 .*; try --arch fcn8s_resnet18"):
        model_from_checkpoint(raw, arch="fcn8s_resnet34")  # told from the keys
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in small_state.items() if not k.startswith("score_fr.")}, partial)
    with pytest.raises(FcnsegError, match="does not fit fcn8s_resnet18 with 21 classes: 2 missing keys"):
        model_from_checkpoint(partial, arch="fcn8s_resnet18")


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
