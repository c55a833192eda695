"""Shared fixtures and helpers: a small trained run on scikit-learn's digits, reused by the tests that read
runs, and the data, arguments and process helpers that several test modules use."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# Two pytest workers share two cores: one thread each, and the same for CLI subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_ARGS = [
    "data.name=digits",
    "model.name=cnn",
    "model.depth=2",
    "model.width=16",
    "train.epochs=4",
    "train.batch_size=64",
    "train.progress=false",
    "optim.lr=0.01",
    "optim.schedule=onecycle",
    "data.augment.crop_padding=0",
    "data.augment.hflip=false",
]

# Sentiment reviews for the text tests: a few words that decide the label among filler words.
POSITIVE_WORDS = ["great", "wonderful", "moving", "brilliant", "superb", "delightful"]
NEGATIVE_WORDS = ["awful", "boring", "dull", "terrible", "tedious", "clumsy"]
FILLER_WORDS = ["the", "film", "plot", "actors", "was", "and", "a", "story", "it", "scenes"]
TEXT_ARGS = [
    "data.text_column=review",
    "data.label_column=sentiment",
    "data.vocab_size=200",
    "data.max_length=48",
]
TEXT_ARGS += ["train.epochs=6", "train.batch_size=16", "train.progress=false", "optim.lr=0.005"]
TIMING_KEYS = ("train/samples_per_s", "train/tokens_per_s", "train/epoch_seconds", "elapsed_seconds")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (4 epochs of a small CNN on digits), trained once per session."""
    from bigmodel.cli import main

    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", *DIGITS_ARGS, f"--out={out}"]) == 0
    return out


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, so default run directories (runs/...) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights of a run's newest step checkpoint."""
    from safetensors.torch import load_file

    from bigmodel.checkpoint import step_checkpoints

    return load_file(step_checkpoints(run / "checkpoints")[0].weights)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run the command line in this process: its exit code, stdout and stderr."""
    from bigmodel.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def digit_png(path: Path, index: int) -> tuple[Path, int]:
    """Save digit number ``index`` of scikit-learn's digits as a PNG; its path and its label."""
    from PIL import Image

    from bigmodel.data.images import load_digits

    x, y = load_digits()
    Image.fromarray(x[index, 0]).resize((32, 32)).save(path)  # any size: predict resizes
    return path, int(y[index])


def write_reviews(path: Path, n: int = 400, labels: tuple[str, str] = ("neg", "pos"), seed: int = 0) -> None:
    """A CSV of ``n`` reviews (columns review, sentiment), alternately negative and positive."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(n):
            good = i % 2 == 1
            words = rng.choices(FILLER_WORDS, k=rng.randint(4, 30)) + rng.choices(
                POSITIVE_WORDS if good else NEGATIVE_WORDS, k=2
            )
            rng.shuffle(words)
            writer.writerow([" ".join(words) + " <br /><br />", labels[good]])


def bigmodel(*args: str) -> subprocess.Popen:
    """``python -m bigmodel`` with these arguments, as a real process."""
    return subprocess.Popen(
        [sys.executable, "-m", "bigmodel", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until ``run`` has a checkpoint at ``step`` or later."""
    from bigmodel.checkpoint import step_checkpoints

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = step_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
        if found and int(found[0].tag.removeprefix("step-")) >= step:
            return
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-2000:]}"
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def untimed_metrics(run: Path) -> list[dict]:
    """A run's metrics.jsonl without the timings, which differ between otherwise identical runs."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Two runs ended with bit-identical weights and the same metrics."""
    wa, wb = last_weights(a), last_weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"
    assert untimed_metrics(a) == untimed_metrics(b)
