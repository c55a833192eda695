"""``bigmodel serve RUN``: a run as an HTTP service, FastAPI on uvicorn; ``create_app`` builds it.

Routes: ``GET /`` (a demo page: static, public, holding no data), ``GET /health`` (alive; never needs
the token), ``GET /ready`` (503 until a warm-up inference has run), ``GET /info``, ``POST /predict`` (JSON
``{"inputs": [...], "top_k": k}``, texts as strings, images base64; or images as a multipart upload, field
``files``) → ``[[{"label", "score"}, ...], ...]``,
``POST /explain`` (Integrated Gradients: token scores, or a heat map PNG in base64), ``POST /generate``
(causal language models), ``GET /metrics`` (Prometheus), and FastAPI's ``/docs`` and ``/openapi.json``.

Dynamic batching: the event loop never runs a model. Each request's inputs are validated and encoded on
their own (a bad one answers its own request 422, not its neighbours'), then queued; one batcher task
takes whatever is queued (up to ``max_batch`` inputs; ``max_wait_ms`` > 0 waits that long for more) and
hands it to the one inference thread, so a lone request never waits and requests that arrive while the
model runs go into the next pass. Texts are cut into passes by length (``backends.length_buckets``).
Explanations and generation run on the same thread: one model, one thread, no hooks or seeds shared
between threads.

Safe by default: binds 127.0.0.1; with a token every route but /health and the demo page needs
``Authorization: Bearer`` (401); bodies over ``max_body_mb`` (declared or streamed), too many inputs and
images over the pixel budget answer 413; malformed requests 422; errors name no file path; anything
unexpected is logged and answers a generic 500, and the server goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from bigmodel.data.images import ImageTooLarge
from bigmodel.deploy.backends import (
    BUCKET_RATIO,
    Encoder,
    Generate,
    Inference,
    NotRunning,
    check_backend,
)
from bigmodel.errors import UserError
from bigmodel.run import RunDir

KEEP_ALIVE_S = 75
PUBLIC = frozenset({"/health", "/"})  # "/": the demo page, the same static file for every server
log = logging.getLogger("bigmodel.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Batching and limits; the token, if any, guards every route but /health and the demo page."""

    max_batch: int = 64  # inputs per forward pass
    max_wait_ms: float = 0.0  # how long a gathered batch waits for more (0: not at all)
    max_inputs: int = 64  # inputs per request
    max_body_mb: float = 8.0  # request body, declared or streamed
    max_pixels: int = 4096 * 4096  # per image, read from its header before it is decoded
    token: str | None = None
    explain_max_inputs: int = 4
    explain_max_steps: int = 256

    def __post_init__(self) -> None:
        checks = {
            "--max-batch": (self.max_batch >= 1, "at least 1"),
            "--max-wait-ms": (0 <= self.max_wait_ms <= 10_000, "between 0 and 10000"),
            "--max-inputs": (self.max_inputs >= 1, "at least 1"),
            "--max-body-mb": (self.max_body_mb > 0, "more than 0"),
            "--max-pixels": (self.max_pixels >= 1, "at least 1"),
            "--token": (self.token is None or self.token.strip() != "", "a non-empty string"),
        }
        for flag, (ok, allowed) in checks.items():
            if not ok:
                raise UserError(f"{flag} must be {allowed}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


# --- requests and answers ---------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a silent default


class PredictRequest(Strict):
    inputs: list[str] = Field(description="texts (text runs) or base64-encoded image files (image runs)")
    top_k: int = Field(3, ge=1)


class Label(BaseModel):
    label: str
    score: float


class ExplainRequest(Strict):
    inputs: list[str] = Field(min_length=1, description="texts, or base64-encoded image files")
    target: str | None = Field(None, description="the class to explain (default: the predicted one)")
    method: Literal["integrated_gradients", "saliency"] = "integrated_gradients"
    steps: int = Field(32, ge=1, description="integrated gradients' interpolation steps")


class GenerateRequest(Strict):
    prompt: str = Field(min_length=1, max_length=20_000)
    max_new_tokens: int | None = Field(None, ge=1, description="default: 50, or the context less one")
    temperature: float = Field(1.0, ge=0, le=100, description="0: always the likeliest token")
    top_k: int = Field(50, ge=0, description="sample among the k likeliest (0: all)")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0, lt=2**63)

    @field_validator("temperature")
    @classmethod
    def _not_tiny(cls, value: float) -> float:
        if 0 < value < 0.01:
            raise ValueError("must be 0 (greedy) or at least 0.01")
        return value


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer", "default": 3, "minimum": 1},
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


