"""bigmodel tune: the search space's checks, a study end to end (every trial a run, the test split scored
once, best.yaml, study.html in Chromium), pruning through the loop's callback, a worker killed with
SIGKILL, and two workers sharing one study in a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bigmodel import api
from bigmodel.config import apply_overrides, load_config
from bigmodel.tune import PruneOnValidation
from conftest import DIGITS_ARGS, bigmodel, run_cli

LR_SPACE = {"optim.lr": {"choice": [0.003, 0.01, 0.03]}}


def study_config(path: Path, params: dict, **tune) -> Path:
    """A config file: the digits CNN of the other tests with a tune: section."""
    raw = apply_overrides({}, DIGITS_ARGS)
    raw["tune"] = {"params": params, **tune}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def load_study(root: Path, name: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(root / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.parametrize(
    ("params", "extra", "expected"),
    [
        (
            {"optim.lrr": {"loguniform": [0.001, 0.1]}},
            {},
            "tune.params: unknown config key optim.lrr (did you mean lr?)",
        ),
        ({"optim.lr": {"choice": []}}, {}, "tune.params.optim.lr: choice needs at least one value"),
        ({"optim.lr": {"uniform": [0.1, 0.01]}}, {}, "tune.params.optim.lr: low 0.1 must be below high 0.01"),
        ({"optim.lr": {"uniform": [-1, 0.1]}}, {}, "tune.params.optim.lr: -1.0 is refused: optim.lr=-1.0"),
        (
            {"optim.name": {"choice": ["adamw", "lion"]}},
            {},
            "'lion' is refused: optim.name='lion' is not allowed",
        ),
        (
            {"model.widht": {"int": [8, 32]}},
            {},
            "model.widht is not a setting of model 'cnn' (did you mean width?)",
        ),
        ({"model.width": {"choice": [16, "wide"]}}, {}, "tune.params.model.width: 'wide' is refused"),
        ({"optim.lr": {"uniform": [0.001, 0.1], "choice": [1]}}, {}, "give exactly one of choice, uniform"),
        (
            {"optim.lr": {"uniform": [0.001, 0.1]}},
            {"sampler": "grid"},
            "tune.sampler=grid needs choice or int",
        ),
        ({"tune.trials": {"int": [1, 3]}}, {}, "tune.trials is not a training setting"),
        ({}, {}, "tune needs a tune: section with params to search"),
    ],
)
def test_a_bad_search_space_is_one_line_before_any_trial(
    params: dict, extra: dict, expected: str, in_tmp: Path, capsys
):
    config = study_config(in_tmp / "study.yaml", params, **extra)
    code, out, err = run_cli(capsys, "tune", str(config))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (in_tmp / "runs").exists()  # no study directory, no trial


def test_pruning_stops_a_trial_through_the_loops_callback(in_tmp: Path):
    import optuna

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(1, 0))
    for value in (0.95, 0.97):  # two earlier trials that did well at every epoch
        study.add_trial(
            optuna.trial.create_trial(value=value, intermediate_values=dict.fromkeys(range(1, 5), value))
        )
    trial = study.ask()
    pruning = PruneOnValidation(trial, "val/accuracy")
    run = api.train(None, [*DIGITS_ARGS, "optim.lr=1e-6"], out="bad", callbacks=[pruning], score_test=False)
    assert pruning.pruned_at == 1
    assert len(run.history) == 1 and trial.should_prune()
    assert run.results["stop_reason"].startswith("pruned by the study at epoch 1 (val/accuracy 0.")
    assert "test" not in run.results and "val" in run.results  # tuning reads validation only
    assert api.evaluate(run, "val")["accuracy"] == pytest.approx(run.results["val"]["accuracy"])


@pytest.mark.slow
@pytest.mark.xdist_group("chromium")
def test_a_study_makes_every_trial_a_run_and_scores_test_once(in_tmp: Path, capsys, browser):
    from selenium.webdriver.common.by import By

    params = {**LR_SPACE, "model.width": {"int": [8, 16], "step": 8}, "train.epochs": {"int": [1, 3]}}
    config = study_config(in_tmp / "digits-study.yaml", params, sampler="random", pruner="none", trials=3)
    code, out, err = run_cli(capsys, "tune", str(config))
    assert code == 0, err
    root = in_tmp / "runs" / "tune" / "digits-study"
    summary = json.loads((root / "study.json").read_text())
    assert summary["trials"]["complete"] == 3 and summary["metric"] == "val/accuracy"
    study = load_study(root, "digits-study")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    for trial in trials:  # each trial an ordinary run, trained with exactly the trial's values
        run = api.load(root / f"trial-{trial.number:03d}")
        cfg = run.config
        assert (cfg.optim.lr, cfg.model.settings()["width"], cfg.train.epochs) == (
            trial.params["optim.lr"], trial.params["model.width"], trial.params["train.epochs"]
        )  # fmt: skip
        assert len(run.history) == trial.params["train.epochs"]
        assert trial.value == pytest.approx(run.results["val"]["accuracy"])
    best = max(trials, key=lambda t: t.value)
    assert summary["best"]["trial"] == best.number
    tested = [t.number for t in trials if "test" in api.load(root / f"trial-{t.number:03d}").results]
    assert tested == [best.number]  # the test split, scored once: for the best trial, at the end
    best_run = api.load(root / f"trial-{best.number:03d}")
    assert summary["best"]["test"]["accuracy"] == pytest.approx(api.evaluate(best_run)["accuracy"])

    # the leaderboard, best first; best.yaml trains that config as it stands
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["trial", "state", "val/accuracy", "epochs"]
    assert lines[1].split()[0] == str(best.number)
    assert f"best:   trial {best.number}, val/accuracy {best.value:.4f}" in out
    chosen = load_config(root / "best.yaml")
    assert (chosen.optim.lr, chosen.train.epochs, chosen.tune) == (
        best.params["optim.lr"], best.params["train.epochs"], None
    )  # fmt: skip
    again = api.train(root / "best.yaml", out=in_tmp / "again")  # the trial's data was shared; same result
    assert again.results["val"]["accuracy"] == pytest.approx(best.value)

    # --resume runs the study on to a larger count; a second start without it is refused
    code, _, err = run_cli(capsys, "tune", str(config))
    assert code == 2 and "exists in" in err and "--resume" in err
    code, out, err = run_cli(capsys, "tune", str(config), "--resume", "--trials", "4")
    assert code == 0, err
    assert len(load_study(root, "digits-study").get_trials()) == 4

    # study.html: self-contained, each chart drawn
    browser.get((root / "study.html").as_uri())
    images = browser.find_elements(By.CSS_SELECTOR, "img.figure")
    assert {i.get_attribute("class").split()[-1] for i in images} >= {"history", "intermediate", "parallel"}
    for image in images:
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert "Study digits-study" in browser.find_element(By.TAG_NAME, "h1").text


def _tune_process(*args: str) -> subprocess.Popen:
    return bigmodel("tune", *args)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_stopped_mid_trial_leaves_the_study_usable(signum: int, in_tmp: Path):
    """SIGKILL: nothing runs in the worker, and the next one finds its trial lost; SIGTERM (or Ctrl-C):
    the trial stops with a checkpoint and queues itself again. Either way --resume completes the study."""
    config = study_config(in_tmp / "killed.yaml", LR_SPACE, sampler="random", pruner="none", trials=3)
    raw = yaml.safe_load(config.read_text())
    raw["train"]["epochs"] = 40  # long enough to be stopped in the middle
    config.write_text(yaml.safe_dump(raw))
    root = in_tmp / "study"
    worker = _tune_process(str(config), "--out", str(root))
    metrics = root / "trial-001" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "trial 1 never reached its second epoch"
        time.sleep(0.02)
    os.kill(worker.pid, signum)
    _, err = worker.communicate(timeout=120)
    stopped = load_study(root, "killed").trials[1]
    if signum == signal.SIGKILL:
        assert stopped.state.name == "RUNNING"  # as the worker left it
    else:
        assert worker.returncode == 128 + signum and stopped.state.name == "FAIL"
        assert err.splitlines()[-1].startswith("trial 1 stopped (") and "--resume" in err.splitlines()[-1]

    resumed = subprocess.run(
        [sys.executable, "-m", "bigmodel", "tune", str(config), "--out", str(root), "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = load_study(root, "killed").trials
    retry = trials[2]  # queued again, so run first on resume, with the same values
    assert retry.params == trials[1].params
    if signum == signal.SIGKILL:
        assert f"trial 1: its worker (pid {worker.pid}) died mid-trial; retrying it" in resumed.stderr
        assert "stopped mid-trial" in trials[1].user_attrs["lost"] and retry.system_attrs["failed_trial"] == 1
    else:
        assert retry.user_attrs["retry_of"] == 1
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].params == {"optim.lr": 0.01} and "baseline" in trials[0].user_attrs  # the config's own
    summary = json.loads((root / "study.json").read_text())
    assert summary["trials"]["complete"] == 3 and summary["trials"]["failed"] == 1
    assert (root / "best.yaml").is_file()


@pytest.mark.slow
def test_two_workers_share_one_study_in_postgresql(postgres_url: str, in_tmp: Path):
    import optuna

    config = study_config(in_tmp / "shared.yaml", LR_SPACE, sampler="random", pruner="none", trials=5)
    roots = [in_tmp / "machine-a", in_tmp / "machine-b"]
    args = ["--storage", postgres_url, "--study", "shared"]
    workers = [_tune_process(str(config), *args, "--out", str(root)) for root in roots]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="shared", storage=postgres_url).trials
    ran = [t for t in trials if "surplus" not in t.user_attrs]
    assert [t.state.name for t in ran] == ["COMPLETE"] * 5  # the study's count, each trial once
    found = {p.name: root for root in roots for p in root.glob("trial-*")}
    assert sorted(found) == [f"trial-{t.number:03d}" for t in ran]  # one run directory each
    for t in ran:
        assert (
            Path(t.user_attrs["run"]) == (found[f"trial-{t.number:03d}"] / f"trial-{t.number:03d}").resolve()
        )
