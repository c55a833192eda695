"""Text data: reading, cleaning, splitting, tokenizing and encoding, on real files and the real review sets.

Each file test trains a tokenizer on a few dozen texts (milliseconds); IMDB is checked through the helpers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bigmodel.config import DataConfig
from bigmodel.data.bundle import DataBundle, sample
from bigmodel.data.loader import BatchLoader
from bigmodel.data.text import (
    TextTransform,
    build_text_data,
    clean_text,
    duplicate_groups,
    encode,
    prepare_texts,
    read_table,
    split_indices,
    text_tokenizer,
)
from bigmodel.errors import UserError

CLASSES = ["bird", "cat", "dog"]  # written unsorted below: the file order is dog, cat, bird
WORDS = ["good", "bad", "slow", "quick", "funny", "dull", "long", "short", "bright", "dark"]


def rows(n: int = 60) -> list[tuple[str, str]]:
    """Texts of varied length, every third one with HTML line breaks, like IMDB's."""
    out = []
    for i in range(n):
        label = CLASSES[2 - i % 3]
        body = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(2 + i % 9))
        text = f"the {label} was {body}<br /><br />  review {i}" if i % 3 == 0 else f"the {label} was {body}"
        out.append((text, label))
    return out


def write(path: Path, records: list[tuple[object, object]], text_col: str = "text", label_col: str = "label"):
    if path.suffix == ".jsonl":
        lines = [json.dumps({text_col: t, label_col: y, "id": i}) for i, (t, y) in enumerate(records)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        with path.open("w", encoding="utf-8", newline="") as f:
            kw = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix == ".tsv" else {}
            writer = csv.writer(f, **kw)
            writer.writerow([text_col, label_col])
            writer.writerows(records)
    return path


def config(path: Path, **kw) -> DataConfig:
    return DataConfig(path=str(path), **{"vocab_size": 200, "max_length": 64, **kw})


def check_bundle(bundle: DataBundle, n: int, classes: list[str], max_length: int = 64) -> None:
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (n * 8 // 10, n // 10, n // 10)
    for split in (bundle.train, bundle.val, bundle.test):
        assert sorted(split.labels.unique().tolist()) == list(range(len(classes)))  # stratified
        assert split.labels.dtype == torch.int64
        ids, mask = split.features["input_ids"], split.features["attention_mask"]
        assert ids.dtype == torch.int32 and mask.dtype == torch.bool
        assert (
            ids.shape == mask.shape and ids.shape[1] == mask.sum(1).max() <= max_length
        )  # padded to longest
        assert int(ids.max()) < bundle.info.vocab_size
        assert torch.all(ids[~mask] == bundle.info.pad_token_id)
    info = bundle.info
    assert info.kind == "text" and info.classes == classes and info.input_shape == [max_length]
    assert (
        info.vocab_size == len(bundle.tokenizer) and info.pad_token_id == bundle.tokenizer.pad_token_id == 0
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_file_is_split_stratified_and_encoded(tmp_path: Path, suffix: str):
    path = write(tmp_path / f"reviews{suffix}", rows())
    bundle = build_text_data(config(path))
    check_bundle(bundle, 60, CLASSES)
    assert bundle.info.source == str(path)
    ids = torch.cat([s.features["input_ids"][:, :8] for s in (bundle.train, bundle.val, bundle.test)])
    texts = [bundle.tokenizer.decode(r, skip_special_tokens=True) for r in ids]
    assert "the dog was good bad review 0" in texts  # <br /> cleaned, whitespace collapsed
    assert not any("<" in t or "br" in t.split() for t in texts)

    loader = BatchLoader(bundle.train, 3, bundle.train_transform, shuffle=True, seed=1)
    widths = set()
    for batch in loader:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape
        assert ids.shape[1] == int(mask.sum(1).max())  # trimmed to the batch's longest text
        widths.add(ids.shape[1])
    assert len(widths) > 1


def test_integer_labels_sort_numerically(tmp_path: Path):
    records = [(t, [10, 9, 2][i % 3]) for i, (t, _) in enumerate(rows())]
    for suffix in (".jsonl", ".csv"):
        bundle = build_text_data(config(write(tmp_path / f"ints{suffix}", records)))
        check_bundle(bundle, 60, ["2", "9", "10"])
    # JSONL may mix 1 and "1": one class
    mixed = [(t, [1, "1", 2][i % 3]) for i, (t, _) in enumerate(rows())]
    assert build_text_data(config(write(tmp_path / "mixed.jsonl", mixed))).info.classes == ["1", "2"]


def test_missing_columns_list_what_was_found(tmp_path: Path):
    path = write(tmp_path / "r.csv", rows(), text_col="body")
    with pytest.raises(UserError, match=r"r\.csv has no column 'text'.*columns found: body, label"):
        build_text_data(config(path))
    path = write(tmp_path / "r.jsonl", rows(), label_col="sentiment")
    with pytest.raises(UserError, match=r"line 1 of .*r\.jsonl has no field 'label'.*fields found: text, s"):
        build_text_data(config(path))
    assert build_text_data(config(path, label_column="sentiment")).info.classes == CLASSES


def test_bad_bytes_and_bad_json_name_file_and_line(tmp_path: Path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\ngood film,pos\ncaf\xe9 film,neg\n")
    with pytest.raises(UserError, match=r"latin1\.csv is not UTF-8 text: byte 0xe9 at line 3"):
        build_text_data(config(path))
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n{"text": "broken", label: 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2 of .*bad\.jsonl is not JSON"):
        build_text_data(config(path))
    with pytest.raises(UserError, match=r"nothing\.csv does not exist"):
        build_text_data(config(tmp_path / "nothing.csv"))


def test_empty_texts_are_skipped_and_counted_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path / "gaps.csv", [*rows(), ("", "cat"), ("   ", "dog"), ("<br />", "bird")])
    bundle = build_text_data(config(path))
    check_bundle(bundle, 60, CLASSES)
    err = capsys.readouterr().err
    assert err.count(f"skipped 3 empty texts in {path}") == 1 and err.count("\n") == 1
    only_empty = write(tmp_path / "empty.csv", [("", "cat"), (" ", "dog")])
    with pytest.raises(UserError, match=r"empty\.csv holds no texts"):
        build_text_data(config(only_empty))


def test_too_few_classes_or_examples(tmp_path: Path):
    one_class = write(tmp_path / "one.csv", [(t, "cat") for t, _ in rows()])
    with pytest.raises(UserError, match="only one class"):
        build_text_data(config(one_class))
    lonely = write(tmp_path / "lonely.csv", [*rows(), ("a fish story", "fish")])
    with pytest.raises(UserError, match="class 'fish' has only 1 distinct text; each class needs at least 3"):
        build_text_data(config(lonely))
    rare = write(tmp_path / "rare.csv", [*rows(), *[(f"fish story {i}", "fish") for i in range(3)]])
    with pytest.raises(UserError, match="class 'fish' has only 3 distinct texts, too few to be in both"):
        build_text_data(config(rare))
    tiny = write(tmp_path / "tiny.csv", rows(9))
    with pytest.raises(
        UserError, match=r"9 distinct texts of 3 classes are too few for a stratified 80/10/10 split \("
    ):
        build_text_data(config(tiny))


def test_truncation_is_counted_and_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path / "r.csv", rows())
    bundle = build_text_data(config(path, max_length=8))
    from tokenizers import Tokenizer

    # a copy of the Rust tokenizer, untruncated, counts without transformers' own length warning
    backend = Tokenizer.from_str(bundle.tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    expected = sum(len(enc.ids) > 8 for enc in backend.encode_batch([t for t, _ in rows()]))
    assert 0 < expected < 60
    err = capsys.readouterr().err
    line = f"{expected} of 60 texts are longer than data.max_length=8 tokens and were truncated"
    assert err.count(line) == 1 and err.count("\n") == 1
    assert bundle.train.features["input_ids"].shape[1] == 8


def test_python_tokenizer_encodes_like_the_fast_one(tmp_path: Path):
    """A tokenizer without a Rust backend counts truncation another way; the result must not differ."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    fast = build_text_data(config(write(tmp_path / "r.csv", rows()))).tokenizer
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(sorted(fast.get_vocab(), key=fast.get_vocab().get)) + "\n", encoding="utf-8")
    slow = BertTokenizerLegacy(str(vocab))
    assert not slow.is_fast
    texts = [t for t, _ in rows()]
    (f_feat, f_cut), (s_feat, s_cut) = encode(fast, texts, 9), encode(slow, texts, 9)
    assert f_cut == s_cut > 0
    assert torch.equal(f_feat["input_ids"], s_feat["input_ids"])
    assert torch.equal(f_feat["attention_mask"], s_feat["attention_mask"])


def test_split_is_fixed_by_its_seed(tmp_path: Path):
    path = write(tmp_path / "r.csv", rows())
    first, again = build_text_data(config(path)), build_text_data(config(path))
    for name in ("train", "val", "test"):
        assert torch.equal(first.split(name).features["input_ids"], again.split(name).features["input_ids"])
        assert torch.equal(first.split(name).labels, again.split(name).labels)
    table = read_table(config(path))
    seed0, seed1 = split_indices(table, 0), split_indices(table, 1)
    assert not np.array_equal(seed0[1], seed1[1])
    for index in (*seed0, *seed1):
        assert np.all(np.diff(index) > 0)  # file order
    assert sorted(np.concatenate(seed1).tolist()) == list(range(60))


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_is_repeatable(kind: str):
    """The Rust trainer alone numbers "##" pieces in hash order (tokenizers issue 1794): 20 runs differ."""
    texts = [t for t, _ in rows()] + ["Café naïve ﬁlm, an ÉTÉ of Σίσυφος", "cafe\u0301 once more"] * 2
    settings = DataConfig(tokenizer=kind, vocab_size=150, lowercase=True, max_length=64)
    vocabs = {json.dumps(text_tokenizer(settings, texts).get_vocab(), sort_keys=True) for _ in range(20)}
    assert len(vocabs) == 1


def test_limit_keeps_a_stratified_sample_of_the_training_texts(tmp_path: Path):
    path = write(tmp_path / "r.csv", rows())
    full, limited = build_text_data(config(path)), build_text_data(config(path, limit=10))
    assert (len(limited.train), len(limited.val), len(limited.test)) == (10, 6, 6)
    assert torch.equal(limited.test.labels, full.test.labels)
    assert sorted(torch.bincount(limited.train.labels).tolist()) == [3, 3, 4]  # 16 of each class in full
    again = build_text_data(config(path, limit=10))
    assert torch.equal(again.train.features["input_ids"], limited.train.features["input_ids"])  # seeded


def test_sample_is_stratified_in_file_order_and_random_where_it_cannot_stratify():
    labels, index = np.repeat(np.arange(10), 100), np.arange(1000)
    kept = sample(index, 50, 0, labels)
    assert np.bincount(labels[kept]).tolist() == [5] * 10 and (np.diff(kept) > 0).all()
    assert np.array_equal(sample(index, 50, 0, labels), kept) and not np.array_equal(
        sample(index, 50, 1, labels), kept
    )
    assert len(sample(index, 999, 0, labels)) == 999  # one left out, fewer than the 10 classes
    assert len(sample(index, 5, 0, labels)) == 5  # fewer than the classes
    assert sample(index, None, 0, labels) is index and sample(index, 2000, 0, labels) is index


def test_limit_on_a_file_sorted_by_class_keeps_every_class():
    # IMDB's file lists every negative review before the positives: its first 4,000 training texts are all
    # negative, which a "first N" limit would have trained on.
    limited = build_text_data(DataConfig(name="imdb", limit=400, max_length=32, vocab_size=2000))
    assert torch.bincount(limited.train.labels).tolist() == [200, 200]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_saved_tokenizer_reloads_and_is_used_instead_of_training(tmp_path: Path, kind: str):
    from transformers import AutoTokenizer

    path = write(tmp_path / "r.csv", rows())
    bundle = build_text_data(config(path, tokenizer=kind))
    saved = tmp_path / "tokenizer"
    bundle.tokenizer.save_pretrained(saved)
    reloaded = AutoTokenizer.from_pretrained(saved)
    texts = ["the cat was quick", "a dull dog, a bright bird!", "unseen wordz here"]
    assert reloaded(texts)["input_ids"] == bundle.tokenizer(texts)["input_ids"]
    assert reloaded.decode(reloaded("the cat was quick")["input_ids"], skip_special_tokens=True) == texts[0]

    loaded = build_text_data(config(path, tokenizer=str(saved), vocab_size=20))  # vocab_size unused
    assert loaded.info.vocab_size == bundle.info.vocab_size > 20
    assert torch.equal(loaded.train.features["input_ids"], bundle.train.features["input_ids"])


def test_unloadable_tokenizer_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    path = write(tmp_path / "r.csv", rows())
    with pytest.raises(UserError) as info:
        build_text_data(config(path, tokenizer="bert-base-uncased"))
    assert str(info.value) == (
        "cannot load tokenizer bert-base-uncased: not a local directory, and the hub is unreachable offline; "
        "give a directory saved with save_pretrained, or data.tokenizer=wordpiece"
    )
    (tmp_path / "not-a-tokenizer").mkdir()
    with pytest.raises(UserError, match="holds no tokenizer saved with save_pretrained") as info:
        build_text_data(config(path, tokenizer=str(tmp_path / "not-a-tokenizer")))
    assert "\n" not in str(info.value)


def test_prepare_texts_matches_the_training_encoding(tmp_path: Path):
    path = write(tmp_path / "r.csv", rows())
    cfg = config(path, max_length=12)
    bundle = build_text_data(cfg)
    bundle.tokenizer.save_pretrained(tmp_path / "tokenizer")
    train_index, _, _ = split_indices(read_table(cfg), cfg.split_seed)
    picks = [0, 3, 4, 7]  # rows 0 and 3 of the file hold <br /> and are among the longest
    raw = [rows()[train_index[p]][0] for p in picks]
    features = prepare_texts(raw, tmp_path / "tokenizer", bundle.info)
    expected = TextTransform()(bundle.train.take(torch.tensor(picks)).features)
    assert features.keys() == expected.keys() == {"input_ids", "attention_mask"}
    for key in features:
        assert features[key].dtype == torch.int64
        assert torch.equal(features[key], expected[key])

    with pytest.raises(UserError, match="text 2 of 2 is empty"):
        prepare_texts(["fine", " <br/> "], tmp_path / "tokenizer", bundle.info)
    with pytest.raises(UserError, match="no tokenizer at"):
        prepare_texts(["fine"], tmp_path / "missing", bundle.info)


def test_imdb_splits_are_stratified_halves():
    """IMDB through the helpers: training its tokenizer on 20,000 reviews would dominate this file's time."""
    table = read_table(DataConfig(name="imdb"))
    assert len(table.texts) == 25_000 and table.classes == ["negative", "positive"]
    assert not any("<br" in t.lower() for t in table.texts[:2000])
    splits = split_indices(table, 0)  # its 98 repeated texts are split with their first copies
    assert sum(len(s) for s in splits) == 25_000
    assert [round(len(s), -2) for s in splits] == [20_000, 2_500, 2_500]
    for index in splits:
        assert abs(np.bincount(table.labels[index])[0] - len(index) / 2) <= 5
    seen = [{clean_text(table.texts[i]).casefold() for i in index} for index in splits]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_rotten_tomatoes_builds_with_a_small_tokenizer():
    cfg = DataConfig(name="rotten-tomatoes", vocab_size=2000, max_length=64, limit=1000)
    bundle = build_text_data(cfg)
    train, val, test = split_indices(read_table(cfg), cfg.split_seed)
    assert len(train) + len(val) + len(test) == 8_530
    assert (
        (len(bundle.train), len(bundle.val), len(bundle.test))
        == (1000, len(val), len(test))
        == (1000, 853, 853)
    )
    for split in (bundle.val, bundle.test):
        negative, positive = np.bincount(split.labels.numpy()).tolist()
        assert abs(negative - positive) <= 1
    assert bundle.info.classes == ["negative", "positive"] and bundle.info.source == "rotten-tomatoes"
    assert bundle.info.vocab_size <= 2000 + 100  # the alphabet may push a small vocabulary a little over


def test_a_text_and_its_copies_stay_in_one_split_and_are_counted(tmp_path: Path, capsys):
    base = rows()
    copies = [
        (base[0][0].upper(), base[0][1]),  # case aside, the same text
        ("  " + base[1][0].replace(" ", "  <br /> "), base[1][1]),  # HTML breaks and spacing aside
        (base[2][0], base[2][1]),  # exact
        (base[2][0], base[2][1]),  # exact, a third copy
        (base[3][0], "bird" if base[3][1] != "bird" else "cat"),  # the same text, another label
    ]
    path = write(tmp_path / "dups.csv", [*base, *copies])
    table = read_table(config(path))
    first, group = duplicate_groups(table.texts)
    assert len(first) == 60 and len(group) == 65
    for seed in (0, 1, 2):
        parts = split_indices(table, seed)
        assert sorted(np.concatenate(parts).tolist()) == list(range(65))  # none dropped
        where = {int(i): name for name, part in zip("tvs", parts, strict=True) for i in part}
        for g in np.unique(group):
            assert len({where[int(i)] for i in np.flatnonzero(group == g)}) == 1, "a text in two splits"
    err = capsys.readouterr().err
    assert err.count("warning:") == 3  # one line a split
    assert (
        "5 texts repeat an earlier one (cleaned, case aside), 1 of the repeated texts with conflicting" in err
    )
    seed0 = split_indices(read_table(config(write(tmp_path / "plain.csv", base))), 0)
    assert capsys.readouterr().err == ""  # nothing to say where there are no copies
    assert all(len(part) for part in seed0)
