"""The HTTP face of the backend (FastAPI): the Label Studio ML-backend protocol plus operations.

===========  ===========================================================================
``GET``      ``/health``: ``{"status": "UP", "model_class": "SegGPT", ...}`` with the real state
             of Redis and the workers (503 ``DOWN`` when Redis is unreachable). Never loads.
``POST``     ``/setup``: ``{"model_version": ...}`` in milliseconds; starts a background fill
             of the project's examples on first contact. 422 for an unsupported config.
``POST``     ``/predict``: see :mod:`seggpt_backend.service.http.predict`.
``POST``     ``/webhook``: see :mod:`seggpt_backend.service.http.webhooks`.
``GET``      ``/metrics``: Prometheus text format.
``GET``      ``/openapi.json``, ``/docs``: the API description.
===========  ===========================================================================

With ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set, every route except ``/health`` requires HTTP
basic auth (configure the same pair on the model in Label Studio).
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from seggpt_backend.service.contract import parse_targets
from seggpt_backend.service.errors import PromptError, RequestError, Unavailable
from seggpt_backend.service.http import predict as predict_mod
from seggpt_backend.service.http import webhooks
from seggpt_backend.service.http.health import HealthMonitor, health_body
from seggpt_backend.service.http.protocol import PredictRequest, SetupRequest, WebhookEvent, project_key
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.settings import Settings

log = logging.getLogger(__name__)

MODEL_CLASS = "SegGPT"
OPEN_PATHS = frozenset({"/health"})
# Set this header on the webhook in Label Studio (Settings > Webhooks > Headers) when
# SEGGPT_WEBHOOK_SECRET is set; a header, not a query parameter, so access logs never show it.
WEBHOOK_SECRET_HEADER = "X-SegGPT-Webhook-Secret"


def _unauthorized() -> Response:
    return JSONResponse(
        {"detail": "authentication required (HTTP basic auth, see BASIC_AUTH_USER)"},
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="seggpt-backend"'},
    )


def _basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given_user, _, given_pass = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Compare both parts in constant time, and always both, so timing reveals nothing.
    ok_user = secrets.compare_digest(given_user.encode(), user.encode())
    ok_pass = secrets.compare_digest(given_pass.encode(), password.encode())
    return ok_user and ok_pass


def build_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    make_runtime: Callable[[Settings], Runtime] = Runtime.create,
) -> FastAPI:
    """The FastAPI app; builds its :class:`Runtime` with ``make_runtime`` at start-up unless one
    is given (use :func:`seggpt_backend.service.server.create_app`, which composes both modes)."""
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    state: dict[str, Any] = {"rt": runtime}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        own = state["rt"] is None
        if own:
            state["rt"] = make_runtime(settings)
        app.state.runtime = state["rt"]
        # /health answers from this monitor's snapshot (see the health module for why).
        state["health"] = HealthMonitor(state["rt"])
        state["health"].start()
        try:
            yield
        finally:
            state["health"].close()
            if own:
                state["rt"].close()

    app = FastAPI(
        title="seggpt-backend",
        description="Label Studio ML backend: SegGPT in-context segmentation as brush masks.",
        version="0.1.0",
        lifespan=lifespan,
    )

    def rt() -> Runtime:
        if state["rt"] is None:  # created by lifespan; direct use without it is a programming error
            raise RuntimeError("runtime not started (use the app through uvicorn or `with TestClient(app)`)")
        return state["rt"]

    if settings.basic_auth_user:

        @app.middleware("http")
        async def basic_auth(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if request.url.path in OPEN_PATHS or _basic_auth_ok(
                request.headers.get("authorization"), settings.basic_auth_user, settings.basic_auth_pass
            ):
                return await call_next(request)
            return _unauthorized()

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Body cap (413) and the webhook secret, checked before a body is read."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            return JSONResponse(
                {"detail": f"request body of {length} bytes exceeds SEGGPT_MAX_BODY_BYTES="
                 f"{settings.max_body_bytes}"},
                status_code=413,
            )  # fmt: skip
        if (
            request.url.path == "/webhook"
            and settings.webhook_secret
            and not secrets.compare_digest(
                request.headers.get(WEBHOOK_SECRET_HEADER, "").encode(), settings.webhook_secret.encode()
            )
        ):
            return JSONResponse(
                {"detail": f"webhook secret missing or wrong (header {WEBHOOK_SECRET_HEADER})"},
                status_code=401,
            )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        return JSONResponse(
            {"detail": "invalid request: " + "; ".join(problems), "errors": problems}, status_code=422
        )

    @app.exception_handler(RequestError)
    async def unsupported(_: Request, exc: RequestError) -> JSONResponse:
        log.warning("%s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(PromptError)
    async def bad_prompt(_: Request, exc: PromptError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid interactive context: {exc}"}, status_code=422)

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    try:
        import redis

        redis_errors: tuple[type[Exception], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
    except ImportError:  # pragma: no cover - redis is a dependency
        redis_errors = ()
    for exc_class in redis_errors:

        @app.exception_handler(exc_class)
        async def redis_down(_: Request, exc: Exception) -> JSONResponse:
            log.error("Redis unavailable: %s", exc)
            return JSONResponse({"detail": f"Redis is unavailable: {type(exc).__name__}"}, status_code=503)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness plus honest dependencies: Redis reachability and live workers.

        Async on purpose: it runs on the event loop, not in the threadpool where sync /predict
        handlers block, and it only reads the monitor's latest snapshot (no Redis call here).
        """
        r = rt()
        body, status_code = health_body(
            state["health"].snapshot(),
            model_class=MODEL_CLASS,
            mode="embedded" if r.queue.embedded else "redis",
        )
        return JSONResponse(body, status_code=status_code)

    @app.post("/setup")
    def setup(body: SetupRequest) -> dict[str, Any]:
        """Validate the config and return the project's current model version (no model loading)."""
        r = rt()
        parse_targets(body.schema_)
        project = project_key(body.project)
        if not r.examples.is_populated(project):
            webhooks.enqueue_fill(r, project, force=False)
        return {"model_version": r.model_version(project)}

    @app.post("/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        """One result per task, in order (see the predict module for the write-back contract)."""
        return predict_mod.Predictor(rt()).predict(body)

    @app.post("/webhook")
    def webhook(body: WebhookEvent) -> dict[str, Any]:
        return webhooks.handle(rt(), body)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        r = rt()
        gauges: dict[str, float] = {}
        redis_ok = not r.redis_status().startswith("unavailable")
        gauges["seggpt_redis_up"] = 1.0 if redis_ok else 0.0
        if redis_ok:
            for name, depth in r.queue.depths().items():
                gauges[f'seggpt_queue_depth{{queue="{name}"}}'] = float(depth)
            for (name, st), n in r.queue.states().items():
                gauges[f'seggpt_queue_jobs{{queue="{name}",state="{st}"}}'] = float(n)
            gauges["seggpt_workers"] = float(r.worker_status()[0])
        # Without Redis the recorded series cannot be read; render() logs that and shows the gauges.
        text = r.metrics.render(gauges)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
