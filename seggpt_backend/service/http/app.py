"""The HTTP face of the backend (FastAPI): the app, its lifespan, guards, error handlers, routers.

Routes are in :mod:`.routes` (``/health``, ``/setup``, ``/predict``, ``/webhook``, ``/metrics``),
request guards (basic auth, body cap, webhook secret) in :mod:`.guards`, and how errors become
HTTP answers in :mod:`.errors`. ``/openapi.json`` and ``/docs`` describe the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from seggpt_backend.service.http.errors import install_error_handlers
from seggpt_backend.service.http.guards import install_guards
from seggpt_backend.service.http.health import HealthMonitor
from seggpt_backend.service.http.routes import operations, protocol
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.settings import Settings


def build_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    make_runtime: Callable[[Settings], Runtime] = Runtime.create,
) -> FastAPI:
    """The FastAPI app; builds its :class:`Runtime` with ``make_runtime`` at start-up unless one
    is given (use :func:`seggpt_backend.service.server.create_app`, which composes both modes)."""
    resolved = settings or (runtime.settings if runtime else Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime if runtime is not None else make_runtime(resolved)
        app.state.runtime = rt
        # /health answers from this monitor's snapshot (see the health module for why).
        app.state.health = HealthMonitor(rt)
        app.state.health.start()
        try:
            yield
        finally:
            app.state.health.close()
            if runtime is None:
                rt.close()

    app = FastAPI(
        title="seggpt-backend",
        description="Label Studio ML backend: SegGPT in-context segmentation as brush masks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_guards(app, resolved)
    install_error_handlers(app)
    app.include_router(protocol)
    app.include_router(operations)
    return app
