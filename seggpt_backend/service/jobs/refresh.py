"""Refresh after a new served prompt set: re-pre-label a project's unlabelled tasks (worker side).

With ``SEGGPT_AUTO_REFRESH`` (Extra params ``refresh_on_new_prompts``) on, a tuning run that
promotes a learned prompt (:mod:`.tuning`) changes the model version (``.pr-<digest>``); the
worker that ran it then lists the project's tasks through the Label Studio API and queues, on
``batch`` with ``writeback="always"``, every unlabelled task that holds no prediction of the new
version: the same jobs ``seggpt-backend prelabel`` queues (selection and job ids shared,
:mod:`seggpt_backend.service.store.prelabel`), so each task gets exactly one prediction per
version under the delivery claim, and with ``SEGGPT_REPLACE_SUPERSEDED`` the old prediction is
replaced once the new one is written. Annotations are only read (labelled tasks are left out),
never written. Progress shows at ``GET /projects/{id}/progress`` like any pre-labelling run.

Not on every accepted annotation: an annotation changes the examples digest (``.ex-``) too, but
recomputing the whole project per click would keep the workers busy with predictions that the
next click makes stale again; Label Studio's "Retrieve Predictions", opening a task and
``seggpt-backend prelabel`` compute the new version on demand. A promotion is rare (a tuning run
takes minutes and must beat what is served) and is the change worth pushing to every task.
Start Training's re-sync is not a trigger either: it requests a tuning run, whose promotion is.

Debounce: at most one refresh per project per ``SEGGPT_REFRESH_INTERVAL_S`` (a Redis
``SET NX EX``, :class:`~seggpt_backend.service.store.prelabel.RefreshGate`); a refused refresh is
logged and left to the next one or to ``prelabel``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from seggpt_backend.service.contract import JobTask, PredictJob, ProjectOptions, Target, parse_targets
from seggpt_backend.service.errors import ConfigUnsupported
from seggpt_backend.service.store.prelabel import ApiTask, RefreshGate, job_id, own_predictions, select_tasks

log = logging.getLogger(__name__)


def images(task: ApiTask, targets: tuple[Target, ...]) -> dict[str, str]:
    """``{data key: image URL}`` for the data keys the targets read (missing keys left out)."""
    return {t.data_key: v for t in targets if isinstance(v := task.data.get(t.data_key), str) and v}


def refresh_project(ctx: Any, project: str, *, trigger: str) -> dict[str, Any]:
    """Queue the project's unlabelled tasks lacking a prediction of the current version.

    ``ctx``: the :class:`~seggpt_backend.service.jobs.entry.WorkerContext`. Returns a JSON-ready
    summary (``queued``, ``jobs``, ``model_version``, or ``refreshed: False`` with the reason).
    Raises on a Label Studio failure (the caller logs it; the debounce window is released).
    """
    out: dict[str, Any] = {"project": project, "trigger": trigger, "refreshed": False}
    options = ctx.project_options(project)
    if not options.refresh_on_new_prompts:
        return {**out, "reason": "refresh is off (SEGGPT_AUTO_REFRESH, Extra params refresh_on_new_prompts)"}
    client = ctx.clients.for_project(project)
    queue = ctx.job_queue()
    if client is None or queue is None:
        why = "no Label Studio connection for the project" if client is None else "no job queue"
        return {**out, "reason": why}
    gate = RefreshGate(ctx.kv, ctx.settings.refresh_interval_s)
    if not gate.try_claim(project):
        log.info(
            "project %s: refresh after %s skipped: one ran within %gs", project, trigger, gate.interval_s
        )
        ctx.metrics.inc("seggpt_refresh_total", trigger=trigger, outcome="debounced")
        return {
            **out,
            "reason": f"debounced: a refresh ran within SEGGPT_REFRESH_INTERVAL_S={gate.interval_s:g}; "
            "deferred to the window's end",
            "deferred_until": gate.defer(project),
        }
    try:
        queued = _queue(ctx, queue, client, project, options)
    except BaseException:
        ctx.kv.delete(f"rf:{project}")  # nothing was queued: the next trigger may try again at once
        raise
    ctx.metrics.inc("seggpt_refresh_total", trigger=trigger, outcome="queued")
    log.info(
        "project %s: %s: %d unlabelled task(s) queued for a refresh to %s",
        project,
        trigger,
        queued["queued"],
        queued["model_version"],
    )
    return {**out, "refreshed": True, **queued}


def _queue(ctx: Any, queue: Any, client: Any, project: str, options: ProjectOptions) -> dict[str, Any]:
    pid = int(project)
    try:
        targets = tuple(parse_targets(str(client.get_project(pid).get("label_config") or "")))
    except ConfigUnsupported as exc:
        return {"queued": 0, "jobs": 0, "model_version": None, "reason": f"project {project}: {exc}"}
    tasks, malformed = [], 0
    for raw in client.iter_tasks(pid):
        try:
            tasks.append(ApiTask.from_api(raw))
        except ValueError as exc:
            malformed += 1
            log.warning("project %s: refresh leaves out %s", project, exc)
    version = ctx.model_version(project, options)
    chosen = select_tasks(tasks, version).chosen
    ids = [t.id for t in chosen]
    # A failure stored by an earlier attempt would read as this run's outcome: compute again.
    for tid, entry in ctx.results.get_many(project, version, ids).items():
        if not entry.ok:
            ctx.results.forget(project, version, tid)
    ctx.progress.queue(project, ids)
    channel, size = uuid.uuid4().hex, max(1, ctx.settings.chunk_size)
    jobs = 0
    for i in range(0, len(chosen), size):
        part = chosen[i : i + size]
        job = PredictJob(
            project=project,
            model_version=version,
            targets=targets,
            tasks=tuple(JobTask(t.id, images(t, targets), own_predictions(t)) for t in part),
            channel=channel,
            queue="batch",
            writeback="always",
            options=options,
        )
        queue.enqueue("batch", job, job_id=job_id(ctx.settings.key_prefix, project, version, job.task_ids))
        jobs += 1
    ctx.metrics.inc("seggpt_prelabel_queued_total", len(ids))
    return {"queued": len(ids), "jobs": jobs, "model_version": version, "malformed": malformed}
