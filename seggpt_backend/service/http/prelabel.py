"""Background pre-labelling: choose a project's tasks and queue them on ``batch`` for write-back.

Used by ``seggpt-backend prelabel`` (:mod:`seggpt_backend.cli_prelabel`) and by the
``TASKS_CREATED`` webhook with ``SEGGPT_AUTO_PRELABEL`` on. It reuses the ``/predict`` job path:
:func:`~seggpt_backend.service.http.predict.predict_job` with ``writeback="always"``, so the
worker (:mod:`seggpt_backend.service.jobs.entry`) computes each chunk with the ChunkRunner and
writes every prediction back through the Label Studio API under the delivery claim
(:mod:`seggpt_backend.service.jobs.delivery`): one prediction per task and model version, however
often a task is queued. Annotations are never read for writing, nor touched.

Task selection (``only``: unlabeled, missing, all) and the chunk job ids are shared with the
workers' refresh: :mod:`seggpt_backend.service.store.prelabel`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from seggpt_backend.service.contract import Target
from seggpt_backend.service.errors import RequestError
from seggpt_backend.service.http.predict import predict_job
from seggpt_backend.service.http.protocol import Task
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.store.prelabel import ONLY, Only, Selection, is_labelled, job_id, select_tasks

__all__ = [
    "ONLY",
    "Only",
    "Queued",
    "Selection",
    "is_labelled",
    "job_id",
    "queue_tasks",
    "select_tasks",
    "to_task",
]


def to_task(raw: Mapping[str, Any], project: str) -> Task:
    """A Label Studio task (API or webhook JSON) as the protocol's :class:`Task`; a 422 naming it."""
    try:
        return Task.model_validate(dict(raw))
    except Exception as exc:  # pydantic's ValidationError, kept out of the message's head
        raise RequestError(f"project {project}: task {raw.get('id')!r} is malformed: {exc}") from exc


@dataclass(frozen=True)
class Queued:
    """What :func:`queue_tasks` enqueued: job id -> its task ids, under ``model_version``;
    ``channel``: the notification list the workers push finished task ids to."""

    project: str
    model_version: str
    channel: str
    jobs: dict[str, list[int]]

    @property
    def task_ids(self) -> list[int]:
        return [t for ids in self.jobs.values() for t in ids]


def queue_tasks(
    rt: Runtime, project: str, targets: list[Target], tasks: Sequence[Task], model_version: str
) -> Queued:
    """Queue ``tasks`` in chunks of ``SEGGPT_CHUNK_SIZE`` on ``batch`` (written back by the
    workers) and count them in the project's progress."""
    channel = uuid.uuid4().hex
    chunk = max(1, rt.settings.chunk_size)
    ids = [t.id for t in tasks]
    # A failure stored by an earlier attempt would read as this run's outcome: compute again.
    for tid, entry in rt.results.get_many(project, model_version, ids).items():
        if not entry.ok:
            rt.results.forget(project, model_version, tid)
    rt.progress.queue(project, ids)
    options = rt.options(project)
    jobs: dict[str, list[int]] = {}
    for i in range(0, len(tasks), chunk):
        part = list(tasks[i : i + chunk])
        job = predict_job(
            project=project,
            model_version=model_version,
            targets=targets,
            tasks=part,
            channel=channel,
            queue="batch",
            writeback="always",
            options=options,
        )
        jid = rt.queue.enqueue(
            "batch", job, job_id=job_id(rt.settings.key_prefix, project, model_version, job.task_ids)
        )
        rt.track("batch", job, jid)
        jobs[jid] = job.task_ids
    rt.metrics.inc("seggpt_prelabel_queued_total", len(ids))
    return Queued(project, model_version, channel, jobs)


def progress_gauges(rt: Runtime) -> dict[str, float]:
    """``/metrics`` gauges of every project with recent pre-labelling: tasks per state
    (queued, done, failed, left), rate in tasks per second and ETA in seconds."""
    out: dict[str, float] = {}
    for project in rt.progress.projects():
        p = rt.progress.get(project, with_failures=False)
        for state, n in (("queued", p.queued), ("done", p.done), ("failed", p.failed), ("left", p.left)):
            out[f'seggpt_prelabel_tasks{{project="{project}",state="{state}"}}'] = float(n)
        out[f'seggpt_prelabel_rate_tasks_per_second{{project="{project}"}}'] = p.rate
        if p.eta_s is not None:
            out[f'seggpt_prelabel_eta_seconds{{project="{project}"}}'] = p.eta_s
    return out
