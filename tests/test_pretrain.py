"""Pretraining on real Rotten Tomatoes sentences: masking, packing, the Hugging Face round trip,
fine-tuning from our own checkpoint, generation, and resuming an interrupted pretraining run."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bigmodel.api import generate, predict, resume, train
from bigmodel.cli import main
from bigmodel.config import DataConfig, ModelConfig, TrainConfig, load_config
from bigmodel.data import BatchLoader, DataInfo
from bigmodel.data.lm import MaskTokens, build_lm_data, split_texts
from bigmodel.engine.trainer import eval_batch_size
from bigmodel.errors import UserError
from bigmodel.evaluation.scoring import load_with_data
from bigmodel.models import build_model
from bigmodel.run import RunDir
from bigmodel.tasks import task_for
from conftest import assert_same_run, bigmodel, wait_for_checkpoint

TINY = ["model.hidden_size=32", "model.layers=2", "model.heads=2", "train.progress=false"]
MLM_ARGS = [
    "data.name=rotten-tomatoes",
    "data.objective=mlm",
    "data.limit=1500",
    "data.max_length=32",
    "data.vocab_size=800",
    "model.name=bert-mlm",
    "model.intermediate_size=64",
    "model.max_positions=48",  # room for a second stage on longer blocks
    *TINY,
    "train.epochs=2",
    "train.batch_size=32",
    "train.monitor=val/loss",
    "optim.lr=3e-3",
]
GPT_ARGS = [
    "data.name=rotten-tomatoes",
    "data.objective=clm",
    "data.tokenizer=bpe",
    "data.limit=1500",
    "data.max_length=24",
    "data.vocab_size=800",
    "model.name=gpt",
    *TINY,
    "train.epochs=2",
    "train.batch_size=32",
    "train.monitor=val/loss",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="module", params=["bert", "modernbert"])
def mlm_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / f"mlm-{request.param}"
    assert main(["pretrain", *MLM_ARGS, f"model.encoder={request.param}", f"--out={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(load_config(None, GPT_ARGS), out=tmp_path_factory.mktemp("pretrain") / "gpt")


def test_masking_follows_bert_80_10_10_and_never_touches_special_tokens():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (400, 128), generator=gen)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP], as packed blocks hold them
    masker = MaskTokens(mask_id=4, vocab_size=1000, special_ids=[0, 1, 2, 3, 4], prob=0.15)
    out = masker({"input_ids": ids}, torch.Generator().manual_seed(1))
    chosen = out["labels"] != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never predicted
    assert chosen.float().mean().item() == pytest.approx(0.15 * 126 / 128, abs=0.005)
    assert torch.equal(out["labels"][chosen], ids[chosen])  # the label is the original token
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])  # the rest is untouched
    masked = (out["input_ids"][chosen] == 4).float().mean().item()
    kept = (out["input_ids"][chosen] == ids[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)  # a random token can also happen to be the same: +0.1 %
    again = masker({"input_ids": ids}, torch.Generator().manual_seed(1))
    assert torch.equal(again["input_ids"], out["input_ids"])  # the batch's generator decides everything


def test_texts_are_packed_into_full_blocks_and_clm_labels_are_the_next_token():
    cfg = DataConfig(name="rotten-tomatoes", objective="clm", tokenizer="bpe", limit=300, max_length=16,
                     vocab_size=500)  # fmt: skip
    data = build_lm_data(cfg)
    train_split = data.train
    ids, labels = train_split.features["input_ids"], train_split.labels
    assert ids.shape[1] == labels.shape[1] == 16
    assert torch.equal(labels[:, :-1], ids[:, 1:].long())
    stream = [t for text in split_texts(cfg)["train"] for t in data.tokenizer(text)["input_ids"]]
    assert len(ids) == len(stream) // 17  # every token in a block of 16 inputs + 1 label; no padding
    assert ids[0].tolist() == stream[:16] and ids[1].tolist() == stream[17:33]
    assert data.info.kind == "clm" and data.info.input_shape == [16]


def test_mlm_run_logs_perplexity_and_tokens_per_second(mlm_run: Path):
    lines = [json.loads(line) for line in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert lines[-1]["val/perplexity"] < lines[0]["val/perplexity"] < 800  # below guessing among 800
    assert all(m["train/tokens_per_s"] > 0 for m in lines)
    events = EventAccumulator(str(mlm_run))
    events.Reload()
    assert {"val/perplexity", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    report = json.loads((mlm_run / "report.json").read_text())
    assert report["test"]["perplexity"] == pytest.approx(2.718281828 ** report["test"]["loss"], rel=1e-6)


def test_mlm_round_trips_through_hugging_face_and_fine_tunes(mlm_run: Path, tmp_path: Path):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    hf = mlm_run / "hf"
    encoder = AutoModel.from_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    expected_class = {"mlm-bert": "BertModel", "mlm-modernbert": "ModernBertModel"}[mlm_run.name]
    assert type(encoder).__name__ == expected_class
    ids = torch.tensor([tokenizer("a gorgeous, moving film")["input_ids"]])
    ours = RunDir(mlm_run).model
    with torch.no_grad():
        expected = ours(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loaded = AutoModelForMaskedLM.from_pretrained(hf)(input_ids=ids).logits
    assert torch.equal(expected, loaded)
    # The classifier starts from exactly the pretrained encoder.
    info = RunDir(mlm_run).info
    info = type(info)(**{**info.to_dict(), "kind": "text", "classes": ["negative", "positive"]})
    classifier = build_model(ModelConfig(name="bert", pretrained=str(hf)), info)
    assert torch.equal(classifier.embeddings.weight, ours.embeddings.weight)
    args = ["data.name=rotten-tomatoes", "data.limit=200", "data.max_length=32", f"data.tokenizer={hf}"]
    args += ["model.name=bert", f"model.pretrained={hf}", "train.epochs=1", "train.progress=false"]
    assert main(["train", *args, f"--out={tmp_path / 'fine-tuned'}"]) == 0


def test_a_second_stage_continues_from_the_first_on_longer_blocks(mlm_run: Path, tmp_path: Path):
    from transformers import AutoModelForMaskedLM

    hf = mlm_run / "hf"
    stage2 = ["data.name=rotten-tomatoes", "data.objective=mlm", "data.limit=300", f"data.tokenizer={hf}"]
    stage2 += ["model.name=bert-mlm", f"model.pretrained={hf}", "train.epochs=1", "train.progress=false"]
    # The second stage starts from the first stage's weights, not new ones, on blocks of 48.
    info = RunDir(mlm_run).info
    info = type(info)(**{**info.to_dict(), "input_shape": [48]})
    continued = build_model(ModelConfig(name="bert-mlm", pretrained=str(hf)), info)
    assert torch.equal(
        continued.embeddings.weight, AutoModelForMaskedLM.from_pretrained(hf).get_input_embeddings().weight
    )
    out = tmp_path / "stage2"
    assert main(["pretrain", *stage2, "data.max_length=48", f"--out={out}"]) == 0
    config = json.loads((out / "hf" / "config.json").read_text())
    assert (config["max_position_embeddings"], config["hidden_size"]) == (48, 32)
    # The first stage left room for 48 positions, no more.
    with pytest.raises(UserError, match="reads at most 48 tokens; set data.max_length to at most that"):
        train(load_config(None, [*stage2, "data.max_length=64"]), out=tmp_path / "too-long")
    assert not (tmp_path / "too-long").exists()


def test_generation_is_repeatable_for_a_seed(gpt_run: Path, capsys: pytest.CaptureFixture):
    first = generate(gpt_run, "This movie", max_new_tokens=12, seed=3)
    assert first.startswith("this movie")
    assert generate(gpt_run, "This movie", max_new_tokens=12, seed=3) == first
    samples = {generate(gpt_run, "This movie", max_new_tokens=12, seed=s, temperature=1.5) for s in range(6)}
    assert len(samples) > 1  # sampling does sample
    greedy = generate(gpt_run, "This movie", max_new_tokens=12, temperature=0)
    assert generate(gpt_run, "This movie", max_new_tokens=12, temperature=0, seed=9) == greedy
    assert (
        main(["generate", str(gpt_run), "--prompt", "This movie", "--seed", "3", "--max-new-tokens", "12"])
        == 0
    )
    assert capsys.readouterr().out.strip() == first
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(gpt_run / "hf")).__name__ == "GPT2LMHeadModel"


def test_a_gpt_fine_tunes_as_a_classifier_and_its_random_control_shares_only_the_architecture(
    gpt_run: Path, tmp_path: Path
):
    hf = gpt_run / "hf"
    info = RunDir(gpt_run).info
    info = type(info)(**{**info.to_dict(), "kind": "text", "classes": ["negative", "positive"]})
    settings = {"pretrained": str(hf), "pooling": "last"}
    pretrained = build_model(ModelConfig(name="bert", **settings), info)
    control = build_model(ModelConfig(name="bert", random_init=True, **settings), info)
    decoder = RunDir(gpt_run).model.hf.transformer
    assert type(pretrained.bert).__name__ == type(control.bert).__name__ == "GPT2Model"
    assert torch.equal(pretrained.bert.h[0].attn.c_attn.weight, decoder.h[0].attn.c_attn.weight)
    assert not torch.equal(control.bert.h[0].attn.c_attn.weight, decoder.h[0].attn.c_attn.weight)
    assert [p.shape for p in control.parameters()] == [p.shape for p in pretrained.parameters()]
    # `last` pools the last real token of each right-padded text.
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        states = pretrained.bert(input_ids=ids, attention_mask=mask)
        pooled = pretrained.pooled(states, mask)
    assert torch.equal(pooled, states.last_hidden_state[[0, 1], [2, 1]])
    args = ["data.name=rotten-tomatoes", "data.limit=200", "data.max_length=24", f"data.tokenizer={hf}"]
    args += ["model.name=bert", f"model.pretrained={hf}", "model.pooling=last", "train.epochs=1"]
    args += ["train.progress=false"]
    for name, extra in (("fine-tuned", []), ("control", ["model.random_init=true"])):
        assert main(["train", *args, *extra, f"--out={tmp_path / name}"]) == 0
        assert (tmp_path / name / "report.json").is_file()
    with pytest.raises(UserError, match="model.random_init=true builds model.pretrained's architecture"):
        build_model(ModelConfig(name="bert", random_init=True), info)


def test_language_model_evaluation_batches_keep_the_logits_small(gpt_run: Path):
    """A GPT's logits are (batch, length, vocabulary): 1024 blocks of 128 at 16,000 words are 8.4 GB."""
    wide = DataInfo(kind="clm", classes=[], input_shape=[128], source="", vocab_size=16000)
    size = eval_batch_size(TrainConfig(), wide)
    assert size * 128 * 16000 * 4 <= 512 * 2**20 < (size + 1) * 128 * 16000 * 4
    assert eval_batch_size(TrainConfig(eval_batch_size=7), wide) == 7  # the user's setting wins
    image = DataInfo(kind="image", classes=["a", "b"], input_shape=[1, 28, 28], source="")
    assert eval_batch_size(TrainConfig(), image) == 1024
    # The batch size changes the memory, not the metrics.
    loaded, data, device, dtype = load_with_data(gpt_run)
    sums = [
        task_for(data.info).evaluate(
            loaded.model, BatchLoader(data.val, n, data.eval_transform), device, dtype
        )
        for n in (eval_batch_size(loaded.config.train, data.info), 5)
    ]
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-3, atol=0)


