"""The command line as a user meets it: results on stdout, one-line errors on stderr, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bigmodel.cli import main
from bigmodel.data.images import load_digits
from conftest import DIGITS_ARGS, digit_png, run_cli


def test_evaluate_prints_metrics_and_confusion_matrix(digits_run: Path, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(digits_run))
    assert code == 0
    assert "accuracy" in out and "f1_macro" in out and "confusion matrix" in out
    code, out, _ = run_cli(capsys, "evaluate", str(digits_run), "--split", "val", "--json")
    metrics = json.loads(out)
    assert metrics["count"] == 144  # 10 % of the 1,437 digits left for training
    assert len(metrics["per_class"]) == 10 and len(metrics["confusion_matrix"]) == 10
    report = json.loads((digits_run / "report.json").read_text())
    assert metrics["accuracy"] == pytest.approx(report["val"]["accuracy"])


def test_predict_ranks_classes(digits_run: Path, tmp_path: Path, capsys):
    files = [digit_png(tmp_path / f"d{i}.png", i) for i in range(20)]
    code, out, _ = run_cli(
        capsys, "predict", str(digits_run), *[str(p) for p, _ in files], "--top-k", "3", "--json"
    )
    assert code == 0
    results = json.loads(out)
    assert [len(r["top"]) for r in results] == [3] * 20
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    hits = sum(r["top"][0]["class"] == str(label) for r, (_, label) in zip(results, files, strict=True))
    assert hits >= 16
    code, out, _ = run_cli(capsys, "predict", str(digits_run), str(files[0][0]))
    assert out.startswith(f"{files[0][0]}: ")


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "seed-cnn" in out and "resnet" in out and "width=32" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "model.name=vgg"], "unknown model.name='vgg'"),
        (["train", "optim.name=rmsprop"], "optim.name='rmsprop' is not allowed"),
        (["train", "optim.lr=-1"], "optim.lr=-1: Input should be greater than 0"),
        (["train", "missing.yaml"], "config file missing.yaml does not exist"),
        (["train", "data.path=nowhere"], "data.path nowhere does not exist"),
        (["train", "data.name=cifar"], "unknown data set data.name='cifar'"),
        (["train", "data.name=digits", "train.precision=fp16"], "train.precision=fp16 needs a CUDA device"),
        (["train", "data.name=digits", "train.device=cuda"], "no CUDA device is visible"),
        (["train", "train.epochs=2", "extra"], "'extra' must come first"),
        (["evaluate", "nowhere"], "nowhere is not a bigmodel run directory"),
    ],
)
def test_user_mistakes_are_one_line_errors_and_leave_no_run(argv, message, in_tmp: Path, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (in_tmp / "runs").exists()


def test_predict_mistakes(digits_run: Path, tmp_path: Path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, err = run_cli(capsys, "predict", str(digits_run), str(broken))
    assert code == 2 and f"cannot read image {broken}" in err
    code, _, err = run_cli(capsys, "predict", str(digits_run), str(tmp_path / "none.png"))
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(capsys, "predict", str(digits_run), str(broken), "--top-k", "0")
    assert code == 2 and "--top-k must be at least 1" in err


def test_out_directory_is_never_overwritten(digits_run: Path, capsys):
    code, _, err = run_cli(capsys, "train", "data.name=digits", f"--out={digits_run}")
    assert code == 2 and "already exists and is not empty" in err


def test_default_run_names_are_numbered(in_tmp: Path, capsys):
    for _ in range(2):
        assert main(["train", *DIGITS_ARGS, "train.epochs=1"]) == 0
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == ["digits-cnn", "digits-cnn-2"]
    out = capsys.readouterr().out
    assert "test accuracy" in out and "tensorboard --logdir runs/digits-cnn" in out


def test_console_script_runs_as_a_process(tmp_path: Path):
    bigmodel = Path(sys.executable).with_name("bigmodel")
    bad = subprocess.run(
        [str(bigmodel), "train", "optim.lr=-3"], capture_output=True, text=True, cwd=tmp_path
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: optim.lr=-3") and bad.stdout == ""
    module = subprocess.run(
        [sys.executable, "-m", "bigmodel", "models"], capture_output=True, text=True, cwd=tmp_path
    )
    assert module.returncode == 0 and "cnn" in module.stdout


def test_npz_of_ones_own(tmp_path: Path, capsys):
    x, y = load_digits()
    np.savez(
        tmp_path / "mine.npz", x_train=x[:1200, 0], y_train=y[:1200], x_test=x[1200:, 0], y_test=y[1200:]
    )
    code, out, _ = run_cli(
        capsys, "train", f"data.path={tmp_path / 'mine.npz'}", "model.name=mlp", "train.epochs=3",
        "train.batch_size=32", "data.augment.hflip=false", "data.augment.crop_padding=0",
        "train.progress=false", f"--out={tmp_path / 'run'}",
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["test"]["count"] == len(y) - 1200 and report["test"]["accuracy"] > 0.8
