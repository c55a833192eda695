"""Everything the frameworks share, so that they differ only in their training loop.

A case fixes the model, the data, the batch size and the learning rate. ``prepare_data`` builds the data
once, with bigmodel's own data code, and saves the tensors every run then loads; ``Bench`` hands a run
the same model (seeded), the same batches in the same order, the same AdamW and cosine schedule, the
same autocast, and the ``Clock`` that times every framework in the same way.
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset, default_collate

from bigmodel.config import Config, load_config
from bigmodel.data import DataBundle, DataInfo, TensorSplit, build_data
from bigmodel.data.loader import Batch, Transform
from bigmodel.data.text import TextTransform
from bigmodel.data.vision import image_transform
from bigmodel.device import seed_everything
from bigmodel.models import build_model
from bigmodel.models.output import ModelOutput, as_output


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]  # bigmodel config keys that pick the data and the model
    batch_size: int
    lr: float
    steps: int  # default number of optimizer steps: at most one epoch of the training split
    check_every: int  # steps between accuracy checks
    val_examples: int  # the fixed validation slice the checks use
    target: float  # validation accuracy whose first crossing is timed
    frameworks: tuple[str, ...]  # run by default, in this order


CASES = {
    "seed-cnn": Case(
        "seed-cnn",
        ("data.name=fashion-mnist", "model.name=seed-cnn"),
        batch_size=128,
        lr=1e-3,
        steps=400,  # of at most 421 (54,000 training images)
        check_every=25,
        val_examples=2000,
        target=0.85,
        frameworks=("plain", "bigmodel", "lightning"),
    ),
    "transformer": Case(
        "transformer",
        ("data.name=imdb", "data.max_length=128", "model.name=transformer"),
        batch_size=32,
        lr=1e-3,
        steps=600,  # of at most 625 (20,000 training reviews)
        check_every=50,
        val_examples=1000,
        target=0.75,
        frameworks=("plain", "bigmodel", "lightning", "hf"),
    ),
    "bert": Case(
        "bert",
        ("data.name=imdb", "data.max_length=128", "model.name=bert"),
        batch_size=32,
        lr=1e-4,
        steps=200,
        check_every=25,
        val_examples=500,
        target=0.60,
        frameworks=("plain", "bigmodel", "lightning", "hf"),
    ),
}


@dataclass
class Settings:
    """One run's settings, identical for every framework of a measurement but ``framework``."""

    case: str
    precision: str  # fp32, or bf16: autocast to bfloat16 around the forward pass
    steps: int
    warmup: int  # first steps left out of the throughput
    batch_size: int
    lr: float
    check_every: int
    val_examples: int
    target: float
    threads: int
    seed: int = 0
    eval_batch_size: int = 256
    data: str = ""  # the tensors prepare_data saved
    workdir: str = ""  # where the framework may write its logs and checkpoints
    framework: str = ""
    # More config overrides: model.* and data.* change the case for every framework (all build the model
    # and the data from this config), train.* and optim.* only bigmodel's own loop.
    bigmodel_extra: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bigmodel_overrides(s: Settings) -> list[str]:
    """The bigmodel config of a run, as ``section.key=value`` overrides of the built-in default."""
    return [
        *CASES[s.case].overrides,
        # The built-in default augments images (crop, flip); no framework here augments.
        "data.augment.crop_padding=0",
        "data.augment.hflip=false",
        # Random batches, the order the peers' sampler draws (bigmodel's default batches texts by length).
        "data.length_buckets=false",
        "train.epochs=1",  # the training split is cut to exactly `steps` batches (prepare_data)
        f"train.batch_size={s.batch_size}",
        f"train.eval_batch_size={s.eval_batch_size}",
        f"train.precision={s.precision}",
        f"train.seed={s.seed}",
        f"train.threads={s.threads}",
        "optim.name=adamw",
        f"optim.lr={s.lr}",
        "optim.weight_decay=0.0",
        "optim.schedule=cosine",
        *s.bigmodel_extra,
    ]


