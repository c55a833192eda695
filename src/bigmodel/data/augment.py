"""Augmentation on whole batches of (N, C, H, W) tensors.

torchvision does not import beside this torch build, and per-sample Python transforms would cost
more than the model on small images, so each transform here is a few tensor ops over the batch.
All randomness comes from the generator passed in, so a resumed run replays the same augmentation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bigmodel.config import AugmentConfig


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
        return {"pixels": x}
