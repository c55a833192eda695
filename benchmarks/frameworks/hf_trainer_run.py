"""(d) The Hugging Face Trainer, given the shared loader, optimizer, schedule and loss; of its
arguments only those that would make it train differently from the others are changed (see OPTIONS)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from benchmarks.cases import Bench, loss


class SharedLoaderTrainer(Trainer):
    """Trains on the peers' DataLoader, prepared by accelerate as the Trainer prepares its own."""

    def __init__(self, loader: DataLoader, **kwargs: Any):
        super().__init__(**kwargs)
        self.loader = loader

    def get_train_dataloader(self) -> DataLoader:
        return self.accelerator.prepare(self.loader)


class ReadClock(TrainerCallback):
    def __init__(self, bench: Bench):
        self.bench = bench

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.bench.clock.start()

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.bench.clock.step_end(kwargs["model"])  # after the optimizer's and the scheduler's step


def options(bench: Bench) -> dict[str, Any]:
    s = bench.settings
    return {
        "output_dir": str(bench.workdir),
        "use_cpu": True,
        "bf16": s.precision == "bf16",
        "max_steps": s.steps,
        "per_device_train_batch_size": s.batch_size,
        "learning_rate": s.lr,  # for the record: the optimizer passed in has it already
        "seed": s.seed,  # the Trainer re-seeds torch with it (default 42); the others use this seed
        "max_grad_norm": 0.0,  # the default 1.0 clips gradients; no other framework clips
        "save_steps": s.steps,  # one checkpoint, after the last step, as Lightning and bigmodel save
    }


def run(bench: Bench) -> dict[str, Any]:
    args = options(bench)
    loader = bench.train_loader()
    model = bench.model()
    trainer = SharedLoaderTrainer(
        loader,
        model=model,
        args=TrainingArguments(**args),
        train_dataset=loader.dataset,
        data_collator=loader.collate_fn,
        optimizers=bench.optimizer(model),
        compute_loss_func=loss,
        callbacks=[ReadClock(bench)],
    )
    trainer.train()
    callbacks = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    return {**bench.clock.result(), "options": {**args, "callbacks": callbacks}}
