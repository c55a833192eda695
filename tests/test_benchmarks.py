"""benchmarks/: the harness runs every framework on a few steps of seed-cnn and writes what it promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FASHION_DIR

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ["plain", "bigmodel", "lightning", "hf"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package


def run_module(*argv: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST missing: `make test` installs it")
def test_harness_measures_every_framework_and_reports(tmp_path: Path):
    pytest.importorskip("pytorch_lightning")
    pytest.importorskip("accelerate")
    out = tmp_path / "results" / "seed-cnn.json"
    steps = ["--steps", "6", "--warmup", "2", "--check-every", "3", "--val-examples", "256"]
    run_module(
        "benchmarks.harness",
        *["--case", "seed-cnn", "--precision", "bf16", *steps, "--repeats", "1", "--threads", "1"],
        *["--frameworks", ",".join(FRAMEWORKS), "--out", str(out)],
        *["--target", "0"],  # reached at the first check: time_to_target is a number everywhere
    )

    doc = json.loads(out.read_text())
    assert doc["case"] == "seed-cnn"
    m = doc["measurements"]["bf16"]
    assert m["machine"]["cores"] >= 1 and m["machine"]["versions"]["torch"]
    assert m["data"]["train_examples"] == 6 * 128
    assert [r["framework"] for r in m["runs"]] == FRAMEWORKS
    for run in m["runs"]:
        assert run["steps"] == 6
        for key in ("samples_per_s", "step_seconds_median", "time_to_target_s", "peak_rss_mb"):
            assert run[key] > 0, (run["framework"], key)
        assert run["peak_rss_mb"] >= run["rss_at_start_mb"]
        assert [c[0] for c in run["checks"]] == [3, 6]
        assert run["options"]
    # Same model, same batches in the same order, same optimizer: the same accuracy everywhere.
    accuracies = {run["framework"]: run["final_accuracy"] for run in m["runs"]}
    assert max(accuracies.values()) - min(accuracies.values()) <= 0.02, accuracies
    assert m["summary"]["plain"]["vs_plain"] == pytest.approx(1.0)
    assert all(row["reached"] == 1 for row in m["summary"].values())

    results = tmp_path / "RESULTS.md"
    run_module("benchmarks.report", "--results", str(out.parent), "--out", str(results))
    text = results.read_text()
    assert "## seed-cnn on Fashion-MNIST, bf16" in text
    assert "(d) Hugging Face Trainer" in text and "What each framework is told" in text


def test_peer_loader_draws_bigmodels_batches():
    """The peers' DataLoader yields bigmodel's BatchLoader's batches, in its order, transformed alike."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from benchmarks.cases import Collate, EpochOrder
    from bigmodel.data import BatchLoader, TensorSplit
    from bigmodel.data.text import TextTransform

    ids = torch.randint(5, 100, (96, 12), dtype=torch.int32)
    mask = torch.arange(12) < torch.randint(3, 13, (96, 1))  # (96, 12): texts of 3 to 12 tokens
    split = TensorSplit({"input_ids": ids * mask, "attention_mask": mask}, torch.randint(0, 2, (96,)))
    ours = BatchLoader(split, 16, TextTransform(), shuffle=True, seed=3, drop_last=True)
    peers = DataLoader(
        TensorDataset(*split.features.values(), split.labels),
        batch_size=16,
        sampler=EpochOrder(len(split), seed=3),
        drop_last=True,
        collate_fn=Collate(list(split.features), TextTransform()),
    )
    batches = list(zip(ours, peers, strict=True))
    assert len(batches) == 6
    for a, b in batches:
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST missing: `make test` installs it")
def test_overhead_times_both_steps_in_alternating_rounds(tmp_path: Path):
    out = tmp_path / "overhead.json"
    run_module(
        "benchmarks.overhead",
        *["--case", "seed-cnn", "--precision", "fp32", "--batches", "2", "--rounds", "3", "--out", str(out)],
    )
    result = json.loads(out.read_text())["seed-cnn-fp32"]
    assert [len(result["samples_per_s"][name]) for name in ("plain", "bigmodel")] == [3, 3]
    assert all(speed > 0 for speeds in result["samples_per_s"].values() for speed in speeds)
    low, high = result["ratio_range"]
    assert 0 < low <= result["ratio_median"] <= high


