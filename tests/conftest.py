"""Shared fixtures and helpers: small trained runs (scikit-learn's digits, reviews), reused by the tests that
read runs; the data, arguments and process helpers that several test modules use; a real server on
127.0.0.1, headless Chromium, and a virtual environment without torch for the README's onnxruntime lines."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Two pytest workers share two cores: one thread each, and the same for CLI subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DIGITS_ARGS = [
    "data.name=digits",
    "model.name=cnn",
    "model.depth=2",
    "model.width=16",
    "train.epochs=4",
    "train.batch_size=64",
    "train.progress=false",
    "optim.lr=0.01",
    "optim.schedule=onecycle",
    "data.augment.crop_padding=0",
    "data.augment.hflip=false",
]

# Sentiment reviews for the text tests: a few words that decide the label among filler words.
POSITIVE_WORDS = ["great", "wonderful", "moving", "brilliant", "superb", "delightful"]
NEGATIVE_WORDS = ["awful", "boring", "dull", "terrible", "tedious", "clumsy"]
FILLER_WORDS = ["the", "film", "plot", "actors", "was", "and", "a", "story", "it", "scenes"]
TEXT_ARGS = [
    "data.text_column=review",
    "data.label_column=sentiment",
    "data.vocab_size=200",
    "data.max_length=48",
]
TEXT_ARGS += ["train.epochs=6", "train.batch_size=16", "train.progress=false", "optim.lr=0.005"]
BOW_ARGS = ["model.name=bow", "model.buckets=4096", "train.epochs=2", "optim.lr=0.02"]
TIMING_KEYS = ("train/samples_per_s", "train/tokens_per_s", "train/epoch_seconds", "elapsed_seconds")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (4 epochs of a small CNN on digits), trained once per session."""
    from bigmodel.cli import main

    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", *DIGITS_ARGS, f"--out={out}"]) == 0
    return out


@pytest.fixture(scope="session")
def bow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished text run (a bag of words, 2 epochs on ``write_reviews``' reviews, labels neg and pos),
    trained once per session."""
    from bigmodel.cli import main

    root = tmp_path_factory.mktemp("bow")
    write_reviews(root / "reviews.csv")
    out = root / "reviews"
    assert main(["train", f"data.path={root / 'reviews.csv'}", *TEXT_ARGS, *BOW_ARGS, f"--out={out}"]) == 0
    return out


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory, so default run directories (runs/...) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights of a run's newest step checkpoint."""
    from safetensors.torch import load_file

    from bigmodel.checkpoint import step_checkpoints

    return load_file(step_checkpoints(run / "checkpoints")[0].weights)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run the command line in this process: its exit code, stdout and stderr."""
    from bigmodel.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def digit_png(path: Path, index: int) -> tuple[Path, int]:
    """Save digit number ``index`` of scikit-learn's digits as a PNG; its path and its label."""
    from PIL import Image

    from bigmodel.data.images import load_digits

    x, y = load_digits()
    Image.fromarray(x[index, 0]).resize((32, 32)).save(path)  # any size: predict resizes
    return path, int(y[index])


def write_reviews(path: Path, n: int = 400, labels: tuple[str, str] = ("neg", "pos"), seed: int = 0) -> None:
    """A CSV of ``n`` reviews (columns review, sentiment), alternately negative and positive."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for i in range(n):
            good = i % 2 == 1
            words = rng.choices(FILLER_WORDS, k=rng.randint(4, 30)) + rng.choices(
                POSITIVE_WORDS if good else NEGATIVE_WORDS, k=2
            )
            rng.shuffle(words)
            writer.writerow([" ".join(words) + " <br /><br />", labels[good]])


def bigmodel(*args: str) -> subprocess.Popen:
    """``python -m bigmodel`` with these arguments, as a real process."""
    return subprocess.Popen(
        [sys.executable, "-m", "bigmodel", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoint(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until ``run`` has a checkpoint at ``step`` or later."""
    from bigmodel.checkpoint import step_checkpoints

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = step_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else []
        if found and int(found[0].tag.removeprefix("step-")) >= step:
            return
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-2000:]}"
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def untimed_metrics(run: Path) -> list[dict]:
    """A run's metrics.jsonl without the timings, which differ between otherwise identical runs."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Two runs ended with bit-identical weights and the same metrics."""
    wa, wb = last_weights(a), last_weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"
    assert untimed_metrics(a) == untimed_metrics(b)


