"""The training recipe of torchvision's segmentation reference, as small named functions.

SGD (momentum 0.9, weight decay 1e-4), linear warm-up over the first epoch then poly LR (power 0.9)
stepped per iteration, cross-entropy with ignore_index 255, aux loss weight 0.5, AMP on CUDA, resume,
checkpoints every epoch (``checkpoint.pth`` and ``model_{epoch}.pth``, best by mIoU as ``model_best.pth``).
Runs unchanged under ``torchrun`` (see ``distributed.py``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from ..runtime.atomic import write_text
from ..runtime.errors import FcnsegError
from ..runtime.metrics import ConfusionMatrix
from ..runtime.voc import BASE_SIZE, CROP_SIZE, IGNORE_INDEX, MEAN, NUM_CLASSES, STD, VOC_CLASSES
from . import distributed
from .checkpoint import parse_checkpoint, read_checkpoint, save_checkpoint
from .data import collate_fn, get_dataset
from .models import MODELS, get_model


@dataclass
class TrainConfig:
    """Options of ``fcn-train``; names follow torchvision's reference train.py."""

    data_path: str
    model: str = "fcn_resnet50"
    aux_loss: bool = False
    epochs: int = 30
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_warmup_epochs: int = 1
    lr_warmup_decay: float = 0.01
    workers: int = min(4, os.cpu_count() or 1)
    output_dir: str = "runs/fcn"
    resume: Optional[str] = None
    amp: bool = False
    base_size: int = BASE_SIZE
    crop_size: int = CROP_SIZE
    pretrained: Optional[str] = None
    num_classes: int = NUM_CLASSES
    device: Optional[str] = None
    sync_bn: bool = False
    seed: int = 0
    val_split: str = "val"
    plot: bool = True


def criterion(outputs: dict, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on "out" plus 0.5 x the "aux" loss, ignoring void (255) pixels."""
    losses = {name: nn.functional.cross_entropy(x, target, ignore_index=IGNORE_INDEX) for name, x in outputs.items()}
    return losses["out"] + 0.5 * losses["aux"] if "aux" in losses else losses["out"]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD over backbone and heads; the aux head learns 10x faster, as in the reference."""
    aux = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("aux_classifier.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("aux_classifier.")]
    groups = [{"params": rest}] + ([{"params": aux, "lr": cfg.lr * 10}] if aux else [])
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, iters_per_epoch: int):
    """Linear warm-up for ``lr_warmup_epochs``, then poly decay (power 0.9) to the last iteration."""
    warmup = min(cfg.lr_warmup_epochs, cfg.epochs - 1) * iters_per_epoch if cfg.epochs > 1 else 0
    total = iters_per_epoch * cfg.epochs
    poly = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / max(1, total - warmup)) ** 0.9)
    if not warmup:
        return poly
    lin = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=cfg.lr_warmup_decay, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers=[lin, poly], milestones=[warmup])


def train_one_epoch(model, optimizer, scheduler, loader, device, epoch: int, scaler=None, *,
                    show: bool = True) -> dict:
    """One pass over ``loader``; returns mean loss, final lr and images/s."""
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not show, leave=False, dynamic_ncols=True)
    for image, target in bar:
        image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            loss = criterion(model(image), target)
        if not math.isfinite(loss.item()):
            raise FcnsegError(f"expected a finite loss, got {loss.item()} at epoch {epoch}; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += loss.item() * image.shape[0]
        count += image.shape[0]
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}",
                        img_s=f"{count / (time.perf_counter() - start):.1f}")
    stats = np.array([total, count], dtype=np.float64)
    total, count = distributed.all_reduce_array(stats)
    return {"train_loss": total / max(count, 1), "lr": optimizer.param_groups[0]["lr"],
            "train_img_s": count / (time.perf_counter() - start)}


