"""How service errors become HTTP answers: a 4xx naming the problem, 503 when a dependency is down.

=====================  ======  ======================================================
``RequestValidationError``  422  every invalid field, dotted path and reason
:class:`RequestError`       422  unsupported config, malformed field (names it)
:class:`PromptError`        422  invalid interactive context (names the region/label)
:class:`Unavailable`        503  nothing can compute now (no worker, model failed)
Redis connection/timeout    503  Redis unreachable
=====================  ======  ======================================================
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from seggpt_backend.service.errors import PromptError, RequestError, Unavailable

log = logging.getLogger(__name__)


async def _invalid_body(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg')}")
    return JSONResponse(
        {"detail": "invalid request: " + "; ".join(problems), "errors": problems}, status_code=422
    )


async def _request_error(_: Request, exc: Exception) -> JSONResponse:
    log.warning("%s", exc)
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _prompt_error(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"invalid interactive context: {exc}"}, status_code=422)


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.error("Redis unavailable: %s", exc)
    return JSONResponse({"detail": f"Redis is unavailable: {type(exc).__name__}"}, status_code=503)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(PromptError, _prompt_error)
    app.add_exception_handler(Unavailable, _unavailable)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
