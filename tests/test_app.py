"""The HTTP protocol, replaying recorded Label Studio 1.23 requests against the app.

Embedded mode (no Redis): jobs run in the app's own thread with the tiny random-weight model;
images come from a loopback server standing in for Label Studio's ``/data/upload`` storage.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from fastapi.testclient import TestClient

from seggpt_backend.service.http.guards import WEBHOOK_SECRET_HEADER
from seggpt_backend.service.server import create_app
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.service_support import (
    CAPTURED_UPLOADS,
    ImageServer,
    annotation_event,
    captured,
    captured_image_server,
    predict_body,
)


@pytest.fixture(scope="module")
def images():
    server = captured_image_server()
    yield server
    server.close()


def _settings(images: ImageServer, **over) -> Settings:
    env = {
        "SEGGPT_WEIGHTS": "random:tiny",
        "SEGGPT_DEVICE": "cpu",
        "LABEL_STUDIO_URL": images.url,
        "LABEL_STUDIO_API_KEY": "test-token",
        "SEGGPT_PREDICT_BUDGET_S": "60",
    }
    return Settings.from_env(env, **over)


@pytest.fixture(scope="module")
def client(images):
    with TestClient(create_app(_settings(images))) as c:
        deadline = time.monotonic() + 60
        while c.get("/health").json().get("workers") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield c


def test_health_is_honest(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "UP" and body["model_class"] == "SegGPT"
    assert body["mode"] == "embedded" and body["redis"] == "embedded" and body["workers"] == 1


def test_setup_answers_a_version_and_rejects_unsupported_configs(client: TestClient) -> None:
    body = captured("setup")
    r = client.post("/setup", json=body)
    assert r.status_code == 200
    assert r.json()["model_version"].startswith("seggpt-random-tiny")
    bad = {
        **body,
        "schema": '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
        '<Choice value="a"/></Choices></View>',
    }
    r = client.post("/setup", json=bad)
    assert r.status_code == 422 and "BrushLabels" in r.json()["detail"]
    r = client.post("/setup", json={"project": "1.1"})
    assert r.status_code == 422 and "schema" in r.json()["detail"]


def test_predict_without_examples_returns_empty_predictions_and_a_message(client: TestClient) -> None:
    body = predict_body(50, [(1, CAPTURED_UPLOADS[1]), (2, CAPTURED_UPLOADS[2])])
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    out = r.json()
    assert [e["result"] for e in out["results"]] == [[], []]
    assert any("no examples yet" in m for m in out["messages"])


def test_webhooks_then_predict_replays_recorded_requests(client: TestClient, images: ImageServer) -> None:
    setup = client.post("/setup", json=captured("setup")).json()["model_version"]
    r = client.post("/webhook", json=captured("webhook_annotation_created"))
    assert r.status_code == 200 and r.json()["stored"] is True
    version = client.post("/setup", json=captured("setup")).json()["model_version"]
    assert version != setup  # a new example changes the model version

    body = captured("predict_batch")
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    out = r.json()
    assert len(out["results"]) == 3 and out["model_version"] == version
    for entry in out["results"]:
        assert entry["model_version"] == version and 0 <= entry["score"] <= 1
        for region in entry["result"]:
            assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
            assert (region["original_width"], region["original_height"]) == (96, 72)
            assert region["value"]["brushlabels"][0] in ("Cat", "Dog")

    # Asking again at once (a duplicate request) stores nothing twice: the first answer claimed
    # each task's delivery. Nothing is recomputed (no new downloads).
    hits = dict(images.hits)
    reordered = {**body, "tasks": list(reversed(body["tasks"]))}
    assert client.post("/predict", json=reordered).json()["results"] == [[], [], []]
    assert images.hits == hits
    # Once the claims ran out (the predictions were deleted in Label Studio since), the cached
    # results are answered again, in request order.
    store = client.app.state.runtime.results  # type: ignore[attr-defined]
    for t in body["tasks"]:
        store.release("1", version, t["id"])
    again = client.post("/predict", json=reordered).json()
    assert again["results"] == list(reversed(out["results"]))
    assert images.hits == hits

    # Tasks Label Studio already holds a current prediction for are answered with [] (no duplicate).
    held = {**body, "tasks": [{**body["tasks"][0], "predictions": [{**out["results"][0], "id": 9}]}]}
    assert client.post("/predict", json=held).json()["results"] == [[]]

    # An edit changes the version; deleting the annotation removes the example.
    r = client.post("/webhook", json=captured("webhook_annotation_updated"))
    assert r.json()["stored"] is True
    edited = client.post("/setup", json=captured("setup")).json()["model_version"]
    assert edited != version
    deleted = captured("webhook_annotations_deleted")
    deleted["annotations"] = [{"id": 1}]
    assert client.post("/webhook", json=deleted).json()["removed"] == 1
    assert client.post("/setup", json=captured("setup")).json()["model_version"] == setup


def test_interactive_request_returns_one_refined_region(client: TestClient) -> None:
    client.post("/webhook", json=captured("webhook_annotation_created"))
    body = captured("predict_interactive")
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    out = r.json()
    assert len(out["results"]) == 1
    result = out["results"][0]["result"]
    assert len(result) <= 1
    for region in result:
        assert region["value"]["brushlabels"] == ["Cat"] and region["from_name"] == "tag"
    bad = json.loads(json.dumps(body))
    bad["params"]["context"]["result"][0]["value"]["keypointlabels"] = ["Bird"]
    r = client.post("/predict", json=bad)
    assert r.status_code == 422 and "'Bird'" in r.json()["detail"]


def test_a_corrupt_image_fails_only_its_task(client: TestClient, images: ImageServer) -> None:
    images.add("/data/upload/1/corrupt.png", b"\x89PNG\r\n\x1a\nnot really")
    client.post(
        "/webhook",
        json=annotation_event(
            "ANNOTATION_CREATED",
            project=60,
            annotation_id=600,
            task_id=600,
            image_url=CAPTURED_UPLOADS[1],
            masks=scene(72, 96, seed=1)[1],
        ),
    )
    body = predict_body(
        60, [(601, CAPTURED_UPLOADS[2]), (602, "/data/upload/1/corrupt.png"), (603, CAPTURED_UPLOADS[3])]
    )
    out = client.post("/predict", json=body).json()
    assert out["results"][1] == []
    assert isinstance(out["results"][0], dict) and isinstance(out["results"][2], dict)
    assert any("task 602" in m and "corrupt.png" in m for m in out["messages"])


def test_webhook_events_without_work_are_acknowledged(client: TestClient) -> None:
    r = client.post("/webhook", json=captured("webhook_tasks_created"))
    assert r.status_code == 200 and r.json()["status"] == "ok"
    # Start Training requests a tuning run (a second request joins or follows it: debounced).
    first = client.post("/webhook", json=captured("webhook_start_training")).json()
    assert first["status"] == "ok" and first["tuning"]["status"] == "queued"
    again = client.post("/webhook", json=captured("webhook_start_training")).json()
    assert again["tuning"]["status"] in ("joined", "queued")
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json()["status"] == "ignored"


def test_predict_rejects_an_unsupported_config_with_the_reason(client: TestClient) -> None:
    body = captured("predict_batch")
    body["label_config"] = '<View><Image name="image" value="$image"/><Brush name="b" toName="image"/></View>'
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    assert (
        r.json()["detail"].startswith("unsupported labelling config:") and "BrushLabels" in r.json()["detail"]
    )


def test_validation_errors_name_the_field(client: TestClient) -> None:
    r = client.post("/predict", json={"label_config": "<View/>"})
    assert r.status_code == 422 and "tasks" in r.json()["detail"]
    r = client.post("/predict", json={"tasks": [{"id": "x", "data": {}}], "label_config": "<View/>"})
    assert r.status_code == 422 and "tasks.0.id" in r.json()["detail"]
    r = client.post("/webhook", content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_metrics_and_openapi(client: TestClient) -> None:
    client.post("/predict", json=predict_body(50, [(1, CAPTURED_UPLOADS[1])]))
    text = client.get("/metrics").text
    assert "# TYPE seggpt_predict_requests_total counter" in text
    assert 'seggpt_predict_requests_total{kind="batch"}' in text
    assert 'seggpt_queue_depth{queue="interactive"} 0' in text
    assert "seggpt_workers 1" in text
    spec = client.get("/openapi.json").json()
    assert {"/health", "/setup", "/predict", "/webhook", "/metrics"} <= set(spec["paths"])


def test_basic_auth_protects_everything_but_health(images: ImageServer) -> None:
    app = create_app(_settings(images, basic_auth_user="ls", basic_auth_pass="s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.post("/setup", json=captured("setup"))
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"ls:nope").decode()
        assert (
            c.post("/setup", json=captured("setup"), headers={"Authorization": f"Basic {wrong}"}).status_code
            == 401
        )
        good = base64.b64encode(b"ls:s3cret").decode()
        assert (
            c.post("/setup", json=captured("setup"), headers={"Authorization": f"Basic {good}"}).status_code
            == 200
        )


def test_redis_down_is_reported_not_hidden(images: ImageServer) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(_settings(images, redis_url=f"redis://127.0.0.1:{port}/0"))
    with TestClient(app) as c:
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json()["status"] == "DOWN" and r.json()["redis"].startswith("unavailable")
        r = c.post("/setup", json=captured("setup"))
        assert r.status_code == 503 and "Redis is unavailable" in r.json()["detail"]
        assert "seggpt_redis_up 0" in c.get("/metrics").text


def test_without_workers_predict_answers_at_once_and_leaves_tasks_for_write_back(images: ImageServer) -> None:
    from seggpt_backend.service.store.results import ResultStore
    from tests.service_support import cleanup_redis, new_prefix, redis_url

    prefix = new_prefix()
    app = create_app(_settings(images, redis_url=redis_url(), key_prefix=prefix))
    try:
        with TestClient(app) as c:
            health = c.get("/health").json()
            assert health["status"] == "UP" and health["workers"] == 0 and "no worker" in health["warning"]
            c.post("/webhook", json=captured("webhook_annotation_created"))
            version = c.post("/setup", json=captured("setup")).json()["model_version"]
            out = c.post("/predict", json=captured("predict_batch")).json()
            assert out["results"] == [[], [], []]
            assert any("no worker is running" in m for m in out["messages"])
            store: ResultStore = app.state.runtime.results
            assert app.state.runtime.outstanding.tracked_tasks() == 3  # watched until computed
            assert store.pending() == []  # nothing computed, nothing claimed: a worker will write back
            assert all(store.claim("1", version, t) for t in (3, 4, 5))
            assert (
                'seggpt_queue_depth{queue="batch"} 1' in c.get("/metrics").text
            )  # the chunk waits for a worker
    finally:
        cleanup_redis(prefix)


def _mangled(path: tuple[str | int, ...], value: object, name: str = "webhook_annotation_created") -> dict:
    body = json.loads(json.dumps(captured(name)))
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_mangled(("project", "id"), "one"), "project.id"),
        (_mangled(("project", "id"), {"id": 1}), "project.id"),
        (_mangled(("annotation", "id"), "x1"), "annotation.id"),
        (_mangled(("annotation", "id"), 1.5), "annotation.id"),
        (_mangled(("task", "id"), [3]), "task.id"),
        (
            _mangled(("annotation", "result", 0, "value", "rle"), ["a", "b"]),
            "malformed brush or polygon region",
        ),
        (_mangled(("annotations",), [{"id": "seven"}], "webhook_annotations_deleted"), "annotations[].id"),
    ],
)
def test_a_malformed_webhook_field_is_a_422_naming_it_and_changes_nothing(
    client: TestClient, body: dict, field: str
) -> None:
    before = client.post("/setup", json=captured("setup")).json()["model_version"]
    r = client.post("/webhook", json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    assert client.post("/setup", json=captured("setup")).json()["model_version"] == before


def test_request_bodies_over_the_cap_are_refused_with_413(images: ImageServer) -> None:
    with TestClient(create_app(_settings(images, max_body_bytes=4096))) as c:
        r = c.post(
            "/predict", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and "SEGGPT_MAX_BODY_BYTES" in r.json()["detail"]
        assert c.post("/webhook", json=captured("webhook_annotation_created")).status_code == 200


def test_webhooks_can_require_a_secret_header(images: ImageServer) -> None:
    with TestClient(create_app(_settings(images, webhook_secret="s3cret"))) as c:
        event = captured("webhook_annotation_created")
        assert c.post("/webhook", json=event).status_code == 401
        assert c.post("/webhook", json=event, headers={WEBHOOK_SECRET_HEADER: "wrong"}).status_code == 401
        ok = c.post("/webhook", json=event, headers={WEBHOOK_SECRET_HEADER: "s3cret"})
        assert ok.status_code == 200 and ok.json()["stored"] is True
        assert c.post("/predict", json={"tasks": []}).status_code != 401  # only /webhook needs it
