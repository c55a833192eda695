"""(a) The seed's plain PyTorch loop (section 4.1), fixed: the model returns logits (the seed fed
log_softmax to CrossEntropyLoss) and is bigmodel's ``seed-cnn`` (the seed's flatten size was wrong);
AdamW with the shared schedule replaces the seed's SGD, and autocast wraps the forward pass in bf16."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from benchmarks.cases import Bench


def run(bench: Bench) -> dict[str, Any]:
    model = bench.model()
    train_loader = bench.train_loader()
    criterion = nn.CrossEntropyLoss()
    optimizer, scheduler = bench.optimizer(model)

    model.train()
    bench.clock.start()
    for batch in train_loader:  # one epoch: exactly the run's steps
        labels = batch.pop("labels")
        with bench.autocast():
            outputs = model(**batch).logits
        loss = criterion(outputs.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        bench.clock.step_end(model)
    return {**bench.clock.result(), "options": {"loop": "the seed's section 4.1 loop, fixed"}}
