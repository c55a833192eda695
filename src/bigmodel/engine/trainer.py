"""The one training loop, for every model and every kind of data.

    for epoch in range(epochs):
        for batch in train:                      # batches of in-memory tensors (this rank's share)
            loss = cross_entropy(model(**features), labels) / grad_accum
            loss.backward()                      # under torchrun, DDP averages gradients across ranks
            every grad_accum batches: clip, optimizer.step(), scheduler.step()
                callbacks see the step           # periodic checkpoints
                SIGINT/SIGTERM seen? callbacks checkpoint, then stop
        metrics = evaluate(val)                  # each rank a shard, gathered
        callbacks see the metrics            # progress bar, TensorBoard, jsonl, checkpoints, early stop
        stop if done()                       # one place decides, and says why

The loop knows no logger and writes no file: callbacks do, through a short fixed list of events.
Everything a run needs to continue exactly where it was, even mid-epoch, is in ``state_dict()``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from bigmodel.config import Config, TrainConfig
from bigmodel.data import BatchLoader, DataBundle, DataInfo, TensorSplit
from bigmodel.data.bundle import IGNORE
from bigmodel.data.loader import MIX_WEIGHT, MIX_WITH, Batch, model_inputs, move
from bigmodel.device import (
    autocast,
    keep_freed_memory,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from bigmodel.engine.distributed import any_rank, gather_objects, init_world, sum_across, world_from_env
from bigmodel.engine.optim import build_optimizer, build_scheduler
from bigmodel.errors import Interrupted, UserError
from bigmodel.tasks import Task, task_for
from bigmodel.tasks.metrics import summary

EPOCH_SUMS = ("loss", "targets", "examples", "tokens")  # summed over an epoch, across ranks
FULL = StateDictOptions(full_state_dict=True)  # FSDP: whole tensors, not this rank's shard
FULL_ON_CPU = StateDictOptions(full_state_dict=True, cpu_offload=True)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the hyperparameters, not the code, need changing."""


class Callback:
    """Observes the loop. Acts only through ``trainer.request_stop`` or its own files.

    Under torchrun every rank runs the loop; a callback that takes part in collectives (through
    ``trainer.state_dict()``) or decides to stop must run on every rank, one that writes logs on rank 0."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_batch_end(self, trainer: Trainer, loss: float, size: int) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_interrupt(self, trainer: Trainer) -> None:
        """SIGINT or SIGTERM arrived; training stops when every callback has returned."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def eval_loader(split: TensorSplit, data: DataBundle, cfg: TrainConfig) -> BatchLoader:
    """Batches of ``split`` for evaluation: in order, unaugmented, ``train.eval_batch_size`` at a time
    (by default as many as the task finds safe)."""
    return BatchLoader(split, eval_batch_size(cfg, data.info), data.eval_transform)


def eval_batch_size(cfg: TrainConfig, info: DataInfo) -> int:
    return cfg.eval_batch_size or task_for(info).eval_batch_size()


