"""bigmodel scale: a sweep of sizes (and data), each an ordinary run, measured (N, D, C), fitted and drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigmodel import api
from bigmodel.scale import non_embedding_params
from conftest import DIGITS_ARGS, run_cli

LM_ARGS = [
    "data.name=rotten-tomatoes", "data.objective=clm", "data.tokenizer=bpe", "data.vocab_size=500",
    "data.max_length=32", "model.name=gpt", "model.hidden_size=32", "model.layers=1", "model.heads=2",
    "train.epochs=1", "train.batch_size=64", "train.progress=false",
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model.name=mlp", "--sizes", "8"], "scale sweeps the sizes of gpt, bert-mlm, transformer, cnn"),
        (["--sizes", "big"], "--sizes: 'big' must be WIDTH or WIDTHxDEPTH"),
        (["--sizes", "8", "--data-fractions", "0.5,1.5"], "--data-fractions must lie in (0, 1]"),
        (["--sizes", "8", "--data-fractions", "half"], "--data-fractions must be a comma-separated list"),
        (["--sizes", "8", "--accelerator", "TPU"], "--accelerator must be one of H100"),
    ],
)
def test_a_bad_grid_is_one_line_before_any_run(args: list[str], expected: str, in_tmp: Path, capsys):
    overrides = [a for a in DIGITS_ARGS if not a.startswith("model.name")]
    if not any(a.startswith("model.name") for a in args):
        overrides.append("model.name=cnn")
    code, _, err = run_cli(capsys, "scale", *overrides, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not (in_tmp / "runs").exists()


@pytest.mark.slow
def test_a_classifier_sweep_fits_loss_against_parameters(in_tmp: Path, capsys):
    args = [*DIGITS_ARGS, "model.depth=2", "train.epochs=3"]
    code, out, err = run_cli(capsys, "scale", *args, "--sizes", "4,8,16,32,48", "--out", "sweep")
    assert code == 0, err
    summary = json.loads((in_tmp / "sweep" / "scale.json").read_text())
    runs = sorted(summary["runs"], key=lambda r: r["N"])
    assert [r["size"] for r in runs] == ["4", "8", "16", "32", "48"]  # each width a run, N growing with it
    for r in runs:
        run = api.load(r["run"])
        assert r["N"] == non_embedding_params(run.model)  # a CNN has no embeddings: every parameter
        assert r["D"] == r["examples"] and r["examples"] % len(run.history) == 0  # examples seen, each epoch
        assert r["C_over_6ND"] > 2  # a convolution applies each weight at many positions: 6ND undercounts
        assert r["loss"] == pytest.approx(run.results["val"]["loss"])
    fit = summary["fits"]["N"]
    assert fit["runs"] == 5 and fit["params"]["alpha"] > 0
    check = summary["extrapolation"]
    assert check["form"] == "N" and check["fitted_runs"] == 4 and check["held_out"][0]["N"] == runs[-1]["N"]
    assert "L(N): E " in out and "extrapolation: the largest model's loss predicted within" in out
    assert any("L(D) needs runs at 4 or more data fractions" in line for line in summary["notes"])
    page = (in_tmp / "sweep" / "scale.html").read_text()
    assert page.count('<img class="figure') == 2  # loss against compute, and L(N) with its band
    assert list((in_tmp / "sweep").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_language_model_sweep_counts_tokens_and_leaves_embeddings_out(in_tmp: Path, capsys):
    code, out, err = run_cli(capsys, "scale", *LM_ARGS, "--sizes", "16x1,32x1", "--data-fractions", "0.5")
    assert code == 0, err
    root = in_tmp / "runs" / "scale" / "rotten-tomatoes-gpt-scale"
    runs = json.loads((root / "scale.json").read_text())["runs"]
    assert sorted(r["size"] for r in runs) == ["16x1", "32x1"]
    for r in runs:
        run = api.load(r["run"])
        hf = run.model.hf
        embeddings = hf.transformer.wte.weight.numel() + hf.transformer.wpe.weight.numel()
        assert r["N"] == sum(p.numel() for p in hf.parameters()) - embeddings  # the output layer is tied
        assert r["D"] == r["examples"] * 32  # tokens: blocks of 32 seen
        assert run.config.data.limit == round(0.5 * 6824)  # half the training texts
        assert run.config.data.tokenizer == str((root / "tokenizer").resolve())  # trained on all of them
        assert r["C_over_6ND"] > 1  # attention and the output layer over the vocabulary are extra
    assert "note: L(N) needs runs at 4 or more sizes; this sweep has 2" in out


@pytest.mark.slow
def test_a_sweeps_language_models_fine_tune_beside_random_controls(in_tmp: Path, capsys):
    code, _, err = run_cli(capsys, "scale", *LM_ARGS, "--sizes", "16x1,32x1", "--out", "sweep")
    assert code == 0, err
    args = [
        "--data=rotten-tomatoes",
        "--labels=300",
        "--epochs=1",
        "--seeds=0",
        f"--out={in_tmp / 'pays.json'}",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.pretraining_pays",
            in_tmp / "sweep",
            *args,
            f"--work={in_tmp / 'work'}",
        ],
        cwd=Path(__file__).resolve().parents[1],  # where the benchmarks package is
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((in_tmp / "pays.json").read_text())
    assert [row["size"] for row in result["rows"]] == ["16x1", "32x1"]
    for row in result["rows"]:
        assert row["gain"] == pytest.approx(row["pretrained"] - row["random"])
        assert 0 < row["random"] < 1 and 0 < row["pretrained"] < 1
    # Each arm is its own run: the pretrained one from the sweep's weights, the control at random.
    for name, random_init in (("pretrained-32x1-1.0-s0", False), ("random-32x1-s0", True)):
        model = api.load(in_tmp / "work" / name).config.model.settings()
        assert model.get("random_init", False) is random_init and model["pooling"] == "last"
    assert "the sweep has no joint law L(N, D) to say at what compute" in done.stdout or (
        "does not raise the gain" in done.stdout
    )


@pytest.mark.slow
def test_a_budget_gets_the_best_size_and_data_within_the_sizes_measured(in_tmp: Path, capsys):
    args = [*DIGITS_ARGS, "train.epochs=2", "--sizes", "4,8,16", "--data-fractions", "0.3,0.6,1"]
    code, out, err = run_cli(
        capsys, "scale", *args, "--budget", "1e13", "--accelerator", "A100", "--mfu", "0.5"
    )
    assert code == 0, err
    summary = json.loads((in_tmp / "runs" / "scale" / "digits-cnn-scale" / "scale.json").read_text())
    runs, advice = summary["runs"], summary["advice"]
    assert len(runs) == 9 and "N,D" in summary["fits"]
    smallest, largest = min(r["N"] for r in runs), max(r["N"] for r in runs)
    assert smallest <= advice["params"] * (1 + 1e-9) and advice["params"] <= largest * (1 + 1e-9)
    # The budget is spent at the advised size's own cost per parameter and token.
    spent = advice["params"] * advice["tokens"] * advice["flops_per_param_token"]
    assert spent == pytest.approx(1e13, rel=1e-6)
    costs = {r["N"]: r["C"] / (r["N"] * r["D"]) for r in runs}
    assert min(costs.values()) <= advice["flops_per_param_token"] <= max(costs.values())
    assert advice["seconds_on_accelerator"] == pytest.approx(1e13 / (312e12 * 0.5))
    assert "budget 1e+13 FLOPs: N " in out and " h on A100" in out
    at_an_end = any(abs(advice["params"] - n) < 1e-6 * n for n in (smallest, largest))
    assert at_an_end == any(
        note.startswith("--budget: the best N is the sweep's") for note in summary["notes"]
    )
    # A budget too small for one token at any size is a note, not a traceback (the sweep is only re-read).
    code, out, err = run_cli(capsys, "scale", *args, "--budget", "10", "--resume")
    assert code == 0, err
    assert "note: --budget: 10 FLOPs do not buy one token at the sweep's smallest size" in out
