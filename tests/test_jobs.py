"""Job entry points: idempotent results, exactly-once write-back, interactive answers (real Redis)."""

from __future__ import annotations

import dataclasses

import pytest

from seggpt_backend.engine.engine import load_engine
from seggpt_backend.service.contract import JobTask, Prompt, Target
from seggpt_backend.service.http.predict import predict_job
from seggpt_backend.service.http.protocol import Task
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.service_support import (
    ImageServer,
    annotation_event,
    cleanup_redis,
    new_prefix,
    png_bytes,
    redis_url,
)

TARGETS = [Target("tag", "image", "image", ("Cat", "Dog"))]


@pytest.fixture(scope="module")
def engine():
    return load_engine("random:tiny", device="cpu")


@pytest.fixture
def ctx(engine):
    images = ImageServer()
    prefix = new_prefix()
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_url(),
            "SEGGPT_KEY_PREFIX": prefix,
            "LABEL_STUDIO_URL": images.url,
            "LABEL_STUDIO_API_KEY": "test-token",
        }
    )
    context = jobs.WorkerContext(
        settings, RedisKV.from_url(redis_url(), prefix), lambda: engine, client=jobs.make_client(settings)
    )
    context.images = images  # type: ignore[attr-defined]
    image, masks = scene(48, 64, seed=1)
    images.add("/data/upload/1/ex.png", png_bytes(image))
    for i in range(3):
        images.add(f"/data/upload/1/q{i}.png", png_bytes(scene(48, 64, seed=10 + i)[0]))
    from seggpt_backend.service.store.examples import record_from_annotation

    ev = annotation_event(
        "ANNOTATION_CREATED",
        project=1,
        annotation_id=1,
        task_id=1,
        image_url="/data/upload/1/ex.png",
        masks=masks,
    )
    context.examples.upsert("1", record_from_annotation(ev["annotation"], ev["task"], {"image": "image"}))
    context.kv.hset("ex:1:state", {"populated": "1"})
    yield context
    context.close()
    images.close()
    cleanup_redis(prefix)


def _payload(task_ids, **kw):
    tasks = [Task(id=t, data={"image": f"/data/upload/1/q{t % 3}.png"}) for t in task_ids]
    return predict_job(
        project="1", model_version="v1", targets=TARGETS, tasks=tasks, channel="ch", queue="batch", **kw
    )


def _with_image(job, url):
    return dataclasses.replace(job, tasks=(JobTask(job.tasks[0].id, {"image": url}),))


def _posted_tasks(ctx) -> list[int]:
    return [b["task"] for p, b in ctx.images.posted if p == "/api/predictions"]


def test_results_are_stored_once_and_a_rerun_does_not_recompute(ctx) -> None:
    ctx.results.hold_waiter("ch")  # a request waits on this channel: it delivers, not the job
    first = jobs.execute_predict(ctx, _payload([10, 11]))
    assert first == {"tasks": 2, "computed": 2, "failed": 0}
    stored = ctx.results.get_many("1", "v1", [10, 11])
    assert set(stored) == {10, 11}  # stored under the requested version...
    actual = ctx.model_version("1")
    assert actual.startswith("seggpt-random-tiny-0.ex-")
    assert all(e.model_version == actual for e in stored.values())  # ...carrying the computed one
    hits = dict(ctx.images.hits)
    assert jobs.execute_predict(ctx, _payload([10, 11])) == {"tasks": 2, "computed": 0}
    assert ctx.images.hits == hits
    assert ctx.results.wait("ch", 0.1)  # the waiting request was woken
    assert ctx.images.posted == []  # left to the live request
    assert sorted(p.task_id for p in ctx.results.pending()) == [10, 11]


def test_results_a_dead_request_left_are_written_back_by_the_sweep_once(ctx) -> None:
    ctx.results.hold_waiter("ch")
    jobs.execute_predict(ctx, _payload([12, 13]))
    assert ctx.delivery.sweep() == 0 and ctx.images.posted == []  # the request still waits
    ctx.results.release_waiter("ch")  # the server died (its lease ran out) or gave up
    assert ctx.delivery.sweep() == 2
    assert sorted(_posted_tasks(ctx)) == [12, 13] and ctx.results.pending() == []
    assert ctx.delivery.sweep() == 0 and len(ctx.images.posted) == 2


def test_write_back_happens_once_and_not_after_the_server_claimed(ctx) -> None:
    # No request waits on the channel: the job writes back, except what a response claimed.
    assert ctx.results.claim("1", ctx.model_version("1"), 21)  # task 21 went out in a response
    jobs.execute_predict(ctx, _payload([20, 21]))
    assert _posted_tasks(ctx) == [20]
    assert ctx.images.posted[0][1]["model_version"] == ctx.model_version("1")
    assert ctx.results.pending() == []  # both settled
    jobs.execute_predict(ctx, _payload([20, 21]))  # a retried job
    ctx.delivery.sweep()
    assert len(ctx.images.posted) == 1


