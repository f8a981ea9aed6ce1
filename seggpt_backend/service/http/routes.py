"""The routes, as routers over the :class:`Runtime` the app's lifespan put on ``app.state``.

``protocol``: what Label Studio calls (the ML-backend protocol of 1.23).

===========  ===========================================================================
``GET``      ``/health``: ``{"status": "UP", "model_class": "SegGPT", ...}`` with the real state
             of Redis and the workers (503 ``DOWN`` when Redis is unreachable). Never loads.
``POST``     ``/setup``: ``{"model_version": ...}`` in milliseconds; starts a background fill
             of the project's examples on first contact; keeps the project's Extra params
             (:class:`seggpt_backend.service.contract.ProjectOptions`) and, without ``LABEL_STUDIO_URL``/``_API_KEY``,
             the hostname and token it sends. 422 for an unsupported config or Extra params.
``GET``      ``/versions``: ``{"versions": [current], "model_version": current}``.
``POST``     ``/predict``: see :mod:`seggpt_backend.service.http.predict`.
``POST``     ``/webhook``: see :mod:`seggpt_backend.service.http.webhooks`.
``POST``     ``/train``: the legacy Start Training call (before webhooks): requests a tuning
             run of the body's ``project`` (:mod:`seggpt_backend.service.http.training`).
===========  ===========================================================================

``operations``: ``GET /metrics`` (Prometheus text format); ``GET /quality/{project}``: the
project's suggestion-quality measurements as JSON (what ``seggpt-backend report --backend URL``
reads; :mod:`seggpt_backend.service.store.quality`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from seggpt_backend.service.contract import ProjectOptions, parse_targets
from seggpt_backend.service.errors import RequestError
from seggpt_backend.service.http import predict as predict_mod
from seggpt_backend.service.http import training, webhooks
from seggpt_backend.service.http.health import HealthMonitor, health_body, quality_gauges
from seggpt_backend.service.http.prelabel import progress_gauges
from seggpt_backend.service.http.protocol import PredictRequest, SetupRequest, WebhookEvent, project_key
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.store.connections import Connection, normalise_url

MODEL_CLASS = "SegGPT"


async def runtime(request: Request) -> Runtime:
    # async: a sync dependency would run in the threadpool, which busy /predict calls can fill.
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:  # set by the lifespan; direct use without it is a programming error
        raise RuntimeError("runtime not started (use the app through uvicorn or `with TestClient(app)`)")
    return rt


async def health_monitor(request: Request) -> HealthMonitor:
    monitor: HealthMonitor = request.app.state.health
    return monitor


Rt = Annotated[Runtime, Depends(runtime)]
protocol = APIRouter()
operations = APIRouter()


@protocol.get("/health")
async def health(rt: Rt, monitor: Annotated[HealthMonitor, Depends(health_monitor)]) -> JSONResponse:
    """Liveness plus honest dependencies: Redis reachability and live workers.

    Async on purpose: it runs on the event loop, not in the threadpool where sync /predict
    handlers block, and it only reads the monitor's latest snapshot (no Redis call here).
    """
    body, status_code = health_body(
        monitor.snapshot(), model_class=MODEL_CLASS, mode="embedded" if rt.queue.embedded else "redis"
    )
    return JSONResponse(body, status_code=status_code)


@protocol.post("/setup")
def setup(body: SetupRequest, rt: Rt) -> dict[str, Any]:
    """Validate the config and the Extra params, remember the project's options and (without
    ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``) the connection Label Studio sent, and return
    the project's current model version (no model loading)."""
    parse_targets(body.schema_)
    project = project_key(body.project)
    options = ProjectOptions.from_extra_params(
        body.extra_params, defaults=rt.default_options(), project=project
    )  # 422 naming the key
    rt.project_settings.put(project, body.extra_params)
    s = rt.settings
    if (
        not (s.label_studio_url and s.label_studio_api_key)
        and body.hostname
        and (body.access_token or s.label_studio_api_key)
    ):
        url = s.label_studio_url or normalise_url(body.hostname)
        rt.connections.put(project, Connection(url, s.label_studio_api_key or str(body.access_token)))
    if not rt.examples.is_populated(project):
        webhooks.enqueue_fill(rt, project, force=False)
    return {"model_version": rt.model_version(project, options)}