class Trainer:
    def __init__(self, model: nn.Module, data: DataBundle, cfg: Config, callbacks: Sequence[Callback] = ()):
        tc = cfg.train
        self.cfg = cfg
        self.data = data
        self.task: Task = task_for(data.info)
        if cfg.train.monitor is None:
            cfg.train.monitor = self.task.monitor  # written so to config.yaml
        self.callbacks = list(callbacks)
        self.world = world_from_env()
        if self.world.distributed and tc.batch_size % self.world.size:
            raise UserError(
                f"train.batch_size={tc.batch_size} is the global batch and must divide evenly among "
                f"{self.world.size} processes; use a multiple of {self.world.size}"
            )
        self.device = init_world(self.world, resolve_device(tc.device))
        if self.world.distributed:  # same initial weights everywhere (DDP checks), own dropout per rank
            seed_everything(tc.seed + self.world.rank, tc.deterministic)
        self.dtype = resolve_precision(tc.precision, self.device)
        if tc.keep_freed_memory:
            keep_freed_memory()
        self.channels_last = tc.channels_last and len(data.info.input_shape) == 3
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.forward_model: nn.Module = self.model
        self.sharded = self.world.distributed and tc.strategy == "fsdp"
        if self.sharded:
            shard_model(self.model)  # in place: the model itself now gathers its weights as it runs
        elif self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)
        if tc.compile:  # the weights stay self.model's: checkpoints and evaluation never see the wrapper
            self.forward_model = torch.compile(self.forward_model, dynamic=self.task.variable_length)
        mask = data.train.features.get("attention_mask")
        self.train_loader = BatchLoader(
            data.train,
            tc.batch_size,
            data.train_transform,
            shuffle=True,
            seed=tc.seed,
            drop_last=len(data.train) > tc.batch_size,  # a last batch of one breaks batch norm
            lengths=mask.sum(dim=1) if mask is not None and cfg.data.length_buckets else None,
            rank=self.world.rank,
            world_size=self.world.size,
        )
        # Each rank validates a shard, except under FSDP, where every forward pass needs every rank.
        shards = 1 if self.sharded else self.world.size
        shard = torch.tensor_split(torch.arange(len(data.val)), shards)[self.world.rank % shards]
        self.val_loader = eval_loader(data.val.take(shard), data, tc)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / tc.grad_accum)
        self.ema = self._moving_average(tc.ema)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.sharded)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, tc.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.batch_in_epoch = 0  # batches of the current epoch already trained
        self.history: list[dict[str, float]] = []
        self.stop_reason: str | None = None
        self._stop_request: str | None = None
        self._signal: int | None = None
        # Sums over the current epoch so far, kept here so that a mid-epoch checkpoint holds them.
        self._sums = dict.fromkeys(EPOCH_SUMS, 0.0)
        self._correct = torch.zeros((), dtype=torch.int64, device=self.device)  # summed without a sync
        self._epoch_seconds_before = 0.0  # of the current epoch, before a resume
        self._elapsed_before = 0.0  # of the whole run, before a resume
        self._epoch_clock = self._fit_clock = time.perf_counter()

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> None:
        self._fit_clock = time.perf_counter() - self._elapsed_before
        self._emit("on_fit_start")
        with self._catching_signals():
            while (reason := self.done()) is None:
                self.train_loader.set_epoch(self.epoch)
                metrics = self._train_epoch()
                metrics.update({f"val/{k}": v for k, v in summary(self._evaluate_val()).items()})
                self.epoch += 1
                self.batch_in_epoch = 0
                metrics = {
                    "epoch": self.epoch,
                    "step": self.step,
                    **metrics,
                    "elapsed_seconds": self.elapsed(),
                }
                self.history.append(metrics)
                self._emit("on_epoch_end", metrics)
                self._stop_if_signalled()
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

    def elapsed(self) -> float:
        """Seconds of training in this run, across resumes."""
        return time.perf_counter() - self._fit_clock

    def _train_epoch(self) -> dict[str, float]:
        tc = self.cfg.train
        self.forward_model.train()
        self._epoch_clock = time.perf_counter() - self._epoch_seconds_before
        batches = len(self.train_loader)
        for i, batch in enumerate(self.train_loader.iter_from(self.batch_in_epoch), self.batch_in_epoch):
            boundary = (i + 1) % tc.grad_accum == 0 or i + 1 == batches
            value, size = self.train_batch(batch, step=boundary)
            self._emit("on_batch_end", value, size)
            if boundary:
                self.batch_in_epoch = i + 1
                self._emit("on_step_end")
                self._stop_if_signalled()
        seconds = time.perf_counter() - self._epoch_clock
        totals = sum_across(torch.tensor([*self._sums.values(), float(self._correct)], dtype=torch.float64))
        sums = dict(zip([*EPOCH_SUMS, "correct"], totals.tolist(), strict=True))
        self._sums, self._epoch_seconds_before = dict.fromkeys(EPOCH_SUMS, 0.0), 0.0
        self._correct.zero_()
        metrics = {
            "train/loss": sums["loss"] / max(sums["targets"], 1),
            "train/accuracy": sums["correct"] / max(sums["targets"], 1),
            "train/samples_per_s": sums["examples"] / seconds,
        }
        if sums["tokens"]:
            metrics["train/tokens_per_s"] = sums["tokens"] / seconds
        return {**metrics, "train/epoch_seconds": seconds, "lr": self.optimizer.param_groups[0]["lr"]}

    def loss(
        self, batch: Batch, model: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training objective of one batch already on the device: (loss, logits, the labels they
        predict). ``model`` defaults to the training forward (DDP, compiled); the profiler counts the
        plain one."""
        features = model_inputs(batch)
        with autocast(self.device, self.dtype):
            out = self.task.output(model or self.forward_model, features)
        predicted = self.task.targets(out, batch["labels"])
        loss = self.task.loss(out, predicted, self.cfg.train.label_smoothing)
        if MIX_WITH in batch:  # mixup or cutmix: the labels mixed in the images' shares
            other = self.task.loss(out, predicted[batch[MIX_WITH]], self.cfg.train.label_smoothing)
            weight = batch[MIX_WEIGHT].to(loss.dtype)[0]
            loss = weight * loss + (1 - weight) * other
        return loss, out.logits, predicted

    def train_batch(self, batch: Batch, step: bool = True) -> tuple[float, int]:
        """One batch: forward, backward, its share of the epoch's sums, and the optimizer step when
        ``step`` (the batch that ends an accumulation); returns its loss and size. The phases carry
        torch.profiler labels, which is how ``bigmodel profile`` times this very code."""
        with torch.profiler.record_function("bigmodel.move"):
            batch = move(batch, self.device, self.channels_last)
        # Between optimizer steps DDP need not average gradients: once per step is enough.
        quiet = self.world.distributed and not self.sharded and not step
        with self.forward_model.no_sync() if quiet else contextlib.nullcontext():
            with torch.profiler.record_function("bigmodel.forward"):
                loss, logits, predicted = self.loss(batch)
            with torch.profiler.record_function("bigmodel.backward"):
                self.scaler.scale(loss / self.cfg.train.grad_accum).backward()
        with torch.profiler.record_function("bigmodel.bookkeeping"):
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss became {value} at epoch {self.epoch + 1}, step {self.step}; "
                    "lower optim.lr or set train.grad_clip"
                )
            targets = predicted != IGNORE  # every label of a classifier; the predicted tokens of an LM
            n_targets = int(targets.sum())
            self._sums["loss"] += value * n_targets
            self._sums["targets"] += n_targets
            self._sums["examples"] += len(batch["labels"])
            self._sums["tokens"] += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
            self._correct += ((logits.argmax(dim=-1) == predicted) & targets).sum()
        if step:
            with torch.profiler.record_function("bigmodel.optimizer"):
                self._optimizer_step()
        return value, len(batch["labels"])

    def _optimizer_step(self) -> None:
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1

    def _moving_average(self, decay: float | None) -> nn.Module | None:
        """``train.ema``: an exponential moving average of the weights (and of batch norm's statistics),
        updated after every optimizer step, which validation, the best checkpoint and so the test score
        see; the trained weights go on learning underneath it."""
        if decay is None:
            return None
        if self.sharded:
            raise UserError(
                "train.ema keeps a whole copy of the weights on each process; use it with train.strategy=ddp"
            )
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    # -- signals ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _catching_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM only set a flag: the loop checkpoints at the next optimizer step and stops.
        A second signal acts at once, as the first would have without this."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

        def remember(signum: int, frame: Any) -> None:
            self._signal = signum
            for other, handler in previous.items():
                signal.signal(other, handler)

        for signum in previous:
            signal.signal(signum, remember)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_if_signalled(self) -> None:
        if not any_rank(self._signal is not None):  # every rank stops at the same step
            return
        signum = self._signal or signal.SIGTERM  # another rank got it (torchrun forwards to all)
        self._emit("on_interrupt")
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} at epoch {self.epoch + 1}, step {self.step}", signum
        )

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate_val(self) -> dict[str, Any]:
        """Each rank predicts its shard of the validation split; the metrics are of all of it."""
        share = self.task.evaluate(
            self.evaluated_model, self.val_loader, self.device, self.dtype, self.channels_last
        )
        return self.task.metrics([share] if self.sharded else gather_objects(share))

    def example_features(self) -> Batch:
        """One small batch of inputs on the device, for tracing the model graph."""
        batch = move(next(iter(self.val_loader)), self.device, self.channels_last)
        return {k: v[:2] for k, v in batch.items() if k != "labels"}

    @property
    def evaluated_model(self) -> nn.Module:
        """What validation scores and the best checkpoint keeps: the moving average, where there is one."""
        return self.ema.module if self.ema is not None else self.model

    # -- state, for checkpoints -----------------------------------------------------------------
    def model_tensors(self, evaluated: bool = False) -> dict[str, torch.Tensor]:
        """The full weights (``evaluated``: of ``evaluated_model``), on the CPU. Under FSDP every rank
        must call it (it gathers the shards), and only rank 0 gets them."""
        if self.sharded:
            return get_model_state_dict(self.model, options=FULL_ON_CPU)
        model = self.evaluated_model if evaluated else self.model
        # contiguous(): channels-last kernels are strided views, and safetensors stores dense tensors;
        # a tied weight (an LM's output layer is its embedding) is stored under each name, as a copy,
        # since safetensors refuses two names for one storage.
        tensors, storages = {}, set()
        for key, value in model.state_dict().items():
            value = value.detach().cpu().contiguous()
            if value.untyped_storage().data_ptr() in storages:
                value = value.clone()
            storages.add(value.untyped_storage().data_ptr())
            tensors[key] = value
        return tensors

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit. Under torchrun every rank must call it (each
        rank's RNG is gathered)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": {
                **self._sums,
                "correct": int(self._correct),
                "seconds": time.perf_counter() - self._epoch_clock if self.batch_in_epoch else 0.0,
            },
            "elapsed": self.elapsed(),
            "history": self.history,
            "optimizer": (
                get_optimizer_state_dict(self.model, self.optimizer, options=FULL_ON_CPU)
                if self.sharded
                else self.optimizer.state_dict()
            ),
            "scheduler": self.scheduler.state_dict(),
            "schedule_key": self._schedule_key(),
            "scaler": self.scaler.state_dict(),
            "rng": gather_objects(_rng_state()),  # one entry per rank
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.step = state["step"]
        self.batch_in_epoch = state["batch_in_epoch"]
        sums = state["epoch_sums"]
        self._sums = {key: sums[key] for key in EPOCH_SUMS}
        self._correct.fill_(sums["correct"])
        self._epoch_seconds_before = sums["seconds"]
        self._elapsed_before = state["elapsed"]
        self.history = state["history"]
        self._restore_optimizer(state)
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        _set_rng_state(rng[self.world.rank] if len(rng) == self.world.size else rng[0])
        for cb in self.callbacks:
            cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])

    def _schedule_key(self) -> str:
        """What the learning-rate schedule depends on; when it changes, the saved one no longer applies."""
        key = {"optim": self.cfg.optim.model_dump(mode="json"), "epochs": self.cfg.train.epochs}
        return json.dumps({**key, "steps_per_epoch": self.steps_per_epoch}, sort_keys=True)

    def _restore_optimizer(self, state: dict[str, Any]) -> None:
        if state.get("schedule_key") == self._schedule_key():  # the same run: continue exactly
            self._load_optimizer(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            return
        # A new horizon or learning rate means what it says: per-parameter state (moments, momentum)
        # from the checkpoint, hyperparameters from the config, and the schedule, a pure function of
        # the step, replayed up to where the run stopped.
        optimizer = state["optimizer"]
        optimizer["param_groups"] = [
            {**group, "params": saved["params"]}
            for group, saved in zip(
                self.optimizer.state_dict()["param_groups"], optimizer["param_groups"], strict=True
            )
        ]
        self._load_optimizer(optimizer)
        total = self.steps_per_epoch * self.cfg.train.epochs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" is intended here
            for _ in range(min(self.step, total - 1)):
                self.scheduler.step()

    def _load_optimizer(self, saved: dict[str, Any]) -> None:
        """A checkpoint holds the full optimizer state whatever the strategy, so it resumes under any."""
        if self.sharded:  # FSDP's loader wants parameters by name
            set_optimizer_state_dict(
                self.model, self.optimizer, _rekeyed(saved, self.model, self.optimizer, True), options=FULL
            )
        else:
            self.optimizer.load_state_dict(_rekeyed(saved, self.model, self.optimizer, False))

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)


def shard_model(model: nn.Module) -> None:
    """FSDP2: each top-level block with weights is one unit of all-gather, the root holds the rest."""
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        if any(p.requires_grad for p in child.parameters()):
            fully_shard(child)
    fully_shard(model)


def _rekeyed(
    saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, by_name: bool
) -> dict[str, Any]:
    """An optimizer state with its parameters keyed by name (as FSDP writes and reads it) or by
    position in the optimizer (as ``Optimizer.state_dict`` does), however it was saved."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    position = {name: i for i, name in enumerate(names)}

    def key(k: int | str) -> int | str:
        if by_name:
            return names[k] if isinstance(k, int) else k
        return position[k] if isinstance(k, str) else k

    return {
        "state": {key(k): value for k, value in saved["state"].items()},
        "param_groups": [{**g, "params": [key(k) for k in g["params"]]} for g in saved["param_groups"]],
    }


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])
