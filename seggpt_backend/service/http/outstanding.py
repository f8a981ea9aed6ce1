"""Serve side of the delivery guarantee: enqueued work is remembered until its results exist.

Redis restarted without persistence forgets every queued job; a worker killed mid-job leaves its
job "started". The server remembers, in its own memory, each batch job it enqueued and the tasks
of it that have no result yet. Every ``interval_s`` (5 s) one thread:

1. runs RQ's abandoned-job cleaning (:func:`~seggpt_backend.service.store.queue.reclaim_abandoned`),
   so a job whose worker stopped beating is retried within a heartbeat TTL, not a job timeout;
2. drops tasks whose result is stored (delivering those is the workers' job, see
   :mod:`seggpt_backend.service.jobs.delivery`) or that this server answered in a response;
3. enqueues again what is left of a job Redis no longer knows (same tasks, same version).

A job that failed for good (out of retries) is dropped with an error in the log: its tasks are
computed again by the next "Retrieve Predictions". Memory is bounded (``max_tasks``; the oldest
entries go first, logged). Together with the workers' sweep this covers a single failure of any
one process; if the server and Redis die together, queued work is lost (Label Studio's next
"Retrieve Predictions" asks again).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from seggpt_backend.service.contract import PredictJob
from seggpt_backend.service.store.queue import JobQueue
from seggpt_backend.service.store.results import ResultStore

log = logging.getLogger(__name__)


def _is_redis_down(exc: BaseException) -> bool:
    # redis-py's ConnectionError/TimeoutError are not the builtins; matched by name so this
    # module needs no redis import (embedded mode has none).
    return type(exc).__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError")


@dataclass
class _Tracked:
    queue: str
    job: PredictJob
    job_id: str
    remaining: set[int]
    since: float = field(default_factory=time.monotonic)
    requeued: int = 0


class Outstanding:
    """Enqueued batch jobs this server waits to see computed; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        results: ResultStore,
        *,
        interval_s: float = 5.0,
        max_age_s: float = 24 * 3600.0,
        max_tasks: int = 200_000,
    ) -> None:
        self.queue = queue
        self.results = results
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.max_tasks = max_tasks
        self._jobs: dict[str, _Tracked] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, queue: str, job: PredictJob, job_id: str) -> None:
        with self._lock:
            known = self._jobs.get(job_id)
            if known is not None:
                known.remaining |= set(job.task_ids)
            else:
                self._jobs[job_id] = _Tracked(queue, job, job_id, set(job.task_ids))
            self._trim()

    def delivered(self, project: str, model_version: str, task_ids: list[int]) -> None:
        """These tasks were answered in a response: nothing to watch for them any more."""
        if not task_ids:
            return
        done = set(task_ids)
        with self._lock:
            for t in self._jobs.values():
                if t.job.project == project and t.job.model_version == model_version:
                    t.remaining -= done

    def tracked_tasks(self) -> int:
        with self._lock:
            return sum(len(t.remaining) for t in self._jobs.values())

    def check(self) -> int:
        """One pass (see the module docstring); returns how many jobs were enqueued again."""
        reclaim = getattr(self.queue, "reclaim_abandoned", None)
        if reclaim is not None:
            reclaim()
        with self._lock:
            tracked = list(self._jobs.values())
        requeued = 0
        now = time.monotonic()
        for t in tracked:
            if t.remaining:
                stored = self.results.get_many(t.job.project, t.job.model_version, sorted(t.remaining))
                t.remaining -= set(stored)
            if not t.remaining or now - t.since > self.max_age_s:
                self._drop(t.job_id)
                continue
            status = self.queue.status(t.job_id)
            if status is None:
                job = t.job.only(sorted(t.remaining))
                self.queue.enqueue(t.queue, job, job_id=t.job_id)
                t.requeued += 1
                requeued += 1
                log.warning(
                    "job %s (project %s, %d task(s)) vanished from Redis (restarted?): enqueued again",
                    t.job_id,
                    t.job.project,
                    len(t.remaining),
                )
            elif status == "failed":
                log.error(
                    "job %s (project %s) failed for good; tasks %s stay without a prediction until the "
                    "next Retrieve Predictions (see the worker log)",
                    t.job_id,
                    t.job.project,
                    sorted(t.remaining)[:20],
                )
                self._drop(t.job_id)
        return requeued

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="seggpt-outstanding", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # Redis down: try again next round
                if _is_redis_down(exc):
                    log.warning("checking outstanding jobs: Redis unavailable (%s)", exc)
                else:
                    log.exception("checking outstanding jobs failed")

    def _drop(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def _trim(self) -> None:
        total = sum(len(t.remaining) for t in self._jobs.values())
        while total > self.max_tasks and self._jobs:
            oldest = min(self._jobs.values(), key=lambda t: t.since)
            log.error(
                "outstanding work over %d tasks: no longer watching job %s", self.max_tasks, oldest.job_id
            )
            total -= len(oldest.remaining)
            del self._jobs[oldest.job_id]
