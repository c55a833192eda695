"""Text end to end through the CLI: the same loop, run directory, evaluate and predict as images."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bigmodel.cli import main
from bigmodel.run import RunDir
from conftest import TEXT_ARGS, write_reviews


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    write_reviews(path)
    return path


@pytest.mark.parametrize(
    "model",
    [
        "model.name=bow model.buckets=4096 train.epochs=10 optim.lr=0.02",
        "model.name=lstm",
        "model.name=transformer model.dim=32 model.heads=2 model.layers=1 train.epochs=8",
        "model.name=attention",
    ],
)
def test_text_models_learn_a_separable_task(reviews: Path, tmp_path: Path, model: str):
    out = tmp_path / "run"
    assert main(["train", f"data.path={reviews}", *TEXT_ARGS, *model.split(), f"--out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["count"] == 40  # 10 % of 400
    assert report["test"]["accuracy"] >= 0.9
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    info = json.loads((out / "data.json").read_text())
    assert info["kind"] == "text" and info["classes"] == ["neg", "pos"]


def test_predict_and_evaluate_a_text_run(reviews: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"data.path={reviews}",
                *TEXT_ARGS,
                "model.name=bow",
                "model.buckets=4096",
                f"--out={out}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["predict", str(out), "--text", "a brilliant wonderful story", "--text", "dull and awful"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("a brilliant wonderful story: pos")
    assert lines[1].startswith("dull and awful: neg")
    texts = tmp_path / "lines.txt"
    texts.write_text("superb delightful film\n\n  \nboring tedious plot\n", encoding="utf-8")
    assert main(["predict", str(out), "--file", str(texts), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["top"][0]["class"] for r in results] == ["pos", "neg"]  # blank lines skipped
    assert main(["evaluate", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert metrics["accuracy"] == pytest.approx(report["test"]["accuracy"])  # the saved tokenizer is reused


def test_text_mistakes_are_one_line_errors(reviews: Path, tmp_path: Path, capsys, in_tmp: Path):
    code = main(["train", f"data.path={reviews}", "data.text_column=body", "model.name=bow"])
    err = capsys.readouterr().err
    assert code == 2 and "body" in err and "review, sentiment" in err and err.count("\n") == 1
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 cr\xe8me,1\n".encode("latin-1"))
    assert main(["train", f"data.path={latin}", "model.name=bow"]) == 2
    assert "UTF-8" in capsys.readouterr().err
    out = tmp_path / "run"
    assert (
        main(
            ["train", f"data.path={reviews}", *TEXT_ARGS, "model.name=bow", "train.epochs=1", f"--out={out}"]
        )
        == 0
    )
    capsys.readouterr()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    assert main(["predict", str(out), "--file", str(bad)]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
    assert main(["predict", str(out)]) == 2
    assert "nothing to predict" in capsys.readouterr().err
    # the data changed under the run: a label it never trained on
    write_reviews(reviews.with_name("changed.csv"), labels=("neg", "meh"))
    config = (out / "config.yaml").read_text().replace(str(reviews), str(reviews.with_name("changed.csv")))
    (out / "config.yaml").write_text(config)
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "classes the run never trained on (meh)" in err
    assert not (in_tmp / "runs").exists()


def test_bert_fine_tunes_from_a_locally_saved_model_and_tokenizer(reviews: Path, tmp_path: Path):
    """The from_pretrained path, offline: a tiny random BERT and its tokenizer saved with save_pretrained."""
    from transformers import BertConfig, BertModel

    from bigmodel.config import load_config
    from bigmodel.data import build_data

    tokenizer = build_data(load_config(None, [f"data.path={reviews}", *TEXT_ARGS]).data).tokenizer
    saved = tmp_path / "tiny-bert"
    tokenizer.save_pretrained(saved)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    BertModel(config).save_pretrained(saved)
    out = tmp_path / "run"
    argv = ["train", f"data.path={reviews}", *TEXT_ARGS, "model.name=bert", f"model.pretrained={saved}"]
    argv += [f"data.tokenizer={saved}", "train.epochs=8", "optim.lr=0.002", f"--out={out}"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"] == sum(p.numel() for p in BertModel(config).parameters()) + 32 * 2 + 2
    assert report["test"]["accuracy"] >= 0.9
    # The run keeps the encoder's config, so it loads, evaluates and resumes with the directory gone.
    before = RunDir(out).model.head.weight.clone()
    shutil.rmtree(saved)
    assert torch.equal(RunDir(out).model.head.weight, before)
    assert main(["evaluate", str(out)]) == 0
    assert main(["train", "--resume", str(out), "train.epochs=9"]) == 0
    assert json.loads((out / "report.json").read_text())["epochs"] == 9


def test_a_transformers_model_trains_without_transformers_noise(reviews: Path, tmp_path: Path):
    """TensorBoard's graph tracing reads every attribute of a transformers model, and its ``loss_function``
    property then logged a warning about a loss nobody uses. A fresh process: transformers logs it once."""
    tiny = ["model.hidden_size=32", "model.layers=1", "model.heads=2", "model.intermediate_size=64"]
    argv = ["train", f"data.path={reviews}", *TEXT_ARGS, "train.epochs=1", "model.name=bert", *tiny]
    done = subprocess.run(
        [sys.executable, "-m", "bigmodel", *argv, "model.encoder=modernbert", f"--out={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "[transformers]" not in done.stderr, done.stderr
