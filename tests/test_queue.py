"""Queues: RQ with the JSON serializer in real Redis, and the embedded in-process queue."""

from __future__ import annotations

import json
import threading
import time
import zlib

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from seggpt_backend.service.contract import JobTask, PredictJob, SyncJob, Target
from seggpt_backend.service.store.queue import (
    QUEUES,
    InProcessJobQueue,
    RQJobQueue,
    check_queue_names,
    rq_queue_name,
)
from tests.service_support import cleanup_redis, new_prefix, redis_url


@pytest.fixture
def rq_queue():
    prefix = new_prefix()
    conn = redis.Redis.from_url(redis_url())
    q = RQJobQueue(conn, prefix, job_timeout_s=120)
    yield q
    for queue in q.queues.values():
        for job_id in queue.get_job_ids():
            Job.fetch(job_id, connection=conn, serializer=JSONSerializer).delete()
    cleanup_redis(prefix)


def test_queue_names_are_validated_and_ordered_by_priority() -> None:
    assert check_queue_names(["batch", "interactive", "batch"]) == ["interactive", "batch"]
    assert QUEUES[0] == "interactive"
    with pytest.raises(ValueError, match="unknown queue"):
        check_queue_names(["gpu"])
    with pytest.raises(ValueError):
        check_queue_names([])
    assert rq_queue_name("p", "batch") == "p.batch"


def test_rq_jobs_are_plain_json_and_deduplicated(rq_queue: RQJobQueue) -> None:
    job = PredictJob(
        project="1",
        model_version="v1",
        targets=(Target("tag", "image", "image", ("Cat",)),),
        tasks=(JobTask(3, {"image": "/data/upload/1/a.png"}),),
        channel="ch",
        queue="batch",
    )
    payload = job.to_json()
    job_id = rq_queue.enqueue("batch", job, job_id="seggpt-predict-test1")
    assert rq_queue.enqueue("batch", job, job_id="seggpt-predict-test1") == job_id
    assert rq_queue.depths() == {"interactive": 0, "batch": 1, "tune": 0}
    assert rq_queue.status(job_id) == "queued" and rq_queue.status("nope") is None
    raw = rq_queue.connection.hget(f"rq:job:{job_id}", "data")
    func, _instance, args, kwargs = json.loads(zlib.decompress(raw))  # zlib-compressed JSON, not pickle
    assert func == "seggpt_backend.service.jobs.entry.predict_job" and args == [payload] and kwargs == {}
    assert PredictJob.from_json(args[0]) == job
    rq_job = Job.fetch(job_id, connection=rq_queue.connection, serializer=JSONSerializer)
    assert rq_job.timeout == 120 and rq_job.retries_left == 2
    interactive = rq_queue.enqueue("interactive", job)
    assert Job.fetch(interactive, connection=rq_queue.connection, serializer=JSONSerializer).timeout == 120
    assert rq_queue.states()[("batch", "failed")] == 0
    assert rq_queue.workers() == 0


def test_in_process_queue_runs_interactive_first_and_retries() -> None:
    order: list[str] = []
    gate = threading.Event()
    attempts: dict[str, int] = {}

    def run(job: SyncJob) -> None:
        gate.wait(5)
        name = job.project
        attempts[name] = attempts.get(name, 0) + 1
        if name == "flaky" and attempts[name] == 1:
            raise RuntimeError("transient")
        order.append(name)

    q = InProcessJobQueue(run, start=lambda: time.sleep(0.2))
    try:
        q.enqueue("batch", SyncJob("b1"))
        q.enqueue("batch", SyncJob("b2"))
        q.enqueue("interactive", SyncJob("i1"))
        q.enqueue("batch", SyncJob("flaky"), job_id="same")
        q.enqueue("batch", SyncJob("dup"), job_id="same")  # deduplicated while pending
        assert q.depths()["batch"] == 3 and q.depths()["interactive"] == 1
        gate.set()
        deadline = time.monotonic() + 10
        while len(order) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert order == ["i1", "b1", "b2", "flaky"]
        assert attempts["flaky"] == 2
        assert q.workers() == 1 and q.states()[("batch", "finished")] == 3
    finally:
        q.close()


def test_in_process_queue_reports_a_failed_start() -> None:
    def boom() -> None:
        raise OSError("weights not found")

    q = InProcessJobQueue(lambda *a: None, start=boom)
    try:
        assert q.ready.wait(5)
        assert q.workers() == 0 and "weights not found" in (q.error or "")
    finally:
        q.close()


def test_job_functions_resolve_to_the_worker_entry_points() -> None:
    from rq.utils import import_attribute

    from seggpt_backend.service.jobs import entry
    from seggpt_backend.service.store.queue import JOB_FUNCTIONS

    assert {kind: import_attribute(path) for kind, path in JOB_FUNCTIONS.items()} == {
        "predict": entry.predict_job,
        "sync": entry.sync_job,
        "prune": entry.prune_job,
        "tune": entry.tune_job,
        "quality": entry.quality_job,
    }
