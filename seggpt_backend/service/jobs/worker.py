"""The GPU worker: an RQ ``SimpleWorker`` that loads SegGPT once and serves the backend's queues.

Run one worker per GPU and choose the GPU with ``CUDA_VISIBLE_DEVICES``::

    CUDA_VISIBLE_DEVICES=0 seggpt-backend worker --queues interactive,batch
    CUDA_VISIBLE_DEVICES=1 seggpt-backend worker --queues interactive,batch

Design:

- ``SimpleWorker`` runs jobs in the worker process itself: no ``fork()`` after CUDA is
  initialised (a forked child cannot use the parent's CUDA context), and the engine is loaded
  exactly once, before the first job, and reused by every job.
- Queues are listened to in priority order (``interactive`` before ``batch``): RQ's ``BLPOP``
  over several lists serves the first non-empty one.
- A heartbeat thread refreshes the worker's (and the job's) heartbeat during long jobs, so
  monitoring never declares a busy worker dead. A job's heartbeat lives
  ``SEGGPT_WORKER_HEARTBEAT_S + max(10, 2 x SEGGPT_WORKER_HEARTBEAT_S)`` (45 s by default, not
  RQ's fixed +60 s): when a worker is SIGKILLed or OOM-killed, RQ's own abandoned-job cleaning
  (run by every worker's housekeeping and by the server, see ``reclaim_abandoned``) retries its
  job within about a minute.
- Housekeeping every :data:`HOUSEKEEPING_S`: abandoned jobs are retried and undelivered results
  are written back (:meth:`~seggpt_backend.service.jobs.delivery.Delivery.sweep`), so a server killed
  mid-batch loses nothing; between jobs, debounced refreshes whose window ended are run
  (:func:`~seggpt_backend.service.jobs.entry.run_deferred_refreshes`).
- While a job computes, the images of the next queued job are downloaded and decoded in the
  background (:class:`~seggpt_backend.service.jobs.prefetch.ImagePrefetcher`).
- Jobs are JSON (``JSONSerializer``); a job that raises is retried (twice) by RQ; one bad task
  never raises (see :mod:`seggpt_backend.service.jobs.pipeline`). A job past its timeout is
  interrupted (SIGALRM) with :class:`JobTimeout`, which per-task error handling cannot swallow.

Entry point: :func:`run_worker`, started by ``seggpt-backend worker`` (``python -m workers.worker``
is the same command line).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from rq import SimpleWorker
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.worker_registration import REDIS_WORKER_KEYS

from seggpt_backend.service.contract import PredictJob
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.jobs.clients import working_on
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.queue import check_queue_names, reclaim_abandoned, rq_queue_name
from seggpt_backend.settings import Settings, configure_logging

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
HOUSEKEEPING_S = 10.0
# Back-off between attempts to reach Redis again after it went away: doubles from MIN to MAX.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0


class JobTimeout(BaseException):
    """A job ran past its timeout.

    A ``BaseException`` on purpose: job code catches ``Exception`` per task (one bad image must
    not fail a chunk), and RQ's own ``JobTimeoutException`` would be swallowed there and the job
    would run on. RQ's ``perform_job`` catches everything, so the job still fails and is retried.
    """


class JobDeathPenalty(UnixSignalDeathPenalty):
    """SIGALRM-based job timeout (main thread: ``SimpleWorker``) that raises :class:`JobTimeout`."""

    def handle_death_penalty(self, signum: int, frame: Any) -> None:
        if self._exception is JobTimeoutException:
            raise JobTimeout(f"job exceeded its timeout of {self._timeout} s")
        super().handle_death_penalty(signum, frame)


class SegGptWorker(SimpleWorker):
    """``SimpleWorker`` plus a heartbeat thread and next-job image prefetch (see module docstring)."""

    heartbeat_s: float = HEARTBEAT_S
    death_penalty_class = JobDeathPenalty

    def __init__(self, *args: Any, context: jobs.WorkerContext, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.context = context
        self._housekept = self._deferred_checked = 0.0

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long a running job's heartbeat lives: one beat interval plus slack.

        RQ adds a fixed 60 s; a shorter TTL lets a dead worker's job be retried sooner. The beat
        thread renews it every ``heartbeat_s`` (see the module docstring).
        """
        left = job.timeout - working_time if job.timeout and job.timeout > 0 else float("inf")
        return int(min(left, self.heartbeat_s) + max(10.0, 2 * self.heartbeat_s))

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """Beat, and register again if Redis lost this worker (a restart without persistence).

        RQ's dequeue loop survives the outage and reconnects by itself, but its beat only
        refreshes a key: the worker would keep taking jobs while invisible to ``/health`` and to
        RQ's registry cleaning.
        """
        if pipeline is None and not self.connection.sismember(REDIS_WORKER_KEYS, self.key):
            log.warning("worker %s is unknown to Redis (restarted?): registering again", self.name)
            self.connection.delete(self.key)
            self.register_birth()
            self.context.publish_engine()  # the server's model version depends on it
        super().heartbeat(timeout, pipeline)
        self.housekeeping(between_jobs=pipeline is None)

    def housekeeping(self, *, between_jobs: bool = False) -> None:
        """At most every :data:`HOUSEKEEPING_S`: retry abandoned jobs, write back orphaned results;
        ``between_jobs`` (RQ's own beat in the main thread, not the job's beat thread): also run
        the deferred refreshes that are due (they list a project's tasks: not while a job waits)."""
        now = time.monotonic()
        if now - self._housekept >= HOUSEKEEPING_S:
            self._housekept = now
            try:
                reclaim_abandoned(self.queues)
                self.context.delivery.sweep()
            except Exception:  # the next beat tries again; the worker itself goes on
                log.exception("worker housekeeping failed")
        if between_jobs and now - self._deferred_checked >= HOUSEKEEPING_S:
            self._deferred_checked = now
            try:
                jobs.run_deferred_refreshes(self.context)
            except Exception:
                log.exception("deferred refreshes failed")

    def execute_job(self, job: Job, queue: Queue) -> None:
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="seggpt-heartbeat", daemon=True)
        beat.start()
        try:
            self._prefetch_next(job)
            super().execute_job(job, queue)
        finally:
            stop.set()
            beat.join(timeout=5)

    def _beat(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                execution = self.execution
                if execution is not None:
                    self.maintain_heartbeats(job, execution)
                else:
                    self.heartbeat()
            except Exception as exc:  # a missed beat is logged; the job itself goes on
                log.warning("heartbeat failed: %s", exc)

    def _prefetch_next(self, current: Job) -> None:
        """Start downloading the images of the next job waiting in our queues."""
        try:
            for q in self.queues:
                for job_id in q.get_job_ids(0, 2):
                    if job_id == current.id:
                        continue
                    nxt = q.fetch_job(job_id)
                    payload = nxt.args[0] if nxt is not None and nxt.args else None
                    if (
                        isinstance(payload, dict)
                        and nxt is not None
                        and (nxt.func_name or "").endswith("predict_job")
                    ):
                        nxt_job = PredictJob.from_json(payload)
                        with working_on(nxt_job.project):  # its images, with its project's client
                            self.context.prefetcher.warm(nxt_job.image_urls())
                        return
        except Exception as exc:  # prefetch is an optimisation only (a bad payload fails in its job)
            log.debug("prefetch of the next job skipped: %s", exc)


def build_context(settings: Settings, connection: Any) -> jobs.WorkerContext:
    """The worker's context: shared stores on ``connection``, engine loaded lazily by ``.engine``."""
    return jobs.WorkerContext(
        settings,
        RedisKV(connection, settings.key_prefix),
        jobs.engine_loader(settings),
        client=jobs.make_client(settings),
    )


def run_worker(
    settings: Settings, queues: Sequence[str], *, burst: bool = False, max_jobs: int | None = None
) -> None:
    """Load the engine once, then process jobs from ``queues`` (logical names) until stopped.

    ``burst``: exit when the queues are empty (tests, one-off batches). Raises ``SystemExit``
    with a clear message when ``REDIS_URL`` is not set (embedded mode has no separate worker).
    """
    import redis
    import redis.exceptions

    configure_logging(settings)
    if not settings.redis_url:
        raise SystemExit("seggpt-backend worker needs REDIS_URL (without it, `serve` runs jobs in-process)")
    names = check_queue_names([n.strip() for q in queues for n in q.split(",") if n.strip()])
    connection = redis.Redis.from_url(settings.redis_url)
    context = build_context(settings, connection)
    jobs.install(context)
    engine = context.engine  # load now, before taking any job: the first job must not pay for it
    log.info(
        "worker ready: engine %s, queues %s, CUDA_VISIBLE_DEVICES=%s",
        engine.model_version,
        ",".join(names),
        os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
    )
    rq_queues = [
        Queue(rq_queue_name(settings.key_prefix, n), connection=connection, serializer=JSONSerializer)
        for n in names
    ]
    delay = RECONNECT_MIN_S
    try:
        for attempt in itertools.count():
            started = time.monotonic()
            try:
                # A new name per attempt: after a short outage the old registration may still
                # be live in Redis, and RQ refuses two workers of one name. Built inside the
                # try: RQ's constructor talks to Redis too.
                worker = SegGptWorker(
                    rq_queues,
                    connection=connection,
                    context=context,
                    name=f"seggpt-{socket.gethostname()}-{os.getpid()}-{attempt}",
                    # An idle worker beats every worker_ttl - 15 s (RQ's dequeue timeout): keep
                    # it short so a restarted Redis learns of it and a dead one drops out soon.
                    worker_ttl=int(2 * settings.worker_heartbeat_s) + 30,
                )
                worker.heartbeat_s = settings.worker_heartbeat_s
                context.publish_engine()  # again after an outage: a restarted Redis forgot it
                worker.work(burst=burst, max_jobs=max_jobs, logging_level=settings.log_level.upper())
                return
            except redis.exceptions.ConnectionError as exc:
                # Redis went away (restart, network): the engine stays loaded, and the worker
                # waits and registers again instead of exiting (a container without a restart
                # policy would otherwise stay down for good).
                if time.monotonic() - started > RECONNECT_MAX_S:
                    delay = RECONNECT_MIN_S  # it had been working: this is a new outage
                log.warning("Redis unreachable (%s): reconnecting in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, RECONNECT_MAX_S)
    finally:
        context.close()
