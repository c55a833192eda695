"""HTTP throughput and latency of a run's classifier behind four servers, side by side in one run: a naive
FastAPI endpoint with one forward pass per request (``benchmarks.serve_naive``), ``bigmodel serve
--backend torch``, ``bigmodel serve --backend onnx``, and LitServe with dynamic batching
(``benchmarks.serve_litserve``; ``pip install litserve``).

    python -m benchmarks.serve_load RUN [--servers naive,torch,onnx,litserve] [--concurrency 1,8,32,128]
        [--requests 2000] [--seconds 60] [--texts run|imdb|rotten-tomatoes] [--threads 2] [--out FILE.json]

Each server runs in its own process on 127.0.0.1 (a free port), one at a time, on the same run, with the
same threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``RAYON_NUM_THREADS`` for the tokenizer), and
is warmed up (``--warmup`` requests) before it is measured. The load generator is a bounded asyncio +
aiohttp client: at each concurrency C, C workers send requests back to back over keep-alive connections
until ``--requests`` have been sent or ``--seconds`` have passed, whichever comes first, then wait for
the last answers. Every request is ``POST /predict`` with one input, ``{"inputs": [x], "top_k": 3}``:
the run's test examples in turn, the same sequence for every server (texts as they are, from the run's
test split or, with ``--texts``, another named data set's; images as base64 PNGs of the test images).

Reported per server and concurrency: answers 200 per second over the level's wall time, p50 and p99 of
their latency, errors (any other status, or no answer), and for bigmodel the mean inputs per forward
pass (from its /metrics). The bare call is the work bigmodel serve wraps, timed in this process before
any server starts: one input encoded by ``backends.Encoder`` and one forward pass through the torch or
onnx backend (which exports the run to RUN/export first where it has no export, as ``bigmodel serve
--backend onnx`` does); its p50 against bigmodel's p50 at concurrency 1 is what the server adds to a lone
request. The client runs on the same cores as the server: on a small machine its own CPU time is part of
every figure, alike for every server; the table's last column is how many cores it kept busy (its CPU
seconds over the level's wall time): near the machine's count, the client is the bottleneck.

Where they differ: bigmodel serve (torch) runs the model in fp32 in one inference thread and batches
whatever is queued when the model is free (``--max-batch``, ``--max-wait-ms``), texts cut into passes by
length; the ONNX backend runs onnxruntime with its default intra-op threads (the machine's cores; it does
not read ``OMP_NUM_THREADS``); LitServe batches up to ``--litserve-batch-size`` requests within
``--litserve-timeout`` in a separate inference process, texts padded to the longest; the naive endpoint
runs each request's forward pass in FastAPI's thread pool.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import importlib.util
import io
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SERVERS = {
    "naive": "naive FastAPI",
    "torch": "bigmodel torch",
    "onnx": "bigmodel onnx",
    "litserve": "LitServe",
}
Make = Callable[[int], tuple[bytes, dict[str, str]]]  # request number → (body, headers)
JSON = {"content-type": "application/json"}


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=about)
    p.add_argument("run", help="a finished classifier run")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"of {','.join(SERVERS)} (default: all)")
    p.add_argument("--concurrency", default="1,8,32,128", help="levels (default: 1,8,32,128)")
    p.add_argument("--requests", type=int, default=2000, help="per level, at most (default: 2000)")
    p.add_argument("--seconds", type=float, default=60.0, help="per level, at most (default: 60)")
    p.add_argument("--warmup", type=int, default=200, help="requests before the first level (default: 200)")
    p.add_argument("--texts", default="run", help="run (its test split), imdb or rotten-tomatoes")
    p.add_argument("--inputs", type=int, default=1000, help="test examples to cycle through (default: 1000)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every server (default: 2)")
    p.add_argument(
        "--bare-repeats", type=int, default=300, help="timed bare calls per backend (default: 300)"
    )
    p.add_argument("--max-batch", type=int, default=64, help="bigmodel --max-batch (default: 64)")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="bigmodel --max-wait-ms (default: 0)")
    p.add_argument(
        "--litserve-batch-size", type=int, default=64, help="LitServe max_batch_size (default: 64)"
    )
    p.add_argument(
        "--litserve-timeout", type=float, default=0.005, help="LitServe batch_timeout, s (default: 0.005)"
    )
    p.add_argument("--naive-handler", choices=["thread", "loop"], default="thread", help="see serve_naive")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds (default: 60)")
    p.add_argument("--out", help="also write the results here as JSON")
    args = p.parse_args()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not servers or any(s not in SERVERS for s in servers):
        p.error(f"--servers takes names from {','.join(SERVERS)}")
    if not levels or min(levels) < 1 or args.requests < 1 or args.seconds <= 0 or args.threads < 1:
        p.error("--concurrency levels, --requests, --seconds and --threads must be positive")
    if "litserve" in servers and importlib.util.find_spec("litserve") is None:
        p.error("LitServe is not installed: pip install litserve (or leave litserve out of --servers)")
    result = measure(args, servers, levels)
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def measure(args: argparse.Namespace, servers: list[str], levels: list[int]) -> dict[str, Any]:
    import torch

    from bigmodel.run import RunDir

    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    inputs, source = test_inputs(run, args.texts, args.inputs)
    backends = ["torch"] * bool(set(servers) - {"onnx"}) + ["onnx"] * ("onnx" in servers)
    bare, tokens = bare_calls(run, inputs, backends, args.bare_repeats)
    bodies = [json.dumps({"inputs": [x], "top_k": 3}).encode() for x in inputs]

    def make(i: int) -> tuple[bytes, dict[str, str]]:
        return bodies[i % len(bodies)], JSON

    def check(i: int, response: Any) -> bool:  # a 200 answers one input with its top classes
        if response.status_code != 200:
            return True
        answer = response.json()
        return isinstance(answer, list) and len(answer) == 1 and bool(answer[0]) and "label" in answer[0][0]

    rows = []
    for name in servers:
        argv, ready = server_command(name, args)
        with ServerProcess(name, argv, ready, args.threads) as server:
            print(f"{SERVERS[name]}: ready at {server.url} (pid {server.pid}); warming up", flush=True)
            if args.warmup:
                asyncio.run(drive(server.url + "/predict", make, args.warmup, min(8, max(levels)), 600, 60))
            for level in levels:
                url = server.url + "/predict"
                before, cpu = server.batch_counts(), time.process_time()
                outcomes, wall = asyncio.run(
                    drive(url, make, args.requests, level, args.seconds, args.timeout, check)
                )
                row = summarize(name, level, outcomes, wall, before, server.batch_counts())
                row["client_cpu"] = (time.process_time() - cpu) / wall  # cores the load generator kept busy
                print(
                    f"  concurrency {level:>4}: {row['requests_per_s']:>8.1f} req/s, p50 "
                    f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['errors']} errors",
                    flush=True,
                )
                rows.append(row)
    return {
        "run": str(run.root),
        "model": run.config.model.name,
        "kind": run.info.kind,
        "inputs": {"source": source, "count": len(inputs), "median_tokens": tokens},
        "servers": [SERVERS[s] for s in servers],
        "concurrency": levels,
        "requests_per_level": args.requests,
        "seconds_per_level": args.seconds,
        "warmup": args.warmup,
        "threads": args.threads,
        "settings": {
            "naive FastAPI": {"handler": args.naive_handler},
            "bigmodel": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms},
            "LitServe": {"max_batch_size": args.litserve_batch_size, "batch_timeout": args.litserve_timeout},
        },
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "bare": bare,
        "results": rows,
    }


# --- inputs and the bare call ---------------------------------------------------------------------------


def test_inputs(run: Any, texts: str, limit: int) -> tuple[list[str], str]:
    """The first ``limit`` examples of a test split as a client sends them: texts, or base64 PNGs of the
    images (each at the run's size, so that decoding gives back the same pixels). ``texts``: ``run`` for
    the run's own test split, or a named text data set's (``imdb``, ``rotten-tomatoes``)."""
    if run.info.kind == "text":
        from bigmodel.data.text import read_table, split_indices

        cfg = run.config.data
        if texts != "run":
            cfg = cfg.model_copy(update={"name": texts, "path": None})
        table = read_table(cfg)
        test = split_indices(table, cfg.split_seed)[2][:limit]
        return [table.texts[i] for i in test], f"{cfg.name or cfg.path} test split"
    if texts != "run":
        raise SystemExit(f"--texts {texts}: this is an image run; its inputs are its own test images")
    from PIL import Image

    from bigmodel.evaluation.scoring import run_data

    pixels = run_data(run.config, run).test.features["pixels"][:limit].numpy()
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buffer, "PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded, f"{run.config.data.name or run.config.data.path} test split, PNG in base64"


def bare_calls(
    run: Any, inputs: list[str], backends: list[str], repeats: int
) -> tuple[dict[str, dict[str, float]], float | None]:
    """p50 and p99 (ms) of what bigmodel serve runs for one lone input, per backend, in this process: the
    input encoded, one forward pass; and the inputs' median length in tokens (text runs)."""
    from bigmodel.deploy.backends import Encoder, make_backend

    encoder = Encoder(run, max_pixels=4096 * 4096)
    tokens = statistics.median(len(r) for r in encoder.encode(inputs)) if encoder.text else None
    bare = {}
    for name in backends:
        backend = make_backend(run, name)
        times = []
        for i in range(20 + repeats):
            start = time.perf_counter()
            encoder.forward(backend, encoder.encode([inputs[i % len(inputs)]]), 1)
            if i >= 20:
                times.append(1000 * (time.perf_counter() - start))
        bare[name] = {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99))}
        bare[name]["repeats"] = repeats
    return bare, tokens