def bigmodel_config(s: Settings) -> Config:
    return load_config(None, bigmodel_overrides(s))


def prepare_data(s: Settings, path: Path) -> dict[str, Any]:
    """Build the case's data with bigmodel's data code and save the tensors of this measurement:
    ``steps × batch_size`` training examples (one epoch of exactly ``steps`` batches, so that no
    framework's end-of-epoch work falls between timed steps) and the validation slice, both drawn at
    random with the seed (the text splits keep file order, and IMDB's file is sorted by label)."""
    data = build_data(bigmodel_config(s).data)
    n = s.steps * s.batch_size
    if n > len(data.train):
        raise SystemExit(
            f"--steps {s.steps} × batch {s.batch_size} needs {n} training examples, but {s.case} has "
            f"{len(data.train)}: a run is one epoch; use --steps {len(data.train) // s.batch_size} or fewer"
        )
    gen = torch.Generator().manual_seed(s.seed)
    train = data.train.take(torch.randperm(len(data.train), generator=gen)[:n])
    val = data.val.take(torch.randperm(len(data.val), generator=gen)[: s.val_examples])
    saved: dict[str, Any] = {"info": data.info.to_dict()}
    for name, split in (("train", train), ("val", val)):
        saved[name] = {"features": split.features, "labels": split.labels}
    torch.save(saved, path)
    classes = data.info.num_classes
    return {
        "train_examples": len(train),
        "val_examples": len(val),
        "train_per_class": torch.bincount(train.labels, minlength=classes).tolist(),
        "val_per_class": torch.bincount(val.labels, minlength=classes).tolist(),
    }


class EpochOrder(Sampler[int]):
    """A new random order each epoch: the one bigmodel's BatchLoader draws for (seed, epoch)
    (bigmodel/data/loader.py), so that every framework sees the same batches in the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=gen).tolist())


class Collate:
    """Stacks the examples, then applies bigmodel's per-batch transform (images: uint8 → normalised
    float; texts: trimmed to the batch's longest, int64), so the peers' batches equal bigmodel's."""

    def __init__(self, names: list[str], transform: Transform):
        self.names, self.transform = names, transform

    def __call__(self, examples: list[tuple[torch.Tensor, ...]]) -> Batch:
        *features, labels = default_collate(examples)
        batch = self.transform(dict(zip(self.names, features, strict=True)), None)
        batch["labels"] = labels
        return batch


def loss(outputs: ModelOutput | torch.Tensor, labels: torch.Tensor, **_: Any) -> torch.Tensor:
    """Cross-entropy in float32, as bigmodel computes it (``**_``: the HF Trainer adds num_items_in_batch)."""
    return F.cross_entropy(as_output(outputs).logits.float(), labels)


