import json
import os
import subprocess
import sys

import pytest
import torch

from fcnseg.train.checkpoint import read_checkpoint
from fcnseg.train.engine import TrainConfig, make_optimizer, make_scheduler, train
from fcnseg.train.models import get_model


def tiny_config(root, out, **kw):
    base = dict(data_path=str(root), model="fcn8s_resnet18", epochs=2, batch_size=4, lr=0.01, workers=0,
                output_dir=str(out), base_size=64, crop_size=48, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_scheduler_warms_up_linearly_then_decays_to_zero():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(data_path="-", epochs=3, lr=0.1)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, iters_per_epoch=10)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 * cfg.lr_warmup_decay)
    assert lrs[0] < lrs[5] < lrs[9] <= 0.1 + 1e-9          # warm-up over the first epoch
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone poly decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_aux_head_gets_ten_times_the_lr():
    model = get_model("fcn8s_resnet18", num_classes=21, aux_loss=True)
    opt = make_optimizer(model, TrainConfig(data_path="-", lr=0.02))
    assert [g["lr"] for g in opt.param_groups] == [0.02, pytest.approx(0.2)]


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """Two train images and one val image: six epochs (three, two resumed, one more) in a few seconds."""
    from fcnseg.datasets.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("voc2"), num_train=2, num_val=1, size=40, seed=3, progress=False)


def test_train_writes_checkpoints_log_plot_and_a_resumed_run_reproduces_it(two_images, tmp_path, capsys, one_thread,
                                                                           monkeypatch):
    from fcnseg.train import data

    opened = []
    real_open = data.open_dataset
    monkeypatch.setattr(data, "open_dataset", lambda root, split, **kw: opened.append(split) or real_open(root, split,
                                                                                                           **kw))
    out = tmp_path / "run"
    cfg = dict(epochs=3, batch_size=2, aux_loss=True, base_size=40, crop_size=32)
    log = train(tiny_config(two_images, out, **cfg))
    assert opened == ["train", "val"]   # each split listed (and a folder layout's masks sniffed) once per run
    assert 0.0 <= log["miou"] <= 1.0 and log["epoch"] == 2
    names = sorted(os.listdir(out))
    assert {"checkpoint.pth", "model_0.pth", "model_2.pth", "model_best.pth", "metrics.jsonl", "metrics.png"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    ckpt = read_checkpoint(out / "checkpoint.pth")  # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "fcn8s_resnet18" and ckpt["num_classes"] == 21
    assert {"model", "optimizer", "lr_scheduler", "args"} <= set(ckpt) and isinstance(ckpt["args"], dict)
    uninterrupted = _rows(out)
    assert [r["epoch"] for r in uninterrupted] == [0, 1, 2]

    # model_0.pth is exactly the checkpoint.pth a kill during epoch 1 of this 3-epoch schedule leaves behind
    train(tiny_config(two_images, out, resume=str(out / "model_0.pth"), **cfg))
    assert _rows(out) == uninterrupted  # loss, lr, mIoU and pixel accuracy of every epoch, once each
    aside = list(out.glob("previous-*"))  # the abandoned epochs 1-2 are kept aside, not mixed in
    assert len(aside) == 1 and {"model_1.pth", "model_2.pth", "metrics.jsonl"} <= {p.name for p in aside[0].iterdir()}
    first, again = read_checkpoint(aside[0] / "model_2.pth"), read_checkpoint(out / "model_2.pth")
    assert first["iteration"] == again["iteration"] == 3
    assert all(torch.equal(first["model"][k], again["model"][k]) for k in first["model"])

    # another --epochs continues with the poly decay re-planned over the new total (a KeyError before)
    capsys.readouterr()
    log4 = train(tiny_config(two_images, out, resume=str(out / "checkpoint.pth"), **{**cfg, "epochs": 4}))
    assert "re-planned: poly decay to 0 at iteration 4 (was 3)" in capsys.readouterr().out
    assert log4["epoch"] == 3 and log4["lr"] == 0.0
    assert [r["epoch"] for r in _rows(out)] == [0, 1, 2, 3]


def _rows(out):
    keys = ("epoch", "train_loss", "lr", "miou", "global_acc")
    return [{k: r[k] for k in keys} for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_ddp_two_processes_gloo_write_one_checkpoint(tiny_voc, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "fcnseg.train", "--data-path", str(tiny_voc), "--model", "fcn8s_resnet18", "--epochs", "1",
           "-b", "2", "-j", "0", "--base-size", "64", "--crop-size", "48", "--device", "cpu",
           "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth")) == ["checkpoint.pth", "model_0.pth",
                                                                        "model_best.pth"]
    ckpt = read_checkpoint(out / "checkpoint.pth")
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved from the unwrapped model


def test_bad_label_in_a_worker_process_is_one_line(tmp_path):
    """A label PNG with class 37, found by a DataLoader worker (data check skipped), still gives one line and exit 2."""
    import numpy as np
    from PIL import Image

    from fcnseg.core.classes import voc_palette
    from fcnseg.datasets.synth import synthesize

    root = synthesize(tmp_path / "voc", num_train=4, num_val=2, size=48, seed=2, progress=False)
    base = root / "VOCdevkit/VOC2012"
    first = (base / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    bad = Image.fromarray(np.full((48, 48), 37, np.uint8), mode="P")
    bad.putpalette(voc_palette().tobytes())
    img = Image.open(base / "JPEGImages" / f"{first}.jpg")
    bad.resize(img.size).save(base / "SegmentationClass" / f"{first}.png")
    r = subprocess.run([sys.executable, "-m", "fcnseg.train", "--data-path", str(root), "--model", "fcn8s_resnet18",
                        "--skip-data-check", "-j", "1", "-b", "4", "--epochs", "1", "--base-size", "48", "--crop-size",
                        "40", "--device", "cpu", "--output-dir", str(tmp_path / "run")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # the rest is the progress bar
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr
    assert errors[0].startswith("error: expected label values in 0..20 or 255, got [37]") and first in errors[0]
    assert not list((tmp_path / "run").glob("*.pth"))  # nothing half-written
