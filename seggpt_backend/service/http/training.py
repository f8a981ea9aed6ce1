"""Asking for a tuning run: Start Training, ``POST /train``, the automatic trigger.

A request only enqueues a :class:`~seggpt_backend.service.contract.TuneJob` on the ``tune`` queue
(the run itself takes minutes, on a worker: :mod:`seggpt_backend.service.jobs.tuning`).

Debounced per project with two job ids, used in turn: a request while a run of the project is
queued joins it; a request while one runs queues one follow-up (the other id), which later
requests join until it starts. So at most one run waits per project, and annotations accepted
during a run are always seen by a later one.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from seggpt_backend.service.contract import TuneJob, TuneTrigger
from seggpt_backend.service.http.runtime import Runtime

log = logging.getLogger(__name__)

WAITING = ("queued", "deferred", "scheduled")


def tune_job_ids(prefix: str, project: str) -> tuple[str, str]:
    """The two job ids a project's tuning runs alternate between."""
    base = hashlib.sha1(f"{prefix}|{project}".encode()).hexdigest()[:24]
    return f"seggpt-tune-{base}-a", f"seggpt-tune-{base}-b"


def request_tuning(
    rt: Runtime, project: str, *, trigger: TuneTrigger, labels: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Queue (or join) a tuning run of ``project``; returns ``{"job", "status", "detail"}`` with
    status ``queued`` (a new job), ``joined`` (one was waiting) or ``running`` (two are running:
    an extra tuner worker took the follow-up)."""
    ids = tune_job_ids(rt.settings.key_prefix, project)
    states = [rt.queue.status(i) for i in ids]
    for job_id, state in zip(ids, states, strict=True):
        if state in WAITING:
            rt.metrics.inc("seggpt_tune_requests_total", trigger=trigger, outcome="joined")
            return {"job": job_id, "status": "joined", "detail": "a tuning run of this project is queued"}
    free = [i for i, st in zip(ids, states, strict=True) if st != "started"]
    if not free:
        return {"job": ids[0], "status": "running", "detail": "tuning runs of this project are running"}
    job_id = rt.queue.enqueue(
        "tune", TuneJob(project=project, trigger=trigger, labels=labels), job_id=free[0]
    )
    rt.metrics.inc("seggpt_tune_requests_total", trigger=trigger, outcome="queued")
    detail = "tuning run queued"
    if len(free) == 1:
        detail += " (it follows the run in progress)"
    log.info("project %s: %s (%s, job %s)", project, detail, trigger, job_id)
    return {"job": job_id, "status": "queued", "detail": detail}
