"""What ``bigmodel serve`` runs a classifier with, and how it turns a request's inputs into its features.

A backend computes float32 logits from features ready for ``model(**features)``: ``torch`` (the run's
best checkpoint on the CPU, in fp32 and inference mode: the very logits ``bigmodel predict`` computes) or
``onnx`` (onnxruntime on ``RUN/export/model.onnx``, exported first where there is no export yet). Both feed
the same softmax and top-k as ``bigmodel predict`` (``batch.ranked_classes``).

``Encoder`` encodes inputs exactly as ``bigmodel predict`` does — texts with the run's tokenizer
(loaded once) and ``encode_texts``; images decoded from their bytes, converted and resized as
``read_image`` does, then normalised by ``image_transform`` — images one request at a time, so that a
bad image fails its own request only; texts of many requests in one tokenizer call. Each input becomes
one row: a text's token ids without padding, or an image's normalised pixels. ``Encoder.forward`` runs
any number of rows, from many requests, through a backend: images in passes of at most ``max_batch``,
texts sorted by length and cut into passes (``length_buckets``) so that a short text is not padded to
the longest one gathered with it.

``Inference`` owns the one thread that runs the model, and what runs on it: the passes a ``Batcher``
gathers from concurrent requests (encoding, the model, softmax and top-k: once a pass, not once a
request, so the event loop is left only HTTP and JSON), explanations and generation (one model, one
thread: Captum's hooks and generation's seed are never shared between threads), and the warm-up pass.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from bigmodel.data.images import decode_image
from bigmodel.data.text import clean_texts, encode_texts, run_tokenizer
from bigmodel.data.vision import image_transform
from bigmodel.deploy.batch import model_logits, ranked_classes
from bigmodel.device import release_freed_memory
from bigmodel.errors import UserError
from bigmodel.evaluation.explain import explain_features, image_heatmap_png
from bigmodel.run import RunDir
from bigmodel.tasks import generates, task_for

BACKENDS = ("torch", "onnx")
TRIM_EVERY_S = 5.0  # how often the inference thread hands freed memory back to the OS
BUCKET_RATIO = 2.0  # a text more than this many times longer than its pass's shortest starts a new pass
Observe = Callable[[int, float], None]  # (inputs in a forward pass, its seconds)
Generate = Callable[..., str]  # api.generate: (run, prompt, max_new_tokens, temperature, top_k, top_p, seed)
log = logging.getLogger("bigmodel.serve")  # the same as serve.py's


class Backend:
    """float32 logits (batch, classes) of encoded features."""

    name: str
    exporter: str | None = None  # onnx: the exporter export.json names

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, run: RunDir):
        self.run = run
        # channels-last convolutions: oneDNN's faster layout on CPUs (the CNN's passes of 16, 19 % less time)
        run.model.cpu().float().eval().to(memory_format=torch.channels_last)

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return model_logits(self.run, features)


class OnnxBackend(Backend):
    name = "onnx"
    _DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}

    def __init__(self, run: RunDir):
        from bigmodel.deploy.export import export_run, onnx_session

        folder = run.root / "export"
        if not (folder / "export.json").is_file():
            export_run(run)
        record = json.loads((folder / "export.json").read_text(encoding="utf-8"))
        if record.get("classes") != run.info.classes:
            raise UserError(
                f"{folder} was exported from another model (its classes differ); export again: "
                f"bigmodel export {run.root}"
            )
        self.exporter = record.get("exporter")
        self.session = onnx_session(folder / record["files"]["model"])
        self.inputs = {i.name: self._DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()}

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {name: features[name].numpy().astype(dtype, copy=False) for name, dtype in self.inputs.items()}
        return torch.from_numpy(self.session.run(["logits"], feed)[0]).float()


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UserError(f"--backend {name} is not known; choose {' or '.join(BACKENDS)}")


def make_backend(run: RunDir, name: str) -> Backend:
    check_backend(name)
    return TorchBackend(run) if name == "torch" else OnnxBackend(run)


def length_buckets(lengths: Sequence[int], max_batch: int, ratio: float = BUCKET_RATIO) -> list[list[int]]:
    """Indices into ``lengths`` in forward passes of at most ``max_batch``: sorted by length, a new pass
    wherever a length exceeds ``ratio`` times its pass's shortest. Equal lengths keep their order."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    passes: list[list[int]] = []
    for i in order:
        if not passes or len(passes[-1]) == max_batch or lengths[i] > ratio * lengths[passes[-1][0]]:
            passes.append([])
        passes[-1].append(i)
    return passes


