"""bigmodel profile on real models: counted FLOPs against hand counts, activation memory, measured speed
and MFU, the table and JSON of the CLI, and its one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from bigmodel import api
from bigmodel.cli import main
from bigmodel.config import load_config
from bigmodel.data import build_data
from bigmodel.engine.trainer import Trainer
from bigmodel.evaluation import profile as profiling
from bigmodel.models import build_model
from conftest import TEXT_ARGS, write_reviews

DIGITS = ["data.name=digits", "model.name=cnn", "model.depth=2", "model.width=16"]
TRANSFORMER = ["model.name=transformer", "model.dim=32", "model.heads=2", "model.layers=1"]


@pytest.fixture(scope="module", autouse=True)
def peak_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The matmul peak cached for this module, never in the user's own cache."""
    path = tmp_path_factory.mktemp("cache") / "matmul_peak.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(profiling, "PEAK_CACHE", path)
        yield path


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    write_reviews(path)
    return path


def test_flops_of_linear_layers_are_exact():
    # One Linear (64 pixels → 10 classes): 2·in·out forward; backward only the weight's gradient, since
    # nothing before it needs one.
    single = api.profile(None, ["data.name=digits", "model.name=mlp", "model.depth=0"], 32, steps=1)
    assert single.forward_flops == 2 * 64 * 10
    assert single.train_flops == 2 * single.forward_flops
    # Two (64 → 32 → 10): the second layer's input gradient as well, close to 3× forward.
    mlp = api.profile(None, ["data.name=digits", "model.name=mlp", "model.depth=1", "model.hidden=32"], 32, 1)
    forward = 2 * (64 * 32 + 32 * 10)
    assert mlp.forward_flops == forward
    assert mlp.train_flops == forward + forward + 2 * 32 * 10
    assert mlp.params == 64 * 32 + 32 + 32 * 10 + 10 == mlp.trainable_params


class Recurrent(torch.nn.Module):
    def __init__(self, embed: int, hidden: int):
        super().__init__()
        self.lstm = torch.nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q * self.scale, q, q)


def test_the_cpu_kernels_torch_does_not_count_are_counted():
    # oneDNN's LSTM layer: per token and direction, 4 gates of (embed + hidden) → hidden.
    assert profiling.forward_flops(Recurrent(8, 16), {"x": torch.randn(3, 5, 8)}) == 2 * 15 * 2 * 4 * 16 * 24
    # SDPA's flash kernel for the CPU: Q·Kᵀ and the weights times V, (B, heads, L, d) = (2, 4, 16, 8).
    assert profiling.forward_flops(Attention(), {"q": torch.randn(2, 4, 16, 8)}) == 2 * 2 * (
        2 * 4 * 16 * 16 * 8
    )


def test_cnn_profile_counts_measures_and_compares_with_the_peak():
    p = api.profile(None, DIGITS, batch_size=32, steps=3)
    assert p.batch_size == 32 and p.kind == "image" and p.sequence_length is None
    assert 2.7 < p.train_flops / p.forward_flops <= 3.0  # backward ≈ 2× forward (no gradient for pixels)
    assert p.activation_bytes > 0 and p.activation_bytes_per_example == p.activation_bytes / 32
    assert p.train_examples_per_s > 0 and p.inference_examples_per_s > 0
    assert p.achieved_gflops == pytest.approx(p.train_flops * p.train_examples_per_s / 1e9)
    # The peak and the model are timed at different moments: their ratio is not bounded on a busy machine.
    assert p.peak_gflops > 0 and p.mfu > 0 and p.mfu == pytest.approx(p.achieved_gflops / p.peak_gflops)
    assert p.optimizer_state_mb == pytest.approx(2 * p.params * 4 / 1e6, rel=1e-3)  # AdamW: 2 moments
    assert set(p.phases_ms) == set(profiling.PHASES)
    assert len(p.top_ops) == 11 and any(op["name"].startswith("aten::") for op in p.top_ops)
    assert all(op["self_cpu_ms"] >= 0 and 0 <= op["share"] <= 1 for op in p.top_ops)


def test_activation_memory_grows_linearly_with_the_batch():
    cfg = load_config(None, [*DIGITS, "train.precision=fp32"])
    data = build_data(cfg.data)
    trainer = Trainer(build_model(cfg.model, data.info).train(), data, cfg)

    def saved(n: int) -> int:
        part = data.train.take(slice(0, n))
        batch = {**data.train_transform(part.features, None), "labels": part.labels}
        return profiling.saved_activation_bytes(trainer, batch)

    small, large = saved(16), saved(32)
    assert small > 16 * 8 * 8 * 4  # at least the input pixels
    assert large / small == pytest.approx(2.0, rel=0.02)


