"""``bigmodel serve``: real servers (uvicorn in a thread, on 127.0.0.1 and a free port) spoken to over
HTTP. The same answers as ``bigmodel predict`` on both backends, for texts and for images (base64 and
multipart); concurrent requests batched into one pass with the answers they get alone; every client
mistake a 4xx with a JSON message that names no file, after which the server still answers;
explanations; repeatable generation; the command line's start, one-line errors and Ctrl-C."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bigmodel import api
from bigmodel.cli import main
from bigmodel.config import load_config
from bigmodel.deploy.backends import length_buckets
from bigmodel.deploy.serve import ServeSettings, create_app
from bigmodel.errors import UserError
from conftest import TEXT_ARGS, digit_png, run_cli, served, write_reviews

TEXTS = [
    "the film was great and the plot wonderful",
    "boring dull actors and a tedious story",
    "brilliant",
    "a review over\ntwo lines <br /> clumsy and awful",
    "the story it scenes actors terrible " * 10,  # longer than data.max_length: truncated alike
]
GPT_ARGS = [
    "data.name=rotten-tomatoes",
    "data.objective=clm",
    "data.tokenizer=bpe",
    "data.limit=300",
    "data.max_length=24",
    "data.vocab_size=300",
    "model.name=gpt",
    "model.hidden_size=16",
    "model.layers=1",
    "model.heads=2",
    "train.epochs=1",
    "train.batch_size=32",
    "train.progress=false",
    "train.monitor=val/loss",
]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, digits_run: Path) -> dict[str, Path]:
    """A text run (bag of words on reviews), a copy of the digits run (the ONNX export lands in it, not
    in the session's run) and a tiny GPT."""
    root = tmp_path_factory.mktemp("serve")
    write_reviews(root / "reviews.csv")
    text = root / "bow"
    settings = ["model.name=bow", "model.buckets=4096", "train.epochs=2", "optim.lr=0.02"]
    assert main(["train", f"data.path={root / 'reviews.csv'}", *TEXT_ARGS, *settings, f"--out={text}"]) == 0
    shutil.copytree(digits_run, root / "digits")
    api.train(load_config(None, GPT_ARGS), out=root / "gpt")
    return {"text": text, "image": root / "digits", "gpt": root / "gpt"}


@pytest.fixture(scope="module")
def images(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    return [digit_png(folder / f"{i}.png", i)[0] for i in range(5)]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def assert_same_answers(answers: list, expected: list) -> None:
    """Served answers against ``api.predict``'s (or other served answers)."""
    assert len(answers) == len(expected)
    for got, want in zip(answers, expected, strict=True):
        want = (
            [{"label": t["class"], "score": t["probability"]} for t in want["top"]] if "top" in want else want
        )
        assert [t["label"] for t in got] == [t["label"] for t in want]
        assert [t["score"] for t in got] == pytest.approx([t["score"] for t in want], abs=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_answers_as_bigmodel_predict_does(runs, images, backend: str):
    text_app = create_app(runs["text"], backend, ServeSettings(max_batch=2))  # several passes per request
    with served(text_app) as client:
        info = client.get("/info").json()
        assert info["kind"] == "text" and info["classes"] == ["neg", "pos"] and info["backend"] == backend
        assert (info["exporter"] is not None) == (backend == "onnx")
        assert info["batching"]["length_bucketing"] and 0 < info["metrics"]["accuracy"] <= 1
        answer = client.post("/predict", json={"inputs": TEXTS, "top_k": 2})
        assert answer.status_code == 200, answer.text
        assert_same_answers(answer.json(), api.predict(runs["text"], TEXTS, top_k=2))
        answer = client.post("/predict", files=[("files", ("a.png", images[0].read_bytes()))])
        assert answer.status_code == 422 and "send texts as JSON" in answer.json()["detail"]
    expected = api.predict(runs["image"], [str(p) for p in images], top_k=3)
    with served(create_app(runs["image"], backend)) as client:
        assert client.get("/info").json()["input"] == {"channels": 1, "height": 8, "width": 8}
        answer = client.post("/predict", json={"inputs": [b64(p) for p in images]})
        assert answer.status_code == 200, answer.text
        assert_same_answers(answer.json(), expected)
        data_url = f"data:image/png;base64,{b64(images[0])}"
        assert_same_answers(client.post("/predict", json={"inputs": [data_url]}).json(), expected[:1])
        upload = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
        answer = client.post("/predict", files=upload, data={"top_k": "3"})
        assert answer.status_code == 200, answer.text
        assert_same_answers(answer.json(), expected)
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"ready": True}
        assert "/predict" in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200
    if backend == "onnx":
        assert (runs["image"] / "export" / "export.json").is_file()  # exported first, as it had none


def test_concurrent_requests_share_passes_and_get_their_own_answers(runs):
    texts = [TEXTS[i % len(TEXTS)] + " great" * (i % 7) for i in range(32)]  # lengths vary: several buckets
    with served(create_app(runs["text"])) as client:  # one at a time: no pass holds two
        alone = [client.post("/predict", json={"inputs": [t], "top_k": 2}).json()[0] for t in texts]
        assert 'bigmodel_batch_size_bucket{le="1.0"} 32.0' in client.get("/metrics").text
    app = create_app(runs["text"], "torch", ServeSettings(max_batch=8, max_wait_ms=200))
    with served(app) as client:

        def ask(text: str) -> list:
            answer = client.post("/predict", json={"inputs": [text], "top_k": 2})
            assert answer.status_code == 200, answer.text
            return answer.json()[0]

        for _ in range(3):  # the first burst is enough unless the machine stalls for the whole wait
            with ThreadPoolExecutor(32) as pool:
                together = list(pool.map(ask, texts))
            assert_same_answers(together, alone)
            metrics = client.get("/metrics").text
            passes = float(re.search(r"^bigmodel_batch_size_count (\S+)", metrics, re.M).group(1))
            single = float(
                re.search(r'^bigmodel_batch_size_bucket\{le="1.0"\} (\S+)', metrics, re.M).group(1)
            )
            if single < passes:
                break
        assert single < passes, "no forward pass held more than one input"
        assert 'bigmodel_requests_total{route="/predict",status="200"}' in metrics
        assert "bigmodel_request_seconds_bucket" in metrics


@pytest.mark.parametrize("kind", ["text", "image"])
def test_a_bad_input_fails_its_own_request_not_the_pass_it_shares(runs, images, kind: str):
    good = [{"inputs": [t]} for t in TEXTS] if kind == "text" else [{"inputs": [b64(p)]} for p in images]
    bad = {"inputs": ["   "]} if kind == "text" else {"inputs": [base64.b64encode(b"not a png").decode()]}
    bodies = [body for pair in zip(good, [bad] * len(good), strict=True) for body in pair]
    app = create_app(runs[kind], "torch", ServeSettings(max_batch=64, max_wait_ms=300))
    with served(app) as client:
        with ThreadPoolExecutor(len(bodies)) as pool:  # gathered into shared passes by the wait
            statuses = list(pool.map(lambda body: client.post("/predict", json=body).status_code, bodies))
        metrics = client.get("/metrics").text
    assert statuses == [200, 422] * len(good)
    passes = float(re.search(r"^bigmodel_batch_size_count (\S+)", metrics, re.M).group(1))
    assert passes < len(good), "the good requests never shared a pass with a bad one"


def test_length_buckets_sort_texts_and_split_long_from_short():
    lengths = [3, 50, 4, 7, 100, 5, 6, 3]
    assert length_buckets(lengths, max_batch=64) == [[0, 7, 2, 5, 6], [3], [1, 4]]
    assert length_buckets(lengths, max_batch=2) == [[0, 7], [2, 5], [6, 3], [1, 4]]
    assert length_buckets([1] * 5, max_batch=2) == [[0, 1], [2, 3], [4]]  # images: in order


def png_declaring(width: int, height: int) -> bytes:
    """A few bytes of PNG whose header declares ``width`` x ``height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def png_of(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_client_mistakes_answer_4xx_in_json_naming_no_file(runs, images):
    settings = ServeSettings(max_inputs=4, max_body_mb=0.05, max_pixels=64 * 64, token=TOKEN)
    app = create_app(runs["image"], "torch", settings)
    good = b64(images[0])

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what streams in
        yield b'{"inputs": ["'
        for _ in range(8):
            yield b"A" * 16384
        yield b'"]}'

    with served(app, TOKEN) as client:
        anonymous = httpx.Client(base_url=client.base_url, timeout=60)
        wrong = httpx.Client(base_url=client.base_url, headers={"Authorization": "Bearer nope"}, timeout=60)
        cases = [
            (401, anonymous.get("/info")),
            (401, anonymous.post("/predict", json={"inputs": [good]})),
            (401, wrong.get("/metrics")),
            (401, wrong.get("/openapi.json")),
            (413, client.post("/predict", json={"inputs": ["A" * 100_000]})),
            (413, client.post("/predict", content=chunks(), headers={"content-type": "application/json"})),
            (413, client.post("/predict", json={"inputs": [good] * 5})),
            (413, client.post("/predict", files=[("files", ("a.png", images[0].read_bytes()))] * 5)),
            (
                422,
                client.post(
                    "/predict", content=b'{"inputs": [', headers={"content-type": "application/json"}
                ),
            ),
            (422, client.post("/predict", json={"inputs": "not a list"})),
            (422, client.post("/predict", json={"inputs": [1, 2]})),
            (422, client.post("/predict", json={"inputs": [good], "top_k": 0})),
            (422, client.post("/predict", json={"inputs": [good], "topk": 2})),
            (422, client.post("/predict", json={"inputs": []})),
            (422, client.post("/predict", json={"inputs": ["not base64!"]})),
            (
                422,
                client.post("/predict", json={"inputs": [good, base64.b64encode(b"not an image").decode()]}),
            ),
            (413, client.post("/predict", json={"inputs": [png_of(100, 100)]})),
            (
                413,
                client.post(
                    "/predict", json={"inputs": [base64.b64encode(png_declaring(30000, 30000)).decode()]}
                ),
            ),
            (413, client.post("/explain", json={"inputs": [good] * 5})),
            (422, client.post("/explain", json={"inputs": [good], "steps": 100_000})),
            (422, client.post("/explain", json={"inputs": [good], "target": "11"})),
            (422, client.post("/generate", json={"prompt": "the"})),
            (404, client.get("/nothing/here")),
            (405, client.get("/predict")),
        ]
        for number, (status, answer) in enumerate(cases):
            assert answer.status_code == status, (number, answer.text)
            detail = answer.json()["detail"]
            assert isinstance(detail, str) and detail, (number, answer.text)
            assert str(runs["image"].parent) not in answer.text and "/tmp" not in answer.text, answer.text
        assert "cannot read image #2" in cases[15][1].json()["detail"]  # which input, in the request
        assert cases[0][1].headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/health").json() == {"status": "ok"}  # no token needed, and still up
        answer = client.post("/predict", json={"inputs": [good]})
        assert answer.status_code == 200, answer.text
        metrics = client.get("/metrics").text
        assert re.search(
            r'^bigmodel_errors_total\{kind="client",route="/predict"\} 1[0-9]\.0$', metrics, re.M
        )
        assert 'bigmodel_requests_total{route="/info",status="401"} 1.0' in metrics
        anonymous.close()
        wrong.close()


def test_a_fault_of_the_server_is_a_generic_500_and_it_goes_on(runs, tmp_path: Path, caplog):
    """The run's tokenizer deleted under a running server: explain, which reads it afresh, fails; predict,
    which loaded it at the start, does not."""
    run = shutil.copytree(runs["text"], tmp_path / "run")
    with served(create_app(run)) as client:
        shutil.rmtree(run / "tokenizer")
        answer = client.post("/explain", json={"inputs": ["great"], "steps": 4})
        assert answer.status_code == 500
        assert answer.json() == {"detail": "internal server error; the server's log has the details"}
        assert "unexpected error answering POST /explain" in caplog.text
        assert client.post("/predict", json={"inputs": ["great"]}).status_code == 200
        assert client.get("/health").status_code == 200
        assert 'bigmodel_errors_total{kind="server",route="/explain"} 1.0' in client.get("/metrics").text


def test_ready_waits_for_the_warm_up(runs):
    """Without the lifespan that runs the warm-up, the server is alive but never ready."""
    with served(create_app(runs["image"]), lifespan="off") as client:
        assert client.get("/ready").status_code == 503
        assert client.get("/ready").json()["detail"] == "warming up"
        answer = client.post("/predict", json={"inputs": [png_of(8, 8)]})
        assert answer.status_code == 503 and "not running" in answer.json()["detail"]


def test_explain_gives_token_scores_and_heat_maps(runs, images):
    with served(create_app(runs["text"], "onnx")) as client:  # explanations use PyTorch whatever the backend
        answer = client.post("/explain", json={"inputs": ["a great and wonderful film"], "steps": 16})
        assert answer.status_code == 200, answer.text
        (explained,) = answer.json()
        tokens = [t["token"] for t in explained["tokens"]]
        assert tokens[0] == "[CLS]" and "wonderful" in tokens
        scores = {t["token"]: t["score"] for t in explained["tokens"]}
        assert explained["label"] == explained["target"] == "pos" and scores["wonderful"] > 0
        answer = client.post(
            "/explain", json={"inputs": ["boring", "great"], "target": "neg", "method": "saliency"}
        )
        assert [e["target"] for e in answer.json()] == ["neg", "neg"]
    with served(create_app(runs["image"])) as client:
        answer = client.post("/explain", json={"inputs": [b64(images[3])], "steps": 8})
        assert answer.status_code == 200, answer.text
        png = base64.b64decode(answer.json()[0]["heatmap_png"])
        assert Image.open(io.BytesIO(png)).format == "PNG"


def test_generate_repeats_for_a_seed_as_api_generate(runs):
    with pytest.raises(UserError, match="--backend onnx serves classifiers"):
        create_app(runs["gpt"], "onnx")
    with served(create_app(runs["gpt"], generate=api.generate)) as client:
        info = client.get("/info").json()
        assert info["kind"] == "clm" and info["routes"] == ["/generate"]
        body = {"prompt": "the movie", "max_new_tokens": 8, "temperature": 0.9, "top_k": 20, "top_p": 0.95}
        first = client.post("/generate", json={**body, "seed": 7})
        assert first.status_code == 200, first.text
        assert client.post("/generate", json={**body, "seed": 7}).json() == first.json()
        expected = api.generate(runs["gpt"], "the movie", 8, 0.9, 20, 0.95, seed=7)
        assert first.json()["text"] == expected and expected.startswith("the movie")
        for status, answer in [
            (422, client.post("/predict", json={"inputs": ["the movie"]})),
            (422, client.post("/explain", json={"inputs": ["the movie"]})),
            (422, client.post("/generate", json={"prompt": "the", "max_new_tokens": 24})),
            (422, client.post("/generate", json={"prompt": "", "seed": 1})),
            (422, client.post("/generate", json={"prompt": "the", "temperature": 0.001})),
        ]:
            assert answer.status_code == status, answer.text
            assert str(runs["gpt"]) not in answer.text
        assert "/generate" in client.post("/predict", json={"inputs": ["x"]}).json()["detail"]


def test_serve_starts_prints_its_url_and_stops_on_ctrl_c(runs):
    env = {**os.environ, "BIGMODEL_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bigmodel", "serve", str(runs["image"]), "--port", "0", "--max-wait-ms", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # printed once ready
        assert line.startswith(f"serving {runs['image']} at http://127.0.0.1:"), proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 401  # the token from the environment
        ready = httpx.get(f"{url}/ready", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert ready.status_code == 200
        assert json.loads(ready.text) == {"ready": True}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err


def test_serve_mistakes_are_one_line_errors_before_the_port_is_bound(runs, tmp_path: Path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for argv, message in [
            ([str(tmp_path)], "is not a bigmodel run directory"),
            ([str(runs["image"]), "--backend", "tensorflow"], "--backend tensorflow is not known"),
            ([str(runs["image"]), "--max-batch", "0"], "--max-batch must be at least 1"),
            ([str(runs["image"])], f"cannot listen on 127.0.0.1:{port}"),  # the model loads first, alone
        ]:
            code, out, err = run_cli(capsys, "serve", *argv, "--port", port)
            assert code == 2 and err.startswith("error: ") and message in err, err
            assert err.count("\n") == 1 and out == ""
