"""Serve side of the delivery guarantee: enqueued work is remembered until it is delivered.

Redis restarted without persistence forgets every queued job, and with them the stored results
and pending deliveries; a worker killed mid-job leaves its job "started". The server remembers,
in its own memory, each batch job it enqueued and the tasks of it not yet delivered. Every
``interval_s`` (5 s) one thread:

1. runs RQ's abandoned-job cleaning (:func:`~seggpt_backend.service.store.queue.reclaim_abandoned`),
   so a job whose worker stopped beating is retried within a heartbeat TTL, not a job timeout;
2. once a job is no longer queued or running, drops its tasks that are settled: a result is
   stored and no delivery of it is pending (see :mod:`seggpt_backend.service.jobs.delivery`);
   tasks this server answered in a response are dropped at once;
3. enqueues again, marked ``recovered``, what is left of a job Redis no longer knows (same
   tasks, same version). Such a job's write-backs first ask Label Studio whether the task has a
   prediction of that version already, since the claims that would say so may be lost too.

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
from dataclasses import dataclass, field, replace

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
            status = self.queue.status(t.job_id)
            if status not in ("queued", "started", "scheduled", "deferred") and t.remaining:
                t.remaining -= self._settled(t)
            if not t.remaining or now - t.since > self.max_age_s:
                self._drop(t.job_id)
                continue
            if status is None:
                job = replace(t.job.only(sorted(t.remaining)), recovered=True)
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

    def _settled(self, t: _Tracked) -> set[int]:
        """Tasks of a job done running whose result is stored and delivered (or undeliverable)."""
        project, version = t.job.project, t.job.model_version
        stored = self.results.get_many(project, version, sorted(t.remaining))
        return {tid for tid in stored if not self.results.is_pending(project, version, tid)}

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
