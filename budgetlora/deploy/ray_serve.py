"""Ray Serve: the same Predictor as a Ray Serve deployment, to serve past one machine.

`budgetlora serve PATH [PATH ...] --engine ray --replicas N` (or --min-replicas/--max-replicas:
autoscaling; several folders: their ensemble, deploy/ensemble.py) runs PATH's predictor in N Ray
Serve replicas behind Ray's HTTP proxy, with the uvicorn server's routes and shapes (FastAPI
ingress via `@serve.ingress`; request parsing, limits, errors and the answer come from
`server.py`). Batching is Ray Serve's own `@serve.batch` (max_batch_size and
batch_wait_timeout_s from the flags) instead of budgetlora's batcher; the queue bound is Ray's
`max_queued_requests` (Ray answers 503 past it, not 429). /metrics is Ray's own Prometheus
endpoint (`ray metrics`), not this app's. For `serve run` / `serve deploy` on a cluster,
`app_builder` builds the application from `key=value` arguments (see docs/serving.md).
"""

# no `from __future__ import annotations`: Ray pickles the deployment class by value, and FastAPI
# must see `Request` itself in its signatures, not a name the replica cannot look up
import asyncio
import hmac
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..errors import UserError
from .server import (ApiError, ServeSettings, answer, encode, error_body, info, parse_predict, read_body, resolve,
                     servable, served_name)

DEPLOYMENT_NAME = "budgetlora"


def deployment_options(settings: ServeSettings) -> dict:
    """Ray Serve deployment options for the flags: replicas or autoscaling, CPUs, queue bounds."""
    options = {"ray_actor_options": {"num_cpus": settings.cpus_per_replica},
               "max_ongoing_requests": max(2 * settings.ray_max_batch_size, 8),
               "max_queued_requests": settings.max_queue}
    if settings.min_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": settings.min_replicas,
                                         "max_replicas": settings.max_replicas,
                                         "target_ongoing_requests": settings.target_ongoing_requests}
    else:
        options["num_replicas"] = settings.replicas
    return options


def _json(content, status: int = 200) -> Response:
    return Response(json.dumps(content, ensure_ascii=False).encode("utf-8"), status_code=status,
                    media_type="application/json")


def _ingress_app() -> FastAPI:
    app = FastAPI(title="budgetlora (Ray Serve)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return _json(error_body(error), error.status)

    return app


def build_deployment(settings: ServeSettings):
    """The Ray Serve deployment class for `settings` (not yet bound to a folder)."""
    from ray import serve

    app = _ingress_app()

    @serve.deployment(name=DEPLOYMENT_NAME, **deployment_options(settings))
    @serve.ingress(app)
    class BudgetloraClassifier:
        def __init__(self, paths: list[str], settings: ServeSettings):
            from .predictor import load_predictor

            self.predictor = servable(load_predictor(paths, settings.backend, threads=settings.threads,
                                                     precision=settings.precision))
            self.settings = settings
            self.key = settings.api_key.encode("utf-8") if settings.api_key else None
            self.classify.set_max_batch_size(settings.ray_max_batch_size)
            self.classify.set_batch_wait_timeout_s(settings.ray_batch_wait_timeout_s)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def classify(self, rows: list[np.ndarray]) -> list[np.ndarray]:
            """Ray Serve gathers single rows from concurrent requests; one model call, off the loop."""
            logits = await asyncio.to_thread(self.predictor.logits, rows, len(rows))
            return list(logits)

        def check_key(self, request: Request) -> None:
            if self.key is None:
                return
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), self.key):
                raise ApiError(401, "Unauthorized", "missing or wrong API key: send `Authorization: Bearer <key>`")

        @app.post("/predict")
        async def predict(self, request: Request):
            self.check_key(request)
            parsed = parse_predict(await read_body(request, self.settings.max_payload), self.settings)
            rows = encode(self.predictor, parsed)
            try:
                logits = np.stack(await asyncio.gather(*(self.classify(row) for row in rows)))
            except Exception as e:  # noqa: BLE001 -- inference raised: answer 500, keep serving
                raise ApiError(500, "Backend", f"inference failed: {type(e).__name__}: {e}"[:300]) from None
            return _json(answer(parsed, logits, self.predictor.label_names))

        @app.get("/health")
        async def health(self):
            return _json({"status": "ok"})

        @app.get("/info")
        async def get_info(self, request: Request):
            self.check_key(request)
            return _json({**info(self.predictor, self.settings), "engine": "ray",
                          "max_batch_size": self.settings.ray_max_batch_size})

    return BudgetloraClassifier


def bind(path: str | Path | list, settings: ServeSettings):
    """The Ray Serve application serving `path` (several: their ensemble), absolute paths: replicas
    may start on other nodes. An ensemble is loaded here once first, so that members a server
    cannot batch together are refused in one line before any replica starts."""
    from .predictor import is_export, is_run, load_predictor

    paths = [Path(p).resolve() for p in ([path] if isinstance(path, (str, Path)) else path)]
    for folder in paths:
        if not (is_run(folder) or is_export(folder)):
            raise UserError(f"{folder} is neither a budgetlora run nor an export folder; give the --out folder of "
                            f"`budgetlora train` or `export`")
    if len(paths) > 1:
        servable(load_predictor(paths, settings.backend, threads=settings.threads, precision=settings.precision))
    return build_deployment(settings).bind([str(p) for p in paths], settings)


def app_builder(args: dict):
    """`serve run budgetlora.deploy.ray_serve:app_builder path=RUN replicas=2 ...`: the application
    from string arguments (`path` plus any ServeSettings field), as Ray Serve's config files pass them;
    `path` may be a list of folders (a config file's YAML list): their ensemble."""
    args = dict(args)
    if "path" not in args:
        raise UserError("app_builder needs path=RUN_OR_EXPORT_FOLDER")
    path = args.pop("path")
    return bind(path, settings_from_strings(args))


def settings_from_strings(args: dict) -> ServeSettings:
    known = {f.name: f for f in fields(ServeSettings)}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    defaults = ServeSettings()
    converted = {}
    for name, value in args.items():
        default = getattr(defaults, name)
        if isinstance(value, str) and default is not None and not isinstance(default, str):
            value = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
        elif isinstance(value, str) and name in ("min_replicas", "max_replicas", "threads"):
            value = int(value)
        converted[name] = value
    return replace(defaults, **converted).check()


def serve_ray(path: str | Path | list, settings: ServeSettings) -> None:
    """Start (or join, with --ray-address) Ray, run the application on host:port, block until a signal."""
    import signal
    import threading

    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("--engine ray needs Ray Serve: pip install 'budgetlora[ray]'") from None
    settings = resolve(settings)
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    application = bind(paths, settings)
    ray.init(address=settings.ray_address, include_dashboard=False, ignore_reinit_error=True,
             log_to_driver=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application, name=DEPLOYMENT_NAME, route_prefix="/")
    how = (f"{settings.min_replicas}-{settings.max_replicas} replicas (autoscaling)" if settings.min_replicas is not None
           else f"{settings.replicas} replica(s)")
    print(f"budgetlora: serving {served_name(paths)} on Ray Serve, {how}, on http://{settings.host}:{settings.port}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    serve.shutdown()  # Ray Serve drains its replicas' in-flight requests before they stop
    ray.shutdown()
