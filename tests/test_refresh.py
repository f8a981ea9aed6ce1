"""The refresh after a new served prompt set (service/jobs/refresh.py) and the shared selection
and debounce (service/store/prelabel.py), on a real Redis with real RQ queues, the tiny random
model and a loopback HTTP server answering Label Studio's task list, images and write-backs."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from seggpt_backend.service.contract import PredictJob, ProjectOptions, TuneJob
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.prelabel import ApiTask, RefreshGate, select_tasks
from seggpt_backend.service.store.project_options import ProjectOptionsStore
from seggpt_backend.settings import Settings
from tests.service_support import ImageServer, redis_url
from tests.test_tuning_job import engine, world  # noqa: F401  (fixtures)

CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Cat"/><Label value="Dog"/></BrushLabels></View>'
)
TASKS_PATH = "/api/tasks?project=1&fields=all&page_size=100&page=1"
OLD = "seggpt-random_tiny.ex-0123456789"


def _task(
    tid: int, *, annotations: list[dict[str, Any]] = (), predictions: list[dict[str, Any]] = ()
) -> dict:  # type: ignore[assignment]
    return {
        "id": tid,
        "data": {"image": "/data/upload/1/q.png"},
        "annotations": list(annotations),
        "predictions": list(predictions),
    }


def _serve_project(images: ImageServer, tasks: list[dict[str, Any]]) -> None:
    images.add("/api/projects/1", json.dumps({"id": 1, "label_config": CONFIG}).encode())
    images.add(TASKS_PATH, json.dumps(tasks).encode())


def _queued(ctx: jobs.WorkerContext) -> list[PredictJob]:
    q = Queue(f"{ctx.settings.key_prefix}.batch", connection=ctx.kv.client, serializer=JSONSerializer)  # type: ignore[attr-defined]
    return [PredictJob.from_json(j.args[0]) for j in q.get_jobs()]


def test_selection_reads_api_tasks_and_leaves_labelled_and_current_ones_out() -> None:
    new = "seggpt-random_tiny.ex-0123456789.pr-abcdef0123"
    raw = [
        _task(1),
        _task(2, predictions=[{"id": 7, "model_version": OLD, "result": []}]),
        _task(3, annotations=[{"id": 1, "was_cancelled": False}]),
        _task(4, annotations=[{"id": 2, "was_cancelled": True}]),
        _task(5, predictions=[{"id": 8, "model_version": new, "result": []}]),
    ]
    sel = select_tasks([ApiTask.from_api(t) for t in raw], new)
    assert [t.id for t in sel.chosen] == [1, 2, 4]
    assert (sel.labelled, sel.have_prediction, sel.total) == (1, 1, 5)
    with pytest.raises(ValueError, match="task 'x' is malformed"):
        ApiTask.from_api({"id": "x", "data": {}})


def test_the_gate_lets_one_refresh_per_window_through() -> None:
    from tests.service_support import cleanup_redis, new_prefix

    prefix = new_prefix()
    kv = RedisKV.from_url(redis_url(), prefix)
    try:
        gate = RefreshGate(kv, 1.0)
        assert gate.try_claim("1") and not gate.try_claim("1")
        assert gate.try_claim("2")  # per project
        assert gate.last("1") is not None
        time.sleep(1.1)
        assert gate.try_claim("1")  # the window expired
        open_gate = RefreshGate(kv, 0)
        assert open_gate.try_claim("3") and open_gate.try_claim("3")
    finally:
        cleanup_redis(prefix)


def test_a_promotion_queues_the_unlabelled_tasks_once_and_replaces_old_predictions(world) -> None:  # noqa: F811
    make, images = world
    ctx = make(SEGGPT_TUNE_MARGIN="-1", SEGGPT_AUTO_REFRESH="true", SEGGPT_CHUNK_SIZE="2")
    old = ctx.model_version("1")
    _serve_project(
        images,
        [
            _task(101),
            _task(102, predictions=[{"id": 55, "model_version": old, "result": []}]),
            _task(103, annotations=[{"id": 9, "was_cancelled": False}]),
            _task(104, annotations=[{"id": 10, "was_cancelled": True}]),
        ],
    )
    run = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli"))
    assert run.promoted
    new = ctx.model_version("1")
    assert new.startswith(old + ".pr-")
    queued = _queued(ctx)
    assert sorted(t for j in queued for t in j.task_ids) == [101, 102, 104]  # the labelled 103 left out
    assert all(j.model_version == new and j.writeback == "always" and j.queue == "batch" for j in queued)
    assert len(queued) == 2  # SEGGPT_CHUNK_SIZE=2
    supersedes = {t.id: t.supersedes for j in queued for t in j.tasks}
    assert supersedes[102] == ((55, old),) and supersedes[101] == ()
    assert ctx.progress.get("1").queued == 3
    for job in queued:
        jobs.execute_predict(ctx, job)
        jobs.execute_predict(ctx, job)  # a retried job: nothing written twice
    written = [(path, body) for path, body in images.posted if path.startswith("/api/predictions")]
    assert sorted(body["task"] for _, body in written) == [101, 102, 104]
    assert {body["model_version"] for _, body in written} == {new}
    assert any("/api/predictions/55" in d for d in images.deleted)  # SEGGPT_REPLACE_SUPERSEDED
    assert ctx.progress.get("1").done == 3
    # A second promotion within SEGGPT_REFRESH_INTERVAL_S is debounced: nothing more queued.
    again = jobs.after_promotion(ctx, "1", trigger="tuning")
    assert again is not None and again["refreshed"] is False and "debounced" in again["reason"]
    assert len(_queued(ctx)) == 2
    assert 'seggpt_refresh_total{outcome="debounced",trigger="tuning"} 1' in ctx.metrics.render()


def test_a_debounced_refresh_is_deferred_and_run_once_when_its_window_ends(world) -> None:  # noqa: F811
    make, images = world
    env = {"SEGGPT_AUTO_REFRESH": "true", "SEGGPT_REFRESH_INTERVAL_S": "1"}
    ctx, other = make(**env), make(**env)
    _serve_project(images, [_task(301)])
    first = jobs.after_promotion(ctx, "1", trigger="tuning")
    assert first is not None and first["refreshed"]
    again = jobs.after_promotion(ctx, "1", trigger="tuning")
    assert again is not None and again["refreshed"] is False
    assert time.time() < again["deferred_until"] < time.time() + 1.0
    assert jobs.run_deferred_refreshes(ctx) == []  # its window has not ended
    time.sleep(1.2)
    # Two workers look at once: one of them runs it.
    ran = jobs.run_deferred_refreshes(ctx) + jobs.run_deferred_refreshes(other)
    assert [(r["trigger"], r["refreshed"]) for r in ran] == [("deferred", True)]
    assert jobs.run_deferred_refreshes(ctx) == []
    assert 'seggpt_refresh_total{outcome="queued",trigger="deferred"} 1' in ctx.metrics.render()


def test_refresh_is_off_by_default_and_on_per_project_through_extra_params(world) -> None:  # noqa: F811
    make, images = world
    ctx = make(SEGGPT_REFRESH_INTERVAL_S="0")
    _serve_project(images, [_task(201)])
    off = jobs.after_promotion(ctx, "1", trigger="tuning")
    assert off is not None and off["refreshed"] is False and "off" in off["reason"]
    assert _queued(ctx) == []
    ProjectOptionsStore(ctx.kv).put("1", {"refresh_on_new_prompts": True})
    assert ProjectOptionsStore(ctx.kv).get("1", ProjectOptions.defaults(ctx.settings)).refresh_on_new_prompts
    on = jobs.after_promotion(ctx, "1", trigger="tuning")
    assert on is not None and on["refreshed"] is True and on["queued"] == 1
    # The job carries the project's options (its model version is the project's own).
    (job,) = _queued(ctx)
    assert job.options is not None and job.options.refresh_on_new_prompts


def test_a_label_studio_failure_is_logged_and_releases_the_window(world) -> None:  # noqa: F811
    make, images = world
    ctx = make(SEGGPT_AUTO_REFRESH="true")
    images.add("/api/projects/1", json.dumps({"id": 1, "label_config": CONFIG}).encode())  # no task list: 404
    assert jobs.after_promotion(ctx, "1", trigger="tuning") is None
    assert RefreshGate(ctx.kv, ctx.settings.refresh_interval_s).last("1") is None
    assert 'seggpt_refresh_total{outcome="failed",trigger="tuning"} 1' in ctx.metrics.render()
    _serve_project(images, [_task(301)])
    out = jobs.after_promotion(ctx, "1", trigger="tuning")
    assert out is not None and out["refreshed"] is True and out["queued"] == 1


def test_the_setting_and_the_extra_params_key_validate() -> None:
    assert Settings.from_env({}).auto_refresh is False
    assert Settings.from_env({}).refresh_interval_s == 600.0
    assert Settings.from_env({"SEGGPT_AUTO_REFRESH": "1"}).auto_refresh is True
    with pytest.raises(ValueError, match="SEGGPT_REFRESH_INTERVAL_S"):
        Settings.from_env({"SEGGPT_REFRESH_INTERVAL_S": "-5"})
    from seggpt_backend.service.contract import OptionsError

    with pytest.raises(OptionsError, match="refresh_on_new_prompts"):
        ProjectOptions.from_extra_params({"refresh_on_new_prompts": "maybe"}, defaults=ProjectOptions())


def test_embedded_mode_queues_the_refresh_on_the_in_process_queue(engine) -> None:  # noqa: F811
    from seggpt_backend.service.store.kv import MemoryKV
    from seggpt_backend.service.store.queue import InProcessJobQueue

    images = ImageServer()
    _serve_project(images, [_task(401), _task(402, annotations=[{"id": 1}])])
    settings = Settings.from_env(
        {"LABEL_STUDIO_URL": images.url, "LABEL_STUDIO_API_KEY": "test-token", "SEGGPT_AUTO_REFRESH": "true"}
    )
    ran: list[Any] = []
    ctx = jobs.WorkerContext(settings, MemoryKV(), lambda: engine, client=jobs.make_client(settings))
    assert ctx.job_queue() is None  # no Redis and no queue set: nothing to enqueue onto
    queue = InProcessJobQueue(ran.append)
    ctx.queue = queue
    try:
        out = jobs.after_promotion(ctx, "1", trigger="tuning")
        assert out is not None and out["refreshed"] is True and out["queued"] == 1
        from tests.service_support import wait_for

        (job,) = wait_for(lambda: ran, timeout=10)
        assert isinstance(job, PredictJob) and job.task_ids == [401] and job.writeback == "always"
    finally:
        queue.close()
        ctx.close()
        images.close()
