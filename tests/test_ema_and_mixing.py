"""train.ema: an exponential moving average of the weights is what validation, the best checkpoint and
the test score see, and a run with one resumes exactly; so do runs with mixup and cutmix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigmodel.api import resume, train
from bigmodel.config import load_config
from bigmodel.errors import UserError
from bigmodel.evaluation.scoring import load_with_data, split_metrics
from conftest import DIGITS_ARGS, last_weights

EMA_ARGS = [*DIGITS_ARGS, "train.ema=0.9", "train.precision=fp32", "train.deterministic=true"]


def test_the_moving_average_is_what_is_evaluated_and_kept_as_best(tmp_path: Path):
    run = train(load_config(None, [*EMA_ARGS, "train.epochs=3"]), out=tmp_path / "ema")
    best, live = load_file(run / "checkpoints" / "best.safetensors"), last_weights(run)
    report = json.loads((run / "report.json").read_text())
    assert report["best_epoch"] == 3  # so the best checkpoint and the last step's are the same step
    assert any(not torch.equal(best[k], live[k]) for k in best if k.endswith("weight"))
    loaded, data, _, _ = load_with_data(run)  # the validation score recorded is the average's
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = split_metrics(loaded.model, data, "val", loaded.config, torch.device("cpu"), torch.float32)
    assert val["accuracy"] == pytest.approx(history[-1]["val/accuracy"])
    plain_args = [arg for arg in EMA_ARGS if not arg.startswith("train.ema")]
    plain = train(load_config(None, [*plain_args, "train.epochs=3"]), out=tmp_path / "plain")
    assert all(torch.equal(live[k], last_weights(plain)[k]) for k in live)  # the average only watches


def test_a_run_with_a_moving_average_resumes_exactly(tmp_path: Path):
    args = [*EMA_ARGS, "optim.schedule=constant"]  # a schedule that does not depend on the epochs
    straight = train(load_config(None, [*args, "train.epochs=3"]), out=tmp_path / "straight")
    halted = train(load_config(None, [*args, "train.epochs=2"]), out=tmp_path / "halted")
    resume(halted, ["train.epochs=3"])
    best = [load_file(r / "checkpoints" / "best.safetensors") for r in (straight, halted)]
    live = [last_weights(r) for r in (straight, halted)]
    for a, b in (best, live):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_decay_outside_0_1_is_a_one_line_error():
    with pytest.raises(UserError, match="train.ema=1.5"):
        load_config(None, ["train.ema=1.5"])


def test_mixup_and_cutmix_train_and_resume_exactly(tmp_path: Path):
    args = [*DIGITS_ARGS, "data.augment.mixup=0.2", "data.augment.cutmix=1.0", "optim.schedule=constant"]
    args += ["train.precision=fp32", "train.deterministic=true"]
    straight = train(load_config(None, [*args, "train.epochs=3"]), out=tmp_path / "straight")
    halted = train(load_config(None, [*args, "train.epochs=2"]), out=tmp_path / "halted")
    resume(halted, ["train.epochs=3"])
    a, b = last_weights(straight), last_weights(halted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((straight / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.8  # mixed batches still teach digits
    history = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train/accuracy"] < history[-1]["val/accuracy"]  # mixed images are harder
