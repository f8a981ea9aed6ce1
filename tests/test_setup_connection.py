"""``/setup`` without LABEL_STUDIO_URL/API key: the hostname and token Label Studio sends are
enough; Extra params per project; ``GET /versions``. Embedded app, loopback image server."""

from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient

from seggpt_backend.service.server import create_app
from seggpt_backend.settings import Settings
from tests.service_support import CAPTURED_UPLOADS, ImageServer, captured, captured_image_server

TOKEN = "ls-legacy-token-0123456789abcdef01234567"


@pytest.fixture(scope="module")
def images():
    server = captured_image_server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def client():
    env = {"SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu", "SEGGPT_PREDICT_BUDGET_S": "60"}
    with TestClient(create_app(Settings.from_env(env))) as c:  # no LABEL_STUDIO_URL / API key
        deadline = time.monotonic() + 60
        while c.get("/health").json().get("workers") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield c


def _setup(images: ImageServer, **over: object) -> dict:
    return {**captured("setup"), "hostname": images.url, "access_token": TOKEN, **over}


def test_setup_connection_is_enough_to_get_predictions(
    client: TestClient, images: ImageServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert client.post("/setup", json=_setup(images)).status_code == 200
    assert client.post("/webhook", json=captured("webhook_annotation_created")).json()["stored"] is True
    version = client.post("/setup", json=_setup(images)).json()["model_version"]
    out = client.post("/predict", json=captured("predict_batch")).json()
    assert [e["model_version"] for e in out["results"]] == [version] * 3
    assert any(e["result"] for e in out["results"]), out["messages"]
    # Images came from the host /setup named, with the token it sent; the token is never logged.
    assert images.hits.get(CAPTURED_UPLOADS[1]) and f"Token {TOKEN}" in images.auth
    assert TOKEN not in caplog.text


def test_setup_refuses_a_hostname_that_is_not_an_http_url(client: TestClient, images: ImageServer) -> None:
    r = client.post("/setup", json=_setup(images, hostname="file:///etc/passwd"))
    assert r.status_code == 422 and "hostname" in r.json()["detail"]


def test_extra_params_errors_name_the_key(client: TestClient, images: ImageServer) -> None:
    r = client.post("/setup", json=_setup(images, extra_params={"k": 0}))
    assert r.status_code == 422 and "project 1" in r.json()["detail"] and "k=0" in r.json()["detail"]
    r = client.post("/setup", json=_setup(images, extra_params={"nope": 1}))
    assert r.status_code == 422 and "unknown key 'nope'" in r.json()["detail"]


def test_extra_params_give_the_project_its_own_version(client: TestClient, images: ImageServer) -> None:
    plain = client.post("/setup", json=_setup(images)).json()["model_version"]
    k1 = client.post("/setup", json=_setup(images, extra_params={"k": 1})).json()["model_version"]
    assert ".p-" not in plain and k1.startswith(plain + ".p-")
    other = client.post("/setup", json=_setup(images, project="2.1795307990")).json()["model_version"]
    assert ".p-" not in other  # project 2 keeps the environment's options
    out = client.post("/predict", json=captured("predict_batch")).json()
    assert out["model_version"] == k1 and all(e["model_version"] == k1 for e in out["results"] if e)
    r = client.request("GET", "/versions", json={"project": "1.1795307990"})
    assert r.status_code == 200 and r.json() == {"versions": [k1], "model_version": k1}
    assert client.get("/versions", params={"project": "2"}).json()["model_version"] == other
    assert client.post("/setup", json=_setup(images, extra_params=None)).json()["model_version"] == plain