class Bench:
    """What one run gets: the saved data, the model, the peers' loader, optimizer and autocast, the clock."""

    def __init__(self, settings: Settings):
        s = self.settings = settings
        saved = torch.load(s.data, weights_only=True)
        self.info = DataInfo.from_dict(saved["info"])
        train, val = (TensorSplit(saved[k]["features"], saved[k]["labels"]) for k in ("train", "val"))
        transform = image_transform(self.info) if self.info.kind == "image" else TextTransform()
        self.data = DataBundle(train, val, val, self.info, transform, transform)  # no augmentation
        self.val_features, self.val_labels = transform(val.features, None), val.labels
        self.config = bigmodel_config(s)
        self.dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
        self.workdir = Path(s.workdir)
        self.clock = Clock(s, self.accuracy)

    def model(self) -> nn.Module:
        """The case's model from bigmodel's registry, initialised from the seed: the same weights in
        every framework."""
        seed_everything(self.settings.seed, deterministic=False)
        return build_model(self.config.model, self.info)

    def train_loader(self) -> DataLoader:
        """The peers' loader: a plain DataLoader over a TensorDataset, no worker processes."""
        split, s = self.data.train, self.settings
        dataset = TensorDataset(*split.features.values(), split.labels)
        return DataLoader(
            dataset,
            batch_size=s.batch_size,
            sampler=EpochOrder(len(dataset), s.seed),
            drop_last=True,
            num_workers=0,
            collate_fn=Collate(list(split.features), self.data.train_transform),
        )

    def optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW (fused, as bigmodel's) and a cosine decay to 0 over the run, stepped once per step:
        the same numbers bigmodel's optim.schedule=cosine gives."""
        s = self.settings
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.999), weight_decay=0.0, fused=True)

        def cosine(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(1.0, step / s.steps)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.dtype)

    @torch.inference_mode()
    def accuracy(self, model: nn.Module) -> float:
        """Accuracy on the fixed validation slice, in the run's precision; the model's mode is restored."""
        was_training = model.training
        model.eval()
        correct, n, size = 0, len(self.val_labels), self.settings.eval_batch_size
        for start in range(0, n, size):
            part = {k: v[start : start + size] for k, v in self.val_features.items()}
            with self.autocast():
                logits = model(**part).logits
            correct += int((logits.argmax(dim=-1) == self.val_labels[start : start + size]).sum())
        model.train(was_training)
        return correct / n


class Clock:
    """Times a run the same way in every framework, which calls ``start`` from its last hook before the
    first batch is drawn and ``step_end`` from its first hook after each optimizer step (and the
    scheduler's step).

    The clock stops while the accuracy check runs (every ``check_every`` steps and after the last), so
    neither the throughput nor the time to target includes it. Throughput: the samples of the steps after
    the first ``warmup`` over the time from the end of step ``warmup`` to the end of the last step.
    Time to target: from ``start`` to the end of the step whose check first reached ``target``.
    """

    def __init__(self, s: Settings, check: Callable[[nn.Module], float]):
        self.s, self.check = s, check
        self.paused = 0.0
        self.began: float | None = None
        self.ends: list[float] = []  # clock time at the end of each step
        self.checks: list[list[float]] = []  # [step, seconds since start, accuracy]
        self.reached: float | None = None
        self.rss_at_start_mb = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.paused

    def start(self) -> None:
        if self.began is None:
            self.rss_at_start_mb = peak_rss_mb()
            self.began = self.now()

    def step_end(self, model: nn.Module) -> None:
        if self.began is None:
            raise RuntimeError("Clock.step_end before Clock.start: the framework module misses a hook")
        self.ends.append(self.now())
        step = len(self.ends)
        if step % self.s.check_every and step != self.s.steps:
            return
        checking = time.perf_counter()
        accuracy = self.check(model)
        self.paused += time.perf_counter() - checking
        elapsed = self.ends[-1] - self.began
        self.checks.append([step, round(elapsed, 4), accuracy])
        if self.reached is None and accuracy >= self.s.target:
            self.reached = elapsed

    def result(self) -> dict[str, Any]:
        s, ends = self.s, self.ends
        if len(ends) != s.steps:
            raise RuntimeError(f"{s.framework} took {len(ends)} optimizer steps, not the {s.steps} asked for")
        assert self.began is not None
        warm_end = ends[s.warmup - 1] if s.warmup else self.began
        timed = ends[-1] - warm_end
        step_seconds = [b - a for a, b in zip([self.began, *ends[:-1]], ends, strict=True)][s.warmup :]
        return {
            "steps": len(ends),
            "samples_per_s": s.batch_size * (s.steps - s.warmup) / timed,
            "step_seconds_median": statistics.median(step_seconds),
            "timed_seconds": timed,
            "warmup_seconds": warm_end - self.began,
            "train_seconds": ends[-1] - self.began,
            "check_seconds": self.paused,
            "time_to_target_s": self.reached,
            "final_accuracy": self.checks[-1][2],
            "checks": self.checks,
            "rss_at_start_mb": self.rss_at_start_mb,
        }


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
