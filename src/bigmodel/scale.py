"""``bigmodel scale``: how validation loss falls with parameters, data and compute, measured on a grid of
model and data sizes, fitted, and turned into advice for a FLOP budget.

    runs/scale/<sweep>/
      study.journal    the sweep is an Optuna study on tune's machinery: shared (--storage), resumable
      trial-000/ ...   one ordinary run per (size, data fraction)
      scale.json       each run's N, D, C, loss, time and MFU; the fits; the extrapolation check; advice
      scale.html       loss against compute with its frontier, each fit with its band, the check
      events.*         the sweep's points in TensorBoard (loss by parameters, by tokens, by compute)

Per run: N counts the parameters outside embedding tables (Kaplan et al.'s N); D the training tokens
(language models) or examples (classifiers) seen; C the training FLOPs, counted by PyTorch's FLOP counter
over the first training step (forward and backward) and scaled to every example seen. 6·N·D, the usual
estimate, is reported beside it: it leaves out attention's own products and the embeddings' output layer.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn as nn

from bigmodel.config import Config, load_config
from bigmodel.engine.trainer import Callback, Trainer
from bigmodel.errors import UserError
from bigmodel.evaluation.scaling import Fit, compute_optimal, fit_law
from bigmodel.files import write_json, write_text
from bigmodel.tune import Trials, open_study, run_trials, same_base

if TYPE_CHECKING:
    import optuna

# Each family's width and depth keys; a size is WIDTHxDEPTH, or WIDTH at the config's depth.
SIZE_KEYS = {
    "gpt": ("hidden_size", "layers"),
    "bert-mlm": ("hidden_size", "layers"),
    "transformer": ("dim", "layers"),
    "cnn": ("width", "depth"),
}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for the advice's wall time.
ACCELERATORS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "T4": 65e12}


class MeasureScale(Callback):
    """Records a trial's N, D and C: parameters outside embeddings when training starts, the FLOPs of
    the first step (PyTorch's counter, entered before it and left after it), and every example seen."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.counter: Any = None
        self.flops_per_example = 0.0
        self.examples = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        from bigmodel.evaluation.profile import flop_counter

        self.trial.set_user_attr("N", non_embedding_params(trainer.model))
        self.counter = flop_counter()
        self.counter.__enter__()

    def on_batch_end(self, trainer: Trainer, loss: float, size: int) -> None:
        if self.counter is not None:
            self._stop_counting(size)
        self.examples += size

    def _stop_counting(self, size: int) -> None:
        self.counter.__exit__(None, None, None)
        self.flops_per_example = self.counter.get_total_flops() / max(size, 1)
        self.counter = None

    def on_fit_end(self, trainer: Trainer) -> None:
        from bigmodel.evaluation.profile import matmul_peak

        if self.counter is not None:  # stopped before a step ended
            self._stop_counting(1)
        seconds = trainer.history[-1]["elapsed_seconds"] if trainer.history else 0.0
        flops = self.flops_per_example * self.examples
        peak, _ = matmul_peak(trainer.device, trainer.dtype)
        for key, value in {
            "D": self.examples * trainer.task.tokens_per_example,
            "C": flops,
            "examples": self.examples,
            "train_seconds": seconds,
            "mfu": flops / seconds / peak if seconds and peak else 0.0,
        }.items():
            self.trial.set_user_attr(key, value)


def non_embedding_params(model: nn.Module) -> int:
    """Parameters less the embedding tables (tokens, positions), each shared tensor counted once."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)


@dataclass
class ScaleResult:
    root: Path
    runs: list[dict[str, Any]]
    fits: dict[str, Fit]
    extrapolation: dict[str, Any] | None
    advice: dict[str, Any] | None
    notes: list[str]
    page: Path


def scale(
    config: str | Path | dict[str, Any] | Config | None,
    overrides: list[str] | tuple[str, ...] = (),
    sizes: list[str] | tuple[str, ...] = (),
    fractions: list[float] | tuple[float, ...] = (1.0,),
    budget: float | None = None,
    study: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    out: str | Path | None = None,
    accelerator: str = "H100",
    mfu: float = 0.4,
) -> ScaleResult:
    """Train every (size, data fraction) of the grid as a run of one sweep, then fit and advise; a
    mistake in the grid is raised before anything runs."""
    import optuna

    base = load_config(config, overrides)
    keys = SIZE_KEYS.get(base.model.name)
    if keys is None:
        raise UserError(
            f"scale sweeps the sizes of {', '.join(SIZE_KEYS)}; model.name={base.model.name!r} is not one"
        )
    if not sizes:
        raise UserError("--sizes needs at least one size, e.g. --sizes 64x2,128x2,256x4 (width x depth)")
    if any(not 0 < f <= 1 for f in fractions) or not fractions:
        raise UserError(f"--data-fractions must lie in (0, 1], e.g. 0.25,0.5,1; got {list(fractions)}")
    if accelerator not in ACCELERATORS:
        raise UserError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must lie in (0, 1], got {mfu}")
    if budget is not None and budget <= 0:
        raise UserError(f"--budget must be a number of FLOPs above 0, got {budget}")
    raw = base.to_dict()
    del raw["tune"]
    raw["train"]["monitor"] = "val/loss"  # each run's best checkpoint is its lowest validation loss
    settings = {label: _size_settings(base, keys, label) for label in sizes}
    for label in sizes:  # each size's config passes the config's checks now, not after hours of others
        load_config(dict(raw), [f"model.{k}={v}" for k, v in settings[label].items()])
    fractions = sorted(set(fractions))
    grid = {"size": list(sizes), "data": fractions}
    name = study or f"{base.name or 'sweep'}-scale"
    root = Path(out) if out is not None else Path("runs") / "scale" / name
    loaded = open_study(
        name,
        root,
        storage,
        resume,
        "minimize",
        optuna.samplers.GridSampler(grid, seed=0),
        optuna.pruners.NopPruner(),
    )
    same_base(loaded, raw, "val/loss")  # before the tokenizer's path, which is each machine's own
    if fractions[0] < 1:
        _share_tokenizer(raw, root)
    total = len(sizes) * len(fractions)
    counts: dict[float, int | None] = {1.0: None}

    def suggest(trial: optuna.Trial) -> dict[str, Any]:
        label = trial.suggest_categorical("size", grid["size"])
        fraction = trial.suggest_categorical("data", grid["data"])
        chosen = {f"model.{k}": v for k, v in settings[label].items()}
        if fraction < 1:
            if fraction not in counts:  # the share of the full training split, counted once per worker
                counts[fraction] = max(1, round(fraction * _training_items(load_config(dict(raw)), trials)))
            chosen["data.limit"] = counts[fraction]
        return chosen

    trials = Trials(
        loaded, raw, suggest, "val/loss", root, total, observers=lambda trial: [MeasureScale(trial)]
    )
    run_trials(loaded, trials, total, None, grid)
    return _analyse(loaded, root, budget, accelerator, mfu)


def _share_tokenizer(raw: dict[str, Any], root: Path) -> None:
    """A tokenizer trained on the training split would differ with the share of it a run keeps, and so
    would what a token, and a loss per token, is: every run of a sweep over data gets the one trained on
    the whole split, saved once in the sweep's directory."""
    from bigmodel.data import build_data, is_text

    cfg = load_config(dict(raw))
    if not is_text(cfg.data) or cfg.data.tokenizer not in ("wordpiece", "bpe"):
        return  # images, or a tokenizer given as it is
    shared = root / "tokenizer"
    if not shared.is_dir():
        build_data(cfg.data).tokenizer.save_pretrained(str(shared))
    raw["data"]["tokenizer"] = str(shared.resolve())


def _training_items(cfg: Config, trials: Trials) -> int:
    """What ``data.limit`` counts: training texts for a language model (its split holds packed blocks),
    else training examples."""
    if cfg.data.objective != "classify":
        from bigmodel.data.lm import split_texts

        return len(split_texts(cfg.data)["train"])
    return len(trials.data_for(cfg).train)


def _size_settings(base: Config, keys: tuple[str, str], label: str) -> dict[str, int]:
    """A size's model settings: width and depth, and for transformers the heads that keep the config's
    head width (and a 4x feed-forward for bert-mlm)."""
    width_key, depth_key = keys
    own = base.model.settings()
    try:
        parts = [int(p) for p in label.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 1:
        raise UserError(f"--sizes: {label!r} must be WIDTH or WIDTHxDEPTH, e.g. 128x4")
    settings = {width_key: parts[0]}
    if len(parts) == 2:
        settings[depth_key] = parts[1]
    from bigmodel.models import model_settings

    defaults = model_settings(base.model.name)
    if "heads" in defaults:
        head_width = own.get(width_key, defaults[width_key]) // own.get("heads", defaults["heads"])
        if parts[0] % head_width:
            raise UserError(
                f"--sizes: width {parts[0]} is not a multiple of the config's head width {head_width}"
            )
        settings["heads"] = parts[0] // head_width
    if base.model.name == "bert-mlm":
        settings["intermediate_size"] = 4 * parts[0]
    return settings


# --- fits, the extrapolation check, advice, the page ---------------------------------------------------


def _analyse(
    study: optuna.Study, root: Path, budget: float | None, accelerator: str, mfu: float
) -> ScaleResult:
    from optuna.trial import TrialState

    runs = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        n, d, c = a["N"], a["D"], a["C"]
        runs.append({
            "trial": t.number, "size": t.params["size"], "data": t.params["data"], "N": n, "D": d, "C": c,
            "C_over_6ND": c / (6 * n * d) if n and d else None, "loss": t.value,
            "examples": a.get("examples"), "train_seconds": a.get("train_seconds"), "mfu": a.get("mfu"),
            "run": a.get("run"),
        })  # fmt: skip
    notes: list[str] = []
    fits: dict[str, Fit] = {}
    most_data = [r for r in runs if r["data"] == max((r["data"] for r in runs), default=1.0)]
    largest = [r for r in runs if r["N"] == max((r["N"] for r in runs), default=0)]
    for form, subset, column, what in (("N", most_data, "N", "sizes"), ("D", largest, "D", "data fractions")):
        if len({r[column] for r in subset}) >= 4:
            fits[form] = fit_law(
                form, [r["loss"] for r in subset], **{column.lower(): [r[column] for r in subset]}
            )
        else:
            notes.append(
                f"L({form}) needs runs at 4 or more {what}; this sweep has {len({r[column] for r in subset})}"
            )
    if len(runs) >= 6 and len({r["N"] for r in runs}) >= 3 and len({r["D"] for r in runs}) >= 3:
        fits["N,D"] = fit_law(
            "N,D", [r["loss"] for r in runs], [r["N"] for r in runs], [r["D"] for r in runs]
        )
    else:
        notes.append("L(N, D) needs 6 or more runs over at least 3 sizes and 3 data fractions")
    extrapolation = _extrapolate(runs, notes)
    advice = _advise(fits, runs, budget, accelerator, mfu, notes) if budget is not None else None
    summary = {
        "runs": runs,
        "fits": {form: fit.to_dict() for form, fit in fits.items()},
        "extrapolation": extrapolation,
        "advice": advice,
        "notes": notes,
    }
    write_json(root / "scale.json", summary)
    _log_points(root, runs)
    page = root / "scale.html"
    write_text(page, _page(study.study_name, runs, fits, extrapolation, advice, notes))
    return ScaleResult(root, runs, fits, extrapolation, advice, notes, page)


def _advise(
    fits: dict[str, Fit],
    runs: list[dict[str, Any]],
    budget: float,
    accelerator: str,
    mfu: float,
    notes: list[str],
) -> dict[str, Any] | None:
    """The compute-optimal N and D for ``budget``, among the sizes measured, at each size's own cost."""
    if "N,D" not in fits:
        notes.append("--budget: advice needs the joint fit L(N, D)")
        return None
    k = by_size(runs, lambda r: r["C"] / (r["N"] * r["D"]))
    speed = by_size(runs, lambda r: r["C"] / r["train_seconds"])
    sizes = (min(r["N"] for r in runs), max(r["N"] for r in runs))
    advice = compute_optimal(fits["N,D"], budget, k, sizes)
    if advice is None:
        notes.append(f"--budget: {budget:.3g} FLOPs do not buy one token at the sweep's smallest size")
        return None
    at_end = [
        end for end, n in zip(("smallest", "largest"), sizes, strict=True) if np.isclose(advice["params"], n)
    ]
    if at_end:
        notes.append(
            f"--budget: the best N is the sweep's {at_end[0]} size; the advice looks no further, "
            "where neither the loss nor the FLOPs per token were measured"
        )
    return advice | {
        "flops_per_param_token": float(k(advice["params"])),
        "seconds_here": budget / float(speed(advice["params"])),
        "accelerator": accelerator,
        "assumed_mfu": mfu,
        "seconds_on_accelerator": budget / (ACCELERATORS[accelerator] * mfu),
    }


def by_size(runs: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> Callable[[Any], Any]:
    """``value`` at any N: each size's median over its runs, interpolated in log-log between sizes and the
    nearest size's beyond them. FLOPs per parameter and token, and FLOP/s, both change with size."""
    sizes = sorted({r["N"] for r in runs})
    medians = [statistics.median(value(r) for r in runs if r["N"] == n and r["train_seconds"]) for n in sizes]
    log_n, log_v = np.log(sizes), np.log(medians)
    return lambda n: np.exp(np.interp(np.log(n), log_n, log_v))


def _extrapolate(runs: list[dict[str, Any]], notes: list[str]) -> dict[str, Any] | None:
    """Fit without the largest model's runs, predict them: the fit's error where it was not fitted."""
    if len({r["N"] for r in runs}) < 3:
        notes.append("the extrapolation check needs 3 or more sizes")
        return None
    biggest = max(r["N"] for r in runs)
    held, kept = [r for r in runs if r["N"] == biggest], [r for r in runs if r["N"] < biggest]
    joint = len(kept) >= 6 and len({r["D"] for r in kept}) >= 3 and len({r["N"] for r in kept}) >= 3
    if not joint and len(kept) < 4:
        notes.append("the extrapolation check needs 4 or more runs besides the largest model's")
        return None
    form = "N,D" if joint else "N"
    kept = kept if joint else [r for r in kept if r["data"] == held[0]["data"]]
    if len(kept) < 4:
        notes.append("the extrapolation check needs 4 or more smaller runs at the largest run's data")
        return None
    fit = fit_law(
        form, [r["loss"] for r in kept], [r["N"] for r in kept], [r["D"] for r in kept] if joint else None
    )
    checks = []
    for r in held:
        predicted = float(fit.predict(r["N"], r["D"] if joint else None))
        error = abs(predicted - r["loss"]) / r["loss"]
        checks.append(
            {
                "trial": r["trial"],
                "N": r["N"],
                "D": r["D"],
                "loss": r["loss"],
                "predicted": predicted,
                "error": error,
            }
        )
    return {
        "form": form,
        "fitted_runs": len(kept),
        "held_out": checks,
        "max_error": max(c["error"] for c in checks),
    }


def _log_points(root: Path, runs: list[dict[str, Any]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(root)) as writer:
        for r in sorted(runs, key=lambda r: r["C"]):
            writer.add_scalar(f"scale/loss_by_params@data={r['data']:g}", r["loss"], int(r["N"]))
            writer.add_scalar(f"scale/loss_by_tokens@size={r['size']}", r["loss"], int(r["D"]))
            writer.add_scalar("scale/loss_by_compute_gflop", r["loss"], int(r["C"] / 1e9))


def _page(
    name: str,
    runs: list[dict[str, Any]],
    fits: dict[str, Fit],
    extrapolation: dict[str, Any] | None,
    advice: dict[str, Any] | None,
    notes: list[str],
) -> str:
    from matplotlib.figure import Figure

    from bigmodel.evaluation.profile import si
    from bigmodel.evaluation.report import figure, fmt, page, section, table

    parts = [
        f'<header><h1>Scaling sweep {name}</h1><p class="note">{len(runs)} runs; validation loss</p></header>'
    ]
    rows = [
        [r["size"], f"{r['data']:g}", si(r["N"]), si(r["D"]), si(r["C"]), fmt(r["C_over_6ND"], ".2f"),
         fmt(r["loss"], ".4f"), fmt(r["train_seconds"], ",.0f"), fmt(100 * (r["mfu"] or 0), ".1f")]
        for r in sorted(runs, key=lambda r: (r["N"], r["D"]))
    ]  # fmt: skip
    columns = ["size", "data", "N", "D", "C (FLOPs)", "C / 6ND", "val loss", "seconds", "MFU %"]
    parts.append(section("Runs", table(columns, rows)))

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for label in dict.fromkeys(r["size"] for r in runs):
        mine = sorted((r for r in runs if r["size"] == label), key=lambda r: r["C"])
        ax.plot([r["C"] for r in mine], [r["loss"] for r in mine], "o-", label=label)
    ordered = sorted(runs, key=lambda r: r["C"])
    frontier, best = [], float("inf")
    for r in ordered:  # the lowest loss reached for at most this much compute
        if r["loss"] < best:
            best = r["loss"]
            frontier.append(r)
    ax.plot([r["C"] for r in frontier], [r["loss"] for r in frontier], "k--", label="frontier")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss")
    ax.legend(fontsize="small")
    parts.append(section("Loss against compute", figure(fig, "loss against compute", "compute")))

    for form, column, label in (("N", "N", "non-embedding parameters N"), ("D", "D", "training tokens D")):
        if form not in fits:
            continue
        fit = fits[form]
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        ax = fig.subplots()
        fitted = [
            r
            for r in runs
            if (
                r["data"] == max(x["data"] for x in runs)
                if form == "N"
                else r["N"] == max(x["N"] for x in runs)
            )
        ]
        xs = np.array([r[column] for r in fitted], dtype=float)
        grid = np.logspace(np.log10(xs.min()) - 0.3, np.log10(xs.max()) + 0.5, 100)
        curves = np.array([_law(s, form, grid) for s in fit.samples]) if fit.samples else None
        if curves is not None:
            ax.fill_between(
                grid,
                np.percentile(curves, 2.5, 0),
                np.percentile(curves, 97.5, 0),
                alpha=0.25,
                label="95 % band",
            )
        exponent = "alpha" if form == "N" else "beta"
        ax.plot(grid, _law(fit.params, form, grid), label=f"fit: {exponent} = {fit.params[exponent]:.3f}")
        ax.plot(xs, [r["loss"] for r in fitted], "o", color="black", label="runs")
        ax.set(xscale="log", xlabel=label, ylabel="validation loss")
        ax.legend(fontsize="small")
        parts.append(section(f"L({form})", figure(fig, f"L({form})", f"law-{form}")))

    if fits:
        rows = [[f"L({form})", *(fmt(fit.params.get(k), ".4g") for k in ("E", "A", "alpha", "B", "beta")),
                 fmt(fit.rmse_log, ".4f")] for form, fit in fits.items()]  # fmt: skip
        parts.append(section("Fits", table(["law", "E", "A", "alpha", "B", "beta", "RMSE (log)"], rows)))
    if extrapolation is not None:
        rows = [[str(c["trial"]), si(c["N"]), si(c["D"]), fmt(c["loss"], ".4f"), fmt(c["predicted"], ".4f"),
                 fmt(100 * c["error"], ".1f")] for c in extrapolation["held_out"]]  # fmt: skip
        title = f"Extrapolation check: L({extrapolation['form']}) fitted without the largest model"
        parts.append(section(title, table(["trial", "N", "D", "loss", "predicted", "error %"], rows)))
    if advice is not None:
        elsewhere = f"{advice['accelerator']} at {100 * advice['assumed_mfu']:.0f} % MFU"
        facts = [
            ["budget", si(advice["budget_flops"]) + " FLOPs"],
            ["N", si(advice["params"])],
            ["D", si(advice["tokens"])],
            ["predicted loss", fmt(advice["loss"], ".4f")],
            ["here", f"{advice['seconds_here'] / 3600:,.1f} h"],
            [elsewhere, f"{advice['seconds_on_accelerator'] / 3600:,.2f} h"],
        ]
        parts.append(section("Compute-optimal for the budget", table(None, facts)))
    if notes:
        parts.append(section("Not fitted", "<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"))
    return page(f"bigmodel scale: {name}", parts)


def _law(params: dict[str, float], form: str, x: Any) -> Any:
    from bigmodel.evaluation.scaling import predict

    return predict(params, x, None) if form == "N" else predict(params, None, x)


def parse_list(text: str, kind: type, flag: str) -> list[Any]:
    """A comma-separated command-line list."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(
            f"{flag} must be a comma-separated list, e.g. {flag} 0.25,0.5,1; got {text!r}"
        ) from None


def _interval(fit: Fit, key: str) -> str:
    low, high = fit.intervals.get(key, (None, None))
    return f" [{low:.3g}, {high:.3g}]" if low is not None else ""


def result_lines(result: ScaleResult) -> list[str]:
    """What the command line prints: the fits, the check and the advice, one line each."""
    lines = []
    for form, fit in result.fits.items():
        shown = ", ".join(f"{k} {v:.4g}{_interval(fit, k)}" for k, v in fit.params.items())
        lines.append(f"L({form}): {shown}")
    if result.extrapolation is not None:
        worst = 100 * result.extrapolation["max_error"]
        lines.append(f"extrapolation: the largest model's loss predicted within {worst:.1f} %")
    if result.advice is not None:
        a = result.advice
        lines.append(
            f"budget {a['budget_flops']:.3g} FLOPs: N {a['params']:.3g}, D {a['tokens']:.3g}, loss "
            f"{a['loss']:.4f}; {a['seconds_here'] / 3600:,.1f} h here, "
            f"{a['seconds_on_accelerator'] / 3600:,.2f} h on {a['accelerator']}"
        )
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"page: {result.page}")
    return lines