def test_language_model_mistakes_are_one_line_errors(
    mlm_run: Path, gpt_run: Path, capsys: pytest.CaptureFixture
):
    assert main(["pretrain", "data.name=rotten-tomatoes", "model.name=bow"]) == 2
    assert "pretrain needs data.objective=mlm" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a causal language model"):
        generate(mlm_run, "This movie")
    with pytest.raises(UserError, match="--max-new-tokens must be between 1 and 23"):
        generate(gpt_run, "This movie", max_new_tokens=24)
    with pytest.raises(UserError, match="is a pretrained language model, not a classifier"):
        predict(mlm_run, ["a fine film"])
    with pytest.raises(UserError, match="model 'bert-mlm' is pretrained with data.objective=mlm"):
        train(load_config(None, ["data.name=rotten-tomatoes", "model.name=bert-mlm"]))
    with pytest.raises(UserError, match="model.max_positions=16 is shorter than data.max_length=32"):
        train(load_config(None, [*MLM_ARGS, "model.max_positions=16"]))


@pytest.mark.slow
def test_an_interrupted_pretraining_run_resumes_exactly(tmp_path: Path):
    args = [*MLM_ARGS, "train.epochs=3", "train.deterministic=true", "train.precision=fp32"]
    args += ["train.checkpoint_every=10"]
    reference = train(load_config(None, args), out=tmp_path / "reference")
    run = tmp_path / "interrupted"
    proc = bigmodel("pretrain", *args, f"--out={run}")
    wait_for_checkpoint(run, 50, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert f"continue with: bigmodel pretrain --resume {run}" in err
    resume(run)
    assert_same_run(reference, run)


def test_linear_probe_scores_every_layer_of_both_arms(mlm_run: Path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.linear_probe", str(mlm_run / "hf"), "--data=rotten-tomatoes"]
        + ["--max-length=32", "--train=300"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    scores = re.findall(r"(pretrained|random) layer (\d): val ([\d.]+) %  test ([\d.]+) %", done.stdout)
    assert [(arm, int(layer)) for arm, layer, _, _ in scores] == [
        (arm, layer)
        for arm in ("pretrained", "random")
        for layer in range(3)  # embeddings + 2 layers
    ]
