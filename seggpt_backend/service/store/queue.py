"""Job queues: RQ on Redis (workers in other processes) or an in-process thread (embedded mode).

Queues, highest priority first (a worker always empties ``interactive`` before it looks at
``batch``):

- ``interactive``: smart-tool requests and single-task predictions (someone is waiting in the
  editor), example (re)fills;
- ``batch``: chunks of "Retrieve Predictions" batches;
- ``tune``: in-context tuning runs (minutes): a worker listening on it after ``interactive``
  runs a tuning job only when nothing interactive waits, but then holds the device until the
  run's time budget ends, so deployments run a dedicated ``--queues tune`` worker
  (docker-compose's ``tuner``) and keep it off the interactive workers.

Job payloads are the typed jobs of :mod:`seggpt_backend.service.contract`, as JSON (RQ's
``JSONSerializer``): task ids, image URLs, label names, never pixels or pickles. Job functions are referenced by dotted path (``seggpt_backend.service.jobs.entry.<kind>_job``)
so the server never imports the engine. In Redis, queue ``name`` is ``<key_prefix>.<name>`` so
deployments sharing a database stay apart.
"""

from __future__ import annotations

import itertools
import logging
import queue as stdqueue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from seggpt_backend.service.contract import Job

log = logging.getLogger(__name__)

QUEUES: tuple[str, ...] = ("interactive", "batch", "tune")
JOB_FUNCTIONS: dict[str, str] = {
    "predict": "seggpt_backend.service.jobs.entry.predict_job",
    "sync": "seggpt_backend.service.jobs.entry.sync_job",
    "prune": "seggpt_backend.service.jobs.entry.prune_job",
    "tune": "seggpt_backend.service.jobs.entry.tune_job",
    "quality": "seggpt_backend.service.jobs.entry.quality_job",
}
RETRIES = 2  # a job that raises (worker crash, OOM) is retried this often; outcomes are idempotent
RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600


def check_queue_names(names: Sequence[str]) -> list[str]:
    """Validate logical queue names and return them in priority order."""
    unknown = [n for n in names if n not in QUEUES]
    if unknown or not names:
        raise ValueError(f"unknown queue(s) {unknown or names!r}; choose from {', '.join(QUEUES)}")
    return sorted(dict.fromkeys(names), key=QUEUES.index)


def rq_queue_name(prefix: str, name: str) -> str:
    """The RQ queue name of logical queue ``name`` under ``prefix``."""
    return f"{prefix}.{name}"


class JobQueue(Protocol):
    """What the HTTP side needs from a queue."""

    embedded: bool

    def enqueue(self, queue: str, job: Job, *, job_id: str | None = None) -> str: ...
    def status(self, job_id: str) -> str | None: ...
    def depths(self) -> dict[str, int]: ...
    def states(self) -> dict[tuple[str, str], int]: ...
    def workers(self) -> int: ...
    def close(self) -> None: ...


