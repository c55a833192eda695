"""Downloads are tested against a real HTTP server on 127.0.0.1 serving the real Debian files."""

import dataclasses
import functools
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import pytest

from bigmodel.data import sources
from bigmodel.data.sources import NAMED_IDX, cache_dir, fetch, locate
from bigmodel.errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
if not DEBIAN_DIR.is_dir():
    pytest.skip(
        f"{DEBIAN_DIR} missing (apt-get install dataset-fashion-mnist) - nothing real to serve",
        allow_module_level=True,
    )

SOURCE = NAMED_IDX["fashion-mnist"]
FILES = {filename: sha for filename, sha in SOURCE.files.values()}
LABELS = SOURCE.files["train_labels"][0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                log.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served")
    good = root / "good"
    good.mkdir()
    for filename in FILES:
        shutil.copyfile(DEBIAN_DIR / filename, good / filename)
    # Same files, except the train labels with some bytes flipped in the middle.
    corrupt = root / "corrupt"
    corrupt.mkdir()
    for filename in FILES:
        if filename == LABELS:
            data = bytearray((good / filename).read_bytes())
            data[1000:1010] = bytes(b ^ 0xFF for b in data[1000:1010])
            (corrupt / filename).write_bytes(bytes(data))
        else:
            (corrupt / filename).symlink_to(good / filename)
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIGMODEL_DATA", str(cache))
    return cache


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_verifies_and_locate_finds_it(server: Server, isolated_cache: Path) -> None:
    out = fetch("fashion-mnist", base_url=server.url + "good/", progress=False)
    assert out == isolated_cache / "fashion-mnist"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for filename, expected in FILES.items():
        assert sha256(out / filename) == expected
    found = locate("fashion-mnist")
    assert set(found) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert found["train_labels"] == out / LABELS
    assert found["test_images"] == out / "t10k-images-idx3-ubyte.gz"


def test_refetch_skips_correct_files_and_repairs_wrong_ones(server: Server, tmp_path: Path) -> None:
    dest = fetch("fashion-mnist", base_url=server.url + "good/", dest=tmp_path, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}

    before = len(server.requests)
    fetch("fashion-mnist", base_url=server.url + "good/", dest=tmp_path, progress=False)
    assert server.requests[before:] == []
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == mtimes

    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the labels")
    before = len(server.requests)
    fetch("fashion-mnist", base_url=server.url + "good/", dest=tmp_path, progress=False)
    assert server.requests[before:] == ["/good/t10k-labels-idx1-ubyte.gz"]
    assert sha256(dest / "t10k-labels-idx1-ubyte.gz") == FILES["t10k-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILES)


def test_corrupt_download_leaves_nothing_under_final_name(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=LABELS) as excinfo:
        fetch("fashion-mnist", base_url=server.url + "corrupt/", dest=tmp_path, progress=False)
    message = str(excinfo.value)
    assert "corrupt" in message
    assert FILES[LABELS] in message
    assert str(tmp_path) in message
    assert not (tmp_path / LABELS).exists()
    # Only verified files under their final names, and no temp files left behind.
    left = {p.name for p in tmp_path.iterdir()}
    assert left <= set(FILES) - {LABELS}
    for name in left:
        assert sha256(tmp_path / name) == FILES[name]


def test_http_404_is_a_user_error(server: Server, tmp_path: Path) -> None:
    url = server.url + "missing/"
    with pytest.raises(UserError, match="404") as excinfo:
        fetch("fashion-mnist", base_url=url, dest=tmp_path, progress=False)
    assert url in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_a_user_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(UserError, match="cannot download") as excinfo:
        fetch("fashion-mnist", base_url=url, dest=tmp_path, progress=False)
    assert url in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "TIMEOUT_S", 0.3)
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(UserError, match="cannot download") as excinfo:
            fetch("fashion-mnist", base_url=url, dest=tmp_path, progress=False)
    assert url in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_progress_goes_to_stderr(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Only the small files get downloaded; the big ones are already in place.
    for filename in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        shutil.copyfile(DEBIAN_DIR / filename, tmp_path / filename)
    fetch("fashion-mnist", base_url=server.url + "good/", dest=tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert LABELS in captured.err


def test_locate_falls_back_to_debian_dir(isolated_cache: Path) -> None:
    found = locate("fashion-mnist")
    assert found["train_images"] == DEBIAN_DIR / "train-images-idx3-ubyte.gz"


def test_locate_ignores_incomplete_cache_dir(isolated_cache: Path) -> None:
    partial = isolated_cache / "fashion-mnist"
    partial.mkdir(parents=True)
    shutil.copyfile(DEBIAN_DIR / LABELS, partial / LABELS)
    assert locate("fashion-mnist")["train_labels"] == DEBIAN_DIR / LABELS


def test_locate_not_found_says_how_to_get_it(
    isolated_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = tmp_path / "no-debian"
    monkeypatch.setitem(NAMED_IDX, "fashion-mnist", dataclasses.replace(SOURCE, debian_dirs=(str(nowhere),)))
    with pytest.raises(UserError) as excinfo:
        locate("fashion-mnist")
    message = str(excinfo.value)
    assert str(isolated_cache / "fashion-mnist") in message
    assert str(nowhere) in message
    assert "bigmodel data fetch fashion-mnist" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_unknown_name_lists_known_names(isolated_cache: Path) -> None:
    with pytest.raises(UserError, match="fashion-mnist"):
        locate("cifar-1000")
    with pytest.raises(UserError, match="fashion-mnist"):
        fetch("cifar-1000", progress=False)
    assert not isolated_cache.exists()


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGMODEL_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "bigmodel"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "bigmodel"
    monkeypatch.setenv("BIGMODEL_DATA", str(tmp_path / "data"))
    assert cache_dir() == tmp_path / "data"


def test_pinned_hashes_are_well_formed() -> None:
    for source in NAMED_IDX.values():
        assert set(source.files) == {"train_images", "train_labels", "test_images", "test_labels"}
        for _, sha in source.files.values():
            assert len(sha) == 64 and all(c in "0123456789abcdef" for c in sha), (source.name, sha)
