"""A bounded soak of ``bigmodel serve``: many requests at high concurrency on 127.0.0.1, a tenth of them
malformed or unauthorised, then a check that every answer was the right one and that the server's memory
did not grow.

    python -m benchmarks.serve_soak RUN [--requests 20000] [--concurrency 64] [--bad 0.1] [--seed 0]
        [--warmup 2000] [--backend torch|onnx] [--threads 2] [--seconds 1800] [--out FILE.json]

The server is started as a subprocess with ``--token`` (a random one) and ``--max-body-mb`` (1 MB). The
mix is fixed by ``--seed``: exactly ``--bad`` of the requests, in shuffled places, are malformed or
unauthorised, the same number of each kind: bad JSON (cut off, not JSON, empty, a trailing comma,
invalid UTF-8), wrong types (a string for the list, numbers for texts, a top_k that is a word or 0, a
misspelt field, a bare list), a missing token, a wrong token (or scheme), an empty input (``""``,
blanks, no inputs at all), too many inputs (the server's ``--max-inputs`` + 1), a body 10 % over the
limit, and an undecodable image (random bytes in base64 or as a multipart upload, a PNG cut short, not
base64, a decompression bomb's header; on a text run: an image upload, which a text run refuses). The
others are good:
one to three test inputs with a ``top_k`` of 1 to 3 and the right token. A warm-up of the same mix
(another seed) runs first; then the server's RSS (``VmRSS`` of /proc/PID/status) is read, and read again
after the last answer, and every half second in between for the peak.

Counted: answers by status class, each kind's statuses, 5xx, dropped connections (no answer: a reset,
a closed connection, a timeout), malformed requests not answered 4xx, good ones not answered 200 with one
list of ``top_k`` classes per input, and the tracebacks in the server's log. The load generator stops by
itself: after ``--requests``, or ``--seconds`` for the soak (then it says how many it sent). Exit status 1
if there was any 5xx, drop, wrong answer, or RSS growth of ``--max-growth`` (10 %) or more; else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import random
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.serve_load import ServerProcess, drive, machine, test_inputs

KINDS = (
    "bad_json",
    "wrong_types",
    "missing_token",
    "wrong_token",
    "empty_input",
    "too_many_inputs",
    "body_too_large",
    "undecodable_image",
)
BOUNDARY = "bigmodel-soak-boundary"
BAD_NOT_4XX = "malformed not answered 4xx"
GOOD_NOT_200 = "good not answered 200 with a well-formed answer"


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_soak", description=about)
    p.add_argument("run", help="a finished classifier run")
    p.add_argument("--requests", type=int, default=20_000, help="requests in the soak (default: 20000)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: 64)")
    p.add_argument("--bad", type=float, default=0.1, help="fraction malformed or unauthorised (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="fixes the mix (default: 0)")
    p.add_argument("--warmup", type=int, default=2000, help="requests before the first RSS (default: 2000)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--threads", type=int, default=2, help="the server's intra-op threads (default: 2)")
    p.add_argument("--seconds", type=float, default=1800.0, help="the soak stops sending after this long")
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds (default: 60)")
    p.add_argument("--max-growth", type=float, default=0.10, help="RSS growth that fails (default: 0.10)")
    p.add_argument("--inputs", type=int, default=1000, help="test examples to draw from (default: 1000)")
    p.add_argument("--max-body-mb", type=float, default=1.0, help="the server's body limit (default: 1)")
    p.add_argument("--out", help="also write the summary here as JSON")
    args = p.parse_args()
    if args.requests < 1 or args.concurrency < 1 or not 0 <= args.bad <= 1 or args.warmup < 0:
        p.error("--requests and --concurrency must be positive, --bad between 0 and 1, --warmup 0 or more")
    result = soak(args)
    print_summary(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from bigmodel.run import RunDir

    run = RunDir(args.run)
    inputs, source = test_inputs(run, "run", args.inputs)
    token = secrets.token_urlsafe(24)
    auth = {"authorization": f"Bearer {token}"}
    argv = [sys.executable, "-m", "bigmodel", "serve", args.run, "--backend", args.backend]
    argv += ["--port", "{port}", "--token", token, "--max-body-mb", str(args.max_body_mb)]
    with ServerProcess("bigmodel serve", argv, "/ready", args.threads, headers=auth) as server:
        print(f"bigmodel serve ({args.backend}): ready at {server.url} (pid {server.pid})", flush=True)
        import httpx

        limits = httpx.get(server.url + "/info", headers=auth, timeout=30).json()["limits"]
        classes = len(run.info.classes)
        url = server.url + "/predict"
        text, body_limit = run.info.kind == "text", int(limits["max_body_mb"] * 2**20)
        warm = Mix(inputs, text, token, limits["max_inputs"], body_limit, classes, args.seed + 1)
        main_mix = Mix(inputs, text, token, limits["max_inputs"], body_limit, classes, args.seed)
        warm_plan = warm.plan(args.warmup, args.bad)
        plan = main_mix.plan(args.requests, args.bad)
        if args.warmup:
            print(f"warm-up: {args.warmup:,} requests at concurrency {args.concurrency}", flush=True)
            asyncio.run(drive(url, warm.maker(warm_plan), args.warmup, args.concurrency, args.seconds, 60))
        rss_warm = server.rss_mib()
        print(f"soak: {args.requests:,} requests at concurrency {args.concurrency}", flush=True)
        outcomes, wall, rss_peak = asyncio.run(
            sampled(
                server,
                drive(
                    url,
                    main_mix.maker(plan),
                    args.requests,
                    args.concurrency,
                    args.seconds,
                    args.timeout,
                    main_mix.checker(plan),
                ),
            )
        )
        rss_end = server.rss_mib()
        alive = server.proc.poll() is None
        try:
            health = httpx.get(server.url + "/health", timeout=10).status_code
        except httpx.HTTPError as exc:
            health = type(exc).__name__
        log = server.tail(10**7)
    return judge(
        args, run, source, plan, main_mix, outcomes, wall, (rss_warm, rss_end, rss_peak), alive, health, log
    )


async def sampled(server: ServerProcess, work: Any) -> tuple[list[Any], float, float]:
    """``work``'s outcomes and wall time, and the server's peak RSS (MiB) while it ran."""
    peak = server.rss_mib()
    task = asyncio.ensure_future(work)
    while not task.done():
        peak = max(peak, server.rss_mib())
        await asyncio.wait([task], timeout=0.5)
    outcomes, wall = task.result()
    return outcomes, wall, max(peak, server.rss_mib())


class Mix:
    """The requests of a soak: which kind each is (``plan``), its body and headers (``maker``), its
    expected status, and a judge of its answer (``checker``). Each request's variant is drawn from a
    generator seeded by the seed and its number, so the mix does not depend on the order of sending."""

    def __init__(
        self,
        inputs: list[str],
        text: bool,
        token: str,
        max_inputs: int,
        max_body: int,
        classes: int,
        seed: int,
    ):
        self.inputs, self.text, self.token = inputs, text, token
        self.max_inputs, self.classes, self.seed = max_inputs, classes, seed
        # One text (or image) that makes the body 10 % over the server's limit, made once.
        self.oversized = json.dumps({"inputs": ["a" * int(max_body * 1.1)]}).encode()

    def plan(self, count: int, bad: float) -> list[str]:
        malformed = round(count * bad)
        kinds = [KINDS[i % len(KINDS)] for i in range(malformed)] + ["good"] * (count - malformed)
        random.Random(self.seed).shuffle(kinds)
        return kinds

    def request(self, kind: str, i: int) -> tuple[bytes, dict[str, str], int, int]:
        """(body, headers, the expected status, for a good request its number of inputs)."""
        rng = random.Random(self.seed * 1_000_003 + i)
        auth = {"authorization": f"Bearer {self.token}"}
        json_headers = {"content-type": "application/json", **auth}
        some = [self.inputs[rng.randrange(len(self.inputs))] for _ in range(rng.randint(1, 3))]
        top_k = rng.randint(1, 3)
        good = json.dumps({"inputs": some, "top_k": top_k}).encode()
        one = some[0]
        if kind == "good":
            return good, json_headers, 200, len(some)
        if kind == "bad_json":
            body = rng.choice(
                [b'{"inputs": [', b"not json", b"", b'{"inputs": ["a"],}', b'{"inputs": ["\xff"]}']
            )
            return body, json_headers, 422, 0
        if kind == "wrong_types":
            bodies = [
                {"inputs": one},
                {"inputs": [1, 2]},
                {"inputs": [one], "top_k": "three"},
                {"inputs": [one], "top_k": 0},
                {"input": [one]},
                [one],
                {"inputs": [[one]]},
                {"inputs": None},
            ]
            return json.dumps(rng.choice(bodies)).encode(), json_headers, 422, 0
        if kind == "missing_token":
            return good, {"content-type": "application/json"}, 401, 0
        if kind == "wrong_token":
            wrong = rng.choice([f"Bearer {self.token}x", "Bearer", f"Basic {self.token}", self.token])
            return good, {"content-type": "application/json", "authorization": wrong}, 401, 0
        if kind == "empty_input":
            body = json.dumps(rng.choice([{"inputs": [""]}, {"inputs": ["   "]}, {"inputs": []}])).encode()
            return body, json_headers, 422, 0
        if kind == "too_many_inputs":
            body = json.dumps({"inputs": [one] * (self.max_inputs + 1)}).encode()
            return body, json_headers, 413, 0
        if kind == "body_too_large":
            return self.oversized, json_headers, 413, 0
        return self._undecodable(rng, auth)

    def _undecodable(
        self, rng: random.Random, auth: dict[str, str]
    ) -> tuple[bytes, dict[str, str], int, int]:
        garbage = rng.randbytes(rng.randint(1, 2000))
        png_cut = base64.b64decode(self.inputs[0])[:40] if not self.text else b""
        choice = rng.randrange(5) if not self.text else 0
        if choice == 0:  # an upload of random bytes (a text run refuses any upload)
            head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            body = (
                head.encode()
                + b"Content-Type: image/png\r\n\r\n"
                + garbage
                + f"\r\n--{BOUNDARY}--\r\n".encode()
            )
            return body, {"content-type": f"multipart/form-data; boundary={BOUNDARY}", **auth}, 422, 0
        value, status = [
            (base64.b64encode(garbage).decode(), 422),
            (base64.b64encode(png_cut).decode(), 422),
            ("%not base64%", 422),
            (base64.b64encode(bomb_png()).decode(), 413),  # over the pixel limit: refused before decoding
        ][choice - 1]
        return (
            json.dumps({"inputs": [value]}).encode(),
            {"content-type": "application/json", **auth},
            status,
            0,
        )

    def maker(self, plan: list[str]) -> Any:
        return lambda i: self.request(plan[i], i)[:2]

    def checker(self, plan: list[str]) -> Any:
        """A good request's answer: one list of ``min(top_k, classes)`` labels per input."""

        def check(i: int, response: Any) -> bool:
            if plan[i] != "good" or response.status_code != 200:
                return True
            body, _, _, count = self.request(plan[i], i)
            top_k = min(json.loads(body)["top_k"], self.classes)
            try:
                answer = response.json()
            except ValueError:
                return False
            return (
                isinstance(answer, list)
                and len(answer) == count
                and all(len(a) == top_k and all({"label", "score"} <= set(x) for x in a) for a in answer)
            )

        return check


