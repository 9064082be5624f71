"""The training recipe of torchvision's segmentation reference, as small named functions.

SGD (momentum 0.9, weight decay 1e-4), linear warm-up over the first epoch then poly LR (power 0.9)
stepped per iteration, cross-entropy with ignore_index 255, aux loss weight 0.5, AMP on CUDA, resume,
checkpoints every epoch (``checkpoint.pth`` and ``model_{epoch}.pth``, best by mIoU as ``model_best.pth``).
Runs unchanged under ``torchrun`` (see ``distributed.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler, SequentialSampler
from tqdm import tqdm

from ..core.atomic import run_lock
from ..core.errors import FcnsegError
from ..core.metrics import ConfusionMatrix
from ..core.class_map import ClassMap
from ..core.classes import IGNORE_INDEX, MEAN, STD, VOC_CLASSES
from ..core.data_source import DataSource
from . import distributed
from .checkpoint import link_or_copy, save_checkpoint
from .class_weights import class_weights
from .config import TrainConfig, resolve_device
from .data import SegmentationDataset, collate_fn, get_dataset
from ..datasets.check import scan_splits
from .models import get_model, load_pretrained
from .resume import ResumePoint, read_resume
from .rundir import append_metrics, prepare_output_dir
from .schedule import LRPlan, make_scheduler, plan_lr
from .weights import check_pretrained
from .plot import plot_metrics

__all__ = ["TrainConfig", "criterion", "make_optimizer", "make_scheduler", "train_one_epoch", "evaluate",
           "make_loaders", "train_split", "build_model", "seed_epoch", "checkpoint_dict", "train"]


def criterion(outputs: dict, target: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy on "out" plus 0.5 x the "aux" loss, ignoring void (255) pixels; ``weight``: per class."""
    losses = {name: nn.functional.cross_entropy(x, target, weight=weight, ignore_index=IGNORE_INDEX)
              for name, x in outputs.items()}
    return losses["out"] + 0.5 * losses["aux"] if "aux" in losses else losses["out"]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD over backbone and heads; the aux head learns 10x faster, as in the reference."""
    aux = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("aux_classifier.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("aux_classifier.")]
    groups = [{"params": rest}] + ([{"params": aux, "lr": cfg.lr * 10}] if aux else [])
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_one_epoch(model, optimizer, scheduler, loader, device, epoch: int, scaler=None, *,
                    show: bool = True, weight: Optional[torch.Tensor] = None) -> dict:
    """One pass over ``loader``; returns mean loss, final lr and images/s."""
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not show, leave=False, dynamic_ncols=True)
    for image, target in bar:
        image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            loss = criterion(model(image), target, weight)
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


def make_loaders(cfg: TrainConfig, dist_info: distributed.DistInfo,
                 train_ds: Optional[SegmentationDataset] = None) -> tuple[DataLoader, DataLoader]:
    """Train loader (random crops, shuffled, last batch dropped) and val loader (batch 1, full images).

    ``train_ds``: the train split as ``train_split`` opened it (None: opened here). With ``cfg.check_data`` every
    image/label pair of both splits is checked first (see ``datacheck``). The train sampler's generator is
    reseeded every epoch by :func:`seed_epoch`.
    """
    source = data_source(cfg)
    train_ds = train_ds if train_ds is not None else train_split(cfg)
    val_ds, _ = get_dataset(source, cfg.val_split, train=False, base_size=cfg.base_size,
                            crop_size=cfg.crop_size, num_classes=cfg.num_classes)
    if len(train_ds) < cfg.batch_size * dist_info.world_size:
        raise FcnsegError(f"expected at least {cfg.batch_size * dist_info.world_size} training images for batch size "
                          f"{cfg.batch_size}, got {len(train_ds)}; try a smaller -b/--batch-size")
    if cfg.check_data:
        scan_splits([train_ds.layout, val_ds.layout], threads=min(8, os.cpu_count() or 1), show=dist_info.is_main)
    train_sampler: Sampler
    val_sampler: Sampler
    if dist_info.enabled:
        train_sampler, val_sampler = DistributedSampler(train_ds, seed=cfg.seed), DistributedSampler(val_ds, shuffle=False)
    else:
        train_sampler, val_sampler = RandomSampler(train_ds, generator=torch.Generator()), SequentialSampler(val_ds)
    # Train workers start anew each epoch, seeded from the reseeded global RNG: a resumed epoch is the same epoch.
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=train_sampler, drop_last=True,
                       num_workers=cfg.workers, collate_fn=collate_fn)
    val = DataLoader(val_ds, batch_size=1, sampler=val_sampler, persistent_workers=cfg.workers > 0,
                     num_workers=cfg.workers, collate_fn=collate_fn)
    return train, val


def data_source(cfg: TrainConfig) -> DataSource:
    """Where the run reads its dataset: ``--data-path``, ``--layout``, ``--classes``."""
    return DataSource(cfg.data_path, cfg.layout, cfg.classes)


def train_split(cfg: TrainConfig) -> SegmentationDataset:
    """The run's train split with the training preset, its class map checked against ``--num-classes``."""
    return get_dataset(data_source(cfg), "train", train=True, base_size=cfg.base_size, crop_size=cfg.crop_size,
                       num_classes=cfg.num_classes)[0]


