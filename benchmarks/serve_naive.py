"""The naive endpoint of ``benchmarks.serve_load``: what a user writes first to put a bigmodel run behind
HTTP, one forward pass per request (FastAPI, uvicorn, one worker, no batching).

    python -m benchmarks.serve_naive RUN [--port 8000] [--threads 2] [--handler thread|loop]

``POST /predict`` takes ``{"inputs": [...], "top_k": k}`` (texts, or images as base64) and answers
``[[{"label", "score"}, ...], ...]``, as ``bigmodel serve`` does; ``GET /health`` answers once the model
is loaded and has run once. The run is loaded with ``bigmodel.load(RUN)`` and each request's inputs are
encoded as ``run.encode`` encodes them, with its pieces loaded once: ``run.encode`` loads the tokenizer
again on every call (about 50 ms, more than the model's forward pass) and reads images from files, so an
endpoint that called it per request would measure that rather than what batching saves. Then one model
call under ``torch.inference_mode()``, and the softmax and top-k of ``bigmodel predict``.

``--handler thread`` (the default): a plain ``def`` endpoint, which FastAPI runs in its thread pool, as
its documentation advises for blocking code, so that concurrent requests run their forward passes side
by side on the intra-op threads each; ``loop``: an ``async def`` endpoint that calls the model on the
event loop, one request at a time.

``RunModel`` is also the model of the peer server (``benchmarks.serve_litserve``): the same run, the
same encoding, the same forward pass and answer.
"""

from __future__ import annotations

import argparse
import base64
import threading
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel


class PredictRequest(BaseModel):
    inputs: list[str]
    top_k: int = 3


class RunModel:
    """A run's classifier on the CPU in fp32: inputs → features → logits → top classes."""

    def __init__(self, run_path: str, threads: int):
        import bigmodel
        from bigmodel.data.text import run_tokenizer
        from bigmodel.data.vision import image_transform

        torch.set_num_threads(threads)
        self.run = bigmodel.load(run_path)
        self.info = self.run.info
        self.model = self.run.model.cpu().float().eval()
        self.text = self.info.kind == "text"
        self.tokenizer = run_tokenizer(self.run.tokenizer_dir) if self.text else None
        self.transform = None if self.text else image_transform(self.info)
        self.lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads at once

    def encode(self, inputs: list[str]) -> dict[str, torch.Tensor]:
        """``run.encode``'s features: texts tokenized and padded to the longest; images (base64) decoded,
        converted and resized as ``read_image`` does, then normalised."""
        from bigmodel.data.images import decode_image
        from bigmodel.data.text import encode_texts

        if self.text:
            with self.lock:
                return encode_texts(inputs, self.tokenizer, self.info)[0]
        channels, height, width = self.info.input_shape
        pixels = [decode_image(base64.b64decode(x), height, width, channels) for x in inputs]
        return self.transform({"pixels": torch.from_numpy(np.stack(pixels))})

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(**features).logits.float()

    def answer(self, logits: torch.Tensor, top_k: int) -> list[list[dict[str, Any]]]:
        from bigmodel.deploy.batch import ranked_classes

        tops = ranked_classes(logits, self.info.classes, top_k)
        return [[{"label": t["class"], "score": t["probability"]} for t in top] for top in tops]

    def predict(self, inputs: list[str], top_k: int = 3) -> list[list[dict[str, Any]]]:
        return self.answer(self.logits(self.encode(inputs)), top_k)

    def warm_up(self) -> None:
        if self.text:
            self.predict(["warm up"])
        else:
            with torch.inference_mode():
                self.model(pixels=torch.zeros(1, *self.info.input_shape))


def create_app(model: RunModel, handler: str = "thread") -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    if handler == "thread":

        @app.post("/predict")
        def predict(body: PredictRequest) -> list[list[dict[str, Any]]]:
            return model.predict(body.inputs, body.top_k)

    else:

        @app.post("/predict")
        async def predict_on_loop(body: PredictRequest) -> list[list[dict[str, Any]]]:
            return model.predict(body.inputs, body.top_k)

    return app


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_naive", description=about)
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    p.add_argument("--handler", choices=["thread", "loop"], default="thread")
    args = p.parse_args()
    import uvicorn

    model = RunModel(args.run, args.threads)
    model.warm_up()
    app = create_app(model, args.handler)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
