"""Start Training end to end with a real worker process on a real Redis: trigger, debounce, the
tuning job on the ``tune`` queue, promotion, and the next prediction carrying the new version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from seggpt_backend.service.server import create_app
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.prompts import PromptStore
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.service_support import (
    ImageServer,
    annotation_event,
    captured,
    cleanup_redis,
    new_prefix,
    png_bytes,
    predict_body,
    redis_url,
    wait_for,
    worker_process,
)


@pytest.fixture
def deployment(tmp_path: Path):
    prefix = new_prefix()
    images = ImageServer()
    env = {
        "REDIS_URL": redis_url(),
        "SEGGPT_KEY_PREFIX": prefix,
        "LABEL_STUDIO_URL": images.url,
        "LABEL_STUDIO_API_KEY": "test-token",
        "SEGGPT_WORKER_HEARTBEAT_S": "0.5",
        # A run takes its whole time budget (steps are not the limit) and promotes what it
        # learns: the tiny random model cannot be expected to beat anything.
        "SEGGPT_TUNE_STEPS": "100000",
        "SEGGPT_TUNE_BUDGET_S": "3",
        "SEGGPT_TUNE_MARGIN": "-1",
    }
    yield env, images, tmp_path / "worker.log"
    images.close()
    cleanup_redis(prefix)


def _annotate(c: TestClient, images: ImageServer) -> None:
    for i in range(5):
        image, masks = scene(48, 64, seed=i)
        url = images.add(f"/data/upload/7/e{i}.png", png_bytes(image))
        body = annotation_event(
            "ANNOTATION_CREATED", project=7, annotation_id=70 + i, task_id=70 + i, image_url=url, masks=masks
        )
        assert c.post("/webhook", json=body).json()["stored"] is True
    images.add("/data/upload/7/q.png", png_bytes(scene(48, 64, seed=60)[0]))


@pytest.mark.slow
def test_start_training_tunes_promotes_and_the_next_prediction_carries_the_version(deployment) -> None:
    env, images, log = deployment
    settings = Settings.from_env({**env, "SEGGPT_WEIGHTS": "random:tiny"})
    store = PromptStore(RedisKV(redis.Redis.from_url(redis_url()), env["SEGGPT_KEY_PREFIX"]))
    with (
        worker_process(env, queues="interactive,batch,tune", log_path=log),
        TestClient(create_app(settings)) as c,
    ):
        wait_for(lambda: c.get("/health").json().get("workers") == 1, timeout=90)
        _annotate(c, images)
        version = c.post("/setup", json={"project": "7.1", "schema": captured("setup")["schema"]}).json()
        start = json.loads(json.dumps(captured("webhook_start_training")))
        start["project"]["id"] = 7
        first = c.post("/webhook", json=start).json()["tuning"]
        assert first["status"] == "queued"
        # While it runs, a request queues one follow-up; the next one joins that follow-up.
        wait_for(lambda: store.runs("7") and store.runs("7")[0].status == "running", timeout=60)
        follow = c.post("/train", json={"project": 7}).json()["tuning"]
        assert follow["status"] == "queued" and follow["job"] != first["job"]
        assert c.post("/train", json={"project": {"id": 7}}).json()["tuning"] == {
            **follow,
            "status": "joined",
            "detail": "a tuning run of this project is queued",
        }
        wait_for(lambda: len([r for r in store.runs("7") if r.status == "finished"]) == 2, timeout=120)
        runs = store.runs("7")
        assert {r.trigger for r in runs} == {"start-training", "train"}
        assert all(sorted(r.promoted) == ["Cat", "Dog"] for r in runs)
        # The time budget, not the step count, ended every label's tuning.
        assert all(lr.seconds > 0 and 1 <= lr.steps < 100000 for r in runs for lr in r.labels)
        new_version = c.post("/setup", json={"project": "7.1", "schema": captured("setup")["schema"]}).json()
        assert new_version["model_version"].startswith(version["model_version"] + ".pr-")
        out = c.post("/predict", json=predict_body(7, [(90, "/data/upload/7/q.png")])).json()
        assert out["model_version"] == new_version["model_version"]
        assert out["results"][0]["model_version"] == new_version["model_version"]
        assert out["results"][0]["result"]
        text = c.get("/metrics").text
        assert 'seggpt_tune_runs_total{status="promoted"} 2' in text
        assert 'seggpt_tune_requests_total{outcome="joined",trigger="train"} 1' in text
        assert c.post("/train", json={"project": "x"}).status_code == 422
