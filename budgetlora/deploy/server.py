"""HTTP server: a Predictor behind text-embeddings-inference's (TEI's) routes, with dynamic batching.

`create_app(predictor, settings)` builds the FastAPI app; `serve(path, settings)` loads a run or
export folder and runs it under uvicorn (SIGTERM: uvicorn stops accepting, answers what is in
flight, then the app's shutdown drains the batcher). Routes, shaped as TEI's so its clients work:

* `POST /predict {"inputs": str | [str, ...] | [[str], ...], "raw_scores": false, "truncate": true}`:
  `[{"label", "score"}, ...]` for one string (all classes, best first), a list of those for a batch;
* `GET /health`, `GET /info` (TEI's fields plus labels, budget, trainable count, backend),
  `GET /metrics` (Prometheus text, one CollectorRegistry per app).

Every error is `{"error": "...", "error_type": "..."}`: 422 malformed JSON, wrong types, empty or
non-UTF-8 text; 413 body over max_payload, more than max_client_batch inputs, or a text over the
model's length with truncate false; 429 queue full; 401 without the API key (every route but
/health); 500 when inference raises (the server goes on). No request can name a file or a model.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import UserError, first_line, warn
from .batcher import BatchObserver, Batcher, BatcherStopped, QueueFull
from .predictor import Predictor, TextTooLong

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
API_KEY_ENV = "BUDGETLORA_API_KEY"
ROUTES = ("/predict", "/health", "/info", "/metrics")


@dataclass
class ServeSettings:
    """Every `budgetlora serve` flag, with its default: the one place they are set."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # None: $BUDGETLORA_API_KEY, if set (see `serve`)
    backend: str | None = None  # torch / onnx / onnx-int8; None: the best the folder holds
    threads: int | None = None  # torch / onnxruntime intra-op threads; None: the library's default
    precision: str = "auto"  # torch backend: auto = bf16 where the CPU/GPU computes it natively, else fp32
    batching: bool = True  # False: one request per model call (the load test's baseline)
    max_batch_tokens: int = 16384  # padded tokens (rows x longest row) per model call
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 512  # inputs queued or running; past it, 429
    max_client_batch: int = 32  # inputs per request; past it, 413
    max_payload: int = 2_000_000  # request body bytes; past it, 413
    graceful_timeout_s: float = 30.0  # on SIGTERM, how long in-flight requests get to finish
    log_level: str = "warning"
    # --engine ray
    engine: str = "uvicorn"
    replicas: int = 1
    min_replicas: int | None = None  # both set: autoscaling between them instead of fixed replicas
    max_replicas: int | None = None
    target_ongoing_requests: float = 16.0
    cpus_per_replica: float = 1.0
    ray_max_batch_size: int = 32
    ray_batch_wait_timeout_s: float = 0.005
    ray_address: str | None = None  # None: start a local Ray; "auto" or HOST:PORT: join a cluster

    def check(self) -> "ServeSettings":
        """UserError, one line, for a setting no server can run with."""
        if not 0 < self.port < 65536:
            raise UserError(f"--port {self.port}: give a TCP port from 1 to 65535")
        for name in ("max_batch_tokens", "max_queue", "max_client_batch", "max_payload", "replicas",
                     "ray_max_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.batch_wait_ms < 0 or self.ray_batch_wait_timeout_s < 0:
            raise UserError("batch wait times cannot be negative")
        if self.engine not in ("uvicorn", "ray"):
            raise UserError(f"--engine {self.engine!r}: choose uvicorn or ray")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise UserError("--min-replicas and --max-replicas go together (autoscaling between them)")
        if self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas >= 1:
            raise UserError(f"--min-replicas {self.min_replicas} --max-replicas {self.max_replicas}: "
                            f"need 0 <= min <= max and max >= 1")
        return self


class ApiError(Exception):
    """An answer other than 200: status code, TEI error_type and a one-line message."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


@dataclass
class PredictRequest:
    texts: list[str]
    single: bool  # a bare string: answer one flat list, as TEI does
    truncate: bool
    raw_scores: bool


# ---------------------------------------------------------------- request and response shapes


def parse_predict(body: bytes, settings: ServeSettings) -> PredictRequest:
    """A /predict body checked against TEI's shape and the server's limits (ApiError if not)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(422, "Validation", "the request body is not valid UTF-8") from None
    except ValueError as e:
        raise ApiError(422, "Validation", f"malformed JSON: {e}") from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise ApiError(422, "Validation", 'the body must be a JSON object {"inputs": ...}')
    flags = {name: doc.get(name, default) for name, default in (("truncate", True), ("raw_scores", False))}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ApiError(422, "Validation", f"`{name}` must be true or false, not {json.dumps(value)[:40]}")
    texts, single = _texts_of(doc["inputs"])
    if len(texts) > settings.max_client_batch:
        raise ApiError(413, "Validation", f"{len(texts)} inputs in one request; the most is "
                                          f"{settings.max_client_batch} (--max-client-batch)")
    for i, text in enumerate(texts):
        _check_text(i, text)
    return PredictRequest(texts, single, flags["truncate"], flags["raw_scores"])


def _texts_of(inputs) -> tuple[list[str], bool]:
    """TEI's `inputs`: a string, a list of strings, or its batch form [[str], [str], ...]."""
    if isinstance(inputs, str):
        return [inputs], True
    if not isinstance(inputs, list):
        raise ApiError(422, "Validation", "`inputs` must be a string or a list of strings")
    if not inputs:
        raise ApiError(422, "Empty", "`inputs` is an empty list; send at least one text")
    texts = []
    for i, item in enumerate(inputs):
        if isinstance(item, list) and len(item) == 1:
            item = item[0]
        elif isinstance(item, list) and len(item) == 2:
            raise ApiError(422, "Validation", f"input {i} is a pair of texts; budgetlora classifiers take one text")
        if not isinstance(item, str):
            raise ApiError(422, "Validation", f"input {i} is not a string")
        texts.append(item)
    return texts, False


def _check_text(i: int, text: str) -> None:
    if not text.strip():
        raise ApiError(422, "Empty", f"input {i} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate sent as a \ud800 escape
        raise ApiError(422, "Validation", f"input {i} is not valid UTF-8 text") from None


def encode(predictor: Predictor, request: PredictRequest) -> list[np.ndarray]:
    """Token ids; a text over the model's length is cut (truncate) or answered 413."""
    try:
        return predictor.encode(request.texts, truncate=request.truncate)
    except TextTooLong as e:
        raise ApiError(413, "Validation", str(e)) from None


def predictions(logits: np.ndarray, label_names: list[str], raw_scores: bool) -> list[list[dict]]:
    """Per row, every class as {"label", "score"} best first; scores are probabilities unless raw."""
    logits = np.asarray(logits, dtype=np.float64)
    scores = logits if raw_scores else _softmax(logits)
    return [[{"label": label_names[j], "score": float(row[j])} for j in np.argsort(-row, kind="stable")]
            for row in scores]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def answer(request: PredictRequest, logits: np.ndarray, label_names: list[str]):
    rows = predictions(logits, label_names, request.raw_scores)
    return rows[0] if request.single else rows


def info(predictor: Predictor, settings: ServeSettings) -> dict:
    """GET /info: TEI's fields (model_id, model_type, limits) plus budgetlora's (labels, budget, ...)."""
    from .. import __version__

    described = predictor.describe()
    model = public_model_name(described.get("model"))
    if "ensemble" in described:
        described["ensemble"] = [{**member, "model": public_model_name(member.get("model"))}
                                 for member in described["ensemble"]]
    labels = described["labels"]
    return {**described, "model": model, "model_id": model,
            "model_type": {"classifier": {"id2label": {str(i): n for i, n in enumerate(labels)},
                                          "label2id": {n: i for i, n in enumerate(labels)}}},
            "max_input_length": predictor.max_length, "max_batch_tokens": settings.max_batch_tokens,
            "max_client_batch_size": settings.max_client_batch, "max_concurrent_requests": settings.max_queue,
            "auto_truncate": True, "batching": settings.batching, "version": __version__}


def public_model_name(model: str | None) -> str:
    """A model id as is; a folder on the server: its name only."""
    model = model or ""
    return Path(model).name if os.path.isabs(model) or model.startswith(".") else model


def servable(predictor: Predictor) -> Predictor:
    """`predictor`, once it can be served: an ensemble must encode text once for all its members
    (the batcher bounds batches in tokens, and a too-long text is answered 413)."""
    from .ensemble import Ensemble

    if isinstance(predictor, Ensemble):
        predictor.require_one_encoding()
    return predictor


def error_body(error: ApiError) -> dict:
    return {"error": error.message, "error_type": error.error_type}


# ---------------------------------------------------------------- metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("budgetlora_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.errors = Counter("budgetlora_errors", "error answers by kind (TEI error_type)", ["kind"],
                              registry=self.registry)
        self.latency = Histogram("budgetlora_request_duration_seconds", "time from request to answer", ["route"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.batch_size = Histogram("budgetlora_batch_size", "inputs per model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_requests = Histogram("budgetlora_batch_requests", "requests per model call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.queue_depth = Gauge("budgetlora_queue_depth", "inputs queued or running", registry=self.registry)
        self.inputs = Counter("budgetlora_inputs", "texts classified", registry=self.registry)

    def observer(self) -> BatchObserver:
        def on_batch(inputs: int, requests: int) -> None:
            self.batch_size.observe(inputs)
            self.batch_requests.observe(requests)

        return BatchObserver(on_batch=on_batch, on_queue_depth=self.queue_depth.set)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _MetricsMiddleware:
    """Pure ASGI middleware: counts every answer by route and status and times it."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        started, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


# ---------------------------------------------------------------- the app


def make_batcher(predictor: Predictor, settings: ServeSettings, observer: BatchObserver | None = None) -> Batcher:
    """The dynamic batcher for `settings`; batching off: one request per model call, no waiting."""
    def run_batch(rows):
        return predictor.logits(rows, batch_size=len(rows))

    if not settings.batching:
        return Batcher(run_batch, max_batch_tokens=settings.max_batch_tokens, wait_s=0.0,
                       max_queue=settings.max_queue, max_batch_requests=1, observer=observer)
    return Batcher(run_batch, max_batch_tokens=settings.max_batch_tokens, wait_s=settings.batch_wait_ms / 1000,
                   max_queue=settings.max_queue, observer=observer)


def create_app(predictor: Predictor, settings: ServeSettings | None = None):
    """The FastAPI app serving `predictor` (its batcher starts and drains with the app's lifespan)."""
    predictor = servable(predictor)
    settings = settings or ServeSettings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app):
        import asyncio

        app.state.batcher = make_batcher(predictor, settings, metrics.observer())
        app.state.batcher.start()
        try:
            yield
        finally:  # uvicorn has answered every in-flight request; drain whatever is left
            await asyncio.to_thread(app.state.batcher.stop)

    app = FastAPI(title="budgetlora", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    auth = [Depends(_key_checker(settings.api_key))]

    def json_answer(content, status: int = 200, headers=None):
        return Response(json.dumps(content, ensure_ascii=False).encode("utf-8"), status_code=status,
                        media_type="application/json", headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        metrics.errors.labels(error.error_type).inc()
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return json_answer(error_body(error), error.status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):  # unknown route, wrong method
        kind = "NotFound" if error.status_code == 404 else "Validation"
        metrics.errors.labels(kind).inc()
        return json_answer({"error": str(error.detail), "error_type": kind}, error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):  # a bug on some input: 500 in TEI's shape, serve on
        metrics.errors.labels("Backend").inc()
        return json_answer({"error": f"{type(error).__name__}: {first_line(error)}", "error_type": "Backend"}, 500)

    @app.post("/predict", dependencies=auth)
    async def predict(request: Request):
        parsed = parse_predict(await read_body(request, settings.max_payload), settings)
        rows = encode(predictor, parsed)
        logits = await _infer(request.app.state, rows)
        metrics.inputs.inc(len(rows))
        return json_answer(answer(parsed, logits, predictor.label_names))

    @app.get("/health")
    async def health(request: Request):
        batcher = getattr(request.app.state, "batcher", None)
        if batcher is None or not batcher.alive:
            raise ApiError(503, "Unhealthy", "the inference thread is not running")
        return JSONResponse({"status": "ok"})

    @app.get("/info", dependencies=auth)
    async def get_info():
        return JSONResponse(info(predictor, settings))

    @app.get("/metrics", dependencies=auth)
    async def get_metrics():
        body, content_type = metrics.text()
        return Response(body, media_type=content_type)

    return app


async def _infer(state, rows: list[np.ndarray]) -> np.ndarray:
    batcher = getattr(state, "batcher", None)
    if batcher is None:
        raise ApiError(503, "Unhealthy", "the server has not started its inference thread")
    try:
        return await batcher.submit(rows)
    except QueueFull as e:
        raise ApiError(429, "Overloaded", str(e)) from None
    except BatcherStopped as e:
        raise ApiError(503, "Unhealthy", str(e)) from None
    except Exception as e:  # noqa: BLE001 -- inference raised: answer 500, keep serving
        raise ApiError(500, "Backend", f"inference failed: {type(e).__name__}: {first_line(e)}") from None


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: never read whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "Validation", f"the body has {declared} bytes; the most is {limit} (--max-payload)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "Validation", f"the body has more than {limit} bytes (--max-payload)")
    return bytes(body)


def _key_checker(api_key: str | None):
    """A FastAPI dependency: 401 unless `Authorization: Bearer <api_key>` (constant-time compare)."""
    expected = api_key.encode("utf-8") if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
            raise ApiError(401, "Unauthorized", "missing or wrong API key: send `Authorization: Bearer <key>`")

    return check


# ---------------------------------------------------------------- running it


def resolve(settings: ServeSettings) -> ServeSettings:
    """Settings checked, the API key taken from $BUDGETLORA_API_KEY when no flag gave one."""
    from dataclasses import replace

    settings.check()
    if settings.api_key is None and os.environ.get(API_KEY_ENV):
        settings = replace(settings, api_key=os.environ[API_KEY_ENV])
    if settings.host not in LOCAL_HOSTS and not settings.api_key:
        warn(f"serving on {settings.host}, beyond this machine, with no API key: anyone who can reach it can "
             f"use it; pass --api-key or set {API_KEY_ENV}")
    return settings


def serve(path: str | Path | list, settings: ServeSettings | None = None) -> None:
    """Load the run or export folder (several: their ensemble, deploy/ensemble.py) and serve it
    under uvicorn until SIGINT / SIGTERM."""
    import uvicorn

    from .predictor import load_predictor

    settings = resolve(settings or ServeSettings())
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    predictor = load_predictor(paths, settings.backend, threads=settings.threads, precision=settings.precision)
    app = create_app(predictor, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=settings.graceful_timeout_s)
    print(f"budgetlora: serving {served_name(paths)} ({predictor.backend}, {len(predictor.label_names)} classes) "
          f"on http://{settings.host}:{settings.port} (batching {'on' if settings.batching else 'off'})",
          flush=True)
    server = uvicorn.Server(config)
    try:
        server.run()
    except (OSError, SystemExit) as e:  # uvicorn exits(1) when it cannot bind
        reason = first_line(e) if isinstance(e, OSError) else "the address is in use or not on this machine"
        raise UserError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
    if not server.started:
        raise UserError(f"the server did not start on {settings.host}:{settings.port} (port in use?)")


def served_name(paths: list) -> str:
    """What the start-up line calls the served folders."""
    from .ensemble import member_names

    names = ", ".join(member_names(paths))
    return names if len(paths) == 1 else f"an ensemble of {len(paths)} ({names})"
