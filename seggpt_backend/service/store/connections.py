"""Per-project Label Studio connections learnt from ``POST /setup``.

Label Studio 1.23 sends ``hostname`` (its own base URL, e.g. ``http://localhost:8080``, from its
``HOSTNAME`` setting) and ``access_token`` (the legacy API token of the project's creator) in
every ``/setup``. When ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` are not configured, the
server keeps them here per project so workers (other processes) can call the API and download
images for that project: connecting a model in the UI is enough.

Key ``conn:<project>``: a hash ``{"url", "token"}``. The token is a secret: it is stored (Redis
is the service's private store, like the queued jobs), never logged, never put in a job payload
and never in a ``repr``; requests with it go only to ``url``'s host (the client's allow-list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from seggpt_backend.service.errors import RequestError
from seggpt_backend.service.store.kv import KV


@dataclass(frozen=True)
class Connection:
    """Where one project's Label Studio is (``url``: scheme and host, no path) and its token."""

    url: str
    token: str = field(repr=False)


def normalise_url(raw: str) -> str:
    """``http(s)://host[:port]`` from what Label Studio sent, or :class:`RequestError`."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise RequestError(f"/setup: hostname {raw!r} is not an http(s) URL of a host")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


class ConnectionStore:
    """Connections per project on a :class:`KV` (see the module docstring)."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def put(self, project: str, connection: Connection) -> None:
        current = self.get(project)
        if current != connection:  # /setup comes before every round: write only on a change
            self.kv.hset(f"conn:{project}", {"url": connection.url, "token": connection.token})

    def get(self, project: str) -> Connection | None:
        raw = self.kv.hgetall(f"conn:{project}")
        if not raw.get("url") or not raw.get("token"):
            return None
        return Connection(raw["url"].decode(), raw["token"].decode())
