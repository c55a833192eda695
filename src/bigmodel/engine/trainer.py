"""The one training loop, for every model and every kind of data.

    for epoch in range(epochs):
        for batch in train:                      # batches of in-memory tensors
            loss = cross_entropy(model(**features), labels) / grad_accum
            loss.backward()
            every grad_accum batches: clip, optimizer.step(), scheduler.step()
        metrics = evaluate(val)
        callbacks see the metrics            # progress bar, TensorBoard, jsonl, checkpoints, early stop
        stop if done()                       # one place decides, and says why

The loop knows no logger and writes no file: callbacks do, through a short fixed list of events.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel.config import Config
from bigmodel.data import BatchLoader, DataBundle
from bigmodel.data.loader import Batch
from bigmodel.engine.device import autocast, resolve_device, resolve_precision
from bigmodel.engine.optim import build_optimizer, build_scheduler
from bigmodel.errors import UserError
from bigmodel.evaluation.metrics import classification_metrics, summary


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the hyperparameters, not the code, need changing."""


class Callback:
    """Observes the loop. Acts only through ``trainer.request_stop`` or its own files."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_batch_end(self, trainer: Trainer, loss: float, size: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def move(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.ndim == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: BatchLoader,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on the CPU) and labels for every example of ``loader``, in order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        batch = move(batch, device, channels_last)
        labels.append(batch.pop("labels").cpu())
        with autocast(device, dtype):
            logits.append(model(**batch).float().cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


class Trainer:
    def __init__(self, model: nn.Module, data: DataBundle, cfg: Config, callbacks: Sequence[Callback] = ()):
        tc = cfg.train
        self.cfg = cfg
        self.data = data
        self.callbacks = list(callbacks)
        self.device = resolve_device(tc.device)
        self.dtype = resolve_precision(tc.precision, self.device)
        self.channels_last = tc.channels_last and len(data.info.input_shape) == 3
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        mask = data.train.features.get("attention_mask")
        self.train_loader = BatchLoader(
            data.train,
            tc.batch_size,
            data.train_transform,
            shuffle=True,
            seed=tc.seed,
            drop_last=len(data.train) > tc.batch_size,  # a last batch of one breaks batch norm
            lengths=mask.sum(dim=1) if mask is not None and cfg.data.length_buckets else None,
        )
        self.val_loader = BatchLoader(data.val, tc.eval_batch_size, data.eval_transform)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / tc.grad_accum)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, tc.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.history: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        self._stop_request: str | None = None

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> None:
        start = time.perf_counter()
        earlier = self.history[-1]["elapsed_seconds"] if self.history else 0.0  # before a resume
        self._emit("on_fit_start")
        while (reason := self.done()) is None:
            self.train_loader.set_epoch(self.epoch)
            metrics = self._train_epoch()
            metrics.update({f"val/{k}": v for k, v in summary(self.evaluate(self.val_loader)).items()})
            self.epoch += 1
            elapsed = earlier + time.perf_counter() - start
            metrics = {"epoch": self.epoch, "step": self.step, **metrics, "elapsed_seconds": elapsed}
            self.history.append(metrics)
            self._emit("on_epoch_end", metrics)
        self.stop_reason = reason
        self._emit("on_fit_end")

    def done(self) -> str | None:
        """Every reason to stop, in one place; the reason is kept and reported."""
        if self._stop_request is not None:
            return self._stop_request
        if self.epoch >= self.cfg.train.epochs:
            return f"finished train.epochs={self.cfg.train.epochs}"
        return None

    def request_stop(self, reason: str) -> None:
        self._stop_request = reason

    def _train_epoch(self) -> dict[str, float]:
        tc = self.cfg.train
        self.model.train()
        total_loss = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)  # summed on the device: no sync
        seen = 0
        start = time.perf_counter()
        batches = len(self.train_loader)
        for i, batch in enumerate(self.train_loader):
            batch = move(batch, self.device, self.channels_last)
            labels = batch.pop("labels")
            with autocast(self.device, self.dtype):
                logits = self.model(**batch)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=tc.label_smoothing)
            self.scaler.scale(loss / tc.grad_accum).backward()
            if (i + 1) % tc.grad_accum == 0 or i + 1 == batches:
                self._optimizer_step()
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss became {value} at epoch {self.epoch + 1}, step {self.step}; "
                    "lower optim.lr or set train.grad_clip"
                )
            total_loss += value * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            self._emit("on_batch_end", value, len(labels))
        seconds = time.perf_counter() - start
        return {
            "train/loss": total_loss.item() / max(seen, 1),
            "train/accuracy": correct.item() / max(seen, 1),
            "train/samples_per_s": seen / seconds,
            "train/epoch_seconds": seconds,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _optimizer_step(self) -> None:
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, loader: BatchLoader) -> dict[str, Any]:
        logits, labels = predict_logits(self.model, loader, self.device, self.dtype, self.channels_last)
        return classification_metrics(logits, labels, self.data.info.classes)

    def example_features(self) -> Batch:
        """One small batch of inputs on the device, for tracing the model graph."""
        batch = move(next(iter(self.val_loader)), self.device, self.channels_last)
        return {k: v[:2] for k, v in batch.items() if k != "labels"}

    # -- state, for checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.history = state["history"]
        # Per-parameter state (moments, momentum) from the checkpoint; hyperparameters from the config,
        # so a resume with a new optim.lr or train.epochs means what it says.
        optimizer = state["optimizer"]
        optimizer["param_groups"] = [
            {**group, "params": saved["params"]}
            for group, saved in zip(
                self.optimizer.state_dict()["param_groups"], optimizer["param_groups"], strict=True
            )
        ]
        self.optimizer.load_state_dict(optimizer)
        # The schedule is a pure function of the step: replay it up to where the run stopped.
        total = self.steps_per_epoch * self.cfg.train.epochs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" is intended here
            for _ in range(min(self.step, total - 1)):
                self.scheduler.step()
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        for cb in self.callbacks:
            cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)