# --- the servers ----------------------------------------------------------------------------------------


def server_command(name: str, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """A server's command line (the port as ``{port}``) and the path that answers 200 once it is ready."""
    py, threads = sys.executable, str(args.threads)
    if name == "naive":
        argv = [py, "-m", "benchmarks.serve_naive", args.run, "--threads", threads]
        return [*argv, "--handler", args.naive_handler, "--port", "{port}"], "/health"
    if name == "litserve":
        argv = [py, "-m", "benchmarks.serve_litserve", args.run, "--threads", threads, "--port", "{port}"]
        batching = [
            "--max-batch-size",
            str(args.litserve_batch_size),
            "--batch-timeout",
            str(args.litserve_timeout),
        ]
        return [*argv, *batching], "/health"
    argv = [py, "-m", "bigmodel", "serve", args.run, "--backend", name, "--port", "{port}"]
    batching = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    return [*argv, *batching, *extra], "/ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A server in a process group of its own on 127.0.0.1: started, ready (``ready`` answers 200), and
    stopped (SIGTERM to the group, then SIGKILL) on leaving the ``with``. Its output goes to a log file,
    whose end is shown if it fails to start."""

    name: str
    argv: list[str]
    ready: str
    threads: int
    headers: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 600.0

    def __enter__(self) -> ServerProcess:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            env[var] = str(self.threads)
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"serve-{self.name}-", suffix=".log")
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.pid = self.proc.pid
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"{self.name} exited ({self.proc.returncode}) before it was ready:\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + self.ready, headers=self.headers, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} was not ready within {self.start_timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def rss_mib(self) -> float:
        """The server process's resident memory now (VmRSS)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def batch_counts(self) -> tuple[float, float] | None:
        """bigmodel's inputs and forward passes so far (its /metrics); None for other servers."""
        if self.ready != "/ready":
            return None
        import httpx

        text = httpx.get(self.url + "/metrics", headers=self.headers, timeout=30).text
        found = dict(re.findall(r"^bigmodel_batch_size_(sum|count) (\S+)$", text, re.M))
        return float(found["sum"]), float(found["count"])


# --- the client -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    status: int | None  # None: no answer
    error: str | None  # the exception's name where there was no answer
    seconds: float
    valid: bool = True  # the answer passed the caller's check (if any)


@dataclass
class Answer:
    """A response as the checks read it: its status and its JSON."""

    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def drive(
    url: str,
    make: Make,
    count: int,
    concurrency: int,
    seconds: float,
    timeout: float,
    check: Callable[[int, Any], bool] | None = None,
) -> tuple[list[Outcome], float]:
    """Send requests 0, 1, ... (``make(i)`` gives each body and headers) from ``concurrency`` workers until
    ``count`` are sent or ``seconds`` have passed; every outcome, and the wall time to the last answer.
    ``check(i, answer)``, if given, judges each answer. The client is aiohttp's: on these shared cores
    the load generator's own CPU time is taken from the server, and httpx's asyncio client spent about
    four times as much per request."""
    import aiohttp

    # This process holds torch and the run (some 300,000 objects); a full collection of them paused every
    # request in flight for about 200 ms, which would read as the server's latency.
    gc.collect()
    gc.freeze()
    outcomes: list[Outcome] = []
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    limits = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal sent
            while sent < count and time.perf_counter() < deadline:
                i, sent = sent, sent + 1
                body, headers = make(i)
                began = time.perf_counter()
                try:
                    async with client.post(url, data=body, headers=headers) as response:
                        answer = Answer(response.status, await response.read())
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcomes.append(Outcome(i, None, type(exc).__name__, time.perf_counter() - began))
                    continue
                elapsed = time.perf_counter() - began
                valid = check is None or check(i, answer)
                outcomes.append(Outcome(i, answer.status_code, None, elapsed, valid))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.perf_counter() - start


def summarize(
    name: str,
    level: int,
    outcomes: list[Outcome],
    wall: float,
    before: tuple[float, float] | None,
    after: tuple[float, float] | None,
) -> dict[str, Any]:
    ok = [1000 * o.seconds for o in outcomes if o.status == 200 and o.valid]
    kinds = Counter(
        o.error or (f"HTTP {o.status}" if o.status != 200 else "malformed answer")
        for o in outcomes
        if o.status != 200 or not o.valid
    )
    batches = after[1] - before[1] if before and after else 0
    return {
        "server": SERVERS[name],
        "concurrency": level,
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": len(outcomes) - len(ok),
        "error_kinds": dict(kinds),
        "seconds": wall,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "p50_ms": statistics.median(ok) if ok else float("nan"),
        "p99_ms": float(np.percentile(ok, 99)) if ok else float("nan"),
        "mean_batch": (after[0] - before[0]) / batches if batches else None,
    }


def machine() -> dict[str, Any]:
    versions = {}
    for package in (
        "torch",
        "onnxruntime",
        "fastapi",
        "uvicorn",
        "aiohttp",
        "litserve",
        "uvloop",
        "httptools",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "versions": versions,
    }


def print_table(result: dict[str, Any]) -> None:
    inputs = result["inputs"]
    length = f", median {inputs['median_tokens']:.0f} tokens" if inputs["median_tokens"] else ""
    source = f"{inputs['count']:,} inputs from the {inputs['source']}{length}"
    print(f"\n{result['model']} ({result['run']}): {source}")
    load = result["machine"]["load_average"]
    print(
        f"{result['threads']} threads per server, {result['machine']['cores']} cores, load average {load:.2f}"
    )
    bare = ", ".join(f"{b} {v['p50_ms']:.2f} ms (p99 {v['p99_ms']:.2f})" for b, v in result["bare"].items())
    print(f"bare call (encode one input + one forward pass, in process), p50: {bare}")
    naive = {
        r["concurrency"]: r["requests_per_s"] for r in result["results"] if r["server"] == "naive FastAPI"
    }
    print(
        f"\n{'server':<16}{'conc.':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'vs naive':>10}{'batch':>7}{'client CPU':>12}"
    )
    for r in result["results"]:
        base = naive.get(r["concurrency"])
        ratio = f"{r['requests_per_s'] / base:>9.2f}x" if base else f"{'':>10}"
        batch = f"{r['mean_batch']:>7.1f}" if r["mean_batch"] is not None else f"{'':>7}"
        print(
            f"{r['server']:<16}{r['concurrency']:>6}{r['requests_per_s']:>9.1f}{r['p50_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['errors']:>8}{ratio}{batch}{r['client_cpu']:>12.2f}"
        )
    lone = {r["server"]: r["p50_ms"] for r in result["results"] if r["concurrency"] == 1}
    for backend, v in result["bare"].items():
        p50 = lone.get(f"bigmodel {backend}")
        if p50 is not None:
            added = p50 - v["p50_ms"]
            print(
                f"concurrency 1, bigmodel {backend}: p50 {p50:.2f} ms, {added:+.2f} ms against the bare call"
            )


if __name__ == "__main__":
    raise SystemExit(main())