class BodyTooLarge(HTTPException):
    def __init__(self, limit_mb: float):
        super().__init__(413, f"the request body is over the {limit_mb:g} MB limit (--max-body-mb)")


# --- metrics ----------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics in a registry of the app's own (two apps in one process never mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = {"registry": self.registry}
        self.requests = Counter(
            "bigmodel_requests", "HTTP requests by route and status", ["route", "status"], **reg
        )
        self.errors = Counter(
            "bigmodel_errors", "Answers 4xx (client) and 5xx (server)", ["route", "kind"], **reg
        )
        self.latency = Histogram(
            "bigmodel_request_seconds",
            "Seconds from request to answer",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            **reg,
        )
        self.batch_size = Histogram(
            "bigmodel_batch_size",
            "Inputs per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            **reg,
        )
        self.inference = Histogram("bigmodel_inference_seconds", "Seconds per forward pass", **reg)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, "client" if status < 500 else "server").inc()

    def forward_pass(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)


# --- the service ------------------------------------------------------------------------------------


class Service(Inference):
    """One app's state: the run's ``Inference``, its settings and metrics, and what answers say."""

    def __init__(self, run: RunDir, backend: str, settings: ServeSettings, generate: Generate | None):
        self.settings, self.metrics = settings, Metrics()
        s = settings
        super().__init__(
            run, backend, s.max_batch, s.max_wait_ms / 1e3, s.max_pixels, self.metrics.forward_pass, generate
        )
        root = run.root
        self.paths = sorted({str(root), str(root.absolute()), str(root.resolve())}, key=len, reverse=True)

    def scrub(self, message: str) -> str:
        """No answer names a file: the run's directory becomes RUN."""
        for path in self.paths:
            message = message.replace(path, "RUN")
        return message

    def require_classifier(self) -> Encoder:
        if self.encoder is None:
            kind = {"clm": "a causal language model", "mlm": "a masked language model"}.get(
                self.run.info.kind
            )
            hint = "continue text with POST /generate" if self.generates else "fine-tune it into a classifier"
            raise HTTPException(422, f"this run is {kind or 'not a classifier'}: it has no classes; {hint}")
        return self.encoder

    async def encode(self, inputs: list[Any]) -> list[torch.Tensor]:
        """Rows of one request's inputs, encoded off the event loop."""
        return await run_in_threadpool(self.require_classifier().encode, inputs)

    def describe(self) -> dict[str, Any]:
        info, s = self.run.info, self.settings
        test = self.run.results.get("test", {})
        shape = info.input_shape
        return {
            "kind": info.kind,
            "classes": info.classes,
            "input": {"channels": shape[0], "height": shape[1], "width": shape[2]}
            if info.kind == "image"
            else {"max_length": shape[0]},
            "metrics": {
                k: v
                for k, v in test.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            },
            "backend": self.backend.name if self.backend is not None else "torch",
            "exporter": self.backend.exporter if self.backend is not None else None,
            "routes": ["/predict", "/explain"] if self.encoder else ["/generate"] if self.generates else [],
            "batching": {
                "max_batch": s.max_batch,
                "max_wait_ms": s.max_wait_ms,
                "length_bucketing": info.kind == "text",
                "bucket_ratio": BUCKET_RATIO,
            },
            "limits": {
                "max_inputs": s.max_inputs,
                "max_body_mb": s.max_body_mb,
                "max_pixels": s.max_pixels,
                "explain_max_inputs": s.explain_max_inputs,
                "explain_max_steps": s.explain_max_steps,
            },
        }


# --- the HTTP layer ---------------------------------------------------------------------------------


