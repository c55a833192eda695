"""What every data set hands to the rest of bigmodel: three splits and a description of them."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bigmodel.data.loader import TensorSplit, Transform

IGNORE = -100  # the label of a position that is not predicted (PyTorch and Hugging Face use it too)


@dataclass
class DataInfo:
    """Everything a model builder and a loaded run need to know about the data, saved with the run."""

    kind: str  # "image" or "text"
    classes: list[str]
    input_shape: list[int]  # one example's shape: [1, 28, 28] for images, [max_length] for text
    source: str  # where the data came from, for the report
    mean: list[float] = field(default_factory=list)  # per-channel normalisation of images
    std: list[float] = field(default_factory=list)
    vocab_size: int = 0  # text: size of the tokenizer's vocabulary
    pad_token_id: int = 0  # text: the id that fills padded positions

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataInfo:
        return cls(**raw)


@dataclass
class DataBundle:
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    info: DataInfo
    train_transform: Transform
    eval_transform: Transform
    tokenizer: Any = None  # text: a transformers tokenizer, saved into the run directory

    def split(self, name: str) -> TensorSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def carve(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with ``fraction`` of ``n`` carved at random; both keep the original order."""
    carved = np.random.default_rng(seed).permutation(n)[: max(1, round(n * fraction))]
    mask = np.zeros(n, dtype=bool)
    mask[carved] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def group_ids(keys: Iterable[Hashable]) -> np.ndarray:
    """For each key the number of its distinct value, numbered in order of first appearance."""
    seen: dict[Hashable, int] = {}
    return np.array([seen.setdefault(key, len(seen)) for key in keys], dtype=np.int64)


def carve_groups(group: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``carve`` over distinct values (``group_ids``): all copies of one land on the same side. Without
    copies it carves exactly what ``carve`` does."""
    _, carved = carve(int(group.max()) + 1 if len(group) else 0, fraction, seed)
    mask = np.isin(group, carved)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def unseen_in_test(group: np.ndarray, given: int) -> tuple[np.ndarray, int, int]:
    """For ``group_ids`` of training items followed by a given test split's (from ``given`` on): the test
    positions (0 = the first test item) whose value no training item has, and how many training and
    how many of those test items repeat an earlier one of their own split."""
    distinct_trained = int(group[:given].max()) + 1 if given else 0  # numbered as first met: train first
    test = group[given:]
    unseen = np.flatnonzero(test >= distinct_trained)
    return unseen, given - distinct_trained, len(unseen) - len(np.unique(test[unseen]))


def conflicting(labels: np.ndarray, group: np.ndarray) -> int:
    """How many repeated values have copies that disagree on the label."""
    return sum(len(set(labels[group == g].tolist())) > 1 for g in np.flatnonzero(np.bincount(group) > 1))


def sample(index: np.ndarray, limit: int | None, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """``limit`` of ``index`` drawn at random (stratified by ``labels`` when given), in their original
    order; all of them without a limit. Not the first ``limit``: files are often sorted by class, and
    IMDB's first 10,000 training reviews are all negative."""
    if limit is None or limit >= len(index):
        return index
    if labels is not None:
        from sklearn.model_selection import train_test_split

        try:
            kept, _ = train_test_split(index, train_size=limit, stratify=labels[index], random_state=seed)
            return np.sort(kept)
        except ValueError:  # too few of some class, or fewer left out than there are classes
            pass
    return np.sort(np.random.default_rng(seed).choice(index, limit, replace=False))


def to_split(x: np.ndarray, y: np.ndarray, feature: str) -> TensorSplit:
    return TensorSplit({feature: torch.from_numpy(np.ascontiguousarray(x))}, torch.from_numpy(y).long())