def test_mlm_plateau_runs_each_kind_of_model_and_refuses_parts_it_cannot_add():
    for model in (["torch-pre"], ["hf-bert", "--parts", "zero-token-type"]):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.mlm_plateau", "--model", *model, "--steps", "25"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        # 25 steps: every model is still at chance, so the loss is near ln 995 and none reached 50 %.
        loss = float(proc.stdout.split("step 25: loss ")[1].split(",")[0])
        assert 6.0 < loss < 8.0
        assert proc.stdout.strip().endswith("first step at 50 % accuracy: not within 25")
    for refused in (["hf-bert", "--parts", "tied"], ["hf-modernbert", "--parts", "zero-token-type"]):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.mlm_plateau", "--model", *refused],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and "--parts takes" in proc.stderr.strip().splitlines()[-1]


def test_serve_load_and_soak_measure_bigmodel_serve_and_the_naive_endpoint(digits_run: Path, tmp_path: Path):
    """serve_load and serve_soak at tiny sizes: real servers on 127.0.0.1, their JSON, and no 5xx."""
    from benchmarks.serve_soak import KINDS

    out = tmp_path / "load.json"
    sizes = ["--concurrency", "1,4", "--requests", "40", "--warmup", "8", "--bare-repeats", "10"]
    run_module(
        "benchmarks.serve_load",
        *[str(digits_run), "--servers", "naive,torch", *sizes, "--threads", "1", "--out", str(out)],
    )
    doc = json.loads(out.read_text())
    assert doc["kind"] == "image" and doc["threads"] == 1 and doc["concurrency"] == [1, 4]
    assert [(r["server"], r["concurrency"]) for r in doc["results"]] == [
        ("naive FastAPI", 1),
        ("naive FastAPI", 4),
        ("bigmodel torch", 1),
        ("bigmodel torch", 4),
    ]
    for r in doc["results"]:
        assert (r["requests"], r["ok"], r["errors"], r["error_kinds"]) == (40, 40, 0, {}), r
        assert r["requests_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        assert (r["mean_batch"] is None) == (r["server"] == "naive FastAPI")  # bigmodel's from /metrics
    assert doc["results"][2]["mean_batch"] == 1.0  # one request at a time: passes of one input
    assert doc["bare"]["torch"]["p50_ms"] > 0 and doc["bare"]["torch"]["repeats"] == 10

    out = tmp_path / "soak.json"
    soak = ["--requests", "160", "--concurrency", "8", "--warmup", "16", "--threads", "1", "--inputs", "50"]
    run_module("benchmarks.serve_soak", str(digits_run), *soak, "--out", str(out))
    result = json.loads(out.read_text())
    assert result["passed"] and result["failures"] == [], result["failures"]
    assert result["sent"] == 160 and result["complete"]
    assert result["status_classes"] == {"2xx": 144, "4xx": 16} and result["dropped"] == {}
    assert {k: row["sent"] for k, row in result["kinds"].items()} == {"good": 144, **dict.fromkeys(KINDS, 2)}
    assert result["wrong"] == {} and result["server_alive"] and result["health_after"] == 200
    assert result["rss_mib"]["after_warmup"] > 0 and result["log_tracebacks"] == 0


@pytest.mark.slow
def test_tune_pruning_runs_both_studies_in_each_repeat(tmp_path: Path):
    import yaml

    from bigmodel.config import apply_overrides
    from conftest import DIGITS_ARGS

    raw = apply_overrides({}, DIGITS_ARGS)
    raw["tune"] = {"params": {"optim.lr": {"choice": [0.003, 0.01, 0.03]}}, "trials": 2}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "tune_pruning.json"
    work = tmp_path / "studies"
    run_module(
        "benchmarks.tune_pruning", str(config), "--repeats", "2", "--work", str(work), "--results", str(out)
    )
    result = json.loads(out.read_text())
    assert [r["seed"] for r in result["repeats"]] == [0, 1]
    for repeat in result["repeats"]:
        for pruner in ("hyperband", "none"):
            assert (
                repeat[pruner]["complete"] + repeat[pruner]["pruned"] == 2 and repeat[pruner]["seconds"] > 0
            )
        assert repeat["time_ratio"] == pytest.approx(
            repeat["hyperband"]["seconds"] / repeat["none"]["seconds"]
        )
        assert repeat["none"]["pruned"] == 0
    assert sorted(p.name for p in work.iterdir()) == ["hyperband-0", "hyperband-1", "none-0", "none-1"]
