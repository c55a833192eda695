"""Never lose work: runs killed, interrupted, corrupted or starved of disk continue bit for bit.

Every test here runs real processes: ``python -m bigmodel`` killed with real signals, a real file-size
limit from the kernel, real files damaged on disk.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigmodel.api import resume, train
from bigmodel.checkpoint import Checkpoint, latest_good_checkpoint, load_state, step_checkpoints
from bigmodel.config import load_config
from bigmodel.errors import UserError
from conftest import DIGITS_ARGS, assert_same_run, bigmodel, last_weights, wait_for_checkpoint

# Dropout, random crops and flips, a one-cycle schedule: every kind of state a resume must restore.
EXACT_ARGS = [
    *DIGITS_ARGS,
    "data.augment.crop_padding=2",
    "data.augment.hflip=true",
    "train.epochs=6",
    "train.deterministic=true",
    "train.precision=fp32",
    "train.checkpoint_every=5",
    "train.keep_checkpoints=3",
]
STEPS_PER_EPOCH = 20  # the digits training split in batches of 64, the last partial one dropped


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(load_config(None, EXACT_ARGS), out=tmp_path_factory.mktemp("exact") / "reference")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(uninterrupted: Path, tmp_path: Path):
    run = tmp_path / "killed"
    proc = bigmodel("train", *EXACT_ARGS, f"--out={run}")
    wait_for_checkpoint(run, 2 * STEPS_PER_EPOCH + 5, proc)  # into the third epoch
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "report.json").exists()
    resume(run)
    assert_same_run(uninterrupted, run)


@pytest.mark.slow
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(
    uninterrupted: Path, tmp_path: Path, capfd: pytest.CaptureFixture
):
    run = tmp_path / "damaged"
    proc = bigmodel("train", *EXACT_ARGS, f"--out={run}")
    wait_for_checkpoint(run, STEPS_PER_EPOCH + 8, proc)
    proc.kill()
    proc.wait()
    newest, previous = step_checkpoints(run / "checkpoints")[:2]
    with newest.weights.open("r+b") as f:  # a write cut short
        f.truncate(newest.weights.stat().st_size // 2)
    assert newest.problem() is not None
    assert latest_good_checkpoint(run / "checkpoints") == previous
    warning = f"skipping checkpoint {newest.tag}: {newest.tag}.safetensors does not match its checksum"
    assert warning in capfd.readouterr().err
    resume(run)
    assert_same_run(uninterrupted, run)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_and_exit_cleanly(uninterrupted: Path, tmp_path: Path, signum: int):
    run = tmp_path / "stopped"
    proc = bigmodel("train", *EXACT_ARGS, f"--out={run}")
    wait_for_checkpoint(run, STEPS_PER_EPOCH + 3, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in err and f"continue with: bigmodel train --resume {run}" in err
    newest = step_checkpoints(run / "checkpoints")[0]
    state = load_state(newest)
    assert state["step"] == int(newest.tag.removeprefix("step-"))
    resume(run)
    assert_same_run(uninterrupted, run)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path: Path):
    run = train(load_config(None, [*DIGITS_ARGS, "train.epochs=1"]), out=tmp_path / "run")
    before = step_checkpoints(run / "checkpoints")
    weights = last_weights(run)

    def small_files_only() -> None:  # the kernel refuses any file over 16 KiB (EFBIG), like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "bigmodel", "train", "--resume", str(run), "train.epochs=2"],
        capture_output=True,
        text=True,
        preexec_fn=small_files_only,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: could not write checkpoint" in proc.stderr
    assert "earlier checkpoints are intact" in proc.stderr
    after = step_checkpoints(run / "checkpoints")
    assert after == before and all(c.problem() is None for c in after)
    assert all(torch.equal(weights[k], v) for k, v in last_weights(run).items())
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    resume(run, ["train.epochs=2"])  # with room again, the run continues
    assert json.loads((run / "report.json").read_text())["epochs"] == 2


def test_a_damaged_best_checkpoint_is_refused_in_one_line(tmp_path: Path):
    run = train(load_config(None, [*DIGITS_ARGS, "train.epochs=1"]), out=tmp_path / "run")
    best = Checkpoint(run / "checkpoints", "best")
    data = bytearray(best.weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    best.weights.write_bytes(bytes(data))
    from bigmodel.api import evaluate

    with pytest.raises(UserError, match=r"best.safetensors is damaged: .*does not match its checksum"):
        evaluate(run)


def test_resume_without_any_checkpoint_says_so(tmp_path: Path):
    run = train(load_config(None, [*DIGITS_ARGS, "train.epochs=1"]), out=tmp_path / "run")
    for ckpt in step_checkpoints(run / "checkpoints"):
        ckpt.manifest.unlink()
    with pytest.raises(UserError, match="no checkpoint in .*cannot resume"):
        resume(run)


def test_checkpoints_load_without_unpickling_objects(digits_run: Path):
    """The training state is plain tensors, numbers and strings: weights_only=True reads it."""
    newest = step_checkpoints(digits_run / "checkpoints")[0]
    state = torch.load(newest.state, weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng", "batch_in_epoch"} <= state.keys()
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}


def test_pruning_keeps_the_newest(tmp_path: Path):
    args = [*DIGITS_ARGS, "train.epochs=2", "train.checkpoint_every=4", "train.keep_checkpoints=3"]
    run = train(load_config(None, args), out=tmp_path / "run")
    tags = [c.tag for c in step_checkpoints(run / "checkpoints")]
    assert tags == ["step-00000040", "step-00000036", "step-00000032"]
    leftovers = {p.name for p in (run / "checkpoints").iterdir()} - {
        p.name for c in step_checkpoints(run / "checkpoints") for p in c.files()
    }
    assert leftovers == {"best.safetensors", "best.json"}