def demo_page() -> tuple[str, dict[str, str]]:
    """``GET /``: demo.html (inline CSS and JavaScript, nothing else) and its headers. Its
    Content-Security-Policy runs only that script and style (by their hashes), shows images only from
    ``data:`` URLs and lets it fetch from its own origin only: the browser itself refuses anything else."""
    page = resources.files("bigmodel.deploy").joinpath("demo.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    }
    return page, headers


class Guard:
    """The app's outermost layer of its own: the token, the body limit, metrics for every answer (401 and
    413 included), and a generic 500 for anything unexpected, logged, after which the server goes on."""

    def __init__(self, app: Any, service: Service, routes: frozenset[str]):
        self.app, self.service, self.routes = app, service, routes
        token = service.settings.token
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        start, status, started = time.perf_counter(), 500, False

        async def sending(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            refused = self._refusal(scope)
            if refused is not None:
                await _answer(sending, *refused)
            else:
                await self.app(scope, self._counting(receive), sending)
        except BodyTooLarge as exc:
            if started:
                raise
            await _answer(sending, exc.status_code, exc.detail)
        except ClientDisconnect:  # the client hung up mid-request: no one to answer
            status = 499
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], route)
            if started:
                raise
            await _answer(sending, 500, "internal server error; the server's log has the details")
        finally:
            self.service.metrics.request(route, status, time.perf_counter() - start)

    def _refusal(self, scope: dict) -> tuple[int, str, dict[str, str]] | None:
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in PUBLIC:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)):
                message = "missing or wrong token: send the header Authorization: Bearer <token>"
                return 401, message, {"www-authenticate": "Bearer"}
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.service.settings.max_body_bytes:
            return 413, BodyTooLarge(self.service.settings.max_body_mb).detail, {}
        return None

    def _counting(self, receive: Callable) -> Callable:
        """``receive`` that refuses a body once more than the limit has streamed in (chunked uploads
        declare no length)."""
        limit, received = self.service.settings.max_body_bytes, 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(self.service.settings.max_body_mb)
            return message

        return counted


