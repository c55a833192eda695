"""Where the named IDX image data sets live, and how to download them safely.

Training should never start on a half-downloaded or silently corrupted file, and a machine that already has
the Debian package should not download anything. So data sets are looked up in the user's cache and then
in the Debian install locations, and downloads are checked against pinned SHA-256 sums and only ever appear
under their final names once complete and verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bigmodel.errors import UserError
from bigmodel.files import sha256

ROLES: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxSource:
    """One data set as four gzipped IDX files, pinned by hash so a changed mirror cannot go unnoticed."""

    name: str
    base_url: str
    files: dict[str, tuple[str, str]]  # role -> (filename, sha256)
    debian_dirs: tuple[str, ...] = ()


NAMED_IDX: dict[str, IdxSource] = {
    "fashion-mnist": IdxSource(
        name="fashion-mnist",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            ),
        },
        debian_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": IdxSource(
        name="mnist",
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
    ),
}


def cache_dir() -> Path:
    """Where downloads go: one override for the project, else the usual per-user cache."""
    override = os.environ.get("BIGMODEL_DATA")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bigmodel"


def _source(name: str) -> IdxSource:
    try:
        return NAMED_IDX[name]
    except KeyError:
        known = ", ".join(sorted(NAMED_IDX))
        raise UserError(f"unknown data set {name!r}; known data sets: {known}") from None


def _paths_in(directory: Path, source: IdxSource) -> dict[str, Path] | None:
    paths = {role: directory / filename for role, (filename, _) in source.files.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def locate(name: str) -> dict[str, Path]:
    """Find a data set without downloading, so runs work offline; files are trusted (hashed at download)."""
    source = _source(name)
    candidates = [cache_dir() / name, *(Path(d) for d in source.debian_dirs)]
    for directory in candidates:
        paths = _paths_in(directory, source)
        if paths is not None:
            return paths
    where = " or ".join(str(d) for d in candidates)
    hint = f"run `bigmodel data fetch {name}`"
    if source.debian_dirs:
        hint += f" (or `apt-get install dataset-{name}`)"
    raise UserError(f"{name} not found in {where}; {hint}")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory, and that is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _download(url: str, final: Path, expected: str, progress: bool) -> None:
    directory = final.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "bigmodel"})
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=final.name,
                        file=sys.stderr,
                        disable=not progress,
                        leave=False,
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as e:
                raise UserError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise UserError(f"cannot download {url}: {e.reason}") from None
            except TimeoutError:
                raise UserError(f"cannot download {url}: no answer within {TIMEOUT_S:g} s") from None
            except (ConnectionError, http.client.HTTPException) as e:
                raise UserError(f"cannot download {url}: {e or type(e).__name__}") from None
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != expected:
            raise UserError(
                f"download of {final.name} is corrupt: sha256 {got} expected {expected}; "
                f"try again or download it by hand into {directory}"
            )
        os.replace(tmp, final)
        _fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, base_url: str | None = None, dest: Path | None = None, progress: bool = True) -> Path:
    """Download what is missing or wrong; a final name only ever holds a complete, verified file."""
    source = _source(name)
    directory = Path(dest) if dest is not None else cache_dir() / name
    directory.mkdir(parents=True, exist_ok=True)
    base = (base_url or source.base_url).rstrip("/") + "/"
    for filename, expected in source.files.values():
        final = directory / filename
        if final.is_file() and sha256(final) == expected:
            continue
        _download(base + filename, final, expected, progress)
    return directory
