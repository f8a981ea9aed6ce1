"""``POST /webhook``: keep the example store current; record or enqueue, never compute.

Label Studio's webhook timeout is 1 s, so a handler only writes small JSON records (the
annotation's RLE and image URL) or enqueues a job:

- ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``: the annotation becomes (or replaces) an example
  if it has brush regions and was not skipped; otherwise any earlier example from it is removed.
  The next prediction (on any worker) uses it: the record is in the shared store before the
  webhook answers, and the model version changes with it. With ``SEGGPT_TUNE_EVERY`` = N > 0,
  every N-th stored annotation also requests a tuning run (:mod:`.training`). When the task
  carries predictions, a quality job is queued: a worker measures this backend's prediction
  against the submitted annotation (per-label IoU, :mod:`seggpt_backend.service.jobs.quality`).
- ``ANNOTATIONS_DELETED``: those examples are removed (with their cached pixels).
- ``START_TRAINING`` ("Start Training" button): the project's examples are re-synced from the
  Label Studio API, and a tuning run is requested: learned prompts are tuned from the accepted
  annotations and promoted only if they beat what is served (:mod:`seggpt_backend.service.jobs.tuning`);
  with ``SEGGPT_AUTO_REFRESH`` a promotion then re-pre-labels the unlabelled tasks
  (:mod:`seggpt_backend.service.jobs.refresh`; an accepted annotation alone never does).
- ``TASKS_CREATED`` (an import): with ``SEGGPT_AUTO_PRELABEL`` on, the new unlabelled tasks are
  queued for background pre-labelling (:mod:`.prelabel`: written back through the API, one
  prediction per task and version, progress at ``GET /projects/{id}/progress``); off: ignored.
- anything else (``PROJECT_UPDATED``...): acknowledged, nothing to do (the label config is read
  from every request).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from seggpt_backend.service.contract import QualityJob, SyncJob, parse_targets
from seggpt_backend.service.errors import ConfigUnsupported, RequestError
from seggpt_backend.service.http import prelabel
from seggpt_backend.service.http.protocol import WebhookEvent
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.http.training import request_tuning
from seggpt_backend.service.store.examples import record_from_annotation

log = logging.getLogger(__name__)


def enqueue_fill(rt: Runtime, project: str, *, force: bool) -> str | None:
    """Queue a fill of the project's examples from Label Studio (deduplicated per project)."""
    if not rt.reaches_label_studio(project):
        return None
    job_id = "seggpt-sync-" + hashlib.sha1(f"{rt.settings.key_prefix}|{project}".encode()).hexdigest()[:24]
    return rt.queue.enqueue("interactive", SyncJob(project=project, force=force), job_id=job_id)


def enqueue_quality(
    rt: Runtime, project: str, task: dict[str, Any], annotation: dict[str, Any]
) -> str | None:
    """Queue the measurement of the task's prediction against this annotation
    (:mod:`seggpt_backend.service.jobs.quality`), unless there is nothing to measure: no Label
    Studio API to read the prediction from, a skipped annotation, or a task without predictions.
    Deduplicated per annotation revision (``updated_at``)."""
    if not rt.reaches_label_studio(project) or annotation.get("was_cancelled") or task.get("id") is None:
        return None
    if task.get("total_predictions") == 0 and annotation.get("parent_prediction") is None:
        return None
    stamp = f"{rt.settings.key_prefix}|{project}|{annotation['id']}|{annotation.get('updated_at')}"
    job_id = "seggpt-quality-" + hashlib.sha1(stamp.encode()).hexdigest()[:24]
    job = QualityJob(project=project, task_id=int(task["id"]), annotation_id=int(annotation["id"]))
    return rt.queue.enqueue("interactive", job, job_id=job_id)


def _id(value: object, what: str, action: str) -> int:
    """A Label Studio object id (a positive integer, or its decimal string) or a 422 naming it."""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise RequestError(f"webhook {action}: {what} must be a positive integer id, got {value!r}")
    return int(value)


