"""Webhook events keep the example store current and never compute."""

from __future__ import annotations

import json

import pytest

from seggpt_backend.service.contract import PredictJob, SyncJob
from seggpt_backend.service.errors import RequestError
from seggpt_backend.service.http.protocol import WebhookEvent
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.http.webhooks import handle
from seggpt_backend.service.store.examples import pixels_key
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.queue import InProcessJobQueue
from seggpt_backend.settings import Settings
from tests.service_support import JobRecorder, captured


def _runtime(recorder: JobRecorder, **over) -> Runtime:
    return Runtime(Settings.from_env({}, **over), MemoryKV(), InProcessJobQueue(recorder))


def _event(name: str, **changes) -> WebhookEvent:
    body = json.loads(json.dumps(captured(name)))
    body.update(changes)
    return WebhookEvent(**body)


def test_created_updated_deleted_cycle() -> None:
    rt = _runtime(JobRecorder())
    try:
        out = handle(rt, _event("webhook_annotation_created"))
        assert out["stored"] is True and rt.examples.count("1") == 1
        rev = rt.examples.revisions("1")["1"]
        rt.kv.hset(pixels_key("1", 1, rev), {"image|meta": "{}"})  # pretend pixels were cached
        out = handle(rt, _event("webhook_annotation_updated"))
        assert out["stored"] is True
        (label,) = {r.label for r in rt.examples.records("1")[0].regions}
        assert label == "Cat"  # the update dropped the Dog region
        assert not rt.kv.exists(pixels_key("1", 1, rev))  # stale pixels forgotten
        deleted = _event("webhook_annotations_deleted", annotations=[{"id": 1}, {"id": 99}])
        assert handle(rt, deleted)["removed"] == 1 and rt.examples.count("1") == 0
    finally:
        rt.close()


def test_skipped_or_emptied_annotation_stops_being_an_example() -> None:
    rt = _runtime(JobRecorder())
    try:
        handle(rt, _event("webhook_annotation_created"))
        body = captured("webhook_annotation_updated")
        body["annotation"]["was_cancelled"] = True
        out = handle(rt, WebhookEvent(**body))
        assert out["stored"] is False and rt.examples.count("1") == 0
    finally:
        rt.close()


def test_unsupported_config_and_missing_project_are_ignored_with_a_reason() -> None:
    rt = _runtime(JobRecorder())
    try:
        body = captured("webhook_annotation_created")
        body["project"]["label_config"] = '<View><Image name="image" value="$image"/></View>'
        out = handle(rt, WebhookEvent(**body))
        assert out["status"] == "ignored" and "BrushLabels" in out["reason"]
        assert handle(rt, WebhookEvent(action="ANNOTATION_CREATED"))["status"] == "ignored"
        assert rt.examples.count("1") == 0
    finally:
        rt.close()


def test_start_training_resyncs_examples_in_a_queued_job() -> None:
    rec = JobRecorder()
    rt = _runtime(rec, label_studio_url="http://127.0.0.1:9")
    try:
        out = handle(rt, _event("webhook_start_training"))
        assert out["status"] == "ok" and "re-syncing" in out["detail"]
        assert rec.done.wait(5)
        assert rec.jobs[0] == SyncJob(project="1", force=True)
        # Start Training also asks for a tuning run (issue 9).
        assert [(j.project, j.trigger) for j in rec.jobs[1:]] == [("1", "start-training")]
    finally:
        rt.close()
    rt = _runtime(JobRecorder())
    try:
        assert "examples come from webhooks only" in handle(rt, _event("webhook_start_training"))["detail"]
    finally:
        rt.close()


def test_tasks_created_is_ignored_unless_auto_prelabel_is_on() -> None:
    recorder = JobRecorder()
    rt = _runtime(recorder)
    try:
        out = handle(rt, _event("webhook_tasks_created"))
        assert out["status"] == "ok" and "auto pre-labelling is off" in out["detail"]
        assert rt.progress.get("1").queued == 0 and recorder.jobs == []
    finally:
        rt.close()


def test_tasks_created_queues_write_back_jobs_with_auto_prelabel_on() -> None:
    recorder = JobRecorder()
    rt = _runtime(recorder, auto_prelabel=True, label_studio_url="http://ls.test:8080")
    try:
        handle(rt, _event("webhook_annotation_created"))  # an example: there is something to predict from
        out = handle(rt, _event("webhook_tasks_created"))
        assert (out["status"], out["queued"], out["jobs"]) == ("ok", 1, 1), out
        assert recorder.done.wait(5)
        (job,) = [j for j in recorder.jobs if isinstance(j, PredictJob)]
        assert job.task_ids == [6] and job.writeback == "always" and job.queue == "batch"
        assert job.tasks[0].images == {"image": "/data/local-files/?d=imgs/local0.png"}
        assert rt.progress.get("1").queued == 1
    finally:
        rt.close()


def test_tasks_created_without_url_config_or_examples_is_ignored_with_the_reason() -> None:
    rt = _runtime(JobRecorder(), auto_prelabel=True)
    try:
        assert "LABEL_STUDIO_URL" in handle(rt, _event("webhook_tasks_created"))["reason"]
    finally:
        rt.close()
    rt = _runtime(JobRecorder(), auto_prelabel=True, label_studio_url="http://ls.test:8080")
    try:
        body = captured("webhook_tasks_created")
        body["project"]["label_config"] = '<View><Image name="image" value="$image"/></View>'
        out = handle(rt, WebhookEvent(**body))
        assert out["status"] == "ignored" and "project 1" in out["reason"] and "BrushLabels" in out["reason"]
        rt.examples.reconcile("1", [], started_at=0.0)  # filled from the API: no annotation
        out = handle(rt, _event("webhook_tasks_created"))
        assert out["status"] == "ignored" and "no examples yet" in out["reason"]
        bad = captured("webhook_tasks_created")
        bad["tasks"][0]["id"] = "six"
        with pytest.raises(RequestError, match=r"tasks\[\]\.id"):
            handle(rt, WebhookEvent(**bad))
        assert rt.progress.get("1").queued == 0
    finally:
        rt.close()
