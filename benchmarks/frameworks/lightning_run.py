"""(c) PyTorch Lightning's Trainer at its defaults (TensorBoard logger, a checkpoint at the end of the
epoch, progress bar, model summary), told only the device, the precision, the steps and where to write;
the defaults it chose are returned with the options. The LightningModule logs the training loss, as
Lightning's examples do."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn

from benchmarks.cases import Bench, loss
from bigmodel.data.loader import Batch

PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


class Classifier(pl.LightningModule):
    def __init__(self, model: nn.Module, bench: Bench):
        super().__init__()
        self.model, self.bench = model, bench

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        labels = batch.pop("labels")
        value = loss(self.model(**batch).logits, labels)
        self.log("train_loss", value)
        return value

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer, scheduler = self.bench.optimizer(self.model)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ReadClock(pl.Callback):
    def __init__(self, bench: Bench):
        self.bench = bench

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.bench.clock.start()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Classifier, *args: Any) -> None:
        self.bench.clock.step_end(module.model)  # after the optimizer's and the scheduler's step


def run(bench: Bench) -> dict[str, Any]:
    s = bench.settings
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": PRECISION[s.precision],
        "max_steps": s.steps,
        "default_root_dir": str(bench.workdir),
    }
    trainer = pl.Trainer(**options, callbacks=[ReadClock(bench)])
    trainer.fit(Classifier(bench.model(), bench), train_dataloaders=bench.train_loader())
    defaults = {
        "logger": type(trainer.logger).__name__,
        "callbacks": [type(cb).__name__ for cb in trainer.callbacks],
        "log_every_n_steps": trainer.log_every_n_steps,
    }
    return {**bench.clock.result(), "options": {**options, **defaults}}
