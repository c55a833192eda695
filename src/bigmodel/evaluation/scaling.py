"""Scaling laws fitted to a sweep's runs: how validation loss falls with parameters N and data D.

    L(N)    = E + A / N^alpha            (the runs trained on the most data)
    L(D)    = E + B / D^beta             (the runs of the largest model)
    L(N, D) = E + A / N^alpha + B / D^beta

Fitted as Hoffmann et al. (2022, "Chinchilla", appendix D.2) fit theirs: in log space, with
A = e^a, B = e^b, E = e^e, minimising the Huber loss (delta 1e-3) between log L and
logsumexp(a - alpha log N, b - beta log D, e), by L-BFGS from the best starts of a grid.
Confidence intervals come from refitting on bootstrap resamples of the runs (percentile intervals).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

HUBER_DELTA = 1e-3
BOOTSTRAPS = 200
OPTIMISED_STARTS = 16  # of the grid of starts, the best by their initial loss are optimised

# Hoffmann et al.'s grid of starts, narrowed where their ranges reach far past what small runs can show.
_START_EXPONENTS = (0.1, 0.4, 1.0)
_START_LOGS = (0.0, 7.0, 14.0, 21.0)
_START_E = (-1.0, 0.0, 1.0)


@dataclass
class Fit:
    """One fitted law: its parameters, their bootstrap intervals, and how well it fits."""

    form: str  # "N", "D" or "N,D"
    params: dict[str, float]  # E, A, alpha (N); E, B, beta (D); all five (N,D)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95 % bootstrap
    runs: int = 0
    rmse_log: float = 0.0  # root mean square error in log loss over the fitted runs
    samples: list[dict[str, float]] = field(default_factory=list)  # the bootstrap fits, for bands

    def predict(self, n: Any = None, d: Any = None) -> np.ndarray:
        return predict(self.params, n, d)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "samples"}


def predict(params: dict[str, float], n: Any = None, d: Any = None) -> np.ndarray:
    """The law's loss at N (and/or D): the terms the law has, for arrays or numbers."""
    loss = np.asarray(params["E"], dtype=float)  # the terms below broadcast it to N's and D's shape
    if "alpha" in params:
        loss = loss + params["A"] / np.asarray(n, dtype=float) ** params["alpha"]
    if "beta" in params:
        loss = loss + params["B"] / np.asarray(d, dtype=float) ** params["beta"]
    return loss


def fit_law(
    form: str, loss: Any, n: Any = None, d: Any = None, bootstraps: int = BOOTSTRAPS, seed: int = 0
) -> Fit:
    """Fit ``form`` ("N", "D" or "N,D") to the runs' losses; each needs one run more than its parameters
    (four for the one-variable laws, six for the joint one)."""
    loss = np.asarray(loss, dtype=float)
    columns = {
        "N": np.asarray(n, dtype=float) if n is not None else None,
        "D": np.asarray(d, dtype=float) if d is not None else None,
    }
    names = _names(form)
    if len(loss) < len(names) + 1:
        raise ValueError(f"a fit of L({form}) needs at least {len(names) + 1} runs, got {len(loss)}")
    best = _fit_once(form, loss, columns)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstraps):
        pick = rng.integers(0, len(loss), len(loss))
        if len(np.unique(pick)) < len(names):  # too few distinct runs to pin the law down
            continue
        resampled = {k: v[pick] if v is not None else None for k, v in columns.items()}
        samples.append(_fit_once(form, loss[pick], resampled, starts=[_as_vector(best, names)]))
    intervals = {}
    if samples:
        for name in names:
            values = np.array([s[name] for s in samples])
            intervals[name] = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
    fitted = predict(best, columns["N"], columns["D"])
    rmse = float(np.sqrt(np.mean((np.log(fitted) - np.log(loss)) ** 2)))
    return Fit(form, best, intervals, len(loss), rmse, samples)


def _names(form: str) -> list[str]:
    return {"N": ["E", "A", "alpha"], "D": ["E", "B", "beta"], "N,D": ["E", "A", "alpha", "B", "beta"]}[form]


def _as_vector(params: dict[str, float], names: list[str]) -> np.ndarray:
    """Parameters in the fit's own coordinates: logs of E, A, B; the exponents as they are."""
    return np.array([np.log(params[k]) if k in ("E", "A", "B") else params[k] for k in names])


def _fit_once(
    form: str, loss: np.ndarray, columns: dict[str, np.ndarray | None], starts: list[np.ndarray] | None = None
) -> dict[str, float]:
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    names = _names(form)
    log_loss = np.log(loss)
    log_n = np.log(columns["N"]) if columns["N"] is not None else None
    log_d = np.log(columns["D"]) if columns["D"] is not None else None

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = dict(zip(names, x, strict=True))
        parts = [np.full_like(log_loss, p["E"])]
        if "alpha" in p:
            parts.append(p["A"] - p["alpha"] * log_n)
        if "beta" in p:
            parts.append(p["B"] - p["beta"] * log_d)
        stacked = np.stack(parts)
        total = logsumexp(stacked, axis=0)
        weights = np.exp(stacked - total)  # d total / d part, per run
        r = total - log_loss
        huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
        slope = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d huber / d r
        grad = {"E": np.sum(slope * weights[0])}
        row = 1
        for log_name, exponent, logs in (("A", "alpha", log_n), ("B", "beta", log_d)):
            if exponent in p:
                grad[log_name] = np.sum(slope * weights[row])
                grad[exponent] = np.sum(slope * weights[row] * -logs)
                row += 1
        return float(np.sum(huber)), np.array([grad[k] for k in names])

    if starts is None:
        grids = {
            "E": _START_E,
            "A": _START_LOGS,
            "B": _START_LOGS,
            "alpha": _START_EXPONENTS,
            "beta": _START_EXPONENTS,
        }
        grid = [np.array(s) for s in itertools.product(*(grids[k] for k in names))]
        starts = sorted(grid, key=lambda x: objective(x)[0])[:OPTIMISED_STARTS]  # the grid's best starts
    best_x, best_value = None, np.inf
    for start in starts:
        result = minimize(objective, start, jac=True, method="L-BFGS-B")
        if result.fun < best_value:
            best_x, best_value = result.x, result.fun
    assert best_x is not None
    return {
        k: float(np.exp(v)) if k in ("E", "A", "B") else float(v) for k, v in zip(names, best_x, strict=True)
    }


def compute_optimal(
    joint: Fit,
    budget: float,
    flops_per_param_token: float | Callable[[np.ndarray], np.ndarray],
    sizes: tuple[float, float] | None = None,
    points: int = 600,
) -> dict[str, float] | None:
    """For a FLOP budget C = k·N·D, the N (within ``sizes``; default from 10³ up to the whole budget)
    and D on that budget's line that minimise the joint law's loss, and that loss. k is a number or a
    function of N: measured per size it falls as models grow, since the output layer over the
    vocabulary, outside N, weighs less beside wider blocks. None if the budget buys no token."""
    k = flops_per_param_token if callable(flops_per_param_token) else (lambda n: flops_per_param_token)
    low, high = sizes or (1e3, budget)
    n = np.logspace(np.log10(low), np.log10(high), points)
    d = budget / (k(n) * n)
    n, d = n[d >= 1], d[d >= 1]  # at least a token each
    if not len(n):
        return None
    loss = joint.predict(n, d)
    i = int(np.argmin(loss))
    return {"budget_flops": budget, "params": float(n[i]), "tokens": float(d[i]), "loss": float(loss[i])}