@protocol.get("/versions")
async def versions(request: Request, rt: Rt) -> dict[str, Any]:
    """The ``label_studio_ml`` convention: ``{"versions": [...], "model_version": current}``.

    Label Studio 1.23 sends ``GET /versions`` with a JSON body ``{"project": "<id>.<ts>"}`` (the
    model settings' version list); ``?project=`` works too. Without a project: the engine version.
    """
    raw: Any = request.query_params.get("project")
    if raw is None:
        body = await request.body()
        if body:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise RequestError(f"/versions: the body is not JSON: {exc}") from exc
            raw = parsed.get("project") if isinstance(parsed, dict) else None
    if raw is None or str(raw).strip() == "":
        current = rt.engine_version()
    else:
        current = await run_in_threadpool(rt.model_version, project_key(raw))
    return {"versions": [current], "model_version": current}


@protocol.post("/predict")
def predict(body: PredictRequest, rt: Rt) -> dict[str, Any]:
    """One result per task, in order (see the predict module for the write-back contract)."""
    return predict_mod.Predictor(rt).predict(body)


@protocol.post("/webhook")
def webhook(body: WebhookEvent, rt: Rt) -> dict[str, Any]:
    return webhooks.handle(rt, body)


@protocol.post("/train")
def train(body: dict[str, Any], rt: Rt) -> dict[str, Any]:
    """Legacy ``/train`` (``{"project": <id or {"id": ...}>, ...}``): queue a tuning run."""
    raw = body.get("project")
    if isinstance(raw, dict):
        raw = raw.get("id")
    if raw is None or isinstance(raw, bool) or not isinstance(raw, int | str):
        raise RequestError(f"/train: the body needs a project id (field 'project'), got {raw!r}")
    project = project_key(raw)
    return {"status": "ok", "tuning": training.request_tuning(rt, project, trigger="train")}


@operations.get("/projects/{project}/progress")
def progress(project: str, rt: Rt) -> dict[str, Any]:
    """Pre-labelling progress of a project: queued, done, failed (with reasons), rate, ETA."""
    if not project.isdigit():
        raise RequestError(
            f"/projects/{{id}}/progress: the project id must be a positive integer, got {project!r}"
        )
    return rt.progress.get(str(int(project))).to_json()


@operations.get("/metrics", response_class=PlainTextResponse)
def metrics(rt: Rt) -> PlainTextResponse:
    gauges: dict[str, float] = {}
    redis_ok = not rt.redis_status().startswith("unavailable")
    gauges["seggpt_redis_up"] = 1.0 if redis_ok else 0.0
    if redis_ok:
        for name, depth in rt.queue.depths().items():
            gauges[f'seggpt_queue_depth{{queue="{name}"}}'] = float(depth)
        for (name, st), n in rt.queue.states().items():
            gauges[f'seggpt_queue_jobs{{queue="{name}",state="{st}"}}'] = float(n)
        gauges["seggpt_workers"] = float(rt.worker_status()[0])
        gauges.update(progress_gauges(rt))
        gauges.update(quality_gauges(rt))
    # Without Redis the recorded series cannot be read; render() logs that and shows the gauges.
    text = rt.metrics.render(gauges)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@operations.get("/quality/{project}")
def quality(project: str, rt: Rt) -> dict[str, Any]:
    """``{"project": P, "entries": [Measurement JSON, ...]}`` oldest first (422 for a bad id)."""
    import json

    from seggpt_backend.service.store.quality import QualityStore

    key = project_key(project)
    entries = QualityStore(rt.kv).entries(key)
    return {"project": key, "entries": [json.loads(e.to_json()) for e in entries]}
