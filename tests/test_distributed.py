"""Data parallelism with real torchrun processes on the CPU (gloo).

One torchrun job at a time (one xdist group): two launchers starting together can pick the same free
port for their process groups, and their workers then wait for each other forever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bigmodel.api import resume, train
from bigmodel.config import load_config
from conftest import last_weights

pytestmark = pytest.mark.xdist_group("torchrun")

# No dropout and no augmentation: the two runs then draw nothing at random after initialisation.
SAME_GLOBAL_BATCH = [
    "data.name=digits",
    "model.name=mlp",
    "model.dropout=0.0",
    "train.epochs=2",
    "train.progress=false",
    "train.precision=fp32",
    "train.batch_size=64",
    "optim.name=sgd",
    "optim.lr=0.003",  # set, not SGD's own default: the parity below is to 1e-6
    "optim.weight_decay=0.05",
    "optim.schedule=constant",
    "data.augment.crop_padding=0",
    "data.augment.hflip=false",
]


def torchrun(*args: str, processes: int = 2) -> list[str]:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    return [*launcher, "-m", "bigmodel", *args]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path, strategy: str):
    one = train(load_config(None, SAME_GLOBAL_BATCH), out=tmp_path / "one")
    proc = subprocess.run(
        torchrun("train", *SAME_GLOBAL_BATCH, f"train.strategy={strategy}", f"--out={tmp_path / 'two'}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    assert proc.stdout.count("test accuracy") == 1  # rank 0 reports, rank 1 writes nothing
    w1, w2 = last_weights(one), last_weights(two)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    m1, m2 = (
        [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (one, two)
    )
    assert len(m2) == 2
    for a, b in zip(m1, m2, strict=True):  # losses summed over ranks, validation gathered from shards
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
        assert a["val/accuracy"] == b["val/accuracy"]
    report = json.loads((two / "report.json").read_text())
    assert report["processes"] == 2
    # The checkpoint holds whole tensors whatever the strategy: one process continues the run.
    resume(two, ["train.epochs=3"])
    resume(one, ["train.epochs=3"])
    w1, w2 = last_weights(one), last_weights(two)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def child_with_rank(parent: int, rank: int, timeout: float = 120) -> int:
    """The pid of torchrun's worker ``rank`` (read from the RANK in its environment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != parent:
                    continue
                env = (stat.parent / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue  # the process ended while we looked
            if f"RANK={rank}".encode() in env:
                return int(stat.parent.name)
        time.sleep(0.05)
    raise AssertionError(f"torchrun started no rank {rank}")


@pytest.mark.slow
def test_a_crashed_rank_ends_the_job_instead_of_hanging(tmp_path: Path):
    run = tmp_path / "run"
    args = ["train", "data.name=digits", "model.name=cnn", "train.epochs=200", "train.progress=false"]
    proc = subprocess.Popen(
        torchrun(*args, f"--out={run}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    worker = child_with_rank(proc.pid, 1)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step-*.json")):  # training is under way
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # no hang: the job ends by itself (seconds; 120 s is the bound)
    assert proc.returncode != 0
    assert "Signal 9 (SIGKILL) received by PID" in err  # torchrun's summary names the root cause
    assert not (run / "report.json").exists()


def test_a_global_batch_that_does_not_split_evenly_is_refused(tmp_path: Path):
    proc = subprocess.run(
        torchrun("train", *SAME_GLOBAL_BATCH, "train.batch_size=63", f"--out={tmp_path / 'run'}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    expected = "error: train.batch_size=63 is the global batch and must divide evenly among 2 processes"
    assert expected in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
