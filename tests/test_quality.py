"""Suggestion quality: measuring a prediction against the submitted annotation, the bounded
per-project store (real Redis and memory), the webhook that queues the measurement, /metrics."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from seggpt_backend.labelstudio.polygon import mask_to_polygons
from seggpt_backend.service.contract import QualityJob
from seggpt_backend.service.http.health import quality_gauges
from seggpt_backend.service.http.protocol import WebhookEvent
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.http.webhooks import handle
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.jobs.quality import compare, measure, our_prediction
from seggpt_backend.service.store.kv import MemoryKV, RedisKV
from seggpt_backend.service.store.quality import LabelQuality, Measurement, QualityStore, source_of
from seggpt_backend.service.store.queue import InProcessJobQueue
from seggpt_backend.settings import Settings
from tests.service_support import JobRecorder, brush_region, captured, cleanup_redis, new_prefix, redis_url

OURS = "seggpt-demo-1a2b3c.ex-0123456789"
TUNED = OURS + ".pr-abcdef0123"


def _square(top: int, left: int, size: int, shape: tuple[int, int] = (40, 50)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


@pytest.fixture(params=["redis", "memory"])
def kv(request):
    if request.param == "memory":
        yield MemoryKV()
        return
    prefix = new_prefix()
    yield RedisKV.from_url(redis_url(), prefix)
    cleanup_redis(prefix)


# ------------------------------------------------------------------------------------- measuring
def test_iou_per_label_with_missed_and_invented_labels() -> None:
    predicted = [
        brush_region("p1", _square(0, 0, 10), "Cat", score=0.8),
        brush_region("p2", _square(20, 20, 10), "Dog", score=0.6),
    ]
    accepted = [
        brush_region("a1", _square(0, 5, 10), "Cat"),  # half of the predicted square
        brush_region("a2", _square(30, 30, 5), "Bird"),  # never predicted
    ]
    got = {x.label: x for x in compare(predicted, accepted)}
    assert got["Cat"] == LabelQuality("Cat", round(50 / 150, 6), 0.8, 100, 100)
    assert got["Dog"] == LabelQuality("Dog", 0.0, 0.6, 100, 0)  # invented
    assert got["Bird"] == LabelQuality("Bird", 0.0, None, 0, 25)  # missed


def test_polygon_predictions_are_measured_like_masks() -> None:
    truth = _square(5, 5, 20)
    polygon = {
        "type": "polygonlabels",
        "original_width": 50,
        "original_height": 40,
        "score": 0.7,
        "value": {"points": mask_to_polygons(truth, tolerance=0)[0], "polygonlabels": ["Cat"]},
    }
    (x,) = compare([polygon], [brush_region("a", truth, "Cat")])
    assert (x.label, x.iou, x.score) == ("Cat", 1.0, 0.7)


def test_the_prediction_measured_is_ours_and_the_annotation_parent() -> None:
    preds = [
        {"id": 3, "model_version": "someone-else", "created_at": "2026-01-01T00:00:00Z", "result": []},
        {"id": 4, "model_version": OURS, "created_at": "2026-01-01T00:00:00Z", "result": []},
        {"id": 5, "model_version": TUNED, "created_at": "2026-01-03T00:00:00Z", "result": []},
    ]
    ann = {"id": 1, "parent_prediction": 4, "updated_at": "2026-01-04T00:00:00Z"}
    assert our_prediction(ann, preds)["id"] == 4  # type: ignore[index]
    ann = {"id": 1, "parent_prediction": None, "updated_at": "2026-01-02T00:00:00Z"}
    assert our_prediction(ann, preds)["id"] == 4  # type: ignore[index]  # 5 came after the annotation
    ann["updated_at"] = "2026-01-05T00:00:00Z"
    assert our_prediction(ann, preds)["id"] == 5  # type: ignore[index]
    assert our_prediction(ann, preds[:1]) is None


def _task(result: list[dict[str, Any]], *, cancelled: bool = False) -> dict[str, Any]:
    return {
        "id": 7,
        "annotations": [{"id": 11, "was_cancelled": cancelled, "result": result, "updated_at": "2026-02-01"}],
        "predictions": [
            {
                "id": 21,
                "model_version": TUNED,
                "created_at": "2026-01-01",
                "result": [brush_region("p", _square(0, 0, 10), "Cat", score=0.9)],
            }
        ],
    }


def test_measure_a_task() -> None:
    m = measure(_task([brush_region("a", _square(0, 0, 10), "Cat")]), 11)
    assert m is not None
    assert (m.task_id, m.annotation_id, m.prediction_id, m.model_version) == (7, 11, 21, TUNED)
    assert m.source == "tuned" and m.labels[0].iou == 1.0
    assert measure(_task([], cancelled=True), 11) is None  # a skipped task says nothing
    assert measure(_task([]), 99) is None  # annotation not on the task
    emptied = measure(_task([]), 11)  # the annotator deleted our region: IoU 0
    assert emptied is not None and emptied.labels[0].iou == 0.0


# ------------------------------------------------------------------------------------------ store
def _measurement(
    annotation: int, t: float, iou: float, *, label: str = "Cat", version: str = OURS
) -> Measurement:
    return Measurement(
        annotation, annotation + 100, annotation + 200, version, t, (LabelQuality(label, iou, 0.9, 10, 10),)
    )


def test_store_replaces_per_annotation_trims_and_keeps_rolling_means(kv) -> None:
    store = QualityStore(kv, max_entries=5, window=3)
    for i in range(7):
        store.record("4", _measurement(i, 1000.0 + i, iou=i / 10))
    entries = store.entries("4")
    assert [e.annotation_id for e in entries] == [2, 3, 4, 5, 6]  # the oldest two dropped
    assert store.rolling("4")["Cat"] == (pytest.approx(0.5), 3)  # mean of 0.4, 0.5, 0.6
    store.record("4", _measurement(6, 2000.0, iou=1.0))  # the annotation was updated
    assert len(store.entries("4")) == 5
    assert store.rolling("4")["Cat"] == (pytest.approx((0.4 + 0.5 + 1.0) / 3), 3)
    assert store.projects() == ["4"]
    assert Measurement.from_json(entries[0].to_json()) == entries[0]
    assert json.loads(entries[0].to_json())["source"] == "examples"
    assert source_of(TUNED) == "tuned"


def test_unreadable_entries_are_skipped(kv) -> None:
    store = QualityStore(kv)
    store.record("4", _measurement(1, 1.0, 0.5))
    kv.hset("q:4:entries", {"2": "not json"})
    assert [e.annotation_id for e in store.entries("4")] == [1]


# -------------------------------------------------------------------------------- webhook and job
def _event(**task: Any) -> WebhookEvent:
    body = json.loads(json.dumps(captured("webhook_annotation_created")))
    body["task"].update(task)
    return WebhookEvent(**body)


def test_a_submission_on_a_predicted_task_queues_a_measurement() -> None:
    recorder = JobRecorder()
    settings = Settings.from_env({}, label_studio_url="http://ls.invalid:8080")
    rt = Runtime(settings, MemoryKV(), InProcessJobQueue(recorder))
    try:
        out = handle(rt, _event(total_predictions=1))
        assert out["quality"] is not None
        assert recorder.done.wait(5)
        assert QualityJob(project="1", task_id=1, annotation_id=1) in recorder.jobs
        recorder.jobs.clear()
        assert handle(rt, _event(total_predictions=0))["quality"] is None  # nothing to compare with
    finally:
        rt.close()
    rt = Runtime(Settings.from_env({}), MemoryKV(), InProcessJobQueue(JobRecorder()))
    try:  # without Label Studio's API the prediction cannot be read
        assert handle(rt, _event(total_predictions=1))["quality"] is None
    finally:
        rt.close()


class TaskSource:
    """The two ``LabelStudioClient`` calls the quality job makes, answering one task."""

    def __init__(self, task: dict[str, Any]) -> None:
        self.task = task

    def get_task(self, task_id: int) -> dict[str, Any]:
        from seggpt_backend.labelstudio.client import LabelStudioError

        if task_id != self.task["id"]:
            raise LabelStudioError(f"GET /api/tasks/{task_id}: 404", status_code=404)
        return {k: v for k, v in self.task.items() if k != "predictions"} | {"total_predictions": 1}

    def list_predictions(self, task_id: int) -> list[dict[str, Any]]:
        return list(self.task["predictions"])


def test_the_job_records_and_metrics_show_the_rolling_mean() -> None:
    kv = MemoryKV()
    settings = Settings.from_env({})
    source = TaskSource(_task([brush_region("a", _square(0, 5, 10), "Cat")]))
    ctx = jobs.WorkerContext(settings, kv, lambda: None, client=source)  # type: ignore[arg-type,return-value]
    try:
        out = jobs.execute_quality(ctx, QualityJob("9", task_id=7, annotation_id=11))
        assert out["recorded"] is True and out["labels"] == {"Cat": round(50 / 150, 6)}
        gone = jobs.execute_quality(ctx, QualityJob("9", task_id=8, annotation_id=11))
        assert gone["recorded"] is False and "no longer exists" in gone["reason"]
    finally:
        ctx.close()
    (entry,) = QualityStore(kv).entries("9")
    assert entry.prediction_id == 21 and entry.source == "tuned"
    rt = Runtime(settings, kv, InProcessJobQueue(JobRecorder()))
    try:
        gauges = quality_gauges(rt)
        assert gauges['seggpt_suggestion_iou_rolling{label="Cat",project="9"}'] == pytest.approx(
            1 / 3, abs=1e-5
        )
        assert gauges['seggpt_suggestion_iou_samples{label="Cat",project="9"}'] == 1.0
        text = rt.metrics.render(gauges)
        assert "# TYPE seggpt_suggestion_iou_rolling gauge" in text
        assert 'seggpt_suggestions_measured_total{label="Cat",source="tuned"} 1' in text
    finally:
        rt.close()