def test_matmul_peak_is_measured_once_then_cached(tmp_path: Path):
    cache = tmp_path / "peak.json"
    flops, how = profiling.matmul_peak(torch.device("cpu"), torch.float32, cache)
    assert flops > 0 and how.endswith("measured now")
    (key,) = json.loads(cache.read_text())
    assert f"{torch.get_num_threads()} thread" in key and "float32" in key and torch.__version__ in key
    again, how = profiling.matmul_peak(torch.device("cpu"), torch.float32, cache)
    assert again == flops and how.endswith("cached")


def test_a_peak_measured_low_is_measured_again_and_the_best_is_kept(tmp_path: Path, peak_cache: Path):
    cpu = torch.device("cpu")
    cache = tmp_path / "peak.json"
    flops, _ = profiling.matmul_peak(cpu, torch.float32, cache)
    (key,) = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: {"flops": 1e30, "size": 2048}}))  # better than any measurement
    kept, how = profiling.matmul_peak(cpu, torch.float32, cache, remeasure=True)
    assert kept == 1e30 and how.endswith("the best of now and cached")
    cache.write_text(json.dumps({key: {"flops": 1.0, "size": 2048}}))  # as if measured on a busy machine
    raised, how = profiling.matmul_peak(cpu, torch.float32, cache, remeasure=True)
    assert raised > 1e6 and how.endswith("measured now")
    assert json.loads(cache.read_text())[key]["flops"] == raised
    # A profile that runs faster than the cached peak measures the peak again.
    low = {
        profiling.peak_key(cpu, dtype): {"flops": 1.0, "size": 2048}
        for dtype in (torch.float32, torch.bfloat16)
    }
    peak_cache.write_text(json.dumps(low))
    p = api.profile(None, DIGITS, batch_size=32, steps=2)
    assert p.peak_matmul.endswith("measured now") and p.peak_gflops > 1e-3


def test_text_flops_count_attention_at_the_batch_length(reviews: Path):
    p = api.profile(None, [f"data.path={reviews}", *TEXT_ARGS, *TRANSFORMER], steps=1)
    length, dim = p.sequence_length, 32
    assert length is not None and 4 < length <= 48
    # Per layer and token: q, k, v, output (4·D²) and the feed-forward (2·4·D²), 2 FLOPs per multiply-add;
    # attention's two L×L×D products (counted on the CPU's flash kernel too); then the 2-class head.
    assert p.forward_flops == 2 * length * 12 * dim**2 + 2 * 2 * length**2 * dim + 2 * dim * 2
    assert p.train_tokens_per_s is not None and p.train_tokens_per_s > p.train_examples_per_s
    assert p.tokens_per_batch is not None and p.tokens_per_batch <= 16 * length
    assert any("tokens" in note for note in p.notes)


def test_language_models_profile_with_tokens_per_second(reviews: Path):
    lm = [
        f"data.path={reviews}", "data.text_column=review", "data.label_column=sentiment",
        "data.objective=clm", "data.tokenizer=bpe", "data.max_length=24", "data.vocab_size=300",
        "model.name=gpt", "model.hidden_size=16", "model.layers=1", "model.heads=2",
    ]  # fmt: skip
    p = api.profile(None, lm, batch_size=8, steps=1)
    assert p.kind == "clm" and p.sequence_length == 24 and p.tokens_per_batch == 8 * 24
    assert p.train_flops > 2 * p.forward_flops > 0 and p.train_tokens_per_s == pytest.approx(
        24 * p.train_examples_per_s
    )


def test_cli_prints_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["profile", *DIGITS, "--batch-size", "16", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    for words in ("FLOPs/example", "activations", "examples/s", "matmul peak", "MFU", "top operators"):
        assert words in out
    assert "batch 16" in out and "aten::" in out
    # A run directory profiles its own config (overrides still apply); nothing is written into it.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(load_config(None, DIGITS).to_dict()))
    assert main(["profile", str(run), "train.batch_size=8", "--steps", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch_size"] == 8 and report["model"] == "cnn"
    mfu = report["achieved_gflops"] / report["peak_gflops"]
    assert report["mfu"] > 0 and report["mfu"] == pytest.approx(mfu)
    assert len(report["top_ops"]) == 11
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["{tmp}"], "neither a YAML config nor a run directory (a directory without config.yaml)"),
        (["{tmp}/missing.yaml"], "neither a YAML config nor a run directory (not a file)"),
        (["{tmp}/notes.txt"], "neither a YAML config nor a run directory;"),
        (["model.name=nope"], "unknown model"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message):
    (tmp_path / "notes.txt").write_text("not a config")
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["profile", *args, *DIGITS[:1]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
