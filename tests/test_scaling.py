"""Scaling-law fits (Hoffmann et al.'s method) recover the laws that generated the losses."""

from __future__ import annotations

import numpy as np
import pytest

from bigmodel.evaluation.scaling import compute_optimal, fit_law

TRUE = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28}  # Hoffmann et al.'s own fit


def losses(n: np.ndarray, d: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    exact = TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]
    return exact * np.exp(np.random.default_rng(seed).normal(0.0, noise, exact.shape))


def grid() -> tuple[np.ndarray, np.ndarray]:
    n, d = np.meshgrid([1e4, 3e4, 1e5, 3e5, 1e6], [1e6, 3e6, 1e7])
    return n.ravel(), d.ravel()


def test_the_joint_law_is_recovered_from_noisy_runs():
    n, d = grid()
    fit = fit_law("N,D", losses(n, d, noise=0.005), n, d, bootstraps=40)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.params["beta"] == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.rmse_log < 0.01 and fit.runs == 15
    low, high = fit.intervals["alpha"]
    assert low <= fit.params["alpha"] <= high and high - low < 0.1
    # the fit predicts a larger model than it saw within 2 %
    assert fit.predict(3e6, 1e7)[()] == pytest.approx(losses(np.array(3e6), np.array(1e7))[()], rel=0.02)


def test_one_variable_laws_fold_the_other_term_into_e():
    n, d = grid()
    most_data = d == d.max()
    fit = fit_law("N", losses(n, d)[most_data], n=n[most_data], bootstraps=0)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.01)
    folded = TRUE["E"] + TRUE["B"] / 1e7 ** TRUE["beta"]  # at fixed D the data term is a constant
    assert fit.params["E"] == pytest.approx(folded, rel=0.02)
    assert fit.intervals == {}


def test_a_law_needs_more_runs_than_parameters():
    with pytest.raises(ValueError, match=r"a fit of L\(N\) needs at least 4 runs, got 3"):
        fit_law("N", [3.0, 2.5, 2.2], n=[1e4, 1e5, 1e6])


def test_compute_optimal_lies_at_the_bottom_of_the_budgets_line():
    n, d = grid()
    fit = fit_law("N,D", losses(n, d), n, d, bootstraps=0)
    k, budget = 6.0, 1e18
    best = compute_optimal(fit, budget, k)
    assert best["params"] * best["tokens"] * k == pytest.approx(budget, rel=1e-6)
    for factor in (0.5, 2.0):  # a smaller or larger model on the same budget does worse
        other_n = best["params"] * factor
        assert fit.predict(other_n, budget / (k * other_n))[()] > best["loss"]
    # Measured per size, k is a function of N; one that charges small models more moves the optimum up.
    assert compute_optimal(fit, budget, lambda n: np.full_like(n, k)) == best
    dearer_small = compute_optimal(fit, budget, lambda n: k * (1 + 1e8 / n))
    assert dearer_small["params"] > best["params"]
    n_best = dearer_small["params"]
    assert n_best * dearer_small["tokens"] * k * (1 + 1e8 / n_best) == pytest.approx(budget, rel=1e-6)


def test_the_compute_that_reaches_a_loss_inverts_the_joint_law_and_the_gain_fit_finds_its_zero():
    from benchmarks.pretraining_pays import compute_to_reach, fit_gain
    from bigmodel.evaluation.scaling import predict

    flops = compute_to_reach(TRUE, 1e8, 6.0, 2.5)
    assert flops is not None and predict(TRUE, 1e8, flops / (6.0 * 1e8)) == pytest.approx(2.5)
    assert compute_to_reach(TRUE, 1e8, 12.0, 2.5) == pytest.approx(2 * flops)  # twice the FLOPs per token
    assert compute_to_reach(TRUE, 1e8, 6.0, TRUE["E"] + 0.1) is None  # that model's size alone costs more
    # Gains that rise as the language model's loss falls, +1 point per nat, zero at a loss of 5.
    lm_loss = np.repeat([5.2, 5.5, 5.8, 6.1], 3)
    gain = 0.01 * (5.0 - lm_loss) + np.random.default_rng(0).normal(0, 0.001, lm_loss.shape)
    fitted = fit_gain(lm_loss, gain)
    assert fitted["slope"] == pytest.approx(-0.01, abs=0.002)
    assert fitted["zero_gain_loss"] == pytest.approx(5.0, abs=0.1)
    low, high = fitted["zero_gain_loss_interval"]
    assert low < 5.0 < high
    assert fit_gain(lm_loss, -gain)["zero_gain_loss"] is None  # a better LM hurting: no crossing to give
