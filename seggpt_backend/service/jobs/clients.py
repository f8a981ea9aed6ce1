"""Which Label Studio client a worker uses for a project.

With ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` configured, that one client serves every
project. Without them, each project uses what its Label Studio sent in ``/setup`` (hostname and
access token, kept by :class:`~seggpt_backend.service.store.connections.ConnectionStore`): a
client per (url, token), built on first use and kept. Each such client fetches only from its own
host (plus ``SEGGPT_ALLOWED_HOSTS``), so a project's token never travels to another host.

Image downloads are called with a URL and a task id only (the prefetcher's cache is keyed by
URL), so the project being worked on travels in a context variable (:func:`working_on`), which
the prefetch pool copies into its threads.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from seggpt_backend.service.store.connections import ConnectionStore
from seggpt_backend.settings import Settings

current_project: contextvars.ContextVar[str | None] = contextvars.ContextVar("seggpt_project", default=None)


@contextmanager
def working_on(project: str) -> Iterator[None]:
    """Mark ``project`` as the one this thread (and the pool work it submits) works for."""
    token = current_project.set(project)
    try:
        yield
    finally:
        current_project.reset(token)


class ClientRouter:
    """``for_project(project)``: the configured client, else one from the project's /setup
    connection, else None (then only responses and webhooks reach Label Studio)."""

    def __init__(
        self, settings: Settings, connections: ConnectionStore, configured: Any, keep: int = 32
    ) -> None:
        self.settings = settings
        self.connections = connections
        self.configured = configured
        self._clients: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def for_project(self, project: str | None) -> Any:
        s = self.settings
        if self.configured is not None and s.label_studio_api_key:
            return self.configured
        conn = self.connections.get(project) if project is not None else None
        if conn is None:
            return self.configured
        key = (conn.url, conn.token)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                from seggpt_backend.labelstudio.client import LabelStudioClient

                client = LabelStudioClient(
                    conn.url,
                    conn.token,
                    allowed_hosts=s.allowed_hosts,
                    download_deadline_s=s.download_deadline_s,
                )
                self._clients[key] = client
                while len(self._clients) > self._keep:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(key)
            return client

    def current(self) -> Any:
        """The client of the project this thread works on (see :func:`working_on`)."""
        return self.for_project(current_project.get())
