"""Batches sliced from in-memory tensors.

A DataLoader with worker processes pays per-sample Python and pickling costs that dwarf a small
model's step on two cores; here a batch is one index into a tensor. The order of epoch ``e`` is a
pure function of ``(seed, e)``, so a run resumed mid-epoch can replay exactly the batches it missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

Batch = dict[str, torch.Tensor]


@dataclass
class TensorSplit:
    """One split of a data set: model inputs under their forward() argument names, plus labels."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor | slice) -> TensorSplit:
        return TensorSplit({k: v[index] for k, v in self.features.items()}, self.labels[index])


Transform = Callable[[dict[str, torch.Tensor], torch.Generator | None], dict[str, torch.Tensor]]


class BatchLoader:
    """Iterates a ``TensorSplit`` in batches; shuffles and augments from a per-epoch seed."""

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        transform: Transform,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        lengths: torch.Tensor | None = None,
    ):
        self.split = split
        self.batch_size = batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.lengths = lengths  # when given (and shuffling), batches hold examples of similar length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples per epoch (fewer than the split when the last partial batch is dropped)."""
        return len(self) * self.batch_size if self.drop_last else len(self.split)

    def __iter__(self) -> Iterator[Batch]:
        gen = None
        order: torch.Tensor | None = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(len(self.split), generator=gen)
            if self.lengths is not None:
                order = self._bucketed(order, gen)
        for i in range(len(self)):
            window = slice(i * self.batch_size, (i + 1) * self.batch_size)
            part = self.split.take(order[window] if order is not None else window)
            batch = self.transform(part.features, gen)
            batch["labels"] = part.labels
            yield batch

    def _bucketed(self, order: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Sort each window of 50 batches by length, then shuffle whole batches: little padding, and
        still a different mix of examples in every batch and epoch."""
        assert self.lengths is not None
        window = self.batch_size * 50
        chunks = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunks.append(chunk[torch.argsort(self.lengths[chunk], stable=True)])
        order = torch.cat(chunks)
        full = len(order) // self.batch_size * self.batch_size
        batches = order[:full].view(-1, self.batch_size)
        batches = batches[torch.randperm(len(batches), generator=gen)]
        return torch.cat([batches.flatten(), order[full:]])
