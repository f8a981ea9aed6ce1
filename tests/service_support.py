"""Shared helpers for the service tests: real Redis namespaces, a loopback image server standing in
for Label Studio's ``/data/upload`` files, Label Studio annotation builders, real worker processes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seggpt_backend.labelstudio import rle
from tests.fixtures import LS_CAPTURED

REPO = Path(__file__).resolve().parents[1]
CAPTURED = LS_CAPTURED
REDIS_URL = os.environ.get("REDIS_URL_TEST", "redis://127.0.0.1:6379").rstrip("/")
# Tests share one Redis DB and keep apart by key prefix; a parallel session may pick another DB.
TEST_DB = int(os.environ.get("SEGGPT_TEST_REDIS_DB", "11"))
LABEL_CONFIG = (
    '<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <BrushLabels name="tag" toName="image">\n'
    '    <Label value="Cat" background="#FF0000"/>\n    <Label value="Dog" background="#0000FF"/>\n'
    "  </BrushLabels>\n</View>"
)


def captured(name: str) -> dict[str, Any]:
    """The JSON body of a recorded Label Studio request (``ls-captured/<name>.json``)."""
    return json.loads((CAPTURED / f"{name}.json").read_text())["json"]


def redis_url(db: int = TEST_DB) -> str:
    return f"{REDIS_URL}/{db}"


def new_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def cleanup_redis(prefix: str, db: int = TEST_DB, *, url: str | None = None) -> None:
    """Delete every key of a test namespace (ours and RQ's queue keys that embed the prefix);
    ``url`` names another Redis (a test's own server) than the shared one."""
    import redis

    client = redis.Redis.from_url(url or redis_url(db))
    keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
    job_ids: set[bytes] = set()
    for key in keys:  # RQ queues and registries list job ids whose hashes do not embed the prefix
        kind = client.type(key)
        if kind == b"list":
            job_ids.update(client.lrange(key, 0, -1))
        elif kind == b"zset":
            job_ids.update(m.split(b":")[0] for m in client.zrange(key, 0, -1))
    for job_id in job_ids:
        jid = job_id.decode()
        keys += [f"rq:job:{jid}", f"rq:results:{jid}", f"rq:executions:{jid}", f"rq:job:{jid}:dependents"]
    if keys:
        client.delete(*keys)
    ours = [m for m in client.smembers("rq:queues") if prefix.encode() in m]
    if ours:
        client.srem("rq:queues", *ours)
    client.close()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class ImageServer:
    """Loopback HTTP server answering ``GET <path>`` from a dict (bytes), counting requests.

    Stands in for Label Studio's upload storage; ``delay_s`` slows every GET (for budget tests).
    ``POST`` bodies (e.g. ``/api/predictions`` write-backs) are recorded in ``posted`` and echoed
    with status 201, the way Label Studio answers a created prediction; ``DELETE`` paths are
    recorded in ``deleted`` (answered 204).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.delay_s = 0.0
        self.posted: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.auth: list[str | None] = []  # the Authorization header of every GET
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path
                server.hits[path] = server.hits.get(path, 0) + 1
                server.auth.append(self.headers.get("Authorization"))
                if server.delay_s:
                    time.sleep(server.delay_s)
                body = server.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_DELETE(self) -> None:
                server.deleted.append(self.path)
                self.send_response(204)
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                server.posted.append((self.path, body))
                answer = json.dumps(
                    {"id": len(server.posted), **(body if isinstance(body, dict) else {})}
                ).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def brush_region(
    rid: str,
    mask: np.ndarray,
    label: str,
    *,
    score: float | None = None,
    from_name: str = "tag",
    to_name: str = "image",
) -> dict[str, Any]:
    """One Label Studio brushlabels region for an ``(H, W) bool`` mask, as LS 1.23 stores it."""
    h, w = mask.shape
    region: dict[str, Any] = {
        "id": rid,
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "origin": "manual",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": [label]},
    }
    if score is not None:
        region["score"] = score
    return region


def brush_result(
    masks: Mapping[str, np.ndarray], *, from_name: str = "tag", to_name: str = "image"
) -> list[dict]:
    """Label Studio ``result`` with one brushlabels region per label."""
    return [
        brush_region(f"r{i}", mask, label, from_name=from_name, to_name=to_name)
        for i, (label, mask) in enumerate(masks.items())
    ]


def polygon_result(
    masks: Mapping[str, np.ndarray], *, from_name: str = "poly", to_name: str = "image"
) -> list[dict]:
    """Label Studio ``result`` with one closed polygonlabels region per outer ring of each mask
    (percent coordinates, as the editor stores them; traced at 0.5 px tolerance)."""
    from seggpt_backend.labelstudio.polygon import mask_to_polygons

    return [
        {
            "id": f"p{i}{j}",
            "from_name": from_name,
            "to_name": to_name,
            "type": "polygonlabels",
            "original_width": int(mask.shape[1]),
            "original_height": int(mask.shape[0]),
            "image_rotation": 0,
            "value": {"points": points, "polygonlabels": [label], "closed": True},
        }
        for i, (label, mask) in enumerate(masks.items())
        for j, points in enumerate(mask_to_polygons(mask, tolerance=0.5))
    ]


# The uploads named by the captured webhook and predict request (ls-captured/): the annotated image
# first (its RLE is 64 x 48), then three query images.
CAPTURED_UPLOADS = (
    "/data/upload/1/69a30967-img0.png",
    "/data/upload/1/f2681954-img2.png",
    "/data/upload/1/e09a7363-img3.png",
    "/data/upload/1/455cb06a-img4.png",
)


def captured_image_server() -> ImageServer:
    """An :class:`ImageServer` holding :data:`CAPTURED_UPLOADS` (synthetic scenes: 48 x 64, then
    72 x 96). The caller closes it."""
    from tests.fixtures import scene

    server = ImageServer()
    server.add(CAPTURED_UPLOADS[0], png_bytes(scene(48, 64, seed=0)[0]))
    for i, path in enumerate(CAPTURED_UPLOADS[1:], start=1):
        server.add(path, png_bytes(scene(72, 96, seed=i)[0]))
    return server


class JobRecorder:
    """A runner for the in-process job queue that keeps the jobs it is given (``done``: set once
    the first arrived)."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.done = threading.Event()

    def __call__(self, job: Any) -> None:
        self.jobs.append(job)
        self.done.set()


def annotation_event(
    action: str,
    *,
    project: int,
    annotation_id: int,
    task_id: int,
    image_url: str,
    masks: Mapping[str, np.ndarray],
    updated_at: str = "2026-11-22T00:40:19.569997Z",
    label_config: str = LABEL_CONFIG,
) -> dict[str, Any]:
    """An ANNOTATION_CREATED/UPDATED webhook body shaped like the captured one."""
    body = captured("webhook_annotation_created")
    body = json.loads(json.dumps(body))
    body["action"] = action
    body["project"]["id"] = project
    body["project"]["label_config"] = label_config
    body["annotation"].update(
        {
            "id": annotation_id,
            "task": task_id,
            "project": project,
            "result": brush_result(masks),
            "updated_at": updated_at,
        }
    )
    body["task"].update({"id": task_id, "project": project, "data": {"image": image_url}})
    return body


def predict_body(project: int, tasks: list[tuple[int, str]], *, context: Any = None) -> dict[str, Any]:
    """A /predict body shaped like the captured batch request."""
    body = json.loads(json.dumps(captured("predict_batch")))
    template = body["tasks"][0]
    body["tasks"] = [
        {**template, "id": tid, "project": project, "data": {"image": url}} for tid, url in tasks
    ]
    body["project"] = f"{project}.1795307990"
    body["params"]["context"] = context
    return body


@contextmanager
def worker_process(
    env: Mapping[str, str], queues: str = "interactive,batch", *, log_path: Path | None = None
) -> Iterator[subprocess.Popen]:
    """A real worker process (``python -m workers.worker``) with ``SEGGPT_WEIGHTS=random:tiny``."""
    full = {**os.environ, "SEGGPT_WEIGHTS": "random:tiny", "SEGGPT_DEVICE": "cpu", **env}
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.worker", "--queues", queues],
        cwd=REPO,
        env=full,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            out.close()  # type: ignore[union-attr]


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll ``predicate()`` until truthy; returns its value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
