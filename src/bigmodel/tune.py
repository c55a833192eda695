"""``bigmodel tune``: a hyperparameter search on Optuna in which every trial is an ordinary run.

    runs/tune/<study>/
      study.journal    the study itself (Optuna's journal file, append-only: a killed worker loses nothing)
      trial-000/ ...   one run directory per trial; a pruned trial's report.json says where it stopped
      best.yaml        the winning config, ready for `bigmodel train`
      study.json       the leaderboard and the best trial, with its test metrics
      study.html       optimisation history, parameter importances, parallel coordinates

The search reads the validation split only: each epoch's validation metric goes to the pruner through a
callback of the one training loop, and the best checkpoint's to the sampler. The test split is scored
once, for the best trial, when the study has its trials.

A worker that dies mid-trial leaves that trial RUNNING. On a database (``--storage postgresql://...``)
Optuna's heartbeat fails it after a grace period; on the journal, a RUNNING trial whose worker process
on this host is gone is failed when a worker next starts. Either way it is retried with the same
parameters (``RetryHeartbeatStaleTrialCallback``). A study counts the trials that finished (complete,
pruned, or failed by their own error) and those under way, so ``--resume`` or a second worker runs it
to its count.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bigmodel.config import Config, SearchRange, apply_overrides, load_config, value_at
from bigmodel.engine.trainer import Callback, Trainer, TrainingDiverged
from bigmodel.errors import UserError
from bigmodel.files import write_json, write_text

if TYPE_CHECKING:
    import optuna

    from bigmodel.data import DataBundle

JOURNAL = "study.journal"
MAX_RETRY = 2  # a trial whose worker died is retried at most this often
HEARTBEAT_S, GRACE_S = 10, 60  # database storage: a RUNNING trial silent this long has lost its worker
KEPT_DATA = 3  # data bundles a worker keeps for later trials with the same data section


@dataclass
class StudyResult:
    root: Path
    name: str
    metric: str
    direction: str
    leaderboard: list[dict[str, Any]]  # finished trials, best first, then pruned and failed ones
    best: dict[str, Any] | None  # the best trial's row, with "test" where it was scored here
    best_config: Path | None
    page: Path


class PruneOnValidation(Callback):
    """Reports each epoch's validation metric to the trial and stops the loop when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        epoch, value = int(metrics["epoch"]), float(metrics[self.metric])
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.request_stop(f"pruned by the study at epoch {epoch} ({self.metric} {value:.4f})")


class _TrialFailed(Exception):
    """A trial's own error (its config diverged, or a model refused its values): the study goes on."""


class _Surplus(Exception):
    """Another worker started the study's last trial first: this one is not run."""


def tune(
    config: str | Path | dict[str, Any] | Config | None,
    overrides: list[str] | tuple[str, ...] = (),
    trials: int | None = None,
    timeout: float | None = None,
    study: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    out: str | Path | None = None,
) -> StudyResult:
    """Run (or join, or continue) a study of the config's ``tune:`` section; see the module docstring.
    Every mistake in the search space is raised before a trial runs or a directory is made."""

    base = load_config(config, overrides)
    spec = base.tune
    if spec is None or not spec.params:
        raise UserError(
            "tune needs a tune: section with params to search, e.g. tune.params={optim.lr: {loguniform: "
            "[0.001, 0.03]}}; see configs/rt-tune.yaml"
        )
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout must be above 0 seconds, got {timeout}")
    total = trials or spec.trials
    metric = spec.metric or base.train.monitor or _default_metric(base)
    if not metric.startswith("val/"):
        raise UserError(
            f"tune reads the validation split only: tune.metric must be a val/ metric, not {metric}"
        )
    direction = spec.direction or ("minimize" if metric.endswith("loss") else "maximize")
    raw = base.to_dict()
    del raw["tune"]
    raw["train"]["monitor"] = metric  # each trial's best checkpoint is the one the study is scored by
    _check_space(raw, spec.params)
    grid = _grid(spec.params) if spec.sampler == "grid" else None
    name = study or base.name or "study"
    root = Path(out) if out is not None else Path("runs") / "tune" / name
    seed = None if storage is not None else spec.seed
    loaded = open_study(
        name,
        root,
        storage,
        resume,
        direction,
        _sampler(spec.sampler, grid, seed),
        _pruner(spec.pruner, _most_epochs(raw, spec.params)),
    )
    if same_base(loaded, raw, metric):
        _queue_own_values(loaded, raw, spec.params)

    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        return {key: _suggest(trial, key, searched) for key, searched in spec.params.items()}

    run_trials(loaded, Trials(loaded, raw, suggest, metric, root, total), total, timeout, grid)
    return _finish(loaded, root, metric, direction)


