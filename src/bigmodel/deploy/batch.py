"""Batch prediction: ``bigmodel predict RUN --input FILE|DIR --output preds.jsonl``.

A CSV, TSV or JSONL file of texts (text runs) or a folder of images (image runs) goes through the run's
best model one batch at a time, and each input gets one JSON line, ``{"id": ..., "top": [{"class": ...,
"probability": ...}, ...]}``, in the input's order. Memory stays bounded whatever the input's size: a
file is read one record at a time (the csv module; JSON line by line) and encoded one batch at a time; of
a folder only the image paths are listed. Each batch is encoded exactly as ``bigmodel predict`` encodes
single inputs (the run's tokenizer, loaded once; its image size, channels and normalisation) and scored
by the same ``top_classes``. The lines go to a temporary file beside the output, renamed onto it at the
end, so an error or Ctrl-C leaves no half-written output.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from bigmodel.data.images import IMAGE_EXTENSIONS
from bigmodel.data.text import clean_text, encode_texts, json_object, run_tokenizer
from bigmodel.errors import UserError
from bigmodel.files import atomic_write
from bigmodel.run import RunDir
from bigmodel.tasks import task_for

BATCH_SIZE = 256
ID_COLUMN = "id"  # a column (CSV, TSV) or field (JSONL) of that name gives each text its id

Item = tuple[Any, Any]  # (id, a text, or an image's path)
Encoder = Callable[[list[Any]], tuple[dict[str, torch.Tensor], int]]  # features, texts truncated


@dataclass
class BatchSummary:
    """What ``predict_file`` wrote: the output, how many predictions, the empty texts passed over (with
    the first one's id), the texts truncated to ``data.max_length``, and the seconds it took."""

    output: Path
    predicted: int = 0
    skipped: int = 0
    first_skipped: Any = None
    truncated: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0


def top_classes(run: RunDir, features: dict[str, torch.Tensor], top_k: int) -> list[list[dict[str, Any]]]:
    """The ``top_k`` likeliest classes of each encoded input, best first, with their probabilities (a
    float32 softmax): what ``bigmodel predict`` prints and batch prediction writes."""
    return ranked_classes(model_logits(run, features), run.info.classes, top_k)


def model_logits(run: RunDir, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 logits of the run's model for encoded inputs, in inference mode."""
    with torch.inference_mode():
        return task_for(run.info).output(run.model, features).logits.float()


def ranked_classes(logits: torch.Tensor, classes: list[str], top_k: int) -> list[list[dict[str, Any]]]:
    """``top_classes`` from logits, whichever runtime computed them (PyTorch, onnxruntime)."""
    probs = torch.softmax(logits.float(), dim=1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
        [{"class": classes[i], "probability": p} for p, i in zip(values, indices, strict=True)]
        for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def predict_file(
    run: RunDir,
    source: Path,
    output: Path,
    top_k: int = 3,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> BatchSummary:
    """Predict every text of ``source`` (a text run) or image under it (an image run) into ``output``,
    JSON Lines; ``progress``: a tqdm bar on stderr, where stderr is a terminal."""
    task_for(run.info).require_classifier(run.root, "predict")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give the JSON Lines file to write, e.g. preds.jsonl")
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise UserError(f"--output {output} is the --input file; give another file to write")
    summary = BatchSummary(output)
    items, total, encode = _inputs(run, source, summary)
    start = time.perf_counter()
    with tqdm(
        total=total,
        unit="ex",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=False,
        disable=None if progress else True,
    ) as bar:

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as out:
                while batch := list(itertools.islice(items, batch_size)):
                    ids, inputs = zip(*batch, strict=True)
                    features, truncated = encode(list(inputs))
                    for id_, top in zip(ids, top_classes(run, features, top_k), strict=True):
                        out.write(json.dumps({"id": id_, "top": top}) + "\n")
                    summary.predicted += len(batch)
                    summary.truncated += truncated
                    bar.update(len(batch))
            if not summary.predicted:  # only a text file can get here: a folder without images is refused
                empty = f" ({summary.skipped} empty ones)" if summary.skipped else ""
                raise UserError(
                    f"--input {source} holds no texts{empty}; give a header row and one text per row"
                )

        atomic_write(output, write)
    summary.seconds = time.perf_counter() - start
    if summary.skipped:
        print(
            f"warning: skipped {summary.skipped} empty texts in {source} (the first: id "
            f"{summary.first_skipped}); they have no line in {output}",
            file=sys.stderr,
        )
    if summary.truncated:
        print(
            f"warning: {summary.truncated} of {summary.predicted} texts were truncated to "
            f"data.max_length={run.info.input_shape[0]} tokens",
            file=sys.stderr,
        )
    return summary


def _inputs(run: RunDir, source: Path, summary: BatchSummary) -> tuple[Iterator[Item], int | None, Encoder]:
    """The (id, input) pairs of ``source``, how many there are where that is known without reading them
    all, and how a batch of inputs is encoded; a source that does not suit the run is refused here."""
    if not source.exists():
        raise UserError(
            f"--input {source} does not exist; give a CSV, TSV or JSONL file of texts (text runs) or a "
            "folder of images (image runs)"
        )
    if run.info.kind != "text":
        if not source.is_dir():
            raise UserError(
                f"--input {source} is a file, but {run.root} is an image run: give a folder of images "
                f"(or the images themselves without --input: bigmodel predict {run.root} a.png b.png)"
            )
        paths = _image_paths(source)
        return ((p, p) for p in paths), len(paths), lambda batch: (run.encode(batch), 0)
    if source.is_dir() or source.suffix.lower() in IMAGE_EXTENSIONS:
        kind = "a folder" if source.is_dir() else "an image"
        raise UserError(
            f"--input {source} is {kind}, but {run.root} is a text run: give a CSV, TSV or JSONL file "
            "of texts"
        )
    if source.is_file() and source.stat().st_size == 0:
        raise UserError(f"--input {source} is empty; give a header row and one text per row")
    tokenizer = run_tokenizer(run.tokenizer_dir)
    texts = _texts(source, run.config.data.text_column, summary)
    return texts, None, lambda batch: encode_texts(batch, tokenizer, run.info)


def _image_paths(folder: Path) -> list[str]:
    """The image files in ``folder`` and its sub-folders, in sorted order; hidden files and folders (a
    name starting with a dot) are passed over."""
    paths = []
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        paths += [
            os.path.join(parent, name)
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        ]
    if not paths:
        found = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise UserError(f"--input {folder} holds no images ({found}), neither in it nor in its sub-folders")
    return paths


def _texts(path: Path, column: str, summary: BatchSummary) -> Iterator[Item]:
    """(id, text) of each record with words in it, read one at a time; empty ones are counted."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:  # a BOM is no part of the first column
            jsonl = path.suffix.lower() == ".jsonl"
            records = (
                _jsonl(f, path, column) if jsonl else _table(f, path, column, path.suffix.lower() == ".tsv")
            )
            for id_, text in records:
                if text is None or not clean_text(text):
                    if not summary.skipped:
                        summary.first_skipped = id_
                    summary.skipped += 1
                    continue
                yield id_, text
    except UnicodeDecodeError as exc:
        raise UserError(
            f"--input {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from None


def _table(f: TextIO, path: Path, column: str, tsv: bool) -> Iterator[Item]:
    """CSV as Excel quotes it, TSV one unquoted row a line, as training reads them; the id is the ``id``
    column's value, else the row's number (1 for the first row after the header)."""
    reader = csv.reader(
        f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    )
    try:
        header = next(reader, [])
        if column not in header:
            raise UserError(
                f"--input {path} has no column {column!r} (the run's data.text_column); "
                f"columns found: {', '.join(header) or 'none'}"
            )
        at, id_at = header.index(column), header.index(ID_COLUMN) if ID_COLUMN in header else None
        rows = (row for row in reader if row)  # a blank line is no row
        for number, row in enumerate(rows, start=1):
            id_ = number if id_at is None else (row[id_at] if id_at < len(row) else None)
            yield id_, row[at] if at < len(row) else None
    except csv.Error as exc:
        kind = "TSV" if tsv else "CSV"
        raise UserError(f"--input {path} is not valid {kind} at line {reader.line_num}: {exc}") from None


def _jsonl(f: TextIO, path: Path, column: str) -> Iterator[Item]:
    """One JSON object a line; the id is its ``id`` field, else the line's number."""
    for number, line in enumerate(f, start=1):
        if not line.strip():
            continue
        obj = json_object(line, number, path)
        if column not in obj:
            raise UserError(
                f"line {number} of {path} has no field {column!r} (the run's data.text_column); "
                f"fields found: {', '.join(obj) or 'none'}"
            )
        text = obj[column]
        if text is not None and not isinstance(text, str):
            raise UserError(f"line {number} of {path}: the text is a {type(text).__name__}, not a string")
        yield obj.get(ID_COLUMN, number), text
