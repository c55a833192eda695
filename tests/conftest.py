"""Shared fixtures: a small trained run on scikit-learn's digits, reused by the tests that read runs."""

from __future__ import annotations

import os
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

    from bigmodel.engine.checkpoint import step_checkpoints

    return load_file(step_checkpoints(run / "checkpoints")[0].weights)