class Encoder:
    """A run's inputs as rows, and rows as features and logits (see the module's docstring)."""

    def __init__(self, run: RunDir, max_pixels: int):
        self.info = run.info
        self.text = run.info.kind == "text"
        self.max_pixels = max_pixels
        self.tokenizer = run_tokenizer(run.tokenizer_dir) if self.text else None
        self.transform = None if self.text else image_transform(run.info)
        # A fast tokenizer sets its truncation on each call: two threads at once would collide.
        self.lock = threading.Lock()

    def encode(self, inputs: Sequence[str | bytes]) -> list[torch.Tensor]:
        """One row per input: texts (strings), or images (their bytes, or base64 strings)."""
        if self.text:
            with self.lock:
                features, _ = encode_texts(list(inputs), self.tokenizer, self.info)
            lengths = features["attention_mask"].sum(1).tolist()
            return [ids[:n] for ids, n in zip(features["input_ids"], lengths, strict=True)]
        channels, height, width = self.info.input_shape
        pixels = [
            decode_image(_image_bytes(x, i), height, width, channels, f"#{i}", self.max_pixels)
            for i, x in enumerate(inputs, start=1)
        ]
        return list(self.transform({"pixels": torch.from_numpy(np.stack(pixels))})["pixels"])

    def encode_each(self, requests: Sequence[Sequence[str | bytes]]) -> list[list[torch.Tensor] | Exception]:
        """Each request's rows, or the error that refuses that request alone (an empty text, an image
        that does not decode or is too large); the good texts of every request in one tokenizer call."""
        encoded: list[list[torch.Tensor] | Exception] = []
        for inputs in requests:
            try:  # this request's answer where it fails: 422, 413, or a 500 if unexpected
                if self.text:
                    clean_texts(list(inputs))  # refuses an empty text; the good ones are encoded below
                    encoded.append(list(inputs))
                else:
                    encoded.append(self.encode(inputs))
            except Exception as exc:
                encoded.append(exc)
        if not self.text:
            return encoded
        good = [i for i, texts in enumerate(encoded) if not isinstance(texts, Exception)]
        rows = iter(self.encode([text for i in good for text in encoded[i]]))
        for i in good:
            encoded[i] = [next(rows) for _ in encoded[i]]
        return encoded

    def collate(self, rows: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows as one batch of features, texts padded on the right as ``encode_texts`` pads them."""
        if not self.text:
            return {"pixels": torch.stack(list(rows))}
        mask = [torch.ones(len(r), dtype=torch.long) for r in rows]
        return {
            "input_ids": pad_sequence(
                list(rows), batch_first=True, padding_value=self.tokenizer.pad_token_id
            ),
            "attention_mask": pad_sequence(mask, batch_first=True),
        }

    def forward(
        self, backend: Backend, rows: Sequence[torch.Tensor], max_batch: int, observe: Observe | None = None
    ) -> torch.Tensor:
        """Logits (rows, classes) in the rows' order, in passes of at most ``max_batch``."""
        lengths = [len(r) for r in rows] if self.text else [1] * len(rows)
        out = torch.empty(len(rows), self.info.num_classes)
        for indices in length_buckets(lengths, max_batch):
            start = time.perf_counter()
            out[indices] = backend.logits(self.collate([rows[i] for i in indices]))
            if observe is not None:
                observe(len(indices), time.perf_counter() - start)
        return out


def _image_bytes(value: str | bytes, number: int) -> bytes:
    """An upload's bytes as they are; a JSON input's base64 (a data: URL's too) decoded."""
    if isinstance(value, bytes):
        return value
    data = value.partition(",")[2] if value.startswith("data:") else value
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UserError(
            f"input {number} is not base64: send each image file's bytes base64-encoded (or as a "
            "multipart upload, field 'files')"
        ) from None


class NotRunning(RuntimeError):
    """A request came while the model's thread was not running (the server starting or stopping)."""


@dataclass
class _Job:
    inputs: list[Any]  # a request's texts, or its images' bytes or base64
    top_k: int
    future: asyncio.Future[list[list[dict[str, Any]]]]


class Batcher:
    """One asyncio task that gathers queued requests into passes on the inference thread: what is queued
    now, up to ``max_batch`` inputs (a larger request alone), waiting at most ``max_wait`` seconds for
    more. Requests that arrive while a pass runs are gathered for the next. ``run_pass(jobs)`` answers
    each job, or gives the exception that fails it alone."""

    def __init__(
        self,
        run_pass: Callable[[list[_Job]], list[Any]],
        worker: ThreadPoolExecutor,
        max_batch: int,
        max_wait: float,
    ):
        self.run_pass, self.worker, self.max_batch, self.max_wait = run_pass, worker, max_batch, max_wait
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.held: _Job | None = None  # taken from the queue, but too many for the pass being gathered
        self.running: list[_Job] = []
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        left = [*self.running, *([self.held] if self.held else [])]
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        for job in left:
            if not job.future.done():
                job.future.set_exception(NotRunning("the server is stopping"))

    async def submit(self, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        """The top classes of each input, computed in a pass with whatever else is queued."""
        job = _Job(inputs, top_k, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [self.held or await self.queue.get()]
        self.held = None
        count, deadline = len(jobs[0].inputs), loop.time() + self.max_wait
        while count < self.max_batch:
            if not self.queue.empty():
                job = self.queue.get_nowait()
            elif (remaining := deadline - loop.time()) > 0:
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                break
            if count + len(job.inputs) > self.max_batch:
                self.held = job
                break
            jobs.append(job)
            count += len(job.inputs)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.running = [job for job in await self._gather() if not job.future.done()]
            if not self.running:
                continue
            try:
                answers = await loop.run_in_executor(self.worker, self.run_pass, self.running)
            except Exception as exc:  # every request of the pass answers 500; the server goes on
                answers = [exc] * len(self.running)
            for job, answer in zip(self.running, answers, strict=True):
                if job.future.done():
                    continue
                if isinstance(answer, Exception):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result(answer)
            self.running = []


class Inference:
    """A run's model behind one thread (see the module's docstring). Classifiers get a backend and an
    encoder; language models run on PyTorch. ``start`` and ``stop`` run on the event loop."""

    def __init__(
        self,
        run: RunDir,
        backend: str,
        max_batch: int,
        max_wait: float,
        max_pixels: int,
        observe: Observe | None = None,
        generate: Generate | None = None,
    ):
        self.run, self.max_batch, self.max_wait, self.observe = run, max_batch, max_wait, observe
        self.generate_fn = generate
        self.task = task_for(run.info)
        self.backend: Backend | None = None
        self.encoder: Encoder | None = None
        if self.task.classifier:
            self.backend = make_backend(run, backend)
            self.encoder = Encoder(run, max_pixels)
        elif backend != "torch":
            raise UserError(
                f"--backend {backend} serves classifiers; a language model runs with --backend torch"
            )
        else:
            run.model.cpu().float().eval()
        self.ready = False
        self.warmup_error: str | None = None
        self.worker: ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None

    @property
    def generates(self) -> bool:
        return generates(self.task)

    async def start(self) -> None:
        self.trimmed = time.monotonic()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="bigmodel-inference")
        self.batcher = Batcher(self._predict_pass, self.worker, self.max_batch, self.max_wait)
        self.warming = asyncio.create_task(self._warm_up())

    async def stop(self) -> None:
        self.ready = False
        self.warming.cancel()
        batcher, worker, self.batcher, self.worker = self.batcher, self.worker, None, None
        await batcher.stop()
        worker.shutdown(wait=False, cancel_futures=True)

    async def in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.worker is None:
            raise NotRunning("the server is not running (starting or stopping)")
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def predict(self, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        """Each input's ``top_k`` classes as ``{"label", "score"}``, best first."""
        if self.batcher is None:
            raise NotRunning("the server is not running (starting or stopping)")
        return await self.batcher.submit(inputs, top_k)

    async def explain(
        self, rows: list[torch.Tensor], target: str | None, method: str, steps: int
    ) -> list[dict]:
        return await self.in_worker(self._explain, rows, target, method, steps)

    async def generate(self, *args: Any) -> str:
        return await self.in_worker(self.generate_fn, self.run, *args)

    async def _warm_up(self) -> None:
        try:
            await self.in_worker(self._warm_up_now)
        except Exception as exc:
            log.exception("the warm-up inference failed")
            self.warmup_error = " ".join(str(exc).split())[:300] or type(exc).__name__
        else:
            # What is loaded by now (torch, transformers, the model: some 330,000 objects) lives as long as
            # the server: out of the garbage collector's sight, its full collections stop scanning it.
            # Scanned, each took 160-240 ms, in which every request in flight waited.
            gc.freeze()
            self.ready = True

    def _warm_up_now(self) -> None:
        if self.encoder is not None:
            text = self.encoder.text
            example = self.encoder.encode(["warm up"]) if text else [torch.zeros(self.run.info.input_shape)]
            self.encoder.forward(self.backend, example, 1)
        elif self.generates and self.generate_fn is not None:
            self.generate_fn(self.run, "a", 1, 0.0)

    def _predict_pass(self, jobs: list[_Job]) -> list[Any]:
        encoded = self.encoder.encode_each([job.inputs for job in jobs])
        answers: list[Any] = list(encoded)  # the errors stay; the rows become answers below
        good = [i for i, rows in enumerate(encoded) if not isinstance(rows, Exception)]
        rows = [row for i in good for row in encoded[i]]
        if rows:
            logits = self.encoder.forward(self.backend, rows, self.max_batch, self.observe)
            ranked = iter(ranked_classes(logits, self.run.info.classes, max(jobs[i].top_k for i in good)))
            for i in good:
                top_k = jobs[i].top_k
                answers[i] = [
                    [{"label": t["class"], "score": t["probability"]} for t in next(ranked)[:top_k]]
                    for _ in encoded[i]
                ]
        now = time.monotonic()
        if now - self.trimmed > TRIM_EVERY_S:  # a few ms, at most once in so many seconds
            release_freed_memory()
            self.trimmed = now
        return answers

    def _explain(self, rows: list[torch.Tensor], target: str | None, method: str, steps: int) -> list[dict]:
        classes = self.run.info.classes
        targets = None if target is None else [classes.index(target)] * len(rows)
        answers = []
        for e in explain_features(self.run, self.encoder.collate(rows), targets, method, steps):
            answer = {"label": e.predicted, "score": e.probability, "target": e.target, "method": e.method}
            answer["delta"] = e.delta
            if e.tokens is not None:
                scores = e.attributions.tolist()
                answer["tokens"] = [{"token": t, "score": s} for t, s in zip(e.tokens, scores, strict=True)]
            else:
                answer["heatmap_png"] = base64.b64encode(image_heatmap_png(e)).decode("ascii")
            answers.append(answer)
        return answers
