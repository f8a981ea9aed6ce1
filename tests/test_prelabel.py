"""Background pre-labelling: task selection, queuing in chunks, and the whole path in embedded mode
(TASKS_CREATED -> worker -> write-back -> progress endpoint and /metrics)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seggpt_backend.service.contract import PredictJob, TaskResult, parse_targets
from seggpt_backend.service.http import prelabel
from seggpt_backend.service.http.protocol import Task
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.server import create_app
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.queue import InProcessJobQueue
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.service_support import (
    LABEL_CONFIG,
    ImageServer,
    JobRecorder,
    annotation_event,
    captured,
    png_bytes,
)

V = "seggpt-x.ex-0123456789"


def _task(
    tid: int, *, annotated: bool = False, cancelled: bool = False, versions: tuple[str, ...] = ()
) -> Task:
    annotations = [{"id": tid, "result": [], "was_cancelled": cancelled}] if annotated else []
    predictions = [{"id": 100 + i, "model_version": v, "result": []} for i, v in enumerate(versions)]
    return Task(
        id=tid, data={"image": f"/data/upload/1/{tid}.png"}, annotations=annotations, predictions=predictions
    )


def test_selection_skips_current_predictions_and_follows_only_and_limit() -> None:
    tasks = [
        _task(1),
        _task(2, annotated=True),
        _task(3, annotated=True, cancelled=True),  # a skipped task is not labelled
        _task(4, versions=(V,)),
        _task(5, versions=("seggpt-x.ex-none",)),  # an older version of this backend
        _task(6, versions=("another-model",)),
    ]
    sel = prelabel.select_tasks(tasks, V)
    assert [t.id for t in sel.chosen] == [1, 3, 5, 6]
    assert (sel.total, sel.have_prediction, sel.labelled) == (6, 1, 1)
    missing = prelabel.select_tasks(tasks, V, only="missing")
    assert [t.id for t in missing.chosen] == [1, 3, 6] and missing.other_version == 1
    everything = prelabel.select_tasks(tasks, V, only="all")
    assert [t.id for t in everything.chosen] == [1, 2, 3, 5, 6]  # never the one holding V
    limited = prelabel.select_tasks(tasks, V, limit=2)
    assert [t.id for t in limited.chosen] == [1, 3] and limited.over_limit == 2
    with pytest.raises(ValueError, match="only must be one of"):
        prelabel.select_tasks(tasks, V, only="some")  # type: ignore[arg-type]


def test_queue_tasks_enqueues_write_back_chunks_counts_progress_and_forgets_old_failures() -> None:
    recorder = JobRecorder()
    started = threading.Event()  # the runner waits: jobs stay queued while the test looks
    queue = InProcessJobQueue(recorder, start=started.wait)
    rt = Runtime(Settings.from_env({}, chunk_size=2), MemoryKV(), queue)
    try:
        rt.results.put("1", V, 3, TaskResult.failure("task 3: image gone"))
        targets = parse_targets(LABEL_CONFIG)
        tasks = [_task(t) for t in (1, 2, 3, 4, 5)]
        queued = prelabel.queue_tasks(rt, "1", targets, tasks, V)
        assert list(queued.jobs.values()) == [[1, 2], [3, 4], [5]]
        assert queued.task_ids == [1, 2, 3, 4, 5]
        assert rt.results.get_many("1", V, [3]) == {}  # the stale failure would read as this run's
        assert rt.progress.get("1").queued == 5
        # The same chunks again: the same (live) jobs, nothing counted twice.
        again = prelabel.queue_tasks(rt, "1", targets, tasks, V)
        assert list(again.jobs) == list(queued.jobs) and rt.progress.get("1").queued == 5
        started.set()
        deadline = time.monotonic() + 10
        while len(recorder.jobs) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        jobs = [j for j in recorder.jobs if isinstance(j, PredictJob)]
        assert [j.task_ids for j in jobs] == [[1, 2], [3, 4], [5]]
        assert all(j.writeback == "always" and j.queue == "batch" and j.model_version == V for j in jobs)
        assert jobs[0].tasks[0].images == {"image": "/data/upload/1/1.png"}
    finally:
        rt.close()


def test_job_ids_are_per_chunk_and_deterministic() -> None:
    a = prelabel.job_id("p", "1", V, [2, 1])
    assert a == prelabel.job_id("p", "1", V, [1, 2]) and a.startswith("seggpt-prelabel-")
    assert a not in {prelabel.job_id("p", "1", V, [1, 3]), prelabel.job_id("p", "1", "other", [1, 2])}
    assert a != prelabel.job_id("q", "1", V, [1, 2])


# ------------------------------------------------------------------ the whole path (embedded)
EXAMPLE, QUERIES = "/data/upload/1/ex.png", ["/data/upload/1/q1.png", "/data/upload/1/q2.png"]


@pytest.fixture()
def images() -> Any:
    server = ImageServer()
    server.add(EXAMPLE, png_bytes(scene(48, 64, seed=0)[0]))
    for i, path in enumerate(QUERIES, start=1):
        server.add(path, png_bytes(scene(72, 96, seed=i)[0]))
    yield server
    server.close()


def _tasks_created(project: int, tasks: list[tuple[int, str]]) -> dict[str, Any]:
    body = json.loads(json.dumps(captured("webhook_tasks_created")))
    template = body["tasks"][0]
    body["tasks"] = [{**template, "id": t, "project": project, "data": {"image": url}} for t, url in tasks]
    body["project"]["id"] = project
    return body


def test_tasks_created_prelabels_in_the_background_and_progress_shows_it(images: ImageServer) -> None:
    env = {
        "SEGGPT_WEIGHTS": "random:tiny",
        "SEGGPT_DEVICE": "cpu",
        "LABEL_STUDIO_URL": images.url,
        "LABEL_STUDIO_API_KEY": "test-token",
        "SEGGPT_AUTO_PRELABEL": "1",
    }
    with TestClient(create_app(Settings.from_env(env))) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").json().get("workers") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        example = annotation_event(
            "ANNOTATION_CREATED", project=1, annotation_id=1, task_id=1, image_url=EXAMPLE,
            masks=scene(48, 64, seed=0)[1],
        )  # fmt: skip
        assert client.post("/webhook", json=example).json()["stored"] is True
        tasks = [(11, QUERIES[0]), (12, QUERIES[1]), (13, "/data/upload/1/missing.png")]
        answer = client.post("/webhook", json=_tasks_created(1, tasks)).json()
        assert (answer["status"], answer["queued"]) == ("ok", 3), answer
        deadline = time.monotonic() + 60
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = client.get("/projects/1/progress").json()
            if body["left"] == 0:
                break
            time.sleep(0.1)
        assert (body["queued"], body["done"], body["failed"], body["left"]) == (3, 2, 1, 0), body
        (failure,) = body["failures"]
        assert failure["task"] == 13 and "task 13" in failure["reason"] and "missing.png" in failure["reason"]
        written = sorted(b["task"] for path, b in images.posted if path.startswith("/api/predictions"))
        assert written == [11, 12]  # written back through the API, once each
        metrics = client.get("/metrics").text
        assert 'seggpt_prelabel_tasks{project="1",state="done"} 2' in metrics
        assert 'seggpt_prelabel_tasks{project="1",state="failed"} 1' in metrics
        # The same import reported again (a retried webhook): nothing new is written.
        client.post("/webhook", json=_tasks_created(1, tasks[:2]))
        time.sleep(1.0)
        assert sorted(b["task"] for path, b in images.posted if path.startswith("/api/predictions")) == [
            11,
            12,
        ]
        assert client.get("/projects/x/progress").status_code == 422
        assert client.get("/projects/99/progress").json()["queued"] == 0
