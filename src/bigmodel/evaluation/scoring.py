"""A finished run scored again: its best checkpoint, its data as it saw it, and the metrics or logits of
one split. ``bigmodel evaluate``, the end of training and the report all score through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bigmodel.config import Config
from bigmodel.data import BatchLoader, DataBundle, build_data
from bigmodel.device import resolve_device, resolve_precision
from bigmodel.engine.trainer import eval_loader
from bigmodel.errors import UserError
from bigmodel.run import RunDir
from bigmodel.tasks import task_for


def run_data(cfg: Config, run: RunDir | None) -> DataBundle:
    """The data as the run saw it: an existing run's own tokenizer, never a retrained one."""
    if run is not None and run.tokenizer_dir.is_dir():
        return build_data(cfg.data.model_copy(update={"tokenizer": str(run.tokenizer_dir)}))
    return build_data(cfg.data)


def split_logits(
    run: str | Path | RunDir, split: str = "test"
) -> tuple[RunDir, DataBundle, torch.Tensor, torch.Tensor]:
    """A classifier run's best checkpoint, its rebuilt data, and the logits and labels of one split: for
    tools that need more than the metrics (the report's mistakes and calibration)."""
    loaded, data, device, dtype = load_with_data(run)
    loader = split_loader(data, split, loaded.config)
    logits, labels = task_for(data.info).evaluate(loaded.model.to(device), loader, device, dtype)
    return loaded, data, logits, labels


def load_with_data(run: str | Path | RunDir) -> tuple[RunDir, DataBundle, torch.device, torch.dtype]:
    """The best checkpoint, the data as it saw it, and the device and precision its config asks for."""
    loaded = RunDir.of(run)
    data = run_data(loaded.config, loaded)
    if data.info.classes != loaded.info.classes:  # labels are positions in this list: order matters too
        unseen = [c for c in data.info.classes if c not in loaded.info.classes]
        raise UserError(
            f"the data now has classes the run never trained on ({', '.join(unseen) or 'a different set'}); "
            f"the run knows {', '.join(loaded.info.classes)}"
        )
    device = resolve_device(loaded.config.train.device)
    return loaded, data, device, resolve_precision(loaded.config.train.precision, device)


def split_metrics(
    model: nn.Module, data: DataBundle, split: str, cfg: Config, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    task = task_for(data.info)
    return task.metrics([task.evaluate(model.to(device), split_loader(data, split, cfg), device, dtype)])


def split_loader(data: DataBundle, split: str, cfg: Config) -> BatchLoader:
    return eval_loader(data.split(split), data, cfg.train)