def dataset_classes(cfg: TrainConfig) -> ClassMap:
    """The class map of the run's dataset (its train split), checked against ``--num-classes`` when given."""
    return train_split(cfg).class_map


def build_model(cfg: TrainConfig, device: torch.device, dist_info: distributed.DistInfo) -> tuple[nn.Module, nn.Module]:
    """The model on its device, and the module to call (DDP-wrapped when distributed).

    With ``--pretrained``, every tensor of the file whose shape fits is loaded and one line says what was
    loaded and what starts anew (the class layers, for another class count); ``--freeze-backbone`` then
    keeps the backbone's weights and batch-norm statistics fixed.
    """
    assert cfg.num_classes is not None, "train() sets the class count from the dataset"
    model = get_model(cfg.model, num_classes=cfg.num_classes, aux_loss=cfg.aux_loss)
    if cfg.pretrained:
        report = load_pretrained(model, cfg.pretrained)
        if dist_info.is_main:
            tqdm.write(report.line())
    if cfg.freeze_backbone:
        freeze_backbone(model)
    if dist_info.enabled and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if not dist_info.enabled:
        return model, model
    ids = [dist_info.local_rank] if device.type == "cuda" else None
    return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)


def freeze_backbone(model: nn.Module) -> None:
    """Keep the backbone as loaded: no gradients, and batch norms frozen (torchvision's ``FrozenBatchNorm2d``,
    as its detection models freeze theirs), so that train mode does not move their statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = model.get_submodule("backbone")
    for name, module in list(backbone.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            frozen.load_state_dict({k: v for k, v in module.state_dict().items() if k != "num_batches_tracked"})
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, frozen)
    for p in backbone.parameters():
        p.requires_grad_(False)


def seed_epoch(cfg: TrainConfig, epoch: int, rank: int, loader: DataLoader) -> None:
    """Seed everything random in one epoch from (seed, epoch, rank): shuffle order, augmentation, dropout.

    An epoch's randomness then depends on nothing that happened before it, so a run resumed after epoch k
    trains epoch k+1 exactly as the uninterrupted run did (on CPU; cuDNN may add its own nondeterminism).
    """
    s_global, s_sampler = np.random.SeedSequence([cfg.seed, epoch, rank]).generate_state(2).tolist()
    torch.manual_seed(s_global)  # also every CUDA device
    np.random.seed(s_global)
    random.seed(s_global)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(s_sampler)


def checkpoint_dict(cfg: TrainConfig, model, optimizer, scheduler, scaler, epoch: int, miou: float,
                    best: float, *, plan: Optional[LRPlan] = None, class_map: Optional[ClassMap] = None) -> dict:
    """The torchvision-reference checkpoint plus what export, the runtime and ``--resume`` need (the dataset's
    class names and colours among them)."""
    class_map = class_map or ClassMap.generic(cfg.num_classes or len(VOC_CLASSES))
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch, "args": asdict(cfg), "arch": cfg.model, "num_classes": class_map.num_classes,
            "classes": list(class_map.names), "palette": [list(c) for c in class_map.colours],
            "mean": list(MEAN), "std": list(STD), "base_size": cfg.base_size,
            "miou": miou, "best_miou": best, "iteration": int(scheduler.last_epoch)}
    if plan is not None:
        ckpt["lr_plan"] = plan.to_dict()
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    return ckpt


def train(cfg: TrainConfig) -> dict:
    """Run the whole recipe; returns the last epoch's metrics (rank 0 writes every file).

    Options, ``--resume`` and the output folder are checked before the process group, the data or the model.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    point = read_resume(cfg) if cfg.resume else None
    if cfg.pretrained:   # loaded with the model; a wrong path or architecture should cost nothing
        check_pretrained(cfg.pretrained, cfg.model)
    dist_info = distributed.init_distributed(device.type)
    try:
        # One run per output folder: a second fcn-train there refuses instead of interleaving checkpoints.
        # The folder is checked first (a path under /proc or a file gets its own one-line error).
        prepare_output_dir(Path(cfg.output_dir), resume_epoch=point.start_epoch if point else None, force=cfg.force,
                           create=False)
        train_ds = _open_train_split(cfg, point)     # the layout, split and class file, opened once for the run
        cfg = replace(cfg, num_classes=train_ds.num_classes)
        with run_lock(cfg.output_dir, "fcn-train") if dist_info.is_main else contextlib.nullcontext():
            return _train(cfg, device, dist_info, point, train_ds)
    finally:
        distributed.cleanup()


