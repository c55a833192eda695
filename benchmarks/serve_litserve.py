"""The peer server of ``benchmarks.serve_load``: LitServe with dynamic batching, serving a bigmodel run's
classifier with the same model, encoding and answer as the naive endpoint (``serve_naive.RunModel``).

    pip install litserve    # not one of bigmodel's dependencies
    python -m benchmarks.serve_litserve RUN [--port 8000] [--threads 2] [--max-batch-size 64]
        [--batch-timeout 0.005]

Configured as LitServe's documentation says for batching: ``max_batch_size`` and ``batch_timeout``
given to the ``LitAPI``, whose ``decode_request`` takes a request's one input, ``batch`` encodes the
gathered inputs into one batch of features (texts padded to the longest), ``predict`` runs one forward
pass, ``unbatch`` splits the logits by request and ``encode_response`` answers ``[[{"label", "score"},
...]]``, as ``bigmodel serve`` does. ``LitServer(accelerator="cpu", workers_per_device=1)``: one
inference worker, and LitServe's default of as many API servers as workers. ``GET /health`` answers 200
once the worker has loaded the model. A request carries one input (``{"inputs": [x], "top_k": k}``):
LitServe batches requests, not inputs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

try:
    import litserve as ls
except ImportError:
    ls = None

LitAPI: Any = ls.LitAPI if ls is not None else object


class RunAPI(LitAPI):
    """A bigmodel run's classifier as a LitServe API, batched."""

    def __init__(self, run: str, threads: int, max_batch_size: int, batch_timeout: float):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.run_path, self.threads = run, threads

    def setup(self, device: str) -> None:
        from benchmarks.serve_naive import RunModel

        self.model = RunModel(self.run_path, self.threads)
        self.model.warm_up()

    # No annotations on decode_request's argument or encode_response's answer: LitServe reads them to
    # type its endpoint, and without them it parses the JSON body and sends the answer as JSON.
    def decode_request(self, request) -> tuple[str, int]:
        (x,) = request["inputs"]
        return x, int(request.get("top_k", 3))

    def batch(self, inputs: list[tuple[str, int]]) -> tuple[dict[str, Any], list[int]]:
        return self.model.encode([x for x, _ in inputs]), [k for _, k in inputs]

    def predict(self, batch: tuple[dict[str, Any], list[int]]) -> list[list[list[dict[str, Any]]]]:
        features, top_ks = batch
        logits = self.model.logits(features)
        return [self.model.answer(row[None], k) for row, k in zip(logits, top_ks, strict=True)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: list[list[dict[str, Any]]]):
        return output


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_litserve", description=about)
    p.add_argument("run")
    p.add_argument("--port", type=int, default=8000, help="LitServe takes 1024-65535")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds (default: 0.005)")
    p.add_argument(
        "--queue",
        choices=["zmq", "manager"],
        default="zmq",
        help="zmq: fast_queue=True, advised above 100 requests/s (default); manager: LitServe's default",
    )
    args = p.parse_args()
    if ls is None:
        print("LitServe is not installed: pip install litserve", file=sys.stderr)
        return 2
    api = RunAPI(args.run, args.threads, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.queue == "zmq")
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
