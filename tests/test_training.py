"""End-to-end training on scikit-learn's digits: the run directory, resume, stopping, determinism."""

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bigmodel.api import resume, train
from bigmodel.checkpoint import step_checkpoints
from bigmodel.config import load_config
from bigmodel.errors import UserError
from conftest import DIGITS_ARGS, last_weights


def test_run_directory_contract(digits_run: Path):
    assert (digits_run / "config.yaml").is_file()
    lines = (digits_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])
    for key in ("epoch", "train/loss", "val/accuracy", "val/f1_macro", "lr", "train/samples_per_s"):
        assert key in first
    assert (digits_run / "checkpoints" / "best.safetensors").is_file()
    kept = step_checkpoints(digits_run / "checkpoints")
    assert len(kept) == 2  # train.keep_checkpoints: the two newest epoch ends
    assert all(c.problem() is None and c.state.is_file() for c in kept)
    report = json.loads((digits_run / "report.json").read_text())
    assert set(report["test"]) >= {
        "accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "confusion_matrix",
    }
    assert report["test"]["accuracy"] > 0.85  # a small CNN learns digits in 4 epochs
    assert report["train_seconds"] > 0 and report["params"] > 1000
    assert sum(map(sum, report["test"]["confusion_matrix"])) == report["test"]["count"]
    # best.safetensors is the epoch with the highest validation accuracy
    accs = [json.loads(line)["val/accuracy"] for line in lines]
    assert report["best_epoch"] == 1 + accs.index(max(accs))


