"""Batch prediction (``bigmodel predict RUN --input FILE|DIR --output preds.jsonl``): the same classes and
probabilities as single-input predict, whatever the batch size; ids; one-line errors that leave no file,
mid-stream and on Ctrl-C too."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigmodel import api
from bigmodel.cli import main
from conftest import TEXT_ARGS, digit_png, run_cli, write_reviews

TEXTS = [
    "the film was great and the plot wonderful",
    "boring dull actors and a tedious story",
    'a "quoted", comma-laden review: superb, delightful',
    "a review over\ntwo lines <br /> clumsy and awful",
    "brilliant",
    "the story it scenes actors terrible " * 10,  # longer than data.max_length: truncated alike
    "moving",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    write_reviews(root / "reviews.csv")
    run = root / "bow"
    settings = ["model.name=bow", "model.buckets=4096", "train.epochs=2", "optim.lr=0.02"]
    assert main(["train", f"data.path={root / 'reviews.csv'}", *TEXT_ARGS, *settings, f"--out={run}"]) == 0
    return run


def single(capsys: pytest.CaptureFixture, run: Path, *args: str) -> list[dict]:
    """``bigmodel predict RUN ARGS --json``: one result per input."""
    code, out, err = run_cli(capsys, "predict", str(run), *args, "--json")
    assert code == 0, err
    return json.loads(out)


def batched(
    capsys: pytest.CaptureFixture, run: Path, source: Path, out: Path, *args: str
) -> tuple[list[dict], str]:
    """``bigmodel predict RUN --input SOURCE --output OUT ARGS``: the lines it wrote, and its stderr."""
    argv = ["predict", str(run), "--input", str(source), "--output", str(out), *args]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert stdout.startswith(f"{out}: {len(lines)} predictions")
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []
    return [json.loads(line) for line in lines], err


def texts(*indices: int) -> list[str]:
    return [arg for i in indices for arg in ("--text", TEXTS[i])]


def assert_same_tops(results: list[dict], expected: list[dict]) -> None:
    assert len(results) == len(expected)
    for r, e in zip(results, expected, strict=True):
        assert [t["class"] for t in r["top"]] == [t["class"] for t in e["top"]]
        for tr, te in zip(r["top"], e["top"], strict=True):
            assert tr["probability"] == pytest.approx(te["probability"], abs=1e-5)


def test_a_csv_of_texts_predicts_as_single_texts_do(text_run: Path, tmp_path: Path, capsys):
    source = tmp_path / "texts.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "other"])
        writer.writerows([f"r{i}", text, "x"] for i, text in enumerate(TEXTS))
    expected = single(capsys, text_run, *texts(*range(len(TEXTS))), "--top-k", "2")
    small, err = batched(
        capsys, text_run, source, tmp_path / "small.jsonl", "--batch-size", "3", "--top-k", "2"
    )
    assert [r["id"] for r in small] == [f"r{i}" for i in range(len(TEXTS))]
    assert [len(r["top"]) for r in small] == [2] * len(TEXTS)
    assert_same_tops(small, expected)
    assert (
        err == "warning: 1 of 7 texts were truncated to data.max_length=48 tokens\n"
    )  # one line, not per batch
    large, _ = batched(capsys, text_run, source, tmp_path / "large.jsonl", "--top-k", "2")  # one batch of 256
    assert_same_tops(large, small)
    summary = api.predict_file(text_run, source, tmp_path / "api.jsonl", top_k=2, progress=False)
    assert (summary.predicted, summary.skipped, summary.truncated) == (len(TEXTS), 0, 1)
    assert (tmp_path / "api.jsonl").read_text() == (tmp_path / "large.jsonl").read_text()


def test_ids_are_line_or_row_numbers_without_an_id_column(text_run: Path, tmp_path: Path, capsys):
    jsonl = tmp_path / "texts.jsonl"
    records = [{"review": TEXTS[0]}, {"review": TEXTS[1], "id": 7}, None, {"review": " <br /> "}]
    records.append({"review": TEXTS[2]})
    jsonl.write_text("".join(json.dumps(r) + "\n" if r else "\n" for r in records), encoding="utf-8")
    results, err = batched(capsys, text_run, jsonl, tmp_path / "out.jsonl", "--batch-size", "2")
    assert [r["id"] for r in results] == [1, 7, 5]  # line numbers, or the id field; line 4 has no words
    assert err.startswith(f"warning: skipped 1 empty texts in {jsonl} (the first: id 4)")
    assert_same_tops(results, single(capsys, text_run, *texts(0, 1, 2)))
    tsv = tmp_path / "texts.tsv"
    tsv.write_text(f"sentiment\treview\n?\t{TEXTS[0]}\n\n?\t{TEXTS[4]}\n", encoding="utf-8")
    results, _ = batched(capsys, text_run, tsv, tmp_path / "out.jsonl")
    assert [r["id"] for r in results] == [1, 2]  # rows after the header; a blank line is no row
    assert_same_tops(results, single(capsys, text_run, *texts(0, 4)))


def test_a_folder_of_images_predicts_as_single_images_do(digits_run: Path, tmp_path: Path, capsys):
    folder = tmp_path / "digits"
    (folder / "b").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    files = [digit_png(folder / ("b" if i % 3 else "") / f"{i:02d}.png", i)[0] for i in range(10)]
    digit_png(folder / ".hidden" / "x.png", 0)
    (folder / "notes.txt").write_text("not an image")
    # the folder's own images, then its sub-folders', each sorted; hidden ones and other files left out
    paths = sorted(str(p) for p in files if p.parent == folder)
    paths += sorted(str(p) for p in files if p.parent != folder)
    results, _ = batched(capsys, digits_run, folder, tmp_path / "small.jsonl", "--batch-size", "4")
    assert [r["id"] for r in results] == paths
    assert_same_tops(results, single(capsys, digits_run, *paths))
    assert_same_tops(batched(capsys, digits_run, folder, tmp_path / "large.jsonl")[0], results)


def mistakes(tmp: Path) -> list[tuple[list[str], str]]:
    """(the text run's arguments after ``predict RUN``, what the one-line error says)."""
    out = ["--output", str(tmp / "out.jsonl")]
    (tmp / "empty.csv").write_text("")
    (tmp / "header.csv").write_text("review,sentiment\n\n")
    (tmp / "columns.csv").write_text("body,label\nfine,1\n")
    (tmp / "texts.csv").write_text("review\nfine\n")
    (tmp / "images").mkdir()
    image = str(digit_png(tmp / "images" / "a.png", 0)[0])
    given = ["--input", str(tmp / "texts.csv"), *out]
    return [
        (["--input", str(tmp / "none.csv"), *out], "none.csv does not exist"),
        (
            ["--input", str(tmp / "columns.csv"), *out],
            "has no column 'review' (the run's data.text_column); columns found: body, label",
        ),
        (["--input", str(tmp / "empty.csv"), *out], "empty.csv is empty"),
        (["--input", str(tmp / "header.csv"), *out], "header.csv holds no texts"),
        ([*given, "--text", "fine"], "give it without image files, --text or --file"),
        ([image, *given], "give it without image files, --text or --file"),
        ([*given, "--file", str(tmp / "texts.csv")], "give it without image files, --text or --file"),
        (["--input", str(tmp / "texts.csv")], "--input needs --output FILE"),
        (["--text", "fine", *out], "--output and --batch-size go with --input"),
        ([*given, "--batch-size", "0"], "--batch-size must be at least 1"),
        ([*given, "--top-k", "0"], "--top-k must be at least 1"),
        (["--input", str(tmp / "images"), *out], "is a folder, but"),
        (["--input", image, *out], "is an image, but"),
    ]


def test_mistakes_are_one_line_errors_and_write_nothing(
    text_run: Path, digits_run: Path, tmp_path: Path, capsys
):
    cases = [(text_run, argv, message) for argv, message in mistakes(tmp_path)]
    a_file = ["--input", str(tmp_path / "texts.csv"), "--output", str(tmp_path / "out.jsonl")]
    cases.append((digits_run, a_file, "is a file, but"))
    for run, argv, message in cases:
        code, out, err = run_cli(capsys, "predict", str(run), *argv)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)
        assert err.count("\n") == 1 and out == ""
        assert not (tmp_path / "out.jsonl").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_error_midway_leaves_the_old_output_as_it_was(text_run: Path, tmp_path: Path, capsys):
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"review": t}) + "\n" for t in TEXTS[:4]) + '{"review": 3}\n')
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    argv = ["predict", str(text_run), "--input", str(source), "--output", str(out), "--batch-size", "2"]
    code, _, err = run_cli(capsys, *argv)  # two batches written to the temporary file before line 5
    assert code == 2 and err == f"error: line 5 of {source}: the text is a int, not a string\n"
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "texts.jsonl"]


def test_ctrl_c_leaves_no_output(text_run: Path, tmp_path: Path):
    """A FIFO as the input holds the process mid-stream, waiting for more texts, when SIGINT comes."""
    fifo = tmp_path / "texts.csv"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    argv = ["predict", str(text_run), "--input", str(fifo), "--output", str(out), "--batch-size", "2"]
    # A shell runs a background job with SIGINT ignored, and Python keeps an ignored SIGINT ignored: under
    # `make test &` predict never saw the Ctrl-C. The command line is run with Python's usual handler;
    # -X faulthandler: SIGABRT dumps its threads, should it hang all the same.
    start = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    start += "from bigmodel.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-X", "faulthandler", "-c", start, *argv]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # opening the writing end succeeds once the process reads the FIFO
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                assert exc.errno == errno.ENXIO
                time.sleep(0.05)
        os.write(fd, ("review\n" + "".join(t.replace("\n", " ") + "\n" for t in TEXTS[:5])).encode())
        time.sleep(0.5)  # a batch or two predicted; then it waits for more
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            pytest.fail(f"predict did not stop within 60 s of SIGINT; its threads: {proc.communicate()[1]}")
        os.close(fd)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == f"interrupted; {out} was not written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.csv"]