@functools.cache
def bomb_png() -> bytes:
    """A PNG of 5000 x 5000 blank pixels, a few KB: more pixels than the server's limit (4096 x 4096 by
    default), a decompression bomb to it, to be refused from its header before it is decoded."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, "PNG")
    return buffer.getvalue()


def judge(
    args: argparse.Namespace,
    run: Any,
    source: str,
    plan: list[str],
    mix: Mix,
    outcomes: list[Any],
    wall: float,
    rss: tuple[float, float, float],
    alive: bool,
    health: int | str,
    log: str,
) -> dict[str, Any]:
    classes = Counter(f"{o.status // 100}xx" if o.status else "no answer" for o in outcomes)
    drops = Counter(o.error for o in outcomes if o.status is None)
    kinds: dict[str, dict[str, Any]] = {}
    wrong = Counter()
    for o in outcomes:
        kind = plan[o.index]
        expected = mix.request(kind, o.index)[2]
        row = kinds.setdefault(
            kind, {"sent": 0, "expected": Counter(), "statuses": Counter(), "unexpected": 0}
        )
        row["sent"] += 1
        row["expected"][str(expected)] += 1
        row["statuses"][str(o.status) if o.status else o.error] += 1
        if kind == "good" and not (o.status == 200 and o.valid):
            wrong[GOOD_NOT_200] += 1
        elif kind != "good" and not (o.status and 400 <= o.status < 500):
            wrong[BAD_NOT_4XX] += 1
        if o.status is not None and o.status != expected:
            row["unexpected"] += 1
    for row in kinds.values():
        row["statuses"], row["expected"] = dict(row["statuses"]), dict(row["expected"])
    rss_warm, rss_end, rss_peak = rss
    growth = rss_end / rss_warm - 1
    tracebacks = log.count("Traceback (most recent call last)")
    failures = []
    if classes.get("5xx"):
        failures.append(f"{classes['5xx']} answers 5xx")
    if drops:
        failures.append(f"{sum(drops.values())} dropped connections")
    failures += [f"{n} {what}" for what, n in wrong.items()]
    if growth >= args.max_growth:
        failures.append(f"RSS grew {growth:.1%} (limit {args.max_growth:.0%})")
    if not alive or health != 200:
        failures.append(f"the server is not healthy after the soak (alive {alive}, /health {health})")
    return {
        "run": str(run.root),
        "model": run.config.model.name,
        "kind": run.info.kind,
        "inputs": source,
        "backend": args.backend,
        "threads": args.threads,
        "requests": args.requests,
        "sent": len(outcomes),
        "complete": len(outcomes) == args.requests,
        "concurrency": args.concurrency,
        "bad_fraction": args.bad,
        "seed": args.seed,
        "warmup": args.warmup,
        "seconds": wall,
        "requests_per_s": len(outcomes) / wall if wall else 0.0,
        "status_classes": dict(classes),
        "dropped": dict(drops),
        "kinds": kinds,
        "wrong": dict(wrong),
        "rss_mib": {"after_warmup": rss_warm, "end": rss_end, "peak": rss_peak, "growth": growth},
        "server_alive": alive,
        "health_after": health,
        "log_tracebacks": tracebacks,
        "log_first_traceback": log[log.find("Traceback") :][:2000] if tracebacks else None,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "failures": failures,
        "passed": not failures,
    }


def print_summary(r: dict[str, Any]) -> None:
    good = r["kinds"].get("good", {}).get("sent", 0)
    print(f"\nsoak of bigmodel serve ({r['backend']}) on {r['model']} ({r['run']})")
    print(f"inputs from the {r['inputs']}")
    stop = "" if r["complete"] else f" (stopped by --seconds: {r['requests']:,} asked)"
    print(
        f"{r['sent']:,} requests{stop} at concurrency {r['concurrency']} in {r['seconds']:.1f} s "
        f"({r['requests_per_s']:.0f}/s): {good:,} good, {r['sent'] - good:,} malformed or unauthorised"
    )
    classes = ", ".join(f"{k} {v:,}" for k, v in sorted(r["status_classes"].items()))
    dropped = sum(r["dropped"].values())
    print(f"answers: {classes}; dropped connections: {dropped}" + (f" {r['dropped']}" if dropped else ""))
    print(f"\n{'kind':<20}{'sent':>8}{'expected':>10}  answered")
    for kind in ("good", *KINDS):
        row = r["kinds"].get(kind)
        if row:
            got = ", ".join(f"{s} x{n:,}" for s, n in sorted(row["statuses"].items()))
            expected = "/".join(sorted(row["expected"]))
            print(f"{kind:<20}{row['sent']:>8,}{expected:>10}  {got}")
    bad = r["sent"] - good
    bad_ok, good_ok = bad - r["wrong"].get(BAD_NOT_4XX, 0), good - r["wrong"].get(GOOD_NOT_200, 0)
    print(f"\nmalformed answered 4xx: {bad_ok:,} / {bad:,}; good answered 200: {good_ok:,} / {good:,}")
    unexpected = sum(row["unexpected"] for row in r["kinds"].values())
    print(f"answers with another status than the expected one: {unexpected:,}")
    m = r["rss_mib"]
    print(
        f"server RSS: {m['after_warmup']:.1f} MiB after warm-up, {m['end']:.1f} MiB at the end "
        f"({m['growth']:+.1%}), peak {m['peak']:.1f} MiB"
    )
    print(
        f"server alive after the soak: {r['server_alive']}, /health {r['health_after']}; "
        f"tracebacks in its log: {r['log_tracebacks']}"
    )
    if r["log_first_traceback"]:
        print(r["log_first_traceback"])
    print("PASSED" if r["passed"] else "FAILED: " + "; ".join(r["failures"]))


if __name__ == "__main__":
    raise SystemExit(main())
