"""What watches the loop: progress bar, TensorBoard, metrics.jsonl, checkpoints, early stopping."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bigmodel.checkpoint import prune_checkpoints, save_checkpoint
from bigmodel.engine.trainer import Callback, Trainer
from bigmodel.run import RunDir


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _monitored(trainer: Trainer, metrics: dict[str, float]) -> float:
    return metrics[trainer.cfg.train.monitor]  # the config only admits logged metrics


class ProgressBar(Callback):
    """One tqdm bar per epoch: loss, the monitored metric, examples/s and ETA live; a summary line
    per epoch (the only output when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_batch_end(self, trainer: Trainer, loss: float, size: int) -> None:
        # Language models count tokens (their blocks are full): tokens/s is the figure that compares.
        per_example = trainer.task.tokens_per_example
        size *= per_example
        if self.bar is None:
            self.bar = tqdm(
                total=trainer.train_loader.num_examples * per_example,
                desc=f"epoch {trainer.epoch + 1}/{trainer.cfg.train.epochs}",
                unit="tok" if per_example > 1 else "ex",
                unit_scale=True,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                disable=None,  # no bar when stderr is not a terminal: logs get the epoch lines only
                mininterval=0.5,
            )
        self.bar.update(size)
        shown = {"loss": f"{loss:.4f}"}
        if trainer.history:
            monitor = trainer.cfg.train.monitor
            shown[monitor] = f"{trainer.history[-1][monitor]:.4f}"  # as of the last epoch
        self.bar.set_postfix(shown, refresh=False)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(
            f"epoch {metrics['epoch']:>3}/{trainer.cfg.train.epochs}  "
            f"loss {metrics['train/loss']:.4f}  train acc {metrics['train/accuracy']:.4f}  "
            f"val loss {metrics['val/loss']:.4f}  val acc {metrics['val/accuracy']:.4f}  "
            f"{metrics['train/samples_per_s']:.0f} ex/s  "
            + (f"{metrics['train/tokens_per_s']:.0f} tok/s  " if "train/tokens_per_s" in metrics else "")
            + f"{metrics['train/epoch_seconds']:.1f}s",
            file=sys.stderr,
        )


class MetricsJsonl(Callback):
    """``metrics.jsonl``: one JSON object per epoch, the plain-text record of the run."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.run.append_history(metrics)


class TensorBoard(Callback):
    """Scalars (loss per step; metrics, learning rate, throughput per epoch) and the model graph."""

    def __init__(self, log_dir: Path, every_n_steps: int = 20):
        self.log_dir = log_dir
        self.every = every_n_steps
        self.writer: Any = None
        self.batches = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=trainer.step or None)
        if trainer.epoch == 0 and not trainer.sharded:  # a sharded model runs only with every rank
            self._add_graph(trainer)

    def _add_graph(self, trainer: Trainer) -> None:
        features = trainer.example_features()
        model = trainer.model
        was_training = model.training
        model.eval()
        # Tracing reads every attribute of every module; a transformers model then logs about properties
        # nobody uses (its `loss_function`), noise at the top of every run.
        transformers_log = logging.getLogger("transformers")
        level = transformers_log.level
        transformers_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.writer.add_graph(model, tuple(features.values()), use_strict_trace=False)
        except Exception as exc:  # tracing is best effort: some models cannot be traced
            print(f"warning: TensorBoard graph skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        finally:
            transformers_log.setLevel(level)
        model.train(was_training)

    def on_batch_end(self, trainer: Trainer, loss: float, size: int) -> None:
        self.batches += 1
        if self.batches % self.every == 0:
            self.writer.add_scalar("train/step_loss", loss, trainer.step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, metrics["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.close()

    def on_interrupt(self, trainer: Trainer) -> None:
        self.writer.close()


class Checkpoints(Callback):
    """A ``step-<N>`` checkpoint at the end of every epoch, every ``every_n_steps`` optimizer steps and
    on SIGINT/SIGTERM, the newest ``keep`` of them kept; ``best`` whenever the monitored metric improves.

    Under torchrun it runs on every rank, since the state gathers every rank's RNG (and, under FSDP,
    the weights); only the rank given a ``directory`` (rank 0) writes.
    """

    def __init__(self, directory: Path | None, every_n_steps: int = 0, keep: int = 2):
        self.directory = directory
        self.every = every_n_steps
        self.keep = keep
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.saved_step: int | None = None

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self._save(trainer)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = _monitored(trainer, metrics)
        if _improved(value, self.best, trainer.cfg.train.monitor_mode):
            self.best, self.best_epoch = value, metrics["epoch"]
            tensors = trainer.model_tensors(evaluated=True)  # every rank: under FSDP it gathers the shards
            if self.directory is not None:
                info = {"epoch": trainer.epoch, "step": trainer.step, trainer.cfg.train.monitor: value}
                save_checkpoint(self.directory, "best", tensors, **info)
        self._save(trainer)  # after best, so the state it holds records the new best

    def on_interrupt(self, trainer: Trainer) -> None:
        if self.saved_step != trainer.step:
            self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        tensors, state = trainer.model_tensors(), trainer.state_dict()  # collectives: on every rank
        if self.directory is not None:
            info = {"epoch": trainer.epoch, "step": trainer.step, "batch_in_epoch": trainer.batch_in_epoch}
            save_checkpoint(self.directory, f"step-{trainer.step:08d}", tensors, state, **info)
            prune_checkpoints(self.directory, self.keep)
        self.saved_step = trainer.step

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved for ``patience`` epochs."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.waited = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = _monitored(trainer, metrics)
        if _improved(value, self.best, trainer.cfg.train.monitor_mode, self.min_delta):
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            key = trainer.cfg.train.monitor
            trainer.request_stop(
                f"early stopping: {key} has not improved on {self.best:.4f} for {self.patience} epochs"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.waited = state.get("waited", 0)
