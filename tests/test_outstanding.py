"""The server's watch over enqueued batch jobs, in a real Redis with real RQ queues (no worker).

What a worker would do (store a result, record a pending delivery, finish the job) is written
straight into Redis, so each state the watch can meet is set up exactly; "Redis lost everything"
is every key of the test's namespace deleted, as a restart without persistence leaves it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from seggpt_backend.service.contract import JobTask, PredictJob, Target, TaskResult
from seggpt_backend.service.http.outstanding import Outstanding
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.queue import RQJobQueue
from seggpt_backend.service.store.results import Pending, ResultStore
from tests.service_support import cleanup_redis, new_prefix, redis_url

JOB = PredictJob(
    project="7",
    model_version="seggpt-demo.ex-abc",
    targets=(Target("tag", "image", "image", ("Cat",)),),
    tasks=tuple(JobTask(t, {"image": f"/data/upload/7/{t}.png"}) for t in (1, 2, 3)),
    channel="c0ffee",
    queue="batch",
)
JOB_ID = "seggpt-predict-outstanding"


class Setup:
    def __init__(self) -> None:
        self.prefix = new_prefix()
        self.conn = redis.Redis.from_url(redis_url())
        self.queue = RQJobQueue(self.conn, self.prefix, job_timeout_s=120)
        self.results = ResultStore(RedisKV(self.conn, self.prefix))
        self.watch = Outstanding(self.queue, self.results)

    def computed(self, task_id: int, *, delivered: bool) -> None:
        """As a worker leaves a task: result stored; pending until its delivery succeeded."""
        self.results.put(JOB.project, JOB.model_version, task_id, TaskResult(result=(), score=0.5))
        if not delivered:
            self.results.add_pending(Pending(JOB.project, JOB.model_version, task_id, channel=JOB.channel))

    def finish(self, job_id: str) -> None:
        Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer).set_status(JobStatus.FINISHED)

    def enqueued(self, job_id: str) -> PredictJob:
        raw = self.conn.hget(f"rq:job:{job_id}", "data")
        assert raw is not None
        _func, _instance, args, _kwargs = json.loads(zlib.decompress(raw))
        return PredictJob.from_json(args[0])


@pytest.fixture
def s() -> Iterator[Setup]:
    setup = Setup()
    yield setup
    cleanup_redis(setup.prefix)
    setup.conn.close()


def test_tasks_stay_watched_while_their_job_runs_even_with_results_stored(s: Setup) -> None:
    job_id = s.queue.enqueue("batch", JOB, job_id=JOB_ID)
    s.watch.track("batch", JOB, job_id)
    for t in (1, 2, 3):
        s.computed(t, delivered=True)
    assert s.watch.check() == 0
    assert s.watch.tracked_tasks() == 3  # a running job may still be offering them


def test_a_stored_result_is_watched_until_delivered_and_recovered_after_redis_loses_it(s: Setup) -> None:
    job_id = s.queue.enqueue("batch", JOB, job_id=JOB_ID)
    s.watch.track("batch", JOB, job_id)
    s.computed(1, delivered=True)
    s.computed(2, delivered=False)  # left to a request, or its write-back failed
    s.finish(job_id)  # task 3 never computed (say, the chunk's image host failed mid-way)
    assert s.watch.check() == 0
    assert s.watch.tracked_tasks() == 2  # 2 (pending delivery) and 3 (no result)

    cleanup_redis(s.prefix)  # Redis restarted empty: job, results and pending deliveries gone
    assert s.watch.check() == 1
    again = s.enqueued(job_id)
    assert again.task_ids == [2, 3] and again.recovered
    assert again.model_version == JOB.model_version and again.channel == JOB.channel
    assert s.watch.check() == 0  # queued again: not enqueued twice


def test_answered_and_delivered_tasks_are_dropped_with_the_job(s: Setup) -> None:
    job_id = s.queue.enqueue("batch", JOB, job_id=JOB_ID)
    s.watch.track("batch", JOB, job_id)
    s.watch.delivered(JOB.project, JOB.model_version, [1])  # answered in an HTTP response
    s.computed(2, delivered=True)
    s.computed(3, delivered=True)
    s.finish(job_id)
    s.watch.check()
    assert s.watch.tracked_tasks() == 0
    cleanup_redis(s.prefix)
    assert s.watch.check() == 0  # nothing to recover: all of it reached Label Studio


def test_a_recovered_job_says_so_in_its_contract() -> None:
    job = PredictJob.from_json({**JOB.to_json(), "recovered": True})
    assert job.recovered and job.only([2]).recovered
    legacy = JOB.to_json()
    del legacy["recovered"]  # a job enqueued by an older server
    assert not PredictJob.from_json(legacy).recovered
