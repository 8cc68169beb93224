"""The learning-rate schedule: linear scaling with the batch, linear warm-up, then step or cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer

from ghm.config import TrainConfig


def base_lr(cfg: TrainConfig) -> float:
    """``train.lr`` is given for ``lr_reference_batch`` images per step; scaled linearly to the real batch."""
    return cfg.lr * cfg.batch_size / cfg.lr_reference_batch


def lr_factor(cfg: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """Linear warm-up from ``warmup_ratio``, then steps at ``lr_steps`` epochs or a cosine decay."""
    total = cfg.epochs * iters_per_epoch
    if cfg.schedule == "step":
        factor = cfg.lr_gamma ** sum(iteration >= step * iters_per_epoch for step in cfg.lr_steps)
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * iteration / total))
    if iteration < cfg.warmup_iters:
        factor *= cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * iteration / cfg.warmup_iters
    return factor


def set_lr_factor(optimizer: Optimizer, factor: float) -> None:
    """Every parameter group at ``factor`` times its initial learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
