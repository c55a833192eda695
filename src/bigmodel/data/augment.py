"""Augmentation on whole batches of (N, C, H, W) tensors.

torchvision does not import beside this torch build, and per-sample Python transforms would cost
more than the model on small images, so each transform here is a few tensor ops over the batch.
All randomness comes from the generator passed in, so a resumed run replays the same augmentation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bigmodel.config import AugmentConfig
from bigmodel.data.loader import MIX_WEIGHT, MIX_WITH


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random H×W window per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) → back to (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erasing(
    x: torch.Tensor,
    p: float,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Zero one random rectangle per chosen image (Zhong et al. 2017), after normalisation."""
    n, _, h, w = x.shape
    area = h * w * torch.empty(n).uniform_(*scale, generator=gen)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_ratio)
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
    chosen = torch.rand(n, generator=gen) < p
    r = torch.arange(h)[None, :]
    c = torch.arange(w)[None, :]
    in_rows = (r >= top[:, None]) & (r < (top + eh)[:, None])  # (N, H)
    in_cols = (c >= left[:, None]) & (c < (left + ew)[:, None])  # (N, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]
    return x.masked_fill(mask[:, None], 0)


def mix_images(
    x: torch.Tensor, mixup: float, cutmix: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019), one drawn per batch where both are on:
    each image is blended with (mixup), or gets a patch of (cutmix), image ``with_[i]`` of a shuffle of
    the batch; ``weight`` is the share of its own, in which the loss mixes the two labels. Written here:
    torchvision's and timm's versions come with packages bigmodel does not otherwise need."""
    n, _, h, w = x.shape
    use_cutmix = cutmix > 0 and (mixup == 0 or bool(torch.rand((), generator=gen) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    seed = int(torch.randint(0, 2**62, (), generator=gen))  # Beta from numpy: torch's takes no generator
    weight = float(np.random.default_rng(seed).beta(alpha, alpha))
    with_ = torch.randperm(n, generator=gen)
    if not use_cutmix:
        return weight * x + (1 - weight) * x[with_], with_, torch.tensor([weight])
    cut_h, cut_w = int(h * math.sqrt(1 - weight)), int(w * math.sqrt(1 - weight))
    cy, cx = (int(torch.randint(0, size, (), generator=gen)) for size in (h, w))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[with_, :, top:bottom, left:right]
    kept = 1 - (bottom - top) * (right - left) / (h * w)  # the patch as cut, clipped at the border
    return x, with_, torch.tensor([kept])


class ImageTransform:
    """uint8 batch → normalised float batch, with the configured training augmentation."""

    def __init__(self, mean: list[float], std: list[float], augment: AugmentConfig | None = None):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.augment = augment

    def __call__(
        self, features: dict[str, torch.Tensor], gen: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        x, aug = features["pixels"], self.augment
        if aug is not None and gen is not None:
            if aug.crop_padding:
                x = random_crop(x, aug.crop_padding, gen)
            if aug.hflip:
                x = random_hflip(x, gen)
        x = (x.float().div_(255.0) - self.mean) / self.std
        if aug is not None and gen is not None and aug.random_erasing > 0:
            x = random_erasing(x, aug.random_erasing, gen)
        if aug is not None and gen is not None and (aug.mixup or aug.cutmix) and len(x) > 1:
            x, with_, weight = mix_images(x, aug.mixup, aug.cutmix, gen)
            return {"pixels": x, MIX_WITH: with_, MIX_WEIGHT: weight}
        return {"pixels": x}
