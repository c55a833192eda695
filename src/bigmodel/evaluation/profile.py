"""What a model costs to run: the floating-point operations of a forward pass, counted by PyTorch."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@torch.inference_mode()
def forward_flops(model: nn.Module, features: dict[str, torch.Tensor]) -> int:
    """FLOPs of ``model(**features)``, counted rather than estimated so every architecture is measured
    the same way: matrix multiplications, convolutions and attention, two per multiply-add (elementwise
    operations are not counted)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(**{name: value.to(device) for name, value in features.items()})
    return counter.get_total_flops()