class RQJobQueue:
    """Enqueue onto RQ queues in Redis; workers (:mod:`seggpt_backend.service.jobs.worker`) run the jobs."""

    embedded = False

    def __init__(
        self,
        connection: Any,
        prefix: str,
        *,
        job_timeout_s: int,
        live_s: float = 60.0,
        tune_timeout_s: int = 0,
    ) -> None:
        """``job_timeout_s``: RQ job timeout in seconds (``tune_timeout_s`` for tuning jobs, when
        larger). ``live_s``: a worker whose last heartbeat is older than this many seconds
        counts as dead in :meth:`workers`."""
        from rq import Queue
        from rq.serializers import JSONSerializer

        self.connection = connection
        self.tune_timeout_s = tune_timeout_s
        self.prefix = prefix
        self.job_timeout_s = job_timeout_s
        self.live_s = live_s
        self.serializer = JSONSerializer
        self.queues = {
            name: Queue(rq_queue_name(prefix, name), connection=connection, serializer=JSONSerializer)
            for name in QUEUES
        }

    def enqueue(self, queue: str, job: Job, *, job_id: str | None = None) -> str:
        """Enqueue one job; with ``job_id``, a live job of that id (queued, or running on a live
        worker) is reused instead.

        A job whose worker died still reads "started" until RQ's abandoned-job cleaning notices
        its heartbeat expired (:func:`reclaim_abandoned`); it is run here first, so a dead job is
        retried (or, out of retries, replaced) rather than reused.
        """
        from rq import Retry
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob
        from rq.job import JobStatus

        q = self.queues[queue]
        if job_id is not None:
            try:
                existing = RQJob.fetch(job_id, connection=self.connection, serializer=self.serializer)
                status = existing.get_status(refresh=False)
                if status == JobStatus.STARTED:
                    reclaim_abandoned(self.queues.values())
                    status = existing.get_status(refresh=True)
                if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                    return job_id
                existing.delete()
            except NoSuchJobError:
                pass
        timeout = min(self.job_timeout_s, 300) if queue == "interactive" else self.job_timeout_s
        if job.kind == "tune":  # the run's own budget plus validation and downloads
            timeout = max(timeout, self.tune_timeout_s)
        payload = job.to_json()
        rq_job = q.enqueue(
            JOB_FUNCTIONS[job.kind],
            payload,
            job_id=job_id,
            job_timeout=timeout,
            result_ttl=RESULT_TTL_S,
            failure_ttl=FAILURE_TTL_S,
            retry=Retry(max=RETRIES),
            description=f"{job.kind} project={job.project} tasks={len(payload.get('tasks', []))}",
        )
        return str(rq_job.id)

    def status(self, job_id: str) -> str | None:
        """RQ's status of the job (``queued``, ``started``, ``failed``...), ``None`` if unknown."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job as RQJob

        try:
            job = RQJob.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=False)
        return None if status is None else str(status.value if hasattr(status, "value") else status)

    def reclaim_abandoned(self) -> None:
        """Retry jobs whose worker stopped beating (see :func:`reclaim_abandoned`)."""
        reclaim_abandoned(self.queues.values())

    def depths(self) -> dict[str, int]:
        return {name: int(q.count) for name, q in self.queues.items()}

    def states(self) -> dict[tuple[str, str], int]:
        """Jobs per (queue, state) for started, failed, finished and scheduled registries."""
        out: dict[tuple[str, str], int] = {}
        for name, q in self.queues.items():
            out[(name, "started")] = q.started_job_registry.count
            out[(name, "failed")] = q.failed_job_registry.count
            out[(name, "finished")] = q.finished_job_registry.count
            out[(name, "scheduled")] = q.scheduled_job_registry.count
        return out

    def workers(self) -> int:
        """Live workers listening on any of this deployment's queues: registered in RQ and with a
        heartbeat at most ``live_s`` seconds old."""
        from datetime import UTC, datetime, timedelta

        from rq import Worker

        # A SIGKILLed worker never unregisters and its key outlives it by RQ's worker_ttl + 60 s
        # (minutes): only a recent heartbeat tells a live worker from a dead one.
        oldest = datetime.now(UTC) - timedelta(seconds=self.live_s)
        names: set[str] = set()
        for q in self.queues.values():
            for w in Worker.all(connection=self.connection, queue=q):
                beat = w.last_heartbeat
                if beat is None:
                    continue
                if beat.tzinfo is None:  # RQ writes UTC; older versions parsed it naive
                    beat = beat.replace(tzinfo=UTC)
                if beat >= oldest:
                    names.add(w.name)
        return len(names)

    def close(self) -> None:
        pass


Runner = Callable[[Job], Any]


def reclaim_abandoned(queues: Iterable[Any]) -> None:
    """RQ 3's own abandoned-job handling, run now instead of at the next maintenance tick.

    A running job's entry in its queue's ``StartedJobRegistry`` expires when its worker stops
    renewing it (the worker beats every ``SEGGPT_WORKER_HEARTBEAT_S``; see :mod:`seggpt_backend.service.jobs.worker`
    for the TTL). ``cleanup()`` retries each expired job (``Retry(max=RETRIES)``) or, out of
    retries, moves it to the failed registry. Cheap (one sorted-set range per queue), and safe
    to run from every process at once: RQ does the moves in one pipeline per queue. Redis errors
    reach the caller.
    """
    for q in queues:
        q.started_job_registry.cleanup()


class InProcessJobQueue:
    """Embedded mode: one daemon thread runs jobs in priority order (interactive first).

    ``runner(job)`` executes a job; it is retried :data:`RETRIES` times if it
    raises. ``start`` callback (optional) runs first in the thread, e.g. to load the engine, so
    the HTTP server answers ``/health`` while the model loads.
    """

    embedded = True

    def __init__(self, runner: Runner, *, start: Callable[[], object] | None = None) -> None:
        self._runner = runner
        self._start = start
        self._q: stdqueue.PriorityQueue[tuple[int, int, str, Job | None, str]] = stdqueue.PriorityQueue()
        self._seq = itertools.count()
        self._pending: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self.error: str | None = None
        self.running = 0
        self._running_id: str | None = None
        self.finished: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self.failed: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self._thread = threading.Thread(target=self._loop, name="seggpt-embedded-worker", daemon=True)
        self._thread.start()

    def enqueue(self, queue: str, job: Job, *, job_id: str | None = None) -> str:
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}")
        job_id = job_id or f"job-{next(self._seq)}"
        with self._lock:
            if job_id in self._ids:
                return job_id
            self._ids.add(job_id)
            self._pending[queue] += 1
        self._q.put((QUEUES.index(queue), next(self._seq), queue, job, job_id))
        return job_id

    def status(self, job_id: str) -> str | None:
        with self._lock:
            if job_id == self._running_id:
                return "started"
            return "queued" if job_id in self._ids else None

    def depths(self) -> dict[str, int]:
        with self._lock:
            return dict(self._pending)

    def states(self) -> dict[tuple[str, str], int]:
        with self._lock:
            out = {(q, "finished"): n for q, n in self.finished.items()}
            out.update({(q, "failed"): n for q, n in self.failed.items()})
            return out

    def workers(self) -> int:
        return 1 if self.ready.is_set() and self.error is None else 0

    def close(self) -> None:
        self._stop.set()
        self._q.put((-1, -1, "", None, ""))
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        if self._start is not None:
            try:
                self._start()
            except Exception as exc:  # the server keeps answering /health with the reason
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("embedded worker could not start")
        self.ready.set()
        while not self._stop.is_set():
            _, _, queue, job, job_id = self._q.get()
            if self._stop.is_set() or job is None:
                break
            with self._lock:
                self._pending[queue] -= 1
                self.running = 1
                self._running_id = job_id
            ok = False
            for attempt in range(RETRIES + 1):
                try:
                    if self.error is not None:
                        raise RuntimeError(f"embedded worker unavailable: {self.error}")
                    self._runner(job)
                    ok = True
                    break
                except Exception:
                    log.exception(
                        "job %s (%s) failed, attempt %d of %d", job_id, job.kind, attempt + 1, RETRIES + 1
                    )
                    time.sleep(0.1)
            with self._lock:
                self.running = 0
                self._running_id = None
                self._ids.discard(job_id)
                (self.finished if ok else self.failed)[queue] += 1