def _open_train_split(cfg: TrainConfig, point: Optional[ResumePoint]) -> SegmentationDataset:
    """The train split (its class map: the run's); a resumed run must have been trained on as many classes."""
    train_ds = train_split(cfg)
    class_map = train_ds.class_map
    saved = point.full.get("num_classes") if point else None
    if point is not None and saved not in (None, class_map.num_classes):
        raise FcnsegError(f"expected a checkpoint with the dataset's {class_map.num_classes} classes to resume, got "
                          f"{saved} in {point.path}; try --pretrained {point.path} to fine-tune from it instead")
    return train_ds


def _train(cfg: TrainConfig, device: torch.device, dist_info: distributed.DistInfo,
           point: Optional[ResumePoint], train_ds: SegmentationDataset) -> dict:
    out = Path(cfg.output_dir)
    resume_epoch = point.start_epoch if point else None   # the folder was checked by train(), before the lock
    class_map = train_ds.class_map
    train_loader, val_loader = make_loaders(cfg, dist_info, train_ds)
    weight = class_weights(cfg.class_weights, data_source(cfg), class_map, device,
                           say=tqdm.write if dist_info.is_main else None)
    # created (and an old run moved aside) only once the data has passed its checks
    prepare_output_dir(out, resume_epoch=resume_epoch, force=cfg.force, create=dist_info.is_main, say=tqdm.write)
    torch.manual_seed(cfg.seed)  # the same initial weights in every run (and every process) with this seed
    model, runner = build_model(cfg, device, dist_info)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    start, best = (point.start_epoch, point.best_miou) if point else (0, 0.0)
    if point is None:
        plan = plan_lr(cfg, len(train_loader))
        scheduler = make_scheduler(optimizer, cfg, len(train_loader), plan=plan)
    else:
        scheduler, plan, replanned = point.restore(cfg, model, optimizer, scaler, len(train_loader))
        if replanned and dist_info.is_main:
            tqdm.write(f"resuming at epoch {start} with the LR schedule re-planned: poly decay to 0 at iteration "
                       f"{plan.total} (was {(point.saved_plan or {}).get('total')})")
    log: dict = {}
    for epoch in range(start, cfg.epochs):
        seed_epoch(cfg, epoch, dist_info.rank, train_loader)
        t0 = time.perf_counter()
        log = train_one_epoch(runner, optimizer, scheduler, train_loader, device, epoch, scaler, show=dist_info.is_main,
                              weight=weight)
        result = evaluate(runner, val_loader, device, cfg.num_classes, show=dist_info.is_main).compute()
        best = max(best, result["miou"])
        log.update(epoch=epoch, miou=result["miou"], global_acc=result["global_acc"], epoch_s=time.perf_counter() - t0)
        if dist_info.is_main:
            ckpt = checkpoint_dict(cfg, model, optimizer, scheduler, scaler, epoch, result["miou"], best, plan=plan,
                                   class_map=class_map)
            _save_epoch(out, ckpt, log, is_best=result["miou"] >= best)
    if dist_info.is_main and cfg.plot and (out / "metrics.jsonl").exists():
        plot_metrics(out / "metrics.jsonl", out / "metrics.png")
    return log


def _save_epoch(out: Path, ckpt: dict, log: dict, *, is_best: bool) -> None:
    epoch = ckpt["epoch"]
    save_checkpoint(ckpt, out / f"model_{epoch}.pth")
    # the same bytes: linked (atomically replacing the old name) instead of serialised and written again
    link_or_copy(out / f"model_{epoch}.pth", out / "checkpoint.pth")
    if is_best:
        link_or_copy(out / f"model_{epoch}.pth", out / "model_best.pth")
    append_metrics(out / "metrics.jsonl", log)
    tqdm.write(f"epoch {epoch}: loss {log['train_loss']:.4f}  lr {log['lr']:.5f}  mIoU {log['miou'] * 100:.1f}  "
               f"pixel acc {log['global_acc'] * 100:.1f}  ({log['epoch_s']:.0f} s, {log['train_img_s']:.1f} img/s)")
