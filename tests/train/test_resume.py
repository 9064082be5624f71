"""Resume: the LR plan, and refusals before any work (the reproduction itself: test_engine)."""

import pytest
import torch

from fcnseg.core.errors import FcnsegError
from fcnseg.train.checkpoint import save_checkpoint
from fcnseg.train.config import TrainConfig
from fcnseg.train.engine import make_optimizer, train
from fcnseg.train.models import get_model
from fcnseg.train.schedule import make_scheduler, plan_lr


def tiny_config(root, out, **kw):
    base = dict(data_path=str(root), model="fcn8s_resnet18", epochs=3, batch_size=8, lr=0.01, workers=0,
                output_dir=str(out), base_size=48, crop_size=32, device="cpu", plot=False)
    return TrainConfig(**{**base, **kw})


def test_positioned_scheduler_continues_the_same_learning_rates():
    cfg = TrainConfig(data_path="-", epochs=3, lr=0.1)

    def lrs(start_iter):
        model = torch.nn.Linear(2, 2)
        opt = make_optimizer(model, cfg)
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
        sched = make_scheduler(opt, cfg, 10, start_iter=start_iter)
        seen = []
        for _ in range(30 - start_iter):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    assert lrs(10) == pytest.approx(lrs(0)[10:], rel=1e-12)


def test_another_epoch_count_or_batch_size_replans_the_decay_over_the_new_total():
    saved = plan_lr(TrainConfig(data_path="-", epochs=4), iters_per_epoch=10).to_dict()  # warm-up 10, total 40
    # resumed after epoch 1 (20 steps) with -b halved (20 steps an epoch) and --epochs 6: 20 + 4 * 20
    plan = plan_lr(TrainConfig(data_path="-", epochs=6), 20, start_epoch=2, start_iter=20, saved=saved)
    assert (plan.warmup, plan.total) == (10, 100)
    assert plan.factor(20) > plan.factor(99) > 0 and plan.factor(100) == 0
    fewer = plan_lr(TrainConfig(data_path="-", epochs=3), 10, start_epoch=2, start_iter=40, saved=saved)
    assert all(fewer.factor(i) >= 0 for i in range(40, 80))  # never a negative base (a complex LR before)


@pytest.fixture(scope="module")
def aux_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("aux") / "checkpoint.pth"
    model = get_model("fcn8s_resnet18", num_classes=21, aux_loss=True)
    opt = make_optimizer(model, TrainConfig(data_path="-"))
    save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1,
                     "arch": "fcn8s_resnet18", "num_classes": 21}, path)
    return path


@pytest.mark.parametrize("kw, message", [
    ({"aux_loss": False}, "expected a checkpoint without the aux head to resume without --aux-loss, got one with "
                          "it in .*; try adding --aux-loss"),
    ({"aux_loss": True, "epochs": 2}, "expected --epochs above the 2 epochs .* has finished, got --epochs 2; "
                                      "try --epochs 3"),
    ({"aux_loss": True, "model": "fcn8s_resnet34"}, "expected a fcn8s_resnet34 checkpoint with 21 classes"),
])
def test_resume_mismatches_are_refused_before_any_work(aux_checkpoint, tmp_path, kw, message):
    cfg = tiny_config(tmp_path / "no-data", tmp_path / "run", resume=str(aux_checkpoint), **kw)
    with pytest.raises(FcnsegError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()