@torch.inference_mode()
def evaluate(model, loader, device, num_classes: int, *, show: bool = True) -> ConfusionMatrix:
    """Confusion matrix of the model's argmax over ``loader``, summed across processes."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for image, target in tqdm(loader, desc="eval", disable=not show, leave=False, dynamic_ncols=True):
        out = model(image.to(device))["out"]
        cm.update(target.numpy(), out.argmax(1).cpu().numpy())
    cm.reduce(distributed.all_reduce_array)
    return cm


def make_loaders(cfg: TrainConfig, dist_info: distributed.DistInfo) -> tuple[DataLoader, DataLoader]:
    """Train loader (random crops, shuffled, last batch dropped) and val loader (batch 1, full images)."""
    train_ds, _ = get_dataset(cfg.data_path, "train", train=True, base_size=cfg.base_size, crop_size=cfg.crop_size,
                           num_classes=cfg.num_classes)
    val_ds, _ = get_dataset(cfg.data_path, cfg.val_split, train=False, base_size=cfg.base_size,
                         crop_size=cfg.crop_size, num_classes=cfg.num_classes)
    if len(train_ds) < cfg.batch_size * dist_info.world_size:
        raise FcnsegError(f"expected at least {cfg.batch_size * dist_info.world_size} training images for batch size "
                          f"{cfg.batch_size}, got {len(train_ds)}; try a smaller -b/--batch-size")
    if dist_info.enabled:
        train_sampler, val_sampler = DistributedSampler(train_ds, seed=cfg.seed), DistributedSampler(val_ds, shuffle=False)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        train_sampler, val_sampler = RandomSampler(train_ds, generator=g), SequentialSampler(val_ds)
    kw = {"num_workers": cfg.workers, "persistent_workers": cfg.workers > 0, "collate_fn": collate_fn}
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=train_sampler, drop_last=True, **kw)
    val = DataLoader(val_ds, batch_size=1, sampler=val_sampler, **kw)
    return train, val


def build_model(cfg: TrainConfig, device: torch.device, dist_info: distributed.DistInfo) -> tuple[nn.Module, nn.Module]:
    """The model on its device, and the module to call (DDP-wrapped when distributed)."""
    model = get_model(cfg.model, num_classes=cfg.num_classes, aux_loss=cfg.aux_loss, pretrained=cfg.pretrained)
    if dist_info.enabled and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if not dist_info.enabled:
        return model, model
    ids = [dist_info.local_rank] if device.type == "cuda" else None
    return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)


def resume_state(cfg: TrainConfig, model, optimizer, scheduler, scaler) -> tuple[int, float]:
    """Load ``--resume``; returns (first epoch to run, best mIoU so far). Refuses another model or class count."""
    full = read_checkpoint(cfg.resume)
    ckpt = parse_checkpoint(full, cfg.resume)
    if ckpt.arch not in (None, cfg.model) or ckpt.num_classes not in (None, cfg.num_classes):
        raise FcnsegError(f"expected a {cfg.model} checkpoint with {cfg.num_classes} classes to resume, got "
                          f"{ckpt.arch} with {ckpt.num_classes} in {cfg.resume}; try --model {ckpt.arch} "
                          f"--num-classes {ckpt.num_classes}")
    if not all(k in full for k in ("optimizer", "lr_scheduler", "epoch")):
        raise FcnsegError(f"expected a training checkpoint (optimizer, lr_scheduler, epoch) in {cfg.resume}, got "
                          f"keys {sorted(full)[:6]}; try checkpoint.pth from --output-dir, or --pretrained for weights")
    model.load_state_dict(ckpt.state_dict)
    optimizer.load_state_dict(full["optimizer"])
    scheduler.load_state_dict(full["lr_scheduler"])
    if scaler is not None and "scaler" in full:
        scaler.load_state_dict(full["scaler"])
    return int(full["epoch"]) + 1, float(full.get("best_miou", full.get("miou") or 0.0))


def checkpoint_dict(cfg: TrainConfig, model, optimizer, scheduler, scaler, epoch: int, miou: float,
                    best: float) -> dict:
    """The torchvision-reference checkpoint plus what export and the runtime need."""
    classes = list(VOC_CLASSES) if cfg.num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(cfg.num_classes)]
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch, "args": asdict(cfg), "arch": cfg.model, "num_classes": cfg.num_classes,
            "classes": classes, "mean": list(MEAN), "std": list(STD), "base_size": cfg.base_size,
            "miou": miou, "best_miou": best}
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    return ckpt


def train(cfg: TrainConfig) -> dict:
    """Run the whole recipe; returns the last epoch's metrics (rank 0 writes every file)."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist_info = distributed.init_distributed(device.type)
    try:
        return _train(cfg, device, dist_info)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, device: torch.device, dist_info: distributed.DistInfo) -> dict:
    if cfg.model not in MODELS:   # before the data loaders start: a typo should cost nothing
        raise FcnsegError(f"expected one of {', '.join(MODELS)}; got {cfg.model!r}")
    torch.manual_seed(cfg.seed + dist_info.rank)
    out = Path(cfg.output_dir)
    train_loader, val_loader = make_loaders(cfg, dist_info)
    model, runner = build_model(cfg, device, dist_info)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    start, best = resume_state(cfg, model, optimizer, scheduler, scaler) if cfg.resume else (0, 0.0)
    log: dict = {}
    for epoch in range(start, cfg.epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        log = train_one_epoch(runner, optimizer, scheduler, train_loader, device, epoch, scaler, show=dist_info.is_main)
        result = evaluate(runner, val_loader, device, cfg.num_classes, show=dist_info.is_main).compute()
        best = max(best, result["miou"])
        log.update(epoch=epoch, miou=result["miou"], global_acc=result["global_acc"], epoch_s=time.perf_counter() - t0)
        if dist_info.is_main:
            _save_epoch(cfg, out, checkpoint_dict(cfg, model, optimizer, scheduler, scaler, epoch, result["miou"], best),
                        log, is_best=result["miou"] >= best)
    if dist_info.is_main and cfg.plot and (out / "metrics.jsonl").exists():
        from .plot import plot_metrics
        plot_metrics(out / "metrics.jsonl", out / "metrics.png")
    return log


def _save_epoch(cfg: TrainConfig, out: Path, ckpt: dict, log: dict, *, is_best: bool) -> None:
    epoch = ckpt["epoch"]
    save_checkpoint(ckpt, out / f"model_{epoch}.pth")
    save_checkpoint(ckpt, out / "checkpoint.pth")
    if is_best:
        save_checkpoint(ckpt, out / "model_best.pth")
    lines = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() and epoch > 0 else ""
    write_text(out / "metrics.jsonl", lines + json.dumps(log) + "\n")
    tqdm.write(f"epoch {epoch}: loss {log['train_loss']:.4f}  lr {log['lr']:.5f}  mIoU {log['miou'] * 100:.1f}  "
               f"pixel acc {log['global_acc'] * 100:.1f}  ({log['epoch_s']:.0f} s, {log['train_img_s']:.1f} img/s)")
