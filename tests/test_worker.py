"""Real RQ worker processes (``python -m workers.worker``) on a real Redis, driven by the real app."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from seggpt_backend.service.contract import SyncJob, Target
from seggpt_backend.service.http.predict import predict_job
from seggpt_backend.service.http.protocol import Task
from seggpt_backend.service.server import create_app
from seggpt_backend.service.store.queue import RQJobQueue
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.service_support import (
    ImageServer,
    annotation_event,
    cleanup_redis,
    new_prefix,
    png_bytes,
    predict_body,
    redis_url,
    wait_for,
    worker_process,
)

TARGETS = [Target("tag", "image", "image", ("Cat", "Dog"))]


class Deployment:
    def __init__(self, tmp_path: Path) -> None:
        self.prefix = new_prefix()
        self.images = ImageServer()
        self.env = {
            "REDIS_URL": redis_url(),
            "SEGGPT_KEY_PREFIX": self.prefix,
            "LABEL_STUDIO_URL": self.images.url,
            "LABEL_STUDIO_API_KEY": "test-token",
            "SEGGPT_WORKER_HEARTBEAT_S": "0.5",
            "SEGGPT_CHUNK_SIZE": "2",
        }
        self.log = tmp_path / "worker.log"
        self.redis = redis.Redis.from_url(redis_url())
        for i in range(12):
            self.images.add(f"/data/upload/7/q{i}.png", png_bytes(scene(64, 80, seed=100 + i)[0]))
        image, masks = scene(64, 80, seed=1)
        self.images.add("/data/upload/7/ex.png", png_bytes(image))
        self.example = annotation_event(
            "ANNOTATION_CREATED",
            project=7,
            annotation_id=70,
            task_id=70,
            image_url="/data/upload/7/ex.png",
            masks=masks,
        )

    def settings(self, **over) -> Settings:
        return Settings.from_env({**self.env, "SEGGPT_WEIGHTS": "random:tiny"}, **over)

    def client(self, **over) -> TestClient:
        return TestClient(create_app(self.settings(**over)))

    def close(self) -> None:
        self.images.close()
        cleanup_redis(self.prefix)


@pytest.fixture
def dep(tmp_path: Path):
    d = Deployment(tmp_path)
    yield d
    d.close()


def _ready(c: TestClient) -> None:
    wait_for(lambda: c.get("/health").json().get("workers") == 1, timeout=90)


@pytest.mark.slow
def test_worker_serves_batch_and_interactive_requests(dep: Deployment) -> None:
    with worker_process(dep.env, log_path=dep.log), dep.client() as c:
        _ready(c)
        health = c.get("/health").json()
        assert health["mode"] == "redis" and health["redis"] == "ok"
        assert health["engine_version"] == "seggpt-random-tiny-0"  # published by the worker
        assert c.post("/webhook", json=dep.example).json()["stored"] is True
        body = predict_body(
            7, [(1, "/data/upload/7/q0.png"), (2, "/data/upload/7/q1.png"), (3, "/data/upload/7/q2.png")]
        )
        out = c.post("/predict", json=body).json()
        assert len(out["results"]) == 3 and all(isinstance(e, dict) and e["result"] for e in out["results"])
        assert out["model_version"].startswith("seggpt-random-tiny-0.ex-")
        ctx = {
            "result": [
                {
                    "type": "keypointlabels",
                    "to_name": "image",
                    "is_positive": True,
                    "value": {"x": 50, "y": 50, "keypointlabels": ["Dog"]},
                }
            ]
        }
        inter = c.post("/predict", json=predict_body(7, [(1, "/data/upload/7/q0.png")], context=ctx)).json()
        assert len(inter["results"]) == 1
        assert all(r["value"]["brushlabels"] == ["Dog"] for r in inter["results"][0]["result"])
        text = c.get("/metrics").text
        assert 'seggpt_jobs_total{queue="batch",status="finished"}' in text
        assert "seggpt_job_duration_seconds_bucket" in text


@pytest.mark.slow
def test_interactive_jobs_jump_ahead_of_queued_batch_jobs(dep: Deployment) -> None:
    dep.images.delay_s = 0.4  # each download is slow, so batch jobs pile up
    with dep.client() as c:
        c.post("/webhook", json=dep.example)
        version = c.post(
            "/setup", json={"project": "7.1", "schema": dep.example["project"]["label_config"]}
        ).json()["model_version"]
    queue = RQJobQueue(dep.redis, dep.prefix, job_timeout_s=120)
    tasks = [Task(id=10 + i, data={"image": f"/data/upload/7/q{i}.png"}) for i in range(8)]
    batch_ids = [
        queue.enqueue(
            "batch",
            predict_job(
                project="7",
                model_version=version,
                targets=TARGETS,
                tasks=tasks[i : i + 2],
                channel="b",
                queue="batch",
            ),
        )
        for i in range(0, 8, 2)
    ]
    with worker_process(dep.env, log_path=dep.log):
        fetch = lambda j: Job.fetch(j, connection=dep.redis, serializer=JSONSerializer)  # noqa: E731
        wait_for(lambda: fetch(batch_ids[0]).get_status() == "started", timeout=90, interval=0.02)
        inter = queue.enqueue(
            "interactive",
            predict_job(
                project="7",
                model_version=version,
                targets=TARGETS,
                tasks=[tasks[-1]],
                channel="i",
                queue="interactive",
            ),
        )
        wait_for(lambda: all(fetch(j).get_status() == "finished" for j in [*batch_ids, inter]), timeout=120)
        ended = {j: fetch(j).ended_at for j in [*batch_ids, inter]}
    # The interactive job ran right after the batch job that was running when it arrived.
    assert ended[inter] < ended[batch_ids[1]] < ended[batch_ids[2]] < ended[batch_ids[3]]


@pytest.mark.slow
def test_late_tasks_are_answered_empty_then_written_back_once(dep: Deployment) -> None:
    dep.images.delay_s = 0.8
    with worker_process(dep.env, log_path=dep.log), dep.client(predict_budget_s=1.0) as c:
        _ready(c)
        c.post("/webhook", json=dep.example)
        body = predict_body(7, [(20 + i, f"/data/upload/7/q{i}.png") for i in range(4)])
        out = c.post("/predict", json=body).json()
        answered = {
            t["id"] for t, e in zip(body["tasks"], out["results"], strict=True) if isinstance(e, dict)
        }
        late = {t["id"] for t, e in zip(body["tasks"], out["results"], strict=True) if e == []}
        assert late and answered | late == {20, 21, 22, 23}
        assert any("written back" in m for m in out["messages"])
        wait_for(lambda: len(dep.images.posted) >= len(late), timeout=90)
        time.sleep(1.0)
        posted = [b for path, b in dep.images.posted if path.startswith("/api/predictions")]
        assert sorted(p["task"] for p in posted) == sorted(late)  # exactly once, only the late ones
        assert all(p["model_version"] == out["model_version"] and p["result"] for p in posted)
        # A repeat of the request (Label Studio's tasks not refreshed yet) stores nothing twice:
        # every task was delivered once, by the response or by write-back.
        again = c.post("/predict", json=body).json()
        assert again["results"] == [[], [], [], []]
        time.sleep(1.0)
        assert len([p for p, _ in dep.images.posted if p.startswith("/api/predictions")]) == len(late)


@pytest.mark.slow
def test_heartbeat_stays_fresh_during_a_long_job_and_bad_input_spares_the_worker(dep: Deployment) -> None:
    dep.images.delay_s = 3.0
    dep.images.add("/data/upload/7/bad.png", b"GIF89a broken")
    with worker_process(dep.env, log_path=dep.log) as proc, dep.client() as c:
        _ready(c)
        c.post("/webhook", json=dep.example)
        result: dict = {}
        body = predict_body(7, [(30, "/data/upload/7/q5.png"), (31, "/data/upload/7/bad.png")])
        t = threading.Thread(target=lambda: result.update(c.post("/predict", json=body).json()))
        t.start()
        workers = wait_for(
            lambda: Worker.all(
                connection=dep.redis, queue=RQJobQueue(dep.redis, dep.prefix, job_timeout_s=9).queues["batch"]
            )
        )
        key = workers[0].key
        wait_for(lambda: dep.redis.hget(key, "state") == b"busy", timeout=30, interval=0.05)
        beats = set()
        for _ in range(8):
            beats.add(dep.redis.hget(key, "last_heartbeat"))
            time.sleep(0.4)
        t.join(60)
        assert len(beats) >= 3  # refreshed while the job was downloading/computing
        assert isinstance(result["results"][0], dict) and result["results"][1] == []
        assert any("task 31" in m for m in result["messages"])
        assert proc.poll() is None  # the worker survived the corrupt image


@pytest.mark.slow
def test_a_job_past_its_timeout_fails_but_the_worker_goes_on(dep: Deployment) -> None:
    with (
        worker_process(dep.env, log_path=dep.log) as proc,
        dep.client(job_timeout_s=2, predict_budget_s=2.0) as c,
    ):
        _ready(c)
        c.post("/webhook", json=dep.example)
        dep.images.delay_s = 5.0
        slow = c.post(
            "/predict", json=predict_body(7, [(40, "/data/upload/7/q6.png"), (41, "/data/upload/7/q7.png")])
        )
        assert slow.json()["results"] == [[], []]
        failed = RQJobQueue(dep.redis, dep.prefix, job_timeout_s=2).queues["batch"].failed_job_registry
        wait_for(lambda: failed.count == 1, timeout=60)
        dep.images.delay_s = 0.0
        ok = c.post("/predict", json=predict_body(7, [(42, "/data/upload/7/q8.png")])).json()
        assert isinstance(ok["results"][0], dict)
        assert proc.poll() is None


@pytest.mark.slow
def test_tasks_queued_before_any_worker_are_written_back_with_the_version_setup_reports(
    dep: Deployment,
) -> None:
    with dep.client() as c:
        c.post("/webhook", json=dep.example)
        setup = {"project": "7.1", "schema": dep.example["project"]["label_config"]}
        before = c.post("/setup", json=setup).json()["model_version"]
        assert before.startswith("seggpt-random_tiny.ex-")  # no worker yet: derived from the spec
        body = predict_body(7, [(60, "/data/upload/7/q1.png"), (61, "/data/upload/7/q2.png")])
        assert c.post("/predict", json=body).json()["results"] == [[], []]
        with worker_process(dep.env, log_path=dep.log):
            wait_for(lambda: len(dep.images.posted) == 2, timeout=90)
            after = c.post("/setup", json=setup).json()["model_version"]
        assert after != before and after.startswith("seggpt-random-tiny-0.ex-")
        assert {b["model_version"] for _, b in dep.images.posted} == {after}


class OwnRedis:
    """A ``redis-server`` of the test's own on a free loopback port, to kill and restart."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _pings(self.url), timeout=10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.mark.slow
def test_the_worker_survives_a_redis_restart_and_registers_again(dep: Deployment, tmp_path: Path) -> None:
    own = OwnRedis(tmp_path)
    own.start()
    env = {**dep.env, "REDIS_URL": own.url}
    try:
        with worker_process(env, log_path=dep.log) as proc:
            conn = redis.Redis.from_url(own.url)
            wait_for(lambda: len(Worker.all(connection=conn)) == 1, timeout=90)
            own.kill()  # no persistence: the restarted Redis knows no worker and no job
            time.sleep(2)
            own.start()
            conn = redis.Redis.from_url(own.url)
            wait_for(lambda: len(Worker.all(connection=conn)) == 1, timeout=60)
            assert proc.poll() is None, dep.log.read_text()
            # ...and it takes work again: a job on its queue is done.
            queue = RQJobQueue(conn, dep.prefix, job_timeout_s=60)
            job_id = queue.enqueue("interactive", SyncJob("7", force=True))
            wait_for(
                lambda: (
                    Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status()
                    in ("finished", "failed")
                ),
                timeout=60,
            )
    finally:
        if own.proc is not None and own.proc.poll() is None:
            own.kill()