async def _answer(send: Callable, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    response = JSONResponse({"detail": detail}, status, headers=headers)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.disconnect"}


def _invalid(errors: list[Any]) -> JSONResponse:
    """422 for a body that is not JSON or not of the right shape: one line, then each error (the
    values sent are not echoed)."""
    shown = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors[:20]]
    first = shown[0] if shown else {"loc": [], "msg": "invalid"}
    where = ".".join(p for p in first["loc"] if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return JSONResponse({"detail": f"invalid request: {where}: {first['msg']}{more}", "errors": shown}, 422)


async def _predict_inputs(request: Request, service: Service) -> tuple[list[Any], int]:
    """The inputs and top_k of a JSON body, or of a multipart upload (field ``files``; images only)."""
    settings = service.settings
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        if service.require_classifier().text:
            raise HTTPException(422, 'this is a text run: send texts as JSON, {"inputs": ["a text", ...]}')
        async with request.form(max_files=max(1000, settings.max_inputs + 1)) as form:
            files = form.getlist("files")
            top_k = PredictRequest.model_validate({"inputs": [], "top_k": form.get("top_k", 3)}).top_k
            if not all(isinstance(f, UploadFile) for f in files):
                raise HTTPException(422, "the field 'files' must hold image files")
            _check_count(len(files), settings.max_inputs, "field 'files' holds no image files")
            return [await f.read() for f in files], top_k
    parsed = PredictRequest.model_validate_json(await request.body())
    _check_count(len(parsed.inputs), settings.max_inputs, "'inputs' is empty")
    return parsed.inputs, parsed.top_k


def _check_count(count: int, limit: int, empty: str) -> None:
    if not count:
        raise HTTPException(422, f"nothing to predict: {empty}")
    if count > limit:
        raise HTTPException(413, f"{count} inputs in one request; at most {limit} (--max-inputs)")


def create_app(
    run: RunDir | str | Path,
    backend: str = "torch",
    settings: ServeSettings | None = None,
    generate: Generate | None = None,
) -> FastAPI:
    """The service of one run (see the module's docstring). The backend is built here, an ONNX export
    made where there is none; the warm-up inference runs when the app starts (its lifespan).
    ``generate`` continues a prompt for causal LM runs: ``bigmodel.api.generate``, which lives above
    this layer."""
    check_backend(backend)
    run = RunDir.of(run)
    run.raw_config()  # refuses a directory that is not a run
    settings = settings or ServeSettings()
    service = Service(run, backend, settings, generate)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title=f"bigmodel serve: {run.name}",
        description="A bigmodel run: predict, explain or generate. GET /info says which, and the limits.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": service.scrub(str(exc.detail))}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
        return _invalid(exc.errors())

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(
            {"detail": service.scrub(str(exc))}, 413 if isinstance(exc, ImageTooLarge) else 422
        )

    @app.exception_handler(NotRunning)
    async def shutting_down(request: Request, exc: NotRunning) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503)

    page, page_headers = demo_page()

    @app.get("/", include_in_schema=False)
    async def demo() -> HTMLResponse:
        """The demo page: public, like /health, as it holds no data; its script asks for the token."""
        return HTMLResponse(page, headers=page_headers)

    @app.get("/health", summary="Alive (never needs the token)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="200 once the warm-up inference has run, else 503")
    async def ready() -> JSONResponse:
        if service.ready:
            return JSONResponse({"ready": True})
        detail = f"warm-up failed: {service.warmup_error}" if service.warmup_error else "warming up"
        return JSONResponse({"ready": False, "detail": detail}, 503)

    @app.get("/info", summary="Classes, input, test metrics, backend, batching and limits")
    async def info() -> dict[str, Any]:
        return service.describe()

    @app.post(
        "/predict",
        summary="Top classes of texts or images (batched with concurrent requests)",
        response_model=list[list[Label]],
        openapi_extra=PREDICT_BODY,
    )
    async def predict(request: Request) -> JSONResponse:
        service.require_classifier()
        inputs, top_k = await _predict_inputs(request, service)
        return JSONResponse(await service.predict(inputs, top_k))

    @app.post("/explain", summary="Integrated Gradients: token scores, or a heat map PNG (base64)")
    async def explain(body: ExplainRequest) -> list[dict[str, Any]]:
        service.require_classifier()
        if len(body.inputs) > settings.explain_max_inputs:
            raise HTTPException(413, f"at most {settings.explain_max_inputs} inputs per explain request")
        if body.steps > settings.explain_max_steps:
            raise HTTPException(422, f"steps must be at most {settings.explain_max_steps}")
        if body.target is not None and body.target not in run.info.classes:
            raise HTTPException(
                422, f"target {body.target!r} is not a class; the classes: {run.info.classes}"
            )
        return await service.explain(await service.encode(body.inputs), body.target, body.method, body.steps)

    @app.post("/generate", summary="Continue a prompt (causal language model runs)")
    async def generate_text(body: GenerateRequest) -> dict[str, Any]:
        if not service.generates:
            raise HTTPException(
                422, f"this run is a {run.info.kind} model; /generate needs a causal language model run"
            )
        if service.generate_fn is None:
            raise HTTPException(501, "this server was started without generation")
        context = run.info.input_shape[0]
        new = body.max_new_tokens or min(50, context - 1)
        if new >= context:
            raise HTTPException(
                422, f"max_new_tokens must be between 1 and {context - 1} (the context less one)"
            )
        args = (body.prompt, new, body.temperature, body.top_k, body.top_p, body.seed)
        return {"text": await service.generate(*args), "seed": body.seed}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, service=service, routes=frozenset(r.path for r in app.routes))
    return app


# --- running it -------------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: any free port), for uvicorn to listen on; refused in one line."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(app: FastAPI, host: str, port: int, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``app`` on host:port until Ctrl-C (a clean stop, then a normal return) or SIGTERM (a
    clean stop, then the signal's default); ``on_ready(url)`` once the warm-up inference has run."""
    import uvicorn

    sock = bind(host, port)
    # Idle keep-alive connections are kept longer than clients keep theirs (httpx: 5 s, uvicorn's own
    # default too): with equal timeouts a client may reuse a connection the server is closing, a drop.
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
    service: Service = app.state.service

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not serving.done() and not (server.started and service.ready) and not service.warmup_error:
            await asyncio.sleep(0.02)
        if service.warmup_error:
            server.should_exit = True
        elif server.started and on_ready is not None:
            on_ready(url_of(sock))
        await serving

    try:  # uvloop and httptools where installed, as uvicorn runs itself: their parsing is in C
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(main())
    except KeyboardInterrupt:  # uvicorn stopped cleanly, then raised the signal again
        pass
    finally:
        sock.close()
    if service.warmup_error:
        raise UserError(f"the warm-up inference failed: {service.warmup_error}")
