"""Batches sliced from in-memory tensors.

A DataLoader with worker processes pays per-sample Python and pickling costs that dwarf a small
model's step on two cores; here a batch is one index into a tensor. The order of epoch ``e`` is a
pure function of ``(seed, e)`` and the augmentation of batch ``i`` of ``(seed, e, i)``, so a run resumed
mid-epoch starts at batch ``i`` and sees exactly the batches, crops and flips it would have seen.

Under data parallelism every rank draws the same global batch, transforms it whole, and keeps its own
contiguous slice: N ranks see together exactly what one process sees with the same global batch.
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


def move(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    """A batch on ``device``; images (4-d) channels-last when asked."""
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


MIX_WITH, MIX_WEIGHT = "mix_with", "mix_weight"  # a mixed batch's plan (augment.mix_images), for the loss


def model_inputs(batch: Batch) -> Batch:
    """What the model reads of a batch: not its labels, nor a mixed batch's plan."""
    return {key: value for key, value in batch.items() if key not in ("labels", MIX_WITH, MIX_WEIGHT)}


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
        rank: int = 0,
        world_size: int = 1,
    ):
        self.split = split
        self.batch_size = batch_size
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.lengths = lengths  # when given (and shuffling), batches hold examples of similar length
        self.rank, self.world_size = rank, world_size
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
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[Batch]:
        """The batches of the current epoch from batch ``start`` on, as if the first ones were drawn."""
        order: torch.Tensor | None = None
        epoch_seed = self.seed * 100_003 + self.epoch
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed)
            order = torch.randperm(len(self.split), generator=gen)
            if self.lengths is not None:
                order = self._bucketed(order, gen)
        for i in range(start, len(self)):
            window = slice(i * self.batch_size, (i + 1) * self.batch_size)
            part = self.split.take(order[window] if order is not None else window)
            batch_gen = None
            if self.shuffle:  # training: this batch's own augmentation stream
                batch_gen = torch.Generator().manual_seed(epoch_seed * 1_000_003 + i)
            batch = self.transform(part.features, batch_gen)
            batch.setdefault("labels", part.labels)  # a masking transform makes its own
            if self.world_size > 1:
                share = len(part) // self.world_size
                mine = slice(self.rank * share, (self.rank + 1) * share)
                batch = {key: value[mine] for key, value in batch.items()}
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
