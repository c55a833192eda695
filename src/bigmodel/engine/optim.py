"""Optimizers and learning-rate schedules from the ``optim`` section; schedules step once per
optimizer step, so they mean the same thing at any batch size or accumulation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from bigmodel.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, sharded: bool = False) -> torch.optim.Optimizer:
    # Weight decay on matrices and kernels only: decaying biases and norm scales only hurts (nanoGPT).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # One fused kernel per step instead of a Python loop over parameters (CPU and CUDA; not MPS, and
    # not FSDP's sharded tensors, for which fused SGD has no kernel).
    fused = next(model.parameters()).device.type in ("cpu", "cuda") and not sharded
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    optimizer = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return optimizer(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int
) -> LRScheduler:
    total = max(1, steps_per_epoch * epochs)
    if cfg.schedule == "onecycle":
        warm = cfg.warmup_epochs / epochs if cfg.warmup_epochs else 0.3
        return OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=min(warm, 0.99))
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        if cfg.schedule == "step":
            return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            floor = cfg.min_lr / cfg.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return LambdaLR(optimizer, factor)
