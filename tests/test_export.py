"""``bigmodel export``: every classifier kind becomes an ONNX model that onnxruntime runs to PyTorch's
logits (the parity gate, at batch sizes and lengths the example did not have), int8 with the test
accuracy before and after, and the README's lines run it in a virtual environment without torch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bigmodel.cli import main
from conftest import DIGITS_ARGS, digit_png, readme_snippet, run_cli

DIGITS_DATA = [a for a in DIGITS_ARGS if not a.startswith("model.")] + ["train.epochs=1"]
TEXT_DATA = [
    "data.name=rotten-tomatoes",
    "data.limit=600",
    "data.max_length=40",
    "data.vocab_size=1500",
    "train.epochs=1",
    "train.batch_size=32",
    "train.progress=false",
]
KINDS = {
    "mlp": [*DIGITS_DATA, "model.hidden=32"],
    "seed-cnn": DIGITS_DATA,
    "cnn": [*DIGITS_DATA, "model.width=8", "model.depth=2"],
    "resnet": [*DIGITS_DATA, "model.width=8", "model.blocks=[1,1]"],
    "bow": [*TEXT_DATA, "model.embed_dim=16", "model.buckets=4096"],
    "nbsvm": [*TEXT_DATA, "model.buckets=4096"],
    "rnn": [*TEXT_DATA, "model.embed_dim=16", "model.hidden=16"],
    "lstm": [*TEXT_DATA, "model.embed_dim=16", "model.hidden=16"],
    "gru": [*TEXT_DATA, "model.embed_dim=16", "model.hidden=16", "model.pooling=mean"],
    "attention": [*TEXT_DATA, "model.dim=16"],
    "transformer": [*TEXT_DATA, "model.dim=32", "model.layers=1", "model.heads=2"],
    "bert": [
        *TEXT_DATA,
        "model.hidden_size=32",
        "model.layers=2",
        "model.heads=2",
        "model.intermediate_size=64",
    ],
}
TEXTS = ["a gripping, beautifully acted film", "dull and far too long <br /> a mess", "it was fine"]


def trained(tmp_path: Path, kind: str) -> Path:
    run = tmp_path / kind
    assert main(["train", f"model.name={kind}", *KINDS[kind], f"--out={run}"]) == 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_classifier_kind_exports_and_agrees_with_pytorch(tmp_path: Path, kind: str, capsys):
    run = trained(tmp_path, kind)
    code, out, err = run_cli(capsys, "export", str(run))
    assert code == 0, err
    record = json.loads((run / "export" / "export.json").read_text())
    parity = record["parity"]
    assert parity["argmax_agreement"] == 1.0
    assert parity["max_abs_logit_diff"] <= 1e-3 * max(1.0, parity["max_abs_logit"])
    assert [shape[0] for shape in parity["inputs"]] == [3, 7]  # the example was a batch of 2
    if record["kind"] == "text":
        assert len({shape[1] for shape in parity["inputs"]}) == 2
    assert record["exporter"] == ("torchscript" if kind in ("rnn", "lstm", "gru") else "dynamo")
    assert f"{parity['argmax_agreement']:.2%}" in out


@pytest.fixture(scope="module")
def text_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = trained(tmp_path_factory.mktemp("export"), "transformer")
    assert main(["export", str(run), "--quantize", "int8"]) == 0
    return run, run / "export"


def test_int8_reports_test_accuracy_before_and_after(text_export):
    run, export = text_export
    record = json.loads((export / "export.json").read_text())
    q = record["quantization"]
    assert q["integer_matmuls"] > 0
    assert q["test_accuracy_change_points"] == pytest.approx(
        100 * (q["test_accuracy_int8"] - q["test_accuracy_fp32"])
    )
    report = json.loads((run / "report.json").read_text())
    # float32 ONNX scores the test split as PyTorch did at the end of training (bf16 there: within a point)
    assert q["test_accuracy_fp32"] == pytest.approx(report["test"]["accuracy"], abs=0.01)
    assert set(record["size_bytes"]) == {"model.onnx", "model.int8.onnx"}
    assert (export / "model.int8.onnx").stat().st_size < (export / "model.onnx").stat().st_size


def test_the_exported_tokenizer_encodes_as_bigmodel_does(text_export):
    from tokenizers import Tokenizer

    from bigmodel.run import RunDir

    run, export = text_export
    ours = RunDir(run).encode(TEXTS)
    encoded = Tokenizer.from_file(str(export / "tokenizer.json")).encode_batch(TEXTS)
    assert np.array_equal(np.array([e.ids for e in encoded]), ours["input_ids"].numpy())
    assert np.array_equal(np.array([e.attention_mask for e in encoded]), ours["attention_mask"].numpy())


@pytest.mark.slow
def test_a_bert_run_is_also_a_transformers_pipeline_with_the_same_probabilities(tmp_path: Path, capsys):
    from transformers import pipeline

    run = trained(tmp_path, "bert")
    assert main(["export", str(run)]) == 0
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["hf"]["class"] == "BertForSequenceClassification"
    classify = pipeline("text-classification", model=str(run / "export" / "hf"), top_k=None)
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "predict", str(run), *[a for t in TEXTS for a in ("--text", t)], "--json")
    assert code == 0
    for theirs, ours in zip(classify(TEXTS), json.loads(out), strict=True):
        assert {r["label"]: r["score"] for r in theirs} == pytest.approx(
            {t["class"]: t["probability"] for t in ours["top"]}, abs=1e-5
        )


def test_a_bert_that_no_transformers_class_computes_says_so_in_one_line():
    from bigmodel.config import ModelConfig
    from bigmodel.data.bundle import DataInfo
    from bigmodel.errors import UserError
    from bigmodel.models import build_model

    info = DataInfo(kind="text", classes=["neg", "pos"], input_shape=[16], source="test", vocab_size=50)
    tiny = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 8}
    for settings in ({"pooling": "mean"}, {"encoder": "modernbert"}):
        model = build_model(ModelConfig(name="bert", **tiny, **settings), info)
        with pytest.raises(UserError, match="no transformers sequence classifier computes") as caught:
            model.hf_classifier(info.classes)
        assert "\n" not in str(caught.value)


def test_a_failed_or_refused_export_leaves_no_directory(tmp_path: Path, digits_run: Path, capsys):
    import bigmodel
    from bigmodel.errors import UserError

    with pytest.raises(UserError, match="--quantize int4 is not supported"):
        bigmodel.load(digits_run).export(quantize="int4")
    assert not (digits_run / "export").exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", str(digits_run), "-o", str(taken))
    assert code == 2 and err.count("\n") == 1 and "not an earlier export" in err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    code, _, err = run_cli(capsys, "export", str(tmp_path))
    assert code == 2 and "not a bigmodel run directory" in err


# --- the README's lines, in a virtual environment without torch -------------------------------------


@pytest.mark.slow
def test_the_readme_lines_predict_without_torch_as_bigmodel_does(
    tmp_path: Path, text_export, digits_run: Path, no_torch_python: Path, capsys
):
    script = tmp_path / "predict.py"
    script.write_text(readme_snippet(), encoding="utf-8")
    images = [str(digit_png(tmp_path / f"{i}.png", i)[0]) for i in (3, 11, 42)]
    assert main(["export", str(digits_run), "-o", str(tmp_path / "digits-export")]) == 0
    run, export = text_export
    for run_dir, folder, inputs in ((run, export, TEXTS), (digits_run, tmp_path / "digits-export", images)):
        done = subprocess.run(
            [str(no_torch_python), str(script), str(folder), *inputs],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        got = [json.loads(line) for line in done.stdout.splitlines()]
        args = [a for text in inputs for a in ("--text", text)] if run_dir == run else inputs
        capsys.readouterr()
        code, out, _ = run_cli(capsys, "predict", str(run_dir), *args, "--top-k", "1", "--json")
        assert code == 0
        expected = json.loads(out)
        assert [g["class"] for g in got] == [e["top"][0]["class"] for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert g["probability"] == pytest.approx(e["top"][0]["probability"], abs=1e-4)
