"""``/health`` from a snapshot refreshed in the background, so the route itself never waits.

Label Studio's health check gives up after 1 s. Asking Redis (PING, RQ's worker registry per
queue, queue depths) on every call took up to seconds under load, and a sync route waits for a
free slot in the same threadpool where ``/predict`` requests block while they wait for results.
Instead one daemon thread of :class:`HealthMonitor` refreshes a :class:`HealthSnapshot` about
every second, and the (async) route only reads the latest one.

A refresh that raises is logged with its traceback and yields a ``DOWN`` snapshot whose state is
``unknown``; the thread goes on. A snapshot older than ``stale_after_s`` (the refresher is stuck,
e.g. in a Redis call that waits for its socket timeout) is reported ``DOWN`` as well, so the
route never claims ``UP`` from old news.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from seggpt_backend.service.http.runtime import Runtime

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_STALE_AFTER_S = 30.0


@dataclass(frozen=True)
class HealthSnapshot:
    """The backend's state as of ``taken_at``.

    ``redis``: ``"embedded"``, ``"ok"``, ``"unavailable: <reason>"`` (Redis unreachable) or
    ``"unknown: <reason>"`` (the refresh itself failed or is stale). ``workers``: live workers.
    ``problem``: why there is no usable worker, or what went wrong, else None. ``engine_version``
    and ``queues`` (depth per logical queue, or ``"unavailable: <reason>"``) are None when they
    were not read (Redis down or the refresh failed). ``taken_at``: ``time.time()`` in seconds;
    ``monotonic_at``: ``time.monotonic()`` in seconds, for the staleness check.
    """

    redis: str
    workers: int
    problem: str | None
    engine_version: str | None
    queues: Mapping[str, int] | str | None
    taken_at: float
    monotonic_at: float

    @property
    def up(self) -> bool:
        """True unless Redis is unreachable or the state is unknown."""
        return not self.redis.startswith(("unavailable", "unknown"))


def take_snapshot(runtime: Runtime) -> HealthSnapshot:
    """Read the state through ``runtime`` (blocking: up to the Redis socket timeouts, seconds)."""
    taken_at, monotonic_at = time.time(), time.monotonic()
    redis_state = runtime.redis_status()
    if redis_state.startswith("unavailable"):
        # Redis answered nothing within its 0.5 s health timeout: the other reads would each
        # wait for the longer store timeout, and their answers are implied anyway.
        return HealthSnapshot(redis_state, 0, None, None, None, taken_at, monotonic_at)
    workers, problem = runtime.worker_status()
    engine_version = runtime.engine_version()
    queues: Mapping[str, int] | str
    try:
        queues = dict(runtime.queue.depths())
    except Exception as exc:
        queues = f"unavailable: {type(exc).__name__}"
    return HealthSnapshot(redis_state, workers, problem, engine_version, queues, taken_at, monotonic_at)


def quality_gauges(runtime: Runtime) -> dict[str, float]:
    """``/metrics`` gauges of suggestion quality: the rolling mean IoU and its sample count per
    project and label (:class:`~seggpt_backend.service.store.quality.QualityStore`; a few small
    hashes are read, the measurements themselves are not)."""
    from seggpt_backend.service.store.metrics import _labels
    from seggpt_backend.service.store.quality import QualityStore

    store = QualityStore(runtime.kv)
    out: dict[str, float] = {}
    for project in store.projects():
        for label, (mean, n) in store.rolling(project).items():
            tags = _labels({"project": project, "label": label})
            out[f"seggpt_suggestion_iou_rolling{tags}"] = mean
            out[f"seggpt_suggestion_iou_samples{tags}"] = float(n)
    return out


def failed_snapshot(reason: str) -> HealthSnapshot:
    """A ``DOWN`` snapshot for a refresh that raised (``reason``: e.g. the exception's type)."""
    return HealthSnapshot(
        f"unknown: {reason}", 0, f"health check failed: {reason}", None, None, time.time(), time.monotonic()
    )


def health_body(snapshot: HealthSnapshot, *, model_class: str, mode: str) -> tuple[dict[str, Any], int]:
    """The ``/health`` JSON body and HTTP status (200 ``UP``, 503 ``DOWN``) of ``snapshot``."""
    body: dict[str, Any] = {
        "status": "UP" if snapshot.up else "DOWN",
        "model_class": model_class,
        "mode": mode,
        "redis": snapshot.redis,
    }
    if not snapshot.up:
        body["workers"] = 0
        if snapshot.problem:  # only for an unknown state: an unreachable Redis says it all
            body["warning"] = snapshot.problem
        return body, 503
    body["workers"] = snapshot.workers
    body["engine_version"] = snapshot.engine_version
    if snapshot.problem:
        body["warning"] = snapshot.problem
    body["queues"] = dict(snapshot.queues) if isinstance(snapshot.queues, Mapping) else snapshot.queues
    return body, 200


class HealthMonitor:
    """Keeps the latest :class:`HealthSnapshot` of a :class:`Runtime`, refreshed by one thread.

    ``interval_s``: seconds between the end of one refresh and the start of the next.
    ``stale_after_s``: a snapshot older than this (seconds) is reported as ``unknown``/``DOWN``.
    ``refresh``: what takes a snapshot (default :func:`take_snapshot`; tests inject failures).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        refresh: Callable[[Runtime], HealthSnapshot] | None = None,
    ) -> None:
        self.runtime = runtime
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self._take = refresh or take_snapshot
        self._latest: HealthSnapshot | None = None
        # Serialises refreshes: the thread's and a first synchronous one never run at once.
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0  # completed refreshes, failed ones included (for tests and debugging)

    def start(self) -> None:
        """Take a first snapshot now (blocking, once), then refresh in a daemon thread."""
        if self._thread is not None:
            return
        if self._latest is None:
            self.refresh()
        self._thread = threading.Thread(target=self._loop, name="seggpt-health", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, waiting up to ``timeout_s`` seconds for a refresh in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def refresh(self) -> HealthSnapshot:
        """Take a snapshot now and keep it; never raises (a failure becomes an unknown snapshot)."""
        with self._refresh_lock:
            try:
                snap = self._take(self.runtime)
            except Exception as exc:
                log.exception("health refresh failed")
                snap = failed_snapshot(type(exc).__name__)
            self._latest = snap
            self.refreshes += 1
            return snap

    def snapshot(self) -> HealthSnapshot:
        """The latest snapshot, without waiting once one exists (the first call may refresh)."""
        snap = self._latest
        if snap is None:
            with self._refresh_lock:  # another caller may be taking the first one: wait for it
                snap = self._latest
            if snap is None:
                snap = self.refresh()
        age_s = time.monotonic() - snap.monotonic_at
        if age_s > self.stale_after_s:
            reason = f"no health refresh for {age_s:.0f} s"
            return dataclasses.replace(snap, redis=f"unknown: {reason}", workers=0, problem=reason)
        return snap

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()  # never raises: a failure is logged and kept as an unknown snapshot