def open_study(
    name: str,
    root: Path,
    storage: str | None,
    resume: bool,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """The study named ``name``: new, continued (``resume``) or joined (a shared ``storage``), its trials
    lost with their workers failed and queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    store = _open_storage(storage, root, name, resume)
    loaded = optuna.create_study(
        study_name=name,
        storage=store,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    _fail_lost_trials(loaded)
    return loaded


def run_trials(
    study: optuna.Study,
    trials: Trials,
    total: int,
    timeout: float | None,
    grid: dict[str, list[Any]] | None = None,
) -> None:
    """Run trials until the study has ``total`` (over all its workers), the grid is covered, or
    ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout if timeout else None
    while _counted(study.get_trials(deepcopy=False)) < total:
        if deadline is not None and time.monotonic() >= deadline:
            print(f"--timeout: stopping after {timeout:g} s; continue with --resume", file=sys.stderr)
            break
        study.optimize(trials, n_trials=1, catch=(_TrialFailed, _Surplus))
        if grid is not None and _grid_done(study, grid):
            break


def same_base(study: optuna.Study, raw: dict[str, Any], metric: str) -> bool:
    """A new study records its base config (and says it is new); a worker that joins or resumes the
    study must bring the same config (else trials would not compare)."""
    base = study.user_attrs.get("base")
    if base is None:
        study.set_user_attr("base", raw)
        study.set_metric_names([metric])
        return not study.get_trials(deepcopy=False)
    if base != raw:
        changed = sorted(_differences(base, raw))
        raise UserError(
            f"study {study.study_name} was started from another config ({', '.join(changed[:3])} differ); "
            "resume or join it with the same config and overrides, or name a new --study"
        )
    return False


def _queue_own_values(study: optuna.Study, raw: dict[str, Any], params: dict[str, SearchRange]) -> None:
    """The config's own values are a new study's first trial where they lie in the space: the search
    starts from what the user had, and its winner is never worse on the seed it is scored on."""
    own = {key: value_at(raw, key.split(".")) for key in params}
    if all(_inside(own[key], searched) for key, searched in params.items()):
        study.enqueue_trial(own, user_attrs={"baseline": "the config's own values"})


def _inside(value: Any, searched: SearchRange) -> bool:
    if value is None or searched.choice is not None:
        return value is not None and value in (searched.choice or [])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    low, high = searched.extremes()
    steps = (value - low) / searched.step if searched.step else 0
    return low <= value <= high and abs(steps - round(steps)) < 1e-9


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = dict.fromkeys([*a, *b])
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _default_metric(cfg: Config) -> str:
    return "val/accuracy" if cfg.data.objective == "classify" else "val/loss"


def _check_space(raw: dict[str, Any], params: dict[str, SearchRange]) -> None:
    """Each searched key is a setting of train's config and each end of its range (every choice) passes
    that key's own validation: the config's for every key, the model builder's for model keys."""
    model_configs = []
    for key, searched in params.items():
        if key.split(".")[0] not in ("data", "model", "train", "optim") or "." not in key:
            raise UserError(
                f"tune.params: {key} is not a training setting; search keys of data, model, train or optim"
            )
        for value in searched.extremes():
            try:
                cfg = load_config(copy.deepcopy(raw), as_overrides({key: value}))
            except UserError as exc:
                if str(exc).startswith("unknown config key"):
                    raise UserError(f"tune.params: {exc}") from None
                raise UserError(f"tune.params.{key}: {value!r} is refused: {exc}") from None
            if key.startswith("model."):
                model_configs.append((key, value, cfg))
    if model_configs:  # a model's settings are checked by its builder, which needs the data's shape
        from bigmodel.evaluation.scoring import run_data
        from bigmodel.models import build_model

        info = run_data(model_configs[0][2], None).info
        for key, value, cfg in model_configs:
            try:
                build_model(cfg.model, info)
            except UserError as exc:
                raise UserError(f"tune.params.{key}: {value!r} is refused: {exc}") from None


def _grid(params: dict[str, SearchRange]) -> dict[str, list[Any]]:
    grid = {}
    for key, searched in params.items():
        if searched.choice is not None:
            grid[key] = searched.choice
        elif searched.int is not None:
            grid[key] = list(range(searched.int[0], searched.int[1] + 1, int(searched.step or 1)))
        else:
            raise UserError(
                f"tune.sampler=grid needs choice or int ranges; tune.params.{key} is {searched.distribution} "
                "(use tpe or random, or list its values as a choice)"
            )
    return grid


def _grid_done(study: optuna.Study, grid: dict[str, list[Any]]) -> bool:
    """Every point of the grid has a finished trial (Optuna's GridSampler stops the study there)."""
    points = 1
    for values in grid.values():
        points *= len(values)
    from optuna.trial import TrialState

    seen = {
        tuple(t.params.get(k) for k in grid)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    }
    return len(seen) >= points


def _sampler(name: str, grid: dict[str, list[Any]] | None, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _most_epochs(raw: dict[str, Any], params: dict[str, SearchRange]) -> int:
    """The longest a trial can train, in epochs: Hyperband's largest budget."""
    searched = params.get("train.epochs")
    return int(max(searched.extremes())) if searched is not None else raw["train"]["epochs"]


def _pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def _open_storage(url: str | None, root: Path, name: str, resume: bool) -> optuna.storages.BaseStorage:
    """The study's journal in its directory, or the database at ``url``, shared by every worker that
    names it. A journal study that exists is continued only with ``--resume``; a database study is
    joined by any worker (that is what sharing it means)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        journal = root / JOURNAL
        if journal.exists() and not resume:
            raise UserError(
                f"study {name} exists in {root}; continue it with --resume, or name another with --study"
            )
        if not journal.exists():
            if resume:
                raise UserError(f"--resume: no study in {root} (its {JOURNAL} is missing)")
            if root.exists() and any(root.iterdir()):
                raise UserError(f"{root} already exists and is not a study; pick another --out or --study")
        root.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    if not url.startswith(("postgresql", "mysql", "sqlite")):
        raise UserError(f"--storage must be a database URL such as postgresql://user@host/db, got {url!r}")
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            store = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY),
            )
            break
        except (IntegrityError, ProgrammingError) as exc:  # another worker creating Optuna's tables just now
            if attempt == 4:
                first = str(exc).strip().splitlines()[0][:200]
                raise UserError(f"--storage: cannot create Optuna's tables ({first})") from None
            time.sleep(0.5)
        except ImportError as exc:
            raise UserError(
                f"--storage {url.split(':')[0]}: its driver is missing ({exc}); pip install 'psycopg[binary]'"
            ) from None
        except Exception as exc:  # SQLAlchemy's OperationalError and kin: the server, the name, the password
            first = str(exc).strip().splitlines()[0][:200]
            raise UserError(f"--storage: cannot open the database ({first})") from None
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if resume and not exists:
        raise UserError(f"--resume: the database holds no study named {name}")
    root.mkdir(parents=True, exist_ok=True)
    return store


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail_lost_trials(study: optuna.Study) -> None:
    """Journal studies have no heartbeat: a RUNNING trial whose worker on this host has exited is failed
    and retried here, as Optuna's heartbeat does for a database."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage  # Optuna's own API for this (fail_stale_trials) needs a heartbeat
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if where != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage.set_trial_user_attr(trial._trial_id, "lost", f"worker {where}:{pid} stopped mid-trial")
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY)
            retry(study, storage.get_trial(trial._trial_id))
            print(
                f"trial {trial.number}: its worker (pid {pid}) died mid-trial; retrying it", file=sys.stderr
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial takes one of the study's places: finished, under way or queued, or failed by its
    own error; not one lost with its worker (its retry does) nor a surplus one."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    return True


def _counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    return sum(_counts(t) for t in trials)


class Trials:
    """The objective: one trial's settings (``suggest`` draws them from the trial as config keys and
    values) applied to the base config, trained into ``trial-NNN`` with the pruning callback and the
    ``observers`` (callbacks made for the trial), scored by its best checkpoint's validation metric."""

    def __init__(
        self,
        study: optuna.Study,
        raw: dict[str, Any],
        suggest: Callable[[optuna.Trial], dict[str, Any]],
        metric: str,
        root: Path,
        total: int,
        observers: Callable[[optuna.Trial], list[Callback]] = lambda trial: [],
    ):
        self.study, self.raw, self.suggest, self.metric, self.root, self.total = (
            study, raw, suggest, metric, root, total
        )  # fmt: skip
        self.observers = observers
        self.built: OrderedDict[str, DataBundle] = OrderedDict()  # data section -> its bundle, newest last

    def data_for(self, cfg: Config) -> DataBundle:
        """The data of a trial's config, built once for each data section a worker meets (trials that
        search only the model or the optimizer share one tokenizer and one split); a few are kept."""
        from bigmodel.data import build_data

        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in self.built:
            self.built[key] = build_data(cfg.data)
            while len(self.built) > KEPT_DATA:
                self.built.popitem(last=False)
        self.built.move_to_end(key)
        return self.built[key]

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from bigmodel import api
        from bigmodel.errors import Interrupted

        earlier = [t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number]
        if _counted(earlier) >= self.total:
            trial.set_user_attr("surplus", "not run: the study had its trials")
            raise _Surplus
        trial.set_user_attr("worker", _worker())
        chosen = self.suggest(trial)
        run_dir = self.root / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", str(run_dir.resolve()))
        cfg = load_config(copy.deepcopy(self.raw), as_overrides(chosen))
        cfg.name = run_dir.name
        cfg.train.progress = False  # one line per trial, not per batch
        shown = ", ".join(f"{k}={shown_value(v)}" for k, v in chosen.items())
        print(f"trial {trial.number}: {shown}", file=sys.stderr)
        pruning = PruneOnValidation(trial, self.metric)
        try:
            data = self.data_for(cfg)
            callbacks = [pruning, *self.observers(trial)]
            run = api.train(cfg, out=run_dir, callbacks=callbacks, score_test=False, data=data)
        except Interrupted as exc:
            # Asked to stop: the trial is queued again, so --resume runs it first with the same values.
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise Interrupted(
                f"trial {trial.number} stopped ({run_dir} keeps its checkpoints) and is queued again; "
                "continue the study with the same command and --resume",
                exc.signum,
            ) from None
        except (UserError, TrainingDiverged) as exc:
            trial.set_user_attr("error", str(exc))
            print(f"trial {trial.number} failed: {exc}", file=sys.stderr)
            raise _TrialFailed(str(exc)) from None
        assert run is not None  # tune runs in one process
        value = float(run.results["val"][self.metric.removeprefix("val/")])
        trial.set_user_attr("seconds", run.results["train_seconds"])
        if pruning.pruned_at is not None:
            print(f"trial {trial.number}: pruned at epoch {pruning.pruned_at}", file=sys.stderr)
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
        print(f"trial {trial.number}: {self.metric} {value:.4f}", file=sys.stderr)
        return value


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``section.key=value`` overrides for config keys and values (JSON, which YAML reads back as is)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def _suggest(trial: optuna.Trial, key: str, searched: SearchRange) -> Any:
    if searched.choice is not None:
        return trial.suggest_categorical(key, searched.choice)
    if searched.int is not None:
        return trial.suggest_int(key, *searched.int, step=int(searched.step or 1))
    if searched.loguniform is not None:
        return trial.suggest_float(key, *searched.loguniform, log=True)
    return trial.suggest_float(key, *searched.uniform, step=searched.step)


def shown_value(value: Any) -> str:
    """A searched value as a table shows it: floats to four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- the end of a study: leaderboard, test score of the best trial, best.yaml, study.json, study.html ---


def _finish(study: optuna.Study, root: Path, metric: str, direction: str) -> StudyResult:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if "surplus" not in t.user_attrs]
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
        reverse=direction == "maximize",
    )
    rest = [t for t in trials if t.state != TrialState.COMPLETE]
    leaderboard = [_row(t) for t in complete + sorted(rest, key=lambda t: t.number)]
    best, best_config = None, None
    if complete:
        best = leaderboard[0]
        best["test"] = _score_test(best)
        best_config = root / "best.yaml"
        write_text(best_config, _best_yaml(study, complete[0]))
    summary = {
        "study": study.study_name,
        "metric": metric,
        "direction": direction,
        "trials": {state: sum(row["state"] == state for row in leaderboard) for state in _STATES.values()},
        "best": best,
        "leaderboard": leaderboard,
    }
    write_json(root / "study.json", summary)
    page = root / "study.html"
    write_text(page, _study_page(study, summary))
    return StudyResult(root, study.study_name, metric, direction, leaderboard, best, best_config, page)


_STATES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "queued",
}


def _row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    note = (attrs.get("error") or attrs.get("lost") or "") if trial.state.name == "FAIL" else ""
    if trial.state.name == "PRUNED":
        note = f"pruned at epoch {max(trial.intermediate_values, default=0)}"
    return {
        "trial": trial.number,
        "state": _STATES.get(trial.state.name, trial.state.name.lower()),
        "value": trial.value,
        "epochs": len(trial.intermediate_values),
        "seconds": attrs.get("seconds"),
        "params": trial.params,
        "run": attrs.get("run"),
        "worker": attrs.get("worker"),  # host:pid
        "note": note,
    }


def _score_test(best: dict[str, Any]) -> dict[str, Any] | None:
    """The best trial's test metrics, scored now (once: they are saved in its report.json), where its
    run is on this machine; a shared study's best trial may have run elsewhere."""
    from bigmodel import api
    from bigmodel.run import RunDir

    run = RunDir(best["run"]) if best["run"] else None
    if run is None or not run.results_file.is_file():
        return None
    results = run.results
    if "test" not in results:
        results["test"] = api.evaluate(run, "test")
        run.write_results(results)
    return results["test"]


def _best_yaml(study: optuna.Study, best: optuna.trial.FrozenTrial) -> str:
    """The best trial's config: its run's config.yaml, or where that run is elsewhere, the same config
    rebuilt from the study's base and the trial's parameters."""
    config = Path(best.user_attrs.get("run", "")) / "config.yaml"
    raw = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    if raw is None:
        raw = apply_overrides(copy.deepcopy(study.user_attrs.get("base", {})), as_overrides(best.params))
    raw["name"] = f"{study.study_name}-best"
    header = (
        f"# The best of study {study.study_name}: trial {best.number}, {study.metric_names[0]} "
        f"{best.value:.4f}. Train it with: bigmodel train best.yaml\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def _study_page(study: optuna.Study, summary: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    from bigmodel.evaluation.report import figure, fmt, page, section, table

    parts = [
        f'<header><h1>Study {summary["study"]}</h1><p class="note">{summary["metric"]}, '
        f"{summary['direction']}d; trials: "
        + ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
        + "</p></header>"
    ]
    best = summary["best"]
    if best is not None:
        test = best.get("test") or {}
        facts = [
            ["trial", str(best["trial"])],
            [summary["metric"], fmt(best["value"], ".4f")],
            ["test accuracy", fmt(test.get("accuracy"), ".4f")],
            *[[key, shown_value(value)] for key, value in best["params"].items()],
        ]
        parts.append(section("Best trial", table(None, facts)))
    rows = [
        [str(r["trial"]), r["state"], fmt(r["value"], ".4f"), str(r["epochs"]), r["note"]]
        + [shown_value(r["params"].get(k, "")) for k in _param_names(summary)]
        for r in summary["leaderboard"]
    ]
    parts.append(
        section(
            "Trials", table(["trial", "state", summary["metric"], "epochs", "", *_param_names(summary)], rows)
        )
    )
    charts = [
        ("Optimisation history", plots.plot_optimization_history, "history"),
        ("Validation metric per epoch (pruning)", plots.plot_intermediate_values, "intermediate"),
        ("Parameter importances", plots.plot_param_importances, "importances"),
        ("Parallel coordinates", plots.plot_parallel_coordinate, "parallel"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for title, plot, name in charts:
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # too few finished trials, or one value only
                parts.append(section(title, f'<p class="note">not drawn: {exc}</p>'))
                continue
            fig = axes.ravel()[0].figure if hasattr(axes, "ravel") else axes.figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()  # Optuna's long parameter names are cut off without it
            parts.append(section(title, figure(fig, title, name)))
            plt.close(fig)
    return page(f"bigmodel tune: {summary['study']}", parts)


def _param_names(summary: dict[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for row in summary["leaderboard"]:
        names.update(dict.fromkeys(row["params"]))
    return list(names)