def test_tensorboard_reads_the_scalars_back(digits_run: Path):
    events = EventAccumulator(str(digits_run))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "val/accuracy", "val/loss", "lr", "train/samples_per_s"):
        assert tag in tags
    accuracy = events.Scalars("val/accuracy")
    assert [e.step for e in accuracy] == [1, 2, 3, 4]
    logged = [
        json.loads(line)["val/accuracy"] for line in (digits_run / "metrics.jsonl").read_text().splitlines()
    ]
    assert [e.value for e in accuracy] == pytest.approx(logged)
    assert events.Graph() is not None  # the model graph was written


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path):
    cfg = load_config(None, [*DIGITS_ARGS, "train.epochs=2", "optim.schedule=constant"])
    run = train(cfg, out=tmp_path / "run")
    before = last_weights(run)
    resume(run, ["train.epochs=3"])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    after = last_weights(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((run / "report.json").read_text())["epochs"] == 3


def test_same_seed_same_weights_in_deterministic_mode(tmp_path: Path):
    args = [*DIGITS_ARGS, "train.epochs=1", "train.deterministic=true", "train.precision=fp32"]
    a = train(load_config(None, args), out=tmp_path / "a")
    b = train(load_config(None, args), out=tmp_path / "b")
    wa, wb = (last_weights(r) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(load_config(None, [*args, "train.seed=1"]), out=tmp_path / "c")
    wc = last_weights(c)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_early_stopping_says_why(tmp_path: Path):
    # lr=0 never improves: patience 2 stops after epoch 3.
    args = [*DIGITS_ARGS, "train.epochs=10", "optim.lr=1e-12", "train.early_stopping.patience=2"]
    args += ["optim.schedule=constant", "train.monitor=val/loss"]
    run = train(load_config(None, args), out=tmp_path / "run")
    report = json.loads((run / "report.json").read_text())
    assert report["epochs"] < 10
    assert report["stop_reason"].startswith("early stopping: val/loss has not improved")


def test_resume_refuses_a_different_model(digits_run: Path):
    with pytest.raises(UserError, match="model cannot change on --resume"):
        resume(digits_run, ["model.width=64"])
    with pytest.raises(UserError, match="optim.name cannot change"):
        resume(digits_run, ["optim.name=sgd"])


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    cfg = load_config(None, [*DIGITS_ARGS, "train.epochs=1", "optim.schedule=constant"])
    run = train(cfg, out=tmp_path / "run")
    good = last_weights(run)
    with pytest.raises(
        UserError, match=r"loss became (nan|inf).*lower optim.lr.*checkpoint step-\d+ \(epoch 1\) is kept"
    ):
        resume(run, ["train.epochs=3", "optim.lr=1e12"])
    kept = last_weights(run)
    assert all(torch.equal(good[k], kept[k]) for k in good)


def test_divergence_before_any_checkpoint_leaves_no_run_directory(tmp_path: Path):
    with pytest.raises(UserError, match="loss became"):
        train(
            load_config(None, [*DIGITS_ARGS, "optim.lr=1e12", "optim.schedule=constant"]),
            out=tmp_path / "run",
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "setting", ["train.grad_accum=2", "train.grad_clip=0.5", "train.label_smoothing=0.1"]
)
def test_training_options_still_learn(tmp_path: Path, setting: str):
    run = train(load_config(None, [*DIGITS_ARGS, setting]), out=tmp_path / "run")
    assert json.loads((run / "report.json").read_text())["test"]["accuracy"] > 0.8


def test_grad_accumulation_matches_the_larger_batch(tmp_path: Path):
    """Two batches of 32 accumulated equal one batch of 64 (no batch norm, no dropout, fp32)."""
    base = [
        "data.name=digits",
        "model.name=mlp",
        "model.dropout=0.0",
        "train.epochs=1",
        "train.progress=false",
    ]
    base += ["train.precision=fp32", "optim.name=sgd", "optim.schedule=constant", "data.limit=256"]
    base += ["data.augment.crop_padding=0", "data.augment.hflip=false"]  # augmentation draws per batch
    one = train(load_config(None, [*base, "train.batch_size=64"]), out=tmp_path / "one")
    two = train(load_config(None, [*base, "train.batch_size=32", "train.grad_accum=2"]), out=tmp_path / "two")
    w1, w2 = (last_weights(r) for r in (one, two))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path: Path):
    """train.compile=true (torch.compile, inductor) trains the same model to the same weights, within
    float rounding, and the checkpoints hold the plain model's keys."""
    base = [*DIGITS_ARGS, "train.epochs=1", "train.precision=fp32", "data.limit=512", "model.dropout=0.0"]
    eager = train(load_config(None, base), out=tmp_path / "eager")
    compiled = train(load_config(None, [*base, "train.compile=true"]), out=tmp_path / "compiled")
    we, wc = (last_weights(r) for r in (eager, compiled))
    assert we.keys() == wc.keys()
    assert all(torch.allclose(we[k].float(), wc[k].float(), atol=1e-4) for k in we)


# torch allocates with posix_memalign(64): glibc carves size + 96 bytes and frees the unused tail, which
# the thread cache (7 chunks a size) keeps apart from the block. Until that cache is full, a freed block
# cannot take the next request of its own size and a new one is carved: up to 8 blocks, then every
# request is served from freed memory. So the steady state is measured after 8 rounds.
FAULTS_AFTER_TRAINER = """
import resource, sys, torch
from bigmodel.config import load_config
from bigmodel.data import build_data
from bigmodel.engine.trainer import Trainer
from bigmodel.models import build_model
cfg = load_config(None, sys.argv[1:])
data = build_data(cfg.data)
Trainer(build_model(cfg.model, data.info), data, cfg)
def step():
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # one activation-sized block, freed at once
for _ in range(8):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_trainer_keeps_freed_memory_so_steps_do_not_fault_pages_in_again():
    def faults(keep: bool) -> int:
        args = [*DIGITS_ARGS, f"train.keep_freed_memory={str(keep).lower()}"]
        cmd = [sys.executable, "-c", FAULTS_AFTER_TRAINER, *args]
        return int(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])

    block = (64 << 20) // resource.getpagesize()
    assert faults(keep=False) > 5 * block  # glibc maps each of the ten blocks afresh and unmaps it on free
    assert faults(keep=True) < block  # steady state: every block reuses freed pages (measured: 0)