def handle(rt: Runtime, event: WebhookEvent) -> dict[str, Any]:
    """Apply one webhook event; returns a small JSON status (never raises for unknown actions).

    Raises :class:`RequestError` (422) for a malformed field of an event it acts on, naming it.
    """
    rt.metrics.inc("seggpt_webhooks_total", action=event.action)
    project_id = (event.project or {}).get("id")
    if project_id is None:
        return {"status": "ignored", "action": event.action, "reason": "event carries no project id"}
    project = str(_id(project_id, "project.id", event.action))

    if event.action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        annotation, task = event.annotation or {}, event.task or {}
        if annotation.get("id") is None:
            return {"status": "ignored", "action": event.action, "reason": "event carries no annotation"}
        annotation_id = _id(annotation["id"], "annotation.id", event.action)
        if task.get("id") is not None:
            _id(task["id"], "task.id", event.action)
        try:
            targets = parse_targets(str((event.project or {}).get("label_config") or ""))
        except ConfigUnsupported as exc:
            return {"status": "ignored", "action": event.action, "reason": str(exc)}
        fields = {t.to_name: t.data_key for t in targets}
        quality_job = enqueue_quality(rt, project, task, annotation)
        try:
            record = record_from_annotation(annotation, task, fields)
        except (TypeError, ValueError) as exc:  # e.g. a non-numeric RLE run or size
            raise RequestError(
                f"webhook {event.action}: annotation {annotation_id}: malformed brush or polygon region ({exc})"
            ) from exc
        if record is None:
            removed = rt.examples.delete(project, [annotation_id])
            rt.examples.forget_pixels(project, removed)
            return {
                "status": "ok",
                "action": event.action,
                "examples": rt.examples.count(project),
                "stored": False,
                "quality": quality_job,
            }
        old = rt.examples.upsert(project, record)
        if old is not None and old != record.rev:
            rt.examples.forget_pixels(project, {record.annotation_id: old})
        log.info(
            "project %s: annotation %s stored as an example (%d regions)",
            project,
            record.annotation_id,
            len(record.regions),
        )
        answer: dict[str, Any] = {
            "status": "ok",
            "action": event.action,
            "examples": rt.examples.count(project),
            "stored": True,
            "quality": quality_job,
        }
        if old != record.rev and rt.prompts.count_accepted(project, rt.options(project).tune_every):
            answer["tuning"] = request_tuning(rt, project, trigger="auto")
        return answer

    if event.action == "ANNOTATIONS_DELETED":
        ids = [
            _id(a["id"], "annotations[].id", event.action)
            for a in event.annotations or []
            if isinstance(a, dict) and a.get("id") is not None
        ]
        removed = rt.examples.delete(project, ids)
        rt.examples.forget_pixels(project, removed)
        return {
            "status": "ok",
            "action": event.action,
            "removed": len(removed),
            "examples": rt.examples.count(project),
        }

    if event.action == "START_TRAINING":
        job = enqueue_fill(rt, project, force=True)
        return {
            "status": "ok",
            "action": event.action,
            "detail": (
                "re-syncing the project's examples from Label Studio"
                if job
                else "LABEL_STUDIO_URL is not set, examples come from webhooks only"
            ),
            "job": job,
            "tuning": request_tuning(rt, project, trigger="start-training"),
        }

    if event.action == "TASKS_CREATED":
        return _tasks_created(rt, project, event)

    return {"status": "ok", "action": event.action, "detail": "nothing to do for this event"}


def _tasks_created(rt: Runtime, project: str, event: WebhookEvent) -> dict[str, Any]:
    """Queue pre-labelling of imported tasks (``SEGGPT_AUTO_PRELABEL``); enqueues only."""
    action = event.action
    if not rt.options(project).auto_prelabel:
        return {
            "status": "ok",
            "action": action,
            "detail": "nothing to do: auto pre-labelling is off (SEGGPT_AUTO_PRELABEL, Extra params auto_prelabel)",
        }
    if not rt.reaches_label_studio(project):
        return {
            "status": "ignored",
            "action": action,
            "reason": "pre-labelling writes predictions through the API: set LABEL_STUDIO_URL",
        }
    try:
        targets = parse_targets(str((event.project or {}).get("label_config") or ""))
    except ConfigUnsupported as exc:
        return {"status": "ignored", "action": action, "reason": f"project {project}: {exc}"}
    raw = [t for t in event.tasks or [] if isinstance(t, dict)]
    for t in raw:
        _id(t.get("id"), "tasks[].id", action)
    if rt.examples.count(project) == 0 and rt.examples.is_populated(project):
        return {"status": "ignored", "action": action, "reason": f"project {project}: no examples yet"}
    version = rt.model_version(project)
    chosen = prelabel.select_tasks([prelabel.to_task(t, project) for t in raw], version).chosen
    queued = prelabel.queue_tasks(rt, project, targets, chosen, version)
    log.info("project %s: %d imported task(s) queued for pre-labelling", project, len(chosen))
    return {"status": "ok", "action": action, "queued": len(chosen), "jobs": len(queued.jobs)}
