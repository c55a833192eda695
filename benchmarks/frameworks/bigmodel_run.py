"""(b) bigmodel, run as ``bigmodel.api.train`` runs it: its ``Trainer`` on the config the overrides
give, with the callbacks api.train installs (checkpoints, metrics.jsonl, TensorBoard, progress bar) in
a run directory under the run's workdir, and one more callback that reads the clock.

Two differences from ``api.train``, both outside the timed steps: the data are the saved tensors every
framework loads (api.train would build them again, tokenizer and all), and what api.train does after
``fit`` (reload the best checkpoint, evaluate val and test, write report.json) is not done, since no
other framework does it.
"""

from __future__ import annotations

from typing import Any

from benchmarks.cases import Bench, bigmodel_overrides
from bigmodel.api import default_callbacks
from bigmodel.engine.trainer import Callback, Trainer
from bigmodel.run import RunDir


class ReadClock(Callback):
    """Last in the list: its on_fit_start runs after TensorBoard has traced the model graph."""

    def __init__(self, bench: Bench):
        self.bench = bench

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bench.clock.start()

    def on_step_end(self, trainer: Trainer) -> None:
        self.bench.clock.step_end(trainer.model)


def run(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    model = bench.model()
    trainer = Trainer(model, bench.data, cfg)
    run_dir = RunDir(bench.workdir / "run")
    run_dir.create(cfg, bench.data, model)
    trainer.callbacks = [*default_callbacks(cfg, run_dir), ReadClock(bench)]
    trainer.fit()
    options = {
        "overrides": bigmodel_overrides(bench.settings),
        "callbacks": [type(cb).__name__ for cb in trainer.callbacks],
    }
    return {**bench.clock.result(), "options": options}