def test_failed_write_back_is_released_for_a_later_attempt(ctx, engine) -> None:
    # Label Studio's API is down (nothing listens on its port); images come from an allowed host.
    host = ctx.images.url.removeprefix("http://")
    down = Settings.from_env(
        {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x", "SEGGPT_ALLOWED_HOSTS": host}
    )
    broken = jobs.WorkerContext(ctx.settings, ctx.kv, lambda: engine, client=jobs.make_client(down))
    try:
        jobs.execute_predict(broken, _with_image(_payload([30]), ctx.images.url + "/data/upload/1/q0.png"))
        assert ctx.results.get_many("1", "v1", [30])[30].ok
        assert "seggpt_writeback_failures_total 1" in ctx.metrics.render()
        assert [p.task_id for p in ctx.results.pending()] == [30]  # kept for a later attempt
        assert broken.delivery.sweep() == 0  # Label Studio still down: retried later, with back-off
        (pending,) = ctx.results.pending()
        assert pending.attempts == 1 and pending.retry_at > pending.since
        assert ctx.delivery.sweep(now=pending.retry_at + 1) == 1  # back up: delivered once
        assert _posted_tasks(ctx) == [30] and ctx.results.pending() == []
    finally:
        broken.close()


def test_a_failed_task_is_not_cached_as_a_result(ctx) -> None:
    payload = _with_image(_payload([40]), "/data/upload/1/missing.png")
    jobs.execute_predict(ctx, payload)
    assert "404" in (ctx.results.get_many("1", "v1", [40])[40].error or "")
    ctx.images.add("/data/upload/1/missing.png", png_bytes(scene(48, 64, seed=3)[0]))
    assert jobs.execute_predict(ctx, payload)["computed"] == 1  # recomputed, not served from the error
    assert ctx.results.get_many("1", "v1", [40])[40].ok


def test_interactive_answers_go_to_the_request_not_the_cache(ctx) -> None:
    prompt = Prompt("Cat", "tag", "image", points=((50.0, 50.0, True),))
    payload = dataclasses.replace(_payload([50], prompt=prompt), channel="req-1")
    jobs.execute_predict(ctx, payload)
    entry = ctx.results.get_interactive("req-1")
    assert entry is not None and entry.ok and all(r["value"]["brushlabels"] == ["Cat"] for r in entry.result)
    assert ctx.results.get_many("1", "v1", [50]) == {}


def test_a_write_back_replaces_the_backends_superseded_predictions(ctx) -> None:
    current = ctx.model_version("1")
    held = [
        {"id": 501, "model_version": "seggpt-random-tiny-0.ex-0123456789", "result": []},  # ours, older
        {"id": 502, "model_version": current, "result": []},  # ours, the version delivered now
        {"id": 503, "model_version": "another-model-v7", "result": []},  # not ours: kept
    ]
    task = Task(id=60, data={"image": "/data/upload/1/q0.png"}, predictions=held)
    job = predict_job(
        project="1", model_version="v1", targets=TARGETS, tasks=[task], channel="ch", queue="batch"
    )
    assert job.tasks[0].supersedes == (
        (501, "seggpt-random-tiny-0.ex-0123456789"),
        (502, current),
    )
    jobs.execute_predict(ctx, job)  # nobody waits: written back, then the older one of ours goes
    assert _posted_tasks(ctx) == [60]
    assert ctx.images.deleted == ["/api/predictions/501/"]
    assert "seggpt_predictions_replaced_total 1" in ctx.metrics.render()


def test_superseded_predictions_are_kept_when_replacing_is_off(ctx, engine) -> None:
    keep = dataclasses.replace(ctx.settings, replace_superseded=False)
    other = jobs.WorkerContext(keep, ctx.kv, lambda: engine, client=jobs.make_client(keep))
    try:
        old = [{"id": 601, "model_version": "seggpt-random-tiny-0.ex-0123456789", "result": []}]
        task = Task(id=61, data={"image": "/data/upload/1/q1.png"}, predictions=old)
        jobs.execute_predict(
            other,
            predict_job(
                project="1", model_version="v1", targets=TARGETS, tasks=[task], channel="ch", queue="batch"
            ),
        )
        assert _posted_tasks(ctx) == [61] and ctx.images.deleted == []
    finally:
        other.close()


def test_a_recovered_job_writes_back_only_what_label_studio_lacks(ctx) -> None:
    # Redis lost the job, its results and claims; task 70's prediction had reached Label Studio.
    import json

    current = ctx.model_version("1")
    held = [{"id": 700, "task": 70, "model_version": current, "result": []}]
    ctx.images.add("/api/predictions/?task=70", json.dumps(held).encode())
    ctx.images.add("/api/predictions/?task=71", b"[]")
    jobs.execute_predict(ctx, dataclasses.replace(_payload([70, 71]), recovered=True))
    assert _posted_tasks(ctx) == [71]
    assert ctx.results.pending() == []  # both settled
    assert not ctx.results.claim("1", current, 70)  # delivered: the claim stays taken


def test_the_workers_score_map_follows_its_weights(ctx, engine) -> None:
    from seggpt_backend.service.jobs.regions import DEMO_CALIBRATION, IDENTITY

    assert ctx.settings.seggpt_weights == "demo" and ctx.options().score_calibration == DEMO_CALIBRATION
    vitl = dataclasses.replace(ctx.settings, seggpt_weights="BAAI/seggpt-vit-large")
    other = jobs.WorkerContext(vitl, ctx.kv, lambda: engine, client=None)
    try:
        assert other.options().score_calibration == IDENTITY
    finally:
        other.close()
