"""Request guards, checked before a body is read: HTTP basic auth, the body cap, the webhook secret.

With ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` set, every route except ``/health`` requires HTTP
basic auth (configure the same pair on the model in Label Studio). Bodies larger than
``SEGGPT_MAX_BODY_BYTES`` get 413. With ``SEGGPT_WEBHOOK_SECRET`` set, ``/webhook`` requires the
header :data:`WEBHOOK_SECRET_HEADER` (Label Studio's webhooks do not send the model's basic auth).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from seggpt_backend.settings import Settings

OPEN_PATHS = frozenset({"/health"})
# Set this header on the webhook in Label Studio (Settings > Webhooks > Headers) when
# SEGGPT_WEBHOOK_SECRET is set; a header, not a query parameter, so access logs never show it.
WEBHOOK_SECRET_HEADER = "X-SegGPT-Webhook-Secret"

Next = Callable[[Request], Awaitable[Response]]


def basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    """Whether an ``Authorization`` header carries exactly ``user:password`` (constant time)."""
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


def install_guards(app: FastAPI, settings: Settings) -> None:
    """Add the guards as middleware. The last added runs first, so the body cap and the webhook
    secret are checked before basic auth, as before any body is read."""

    if settings.basic_auth_user:

        @app.middleware("http")
        async def basic_auth(request: Request, call_next: Next) -> Response:
            if request.url.path in OPEN_PATHS or basic_auth_ok(
                request.headers.get("authorization"), settings.basic_auth_user, settings.basic_auth_pass
            ):
                return await call_next(request)
            return JSONResponse(
                {"detail": "authentication required (HTTP basic auth, see BASIC_AUTH_USER)"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="seggpt-backend"'},
            )

    @app.middleware("http")
    async def cap_and_secret(request: Request, call_next: Next) -> Response:
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
