"""One answer everywhere: the same inputs through ``bigmodel predict`` (the command line), ``bigmodel serve``
with the torch backend and with the onnx backend (over HTTP), and the exported directory without bigmodel
(the README's onnxruntime lines, run by a Python without torch), for a text run and an image run."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bigmodel.deploy.serve import create_app
from conftest import digit_png, readme_snippet, run_cli, served

TOLERANCE = 1e-5  # absolute, on each probability: every path below computes in float32
TEXTS = [
    "a superb, moving film: the actors were wonderful",
    "Dull. Tedious. CLUMSY. The plot was awful and the scenes boring",
    "great",
    "it was the story of a film <br /><br /> terrible and delightful at once",  # cleaned as in training
    "brilliant scenes and a plot " * 12,  # longer than data.max_length: truncated the same way everywhere
    "Déjà vu — “wonderful” acting, 10/10 😀",  # accents, quotes, digits, an emoji
]


def as_ranked(answer: list[dict]) -> list[tuple[str, float]]:
    """A served answer, ``[{"label", "score"}, ...]``, as (class, probability) pairs, likeliest first."""
    return [(t["label"], t["score"]) for t in answer]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "image"])
def test_cli_torch_onnx_and_the_bare_export_give_one_answer(
    kind: str, bow_run: Path, digits_run: Path, no_torch_python: Path, tmp_path: Path, capsys
):
    """Every path agrees on every input's class; the probabilities of all classes agree within
    ``TOLERANCE`` = 1e-5 (absolute) between the command line and the two backends, and the top class's
    probability within 1e-5 between them and the bare export (which prints only the top class). All four
    paths are float32: PyTorch on the CPU, and onnxruntime on the fp32 graph of the same weights (measured:
    differences of at most 4e-7)."""
    run = shutil.copytree(bow_run if kind == "text" else digits_run, tmp_path / "run")  # export lands here
    if kind == "text":
        inputs, posted, args = TEXTS, TEXTS, [a for t in TEXTS for a in ("--text", t)]
    else:
        inputs = [str(digit_png(tmp_path / f"{i}.png", i)[0]) for i in (0, 3, 11, 42, 97, 250)]
        posted = [base64.b64encode(Path(p).read_bytes()).decode() for p in inputs]
        args = inputs

    code, out, err = run_cli(capsys, "predict", str(run), *args, "--top-k", "10", "--json")
    assert code == 0, err
    answers = {"cli": [[(t["class"], t["probability"]) for t in r["top"]] for r in json.loads(out)]}
    for backend in ("torch", "onnx"):
        with served(create_app(run, backend)) as client:
            answer = client.post("/predict", json={"inputs": posted, "top_k": 10})
            assert answer.status_code == 200, answer.text
            answers[backend] = [as_ranked(a) for a in answer.json()]
    assert (run / "export" / "model.onnx").is_file()  # the onnx backend exported the run first

    script = tmp_path / "readme.py"
    script.write_text(readme_snippet(), encoding="utf-8")
    done = subprocess.run(
        [str(no_torch_python), str(script), str(run / "export"), *inputs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    bare = [json.loads(line) for line in done.stdout.splitlines()]
    assert [b["input"] for b in bare] == inputs

    cli = answers["cli"]
    assert len(cli) == len(inputs) and all(len(r) == len(cli[0]) > 1 for r in cli)  # every class
    for path in ("torch", "onnx"):
        assert len(answers[path]) == len(inputs)
        for mine, theirs in zip(answers[path], cli, strict=True):
            assert mine[0][0] == theirs[0][0], path  # the argmax
            assert dict(mine) == pytest.approx(dict(theirs), abs=TOLERANCE), path
    for b, theirs in zip(bare, cli, strict=True):
        assert b["class"] == theirs[0][0]
        assert b["probability"] == pytest.approx(theirs[0][1], abs=TOLERANCE)