# --- a real server, a real browser, and Python without torch ----------------------------------------


@contextlib.contextmanager
def served(app, token: str | None = None, lifespan: str = "on") -> Iterator:
    """``app`` (``bigmodel.deploy.serve.create_app``) on uvicorn in a thread, on 127.0.0.1 and a free port;
    an httpx client for it, sending ``token`` if any, once /ready answers 200 (or /health, without the
    lifespan that warms it up)."""
    import httpx
    import uvicorn

    from bigmodel.deploy.serve import bind, url_of

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = httpx.Client(
        base_url=url_of(sock), headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60
    )
    probe, deadline = "/ready" if lifespan == "on" else "/health", time.monotonic() + 60
    try:
        while not _answers(client, probe):
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.02)
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def _answers(client, path: str) -> bool:
    """``path`` answers 200 (False while the server is not listening yet)."""
    import httpx

    with contextlib.suppress(httpx.TransportError):
        return client.get(path).status_code == 200
    return False


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, its console (``get_log("browser")``) and network events
    (``get_log("performance")``) recorded."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: run `make test`, which installs chromium and chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(1280, 1400)
    yield driver
    driver.quit()


def console_problems(driver, allowed: str | None = None) -> list[str]:
    """The browser console's errors and warnings since the last call (those matching the regular
    expression ``allowed`` left out)."""
    entries = driver.get_log("browser")
    return [
        e["message"]
        for e in entries
        if e["level"] in ("SEVERE", "WARNING") and not (allowed and re.search(allowed, e["message"]))
    ]


def requested_urls(driver) -> list[str]:
    """Every URL the browser asked for since the last call (Chrome's Network.requestWillBeSent events)."""
    urls = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            urls.append(event["params"]["request"]["url"])
    return urls


def readme_snippet() -> str:
    """The README's Python lines that predict with onnxruntime, without torch or bigmodel."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    (snippet,) = [b for b in blocks if "import onnxruntime" in b]
    return snippet


@pytest.fixture(scope="session")
def no_torch_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with onnxruntime, tokenizers, Pillow and numpy, and no torch: its python.
    Made once per test session, the workers of ``pytest -n`` sharing it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # one directory for all of a session's workers
    where = root / "no-torch"
    python = where / "bin" / "python"
    with FileLock(str(root / "no-torch.lock")):
        if not (where / "installed").is_file():
            venv.create(where, with_pip=True, clear=True)
            packages = ["onnxruntime", "tokenizers", "pillow", "numpy"]
            install = [str(python), "-m", "pip", "install", "--quiet", *packages]
            subprocess.run(install, check=True, capture_output=True, timeout=600)
            (where / "installed").touch()
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    return python


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the tests' own (Debian's package, which `make test` installs): a new cluster
    in a temporary directory, listening on 127.0.0.1 only, trusting local connections, stopped at the end."""
    import pwd
    import shutil
    import socket
    import tempfile

    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    found = bindirs[-1] / "initdb" if bindirs else shutil.which("initdb")
    if not found:
        pytest.fail("PostgreSQL's initdb not found: run `make test`, which installs Debian's postgresql")
    bindir = Path(found).parent
    root = Path(tempfile.mkdtemp(prefix="bigmodel-postgres-"))  # under /tmp: the server's user can reach it
    as_server: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_server = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    pg_ctl = [*as_server, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_server, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
