"""The server process, composed: the HTTP app with the runtime of the configured mode.

This is the one module of the service that sees both rooms: in embedded mode (no ``REDIS_URL``)
the HTTP server runs the worker's job code itself, on a daemon thread that loads the engine at
start-up (``/health`` answers meanwhile), with every store on an in-process
:class:`~seggpt_backend.service.store.kv.MemoryKV`; with ``REDIS_URL`` it only enqueues and the
workers (:mod:`seggpt_backend.service.jobs.worker`) compute.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from seggpt_backend.service.contract import Job, PredictJob, PruneJob, QualityJob, TuneJob
from seggpt_backend.service.http.app import build_app
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.queue import InProcessJobQueue
from seggpt_backend.settings import Settings, configure_logging

log = logging.getLogger(__name__)


def make_runtime(settings: Settings) -> Runtime:
    """The runtime for ``settings``: Redis and RQ, or everything in this process (embedded)."""
    if not settings.embedded:
        return Runtime.create(settings)
    kv = MemoryKV()
    ctx = jobs.WorkerContext(settings, kv, jobs.engine_loader(settings), client=jobs.make_client(settings))
    jobs.install(ctx)

    def run(job: Job) -> Any:
        if isinstance(job, PredictJob):
            return jobs.execute_predict(ctx, job)
        if isinstance(job, PruneJob):
            return jobs.execute_prune(ctx, job)
        if isinstance(job, TuneJob):
            return jobs.execute_tune(ctx, job)
        if isinstance(job, QualityJob):
            return jobs.execute_quality(ctx, job)
        return jobs.execute_sync(ctx, job)

    queue = InProcessJobQueue(run, start=lambda: ctx.engine)
    ctx.queue = queue  # follow-up jobs (the refresh after a promotion) run here too
    return Runtime(settings, kv, queue, worker_context=ctx)


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """The FastAPI app for ``settings`` (default: from the environment), or around ``runtime``."""
    return build_app(settings, runtime=runtime, make_runtime=make_runtime)


def run_server(settings: Settings, host: str, port: int) -> None:
    """Serve the backend with uvicorn (one process; jobs run on RQ workers or in-process)."""
    import uvicorn

    configure_logging(settings)
    log.info("serving on %s:%d (%s mode)", host, port, "embedded" if settings.embedded else "redis")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower(), workers=1)
