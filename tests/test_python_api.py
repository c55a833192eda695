"""The Python API: ``bigmodel.train`` returns a ``Run`` whose methods are the CLI's subcommands, and
``bigmodel.load`` gives any run directory back later. The seed's own CNN trains from its file on the
command line and from its class in Python, to the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch.nn as nn

import bigmodel
from bigmodel.cli import main
from bigmodel.config import load_config
from bigmodel.errors import UserError
from conftest import DIGITS_ARGS, FASHION_DIR

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = ROOT / "examples" / "seed_cnn.py"
FASHION_SLICE = [
    "data.limit=2000",
    "data.val_fraction=0.02",
    "train.epochs=2",
    "train.batch_size=64",
    "train.progress=false",
    "train.threads=1",
]
DIGITS_DATA = [a for a in DIGITS_ARGS if not a.startswith("model.")]


class Flat(nn.Module):
    """A model of the test's own, sized from the data through ``info``."""

    def __init__(self, info, hidden: int = 32):
        super().__init__()
        channels, height, width = info.input_shape
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * width, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x):
        return self.net(x)


def seed_cnn() -> type[nn.Module]:
    sys.path.insert(0, str(ROOT))
    try:
        from examples.seed_cnn import CNN
    finally:
        sys.path.remove(str(ROOT))
    return CNN


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs Fashion-MNIST: make data")
def test_the_seed_cnn_trains_from_python_and_from_the_cli_to_the_same_numbers(tmp_path: Path, capsys):
    run = bigmodel.train(None, FASHION_SLICE, model=seed_cnn(), out=tmp_path / "python")
    assert isinstance(run, bigmodel.Run) and run.config.model.name == "examples.seed_cnn:CNN"
    argv = ["train", f"model.name={SEED_FILE}:CNN", *FASHION_SLICE, f"--out={tmp_path / 'cli'}"]
    assert main(argv) == 0
    cli = bigmodel.load(tmp_path / "cli")
    assert cli.config.model.name == f"{SEED_FILE}:CNN"
    assert len(run.history) == len(cli.history) == 2
    assert run.results["test"]["accuracy"] == pytest.approx(cli.results["test"]["accuracy"], abs=1e-4)
    assert run.results["test"]["accuracy"] > 0.7  # 2,000 images, two epochs; chance is 0.1

    metrics = run.evaluate()
    assert metrics["accuracy"] == pytest.approx(run.results["test"]["accuracy"])
    assert cli.evaluate("val")["count"] == run.evaluate("val")["count"] == 1200
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "python"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(metrics["accuracy"])


def test_train_returns_a_run_whose_methods_are_the_subcommands(tmp_path: Path):
    from PIL import Image
    from sklearn.datasets import load_digits

    run = bigmodel.train(
        {"data": {"name": "digits"}}, [*DIGITS_DATA, "model.hidden=48"], model=Flat, out=tmp_path / "run"
    )
    assert isinstance(run, bigmodel.Run) and Path(run) == tmp_path / "run"
    assert run.config.model.settings() == {"hidden": 48}
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4]
    assert run.results["test"]["accuracy"] > 0.8

    x, y = load_digits(return_X_y=True)
    image = tmp_path / "digit.png"
    Image.fromarray((x[5].reshape(8, 8) * 16).astype("uint8")).save(image)
    (prediction,) = run.predict([str(image)], top_k=2)
    assert len(prediction["top"]) == 2 and prediction["top"][0]["class"] in run.info.classes
    ((explanation, files),) = run.explain([str(image)], out=tmp_path / "why", method="saliency")
    assert explanation.predicted == prediction["top"][0]["class"] and all(f.is_file() for f in files)
    page = run.report(tmp_path / "report.html", mistakes=2)
    assert "Most confident mistakes" in page.read_text(encoding="utf-8")

    again = bigmodel.load(tmp_path / "run")
    assert again.evaluate()["accuracy"] == pytest.approx(run.results["test"]["accuracy"])
    assert again.predict([str(image)]) == run.predict([str(image)])


def test_a_config_object_and_overrides_are_taken_as_the_cli_takes_them(tmp_path: Path):
    cfg = load_config(None, DIGITS_ARGS)
    run = bigmodel.train(cfg, ["train.epochs=1"], out=tmp_path / "run")
    assert run.config.train.epochs == 1 and run.config.model.name == "cnn"
    assert cfg.train.epochs == 4  # the caller's config is not changed


def test_a_notebook_model_is_found_again_when_handed_to_load(tmp_path: Path, monkeypatch):
    notebook = types.ModuleType("__main__")  # a notebook's __main__ has no file
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    net = type("NotebookNet", (Flat,), {"__module__": "__main__"})
    notebook.NotebookNet = net
    run = bigmodel.train(None, [*DIGITS_DATA, "train.epochs=1"], model=net, out=tmp_path / "run")
    assert run.config.model.name == "__main__:NotebookNet"

    # A new process has no such class: a one-line error that says what to do.
    done = subprocess.run(
        [sys.executable, "-m", "bigmodel", "evaluate", str(run.root)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "bigmodel.load(RUN, model=NotebookNet)" in done.stderr.strip().splitlines()[-1]
    assert bigmodel.load(run.root, model=net).evaluate()["count"] == run.results["test"]["count"]


def test_mistakes_are_one_line_errors_and_leave_no_run(tmp_path: Path):
    with pytest.raises(UserError, match="not an instance of Linear"):
        bigmodel.train(None, DIGITS_DATA, model=nn.Linear(64, 10), out=tmp_path / "x")
    with pytest.raises(UserError, match="model.width is not a setting"):
        bigmodel.train(None, [*DIGITS_DATA, "model.width=3"], model=Flat, out=tmp_path / "y")
    with pytest.raises(UserError, match="not a bigmodel run directory"):
        bigmodel.load(tmp_path)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
