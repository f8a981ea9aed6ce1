"""The Label Studio client against a real Label Studio 1.23 (fixture) and a real local HTTP server.

The e2e tests share one Label Studio for the session (``tests.labelstudio_server``). The
"other host" is a real HTTP server on another loopback port that records every request, so
"no request was made" and "no credentials were sent" are observed, not assumed.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from seggpt_backend.labelstudio.client import (
    DownloadTimeoutError,
    DownloadTooLargeError,
    HostNotAllowedError,
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    is_personal_access_token,
    parse_project_id,
    redact_url,
)
from tests import labelstudio_server
from tests.labelstudio_server import LabelStudio

CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Cat" background="#FF0000"/><Label value="Dog"/></BrushLabels></View>'
)
label_studio = labelstudio_server.label_studio  # the session fixture, registered by this name
LEGACY = "0123456789abcdef0123456789abcdef01234567"


class Recorder(ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 that records requests and serves canned answers by path.

    ``delays`` waits that many seconds before answering a path (headers included); ``trickle``
    sends a path's body one byte at a time, that many seconds apart (a slow or hostile host).
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.delays: dict[str, float] = {}
        self.trickle: dict[str, float] = {}
        self.stopping = threading.Event()  # set by the fixture: pending sleeps end at once
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        status, headers, body = self.server.routes.get(self.path, (404, {}, b"not here"))
        if self.server.stopping.wait(self.server.delays.get(self.path, 0.0)):
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        interval = self.server.trickle.get(self.path)
        if interval is None:
            self.wfile.write(body)
            return
        try:
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                if self.server.stopping.wait(interval):
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on us: what the deadline is for

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_host() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def png_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(24, 32), (40, 20), (17, 33)]):
        path = tmp_path_factory.mktemp("png") / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def uploaded(label_studio: LabelStudio, png_files: list[Path]) -> tuple[int, list[int]]:
    project = label_studio.create_project(CONFIG)
    return project, label_studio.import_images(project, png_files)


# --------------------------------------------------------------------------- without Label Studio
@pytest.mark.parametrize(
    ("value", "expected"), [("1.1795307990", 1), ("42", 42), (" 7.0 ", 7), (12, 12), ("3.", 3)]
)
def test_parse_project_id(value: str | int, expected: int) -> None:
    assert parse_project_id(value) == expected


@pytest.mark.parametrize("value", ["", "abc", ".17", "-1.5", "0.123", 0, -3, True, "1e3"])
def test_parse_project_id_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="invalid Label Studio project"):
        parse_project_id(value)  # type: ignore[arg-type]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _jwt(payload: str = '{"token_type":"refresh","exp":1}') -> str:
    """A JWT-shaped string (not signed by Label Studio)."""
    return ".".join([_b64('{"alg":"HS256","typ":"JWT"}'), _b64(payload), _b64("signature")])


def test_token_kind_detection() -> None:
    assert is_personal_access_token(_jwt())
    assert not is_personal_access_token(LEGACY)
    assert not is_personal_access_token("a.b.c")  # three segments but not a JWT header
    assert not is_personal_access_token(_jwt().rsplit(".", 1)[0])  # truncated (no signature)
    assert LabelStudioClient("http://ls:8080", _jwt()).uses_personal_access_token
    assert not LabelStudioClient("http://ls:8080", LEGACY).uses_personal_access_token


def test_constructor_validates_and_repr_hides_the_key() -> None:
    with pytest.raises(ValueError, match="http"):
        LabelStudioClient("ftp://ls", LEGACY)
    with pytest.raises(ValueError, match="API key"):
        LabelStudioClient("http://ls", "  ")
    client = LabelStudioClient("http://ls:8080/", LEGACY)
    assert client.url == "http://ls:8080"
    assert LEGACY not in repr(client) and "legacy token" in repr(client)


def test_redact_url() -> None:
    url = "https://user:pw@bucket.s3.amazonaws.com/a%20b.png?X-Amz-Signature=abc&X-Amz-Credential=k&v=1"
    shown = redact_url(url)
    assert "pw" not in shown and "abc" not in shown and "=k" not in shown
    assert shown.startswith("https://bucket.s3.amazonaws.com/a%20b.png?") and "v=1" in shown


def test_resolve_url() -> None:
    c = LabelStudioClient("http://ls:8080/sub", LEGACY)
    assert c.resolve_url("/data/upload/1/a.png") == "http://ls:8080/sub/data/upload/1/a.png"
    assert c.resolve_url("/data/local-files/?d=x/y.png") == "http://ls:8080/sub/data/local-files/?d=x/y.png"
    assert c.resolve_url("data/upload/1/a.png") == "http://ls:8080/sub/data/upload/1/a.png"
    assert c.resolve_url("https://cdn.example.com/a.png") == "https://cdn.example.com/a.png"
    resolved = c.resolve_url("s3://bucket/key.png", 12)
    assert resolved.startswith("http://ls:8080/sub/tasks/12/resolve/?fileuri=")
    encoded = resolved.split("fileuri=")[1].replace("%3D", "=")
    assert base64.urlsafe_b64decode(encoded) == b"s3://bucket/key.png"
    with pytest.raises(ValueError, match="needs the task id"):
        c.resolve_url("gs://bucket/key.png")
    with pytest.raises(ValueError, match="empty"):
        c.resolve_url(" ")


def test_host_allow_list() -> None:
    c = LabelStudioClient(
        "http://ls.local:8080",
        LEGACY,
        allowed_hosts=["cdn.example.com", "img.example.org:9000", "*.s3.amazonaws.com"],
    )
    allowed = [
        "http://ls.local:8080/data/upload/1/a.png",
        "http://LS.local:8080/x",
        "https://cdn.example.com/a.png",
        "http://cdn.example.com:81/a.png",
        "http://img.example.org:9000/a.png",
        "https://bucket.s3.amazonaws.com/k.png",
    ]
    refused = [
        "http://ls.local:8081/x",  # same host, other port: another service
        "https://ls.local:8080/x",  # other scheme, other origin
        "http://img.example.org/a.png",
        "https://s3.amazonaws.com/k.png",
        "https://evils3.amazonaws.com/k.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/x",
        "http://ls.local:8080@evil.com/x",
        "http://cdn.example.com.evil.com/a.png",
        "file:///etc/passwd",
        "http://user:pw@cdn.example.com/a.png",
    ]
    assert [u for u in allowed if not c.is_allowed(u)] == []
    assert [u for u in refused if c.is_allowed(u)] == []


def test_data_uri_and_bad_references() -> None:
    c = LabelStudioClient("http://ls:8080", LEGACY, max_download_bytes=10)
    assert c.fetch_image_bytes("data:image/png;base64," + base64.b64encode(b"12345").decode()) == b"12345"
    with pytest.raises(DownloadTooLargeError):
        c.fetch_image_bytes("data:image/png;base64," + base64.b64encode(b"x" * 100).decode())
    with pytest.raises(ValueError, match="base64"):
        c.fetch_image_bytes("data:image/png,plain")
    with pytest.raises(ValueError, match="invalid base64"):
        c.fetch_image_bytes("data:image/png;base64,@@@@")
    with pytest.raises(ValueError, match="scheme-relative"):
        c.fetch_image_bytes("//evil.com/a.png")


def test_other_host_refused_before_any_request(other_host: Recorder) -> None:
    other_host.routes["/a.png"] = (200, {}, b"PNG")
    c = LabelStudioClient("http://127.0.0.1:9", LEGACY)  # nothing listens on port 9
    with pytest.raises(HostNotAllowedError) as info:
        c.fetch_image_bytes(f"{other_host.origin}/a.png")
    assert other_host.requests == []
    assert info.value.url == f"{other_host.origin}/a.png" and "SEGGPT_ALLOWED_HOSTS" in str(info.value)


def test_allowed_host_gets_no_credentials_and_redirects_are_rechecked(other_host: Recorder) -> None:
    host = f"127.0.0.1:{other_host.server_address[1]}"
    other_host.routes["/a.png"] = (200, {}, b"\x89PNG-bytes")
    other_host.routes["/hop"] = (302, {"Location": "/a.png"}, b"")
    other_host.routes["/away"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    other_host.routes["/big"] = (200, {}, b"x" * 5000)
    other_host.routes["/gone"] = (404, {}, b"<html>huge error page</html>")
    c = LabelStudioClient("http://127.0.0.1:9", LEGACY, allowed_hosts=[host], max_download_bytes=4096)

    assert c.fetch_image_bytes(f"{other_host.origin}/a.png") == b"\x89PNG-bytes"
    assert c.fetch_image_bytes(f"{other_host.origin}/hop") == b"\x89PNG-bytes"
    assert all("authorization" not in {k.lower() for k in h} for _, h in other_host.requests)

    with pytest.raises(HostNotAllowedError, match=r"169\.254\.169\.254"):
        c.fetch_image_bytes(f"{other_host.origin}/away")
    with pytest.raises(DownloadTooLargeError, match="4096-byte"):
        c.fetch_image_bytes(f"{other_host.origin}/big")
    with pytest.raises(LabelStudioError) as info:
        c.fetch_image_bytes(f"{other_host.origin}/gone")
    assert info.value.status_code == 404 and info.value.url == f"{other_host.origin}/gone"
    assert "(404)" in str(info.value) and "<html>" not in str(info.value)


def test_download_deadline_must_be_positive() -> None:
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="download_deadline_s"):
            LabelStudioClient("http://ls:8080", LEGACY, download_deadline_s=bad)
    assert LabelStudioClient("http://ls:8080", LEGACY).download_deadline_s == 60.0


def test_trickling_download_is_cut_at_the_deadline(other_host: Recorder) -> None:
    """A host sending 1 byte every 0.2 s (10 s for the whole body) stays under every per-read
    timeout; the 1 s total deadline ends the download, and a fast download still works."""
    slow = "/slow.png?sig=secret-signature"  # a presigned-looking URL: the error must redact it
    other_host.routes[slow] = (200, {}, b"x" * 50)
    other_host.trickle[slow] = 0.2
    other_host.routes["/fast.png"] = (200, {}, b"\x89PNG-fast")
    c = LabelStudioClient(other_host.origin, LEGACY, timeout=5, download_deadline_s=1.0)

    assert c.fetch_image_bytes("/fast.png") == b"\x89PNG-fast"
    started = time.monotonic()
    with pytest.raises(DownloadTimeoutError) as info:
        c.fetch_image_bytes(slow)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 5, elapsed
    err = info.value
    assert isinstance(err, LabelStudioError) and err.status_code == 200
    assert err.url == f"{other_host.origin}/slow.png?sig=REDACTED"
    assert f"{other_host.origin}/slow.png?sig=REDACTED" in str(err) and "1 s download deadline" in str(err)
    assert "secret-signature" not in str(err)
    assert c.fetch_image_bytes("/fast.png") == b"\x89PNG-fast"  # the client is still usable


def test_stalled_headers_and_slow_redirect_chains_hit_the_deadline(other_host: Recorder) -> None:
    """No byte at all (read timeout 30 s) and a chain of slow redirects on an allowed host: both
    end at the deadline, not after the per-request timeout or the whole chain."""
    other_host.routes["/stall.png"] = (200, {}, b"late")
    other_host.delays["/stall.png"] = 10.0
    for i in range(5):
        other_host.routes[f"/hop{i}"] = (302, {"Location": f"/hop{i + 1}"}, b"")
        other_host.delays[f"/hop{i}"] = 0.3
    other_host.routes["/hop5"] = (200, {}, b"end")
    host = f"127.0.0.1:{other_host.server_address[1]}"
    c = LabelStudioClient("http://127.0.0.1:9", LEGACY, allowed_hosts=[host], download_deadline_s=0.8)

    started = time.monotonic()
    with pytest.raises(DownloadTimeoutError, match=r"/stall\.png took longer than the 0\.8 s") as info:
        c.fetch_image_bytes(f"{other_host.origin}/stall.png")
    assert time.monotonic() - started < 5 and info.value.status_code is None

    started = time.monotonic()
    with pytest.raises(DownloadTimeoutError, match="/hop"):
        c.fetch_image_bytes(f"{other_host.origin}/hop0")
    assert time.monotonic() - started < 5
    assert "/hop5" not in [path for path, _ in other_host.requests]  # the chain was not finished
    assert all("authorization" not in {k.lower() for k in h} for _, h in other_host.requests)


def test_connection_error_is_a_label_studio_error() -> None:
    c = LabelStudioClient("http://127.0.0.1:9", LEGACY, timeout=2)
    with pytest.raises(LabelStudioError) as info:
        c.get_project(1)
    assert info.value.status_code is None and "http://127.0.0.1:9/api/projects/1" in str(info.value)
    assert LEGACY not in str(info.value)


# --------------------------------------------------------------------------- real Label Studio
@pytest.mark.parametrize("kind", ["token", "pat"])
@pytest.mark.e2e
@pytest.mark.slow
def test_both_auth_kinds_work(label_studio: LabelStudio, uploaded: tuple[int, list[int]], kind: str) -> None:
    project, task_ids = uploaded
    with LabelStudioClient(label_studio.url, getattr(label_studio, kind)) as c:
        assert c.uses_personal_access_token is (kind == "pat")
        assert c.get_project(project)["label_config"] == CONFIG
        assert c.get_task(task_ids[0])["id"] == task_ids[0]


@pytest.mark.e2e
@pytest.mark.slow
def test_pat_access_token_is_renewed_on_expiry_and_on_401(
    label_studio: LabelStudio, uploaded: tuple[int, list[int]]
) -> None:
    project, _ = uploaded
    with LabelStudioClient(label_studio.url, label_studio.pat) as c:
        c.get_project(project)
        first = c._access
        assert first and first != label_studio.pat
        c._access_expires = 0.0  # as if the 5-minute access token had run out
        c.get_project(project)
        assert c._access != first
        forged = _jwt('{"token_type":"access"}')
        c._access, c._access_expires = forged, 1e12  # unexpired, but Label Studio rejects it (401)
        assert c.get_project(project)["id"] == project
        assert c._access not in (None, first, forged) and c._access.count(".") == 2


@pytest.mark.e2e
@pytest.mark.slow
def test_wrong_keys_give_clear_errors(label_studio: LabelStudio) -> None:
    bad_legacy = "f" * 40
    with pytest.raises(LabelStudioAuthError) as info:
        LabelStudioClient(label_studio.url, bad_legacy).get_project(1)
    err = info.value
    assert err.status_code == 401 and err.url == f"{label_studio.url}/api/projects/1"
    assert "rejected the legacy API token (401)" in str(err) and "Invalid token" in str(err)
    assert bad_legacy not in str(err)

    header, payload, _ = label_studio.pat.split(".")
    bad_pat = f"{header}.{payload}.{base64.urlsafe_b64encode(b'forged').decode().rstrip('=')}"
    with pytest.raises(LabelStudioAuthError) as info:
        LabelStudioClient(label_studio.url, bad_pat).get_project(1)
    err = info.value
    assert err.status_code == 401 and err.url == f"{label_studio.url}/api/token/refresh/"
    assert (
        "refused the personal access token" in str(err)
        and bad_pat not in str(err)
        and payload not in str(err)
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_missing_objects_name_status_and_url(label_studio: LabelStudio) -> None:
    with (
        LabelStudioClient(label_studio.url, label_studio.token) as c,
        pytest.raises(LabelStudioError) as info,
    ):
        c.get_task(987654)
    assert info.value.status_code == 404 and info.value.url == f"{label_studio.url}/api/tasks/987654"
    assert "(404)" in str(info.value)


@pytest.mark.parametrize("kind", ["token", "pat"])
@pytest.mark.e2e
@pytest.mark.slow
def test_upload_download_returns_exact_bytes(
    label_studio: LabelStudio,
    uploaded: tuple[int, list[int]],
    png_files: list[Path],
    kind: str,
) -> None:
    _, task_ids = uploaded
    with LabelStudioClient(label_studio.url, getattr(label_studio, kind)) as c:
        for task_id, path in zip(task_ids, png_files, strict=True):
            url = c.get_task(task_id)["data"]["image"]
            assert url.startswith("/data/upload/")
            assert c.fetch_image_bytes(url, task_id) == path.read_bytes()
        # the same file through its absolute URL on the Label Studio host
        assert c.fetch_image_bytes(f"{label_studio.url}{url}") == png_files[-1].read_bytes()
    # downloads need auth: the endpoint really is protected
    assert httpx.get(f"{label_studio.url}{url}").status_code in (401, 403)


@pytest.mark.e2e
@pytest.mark.slow
def test_local_files_download(label_studio: LabelStudio, png_files: list[Path]) -> None:
    project = label_studio.create_project(CONFIG)
    (task_id,) = label_studio.add_local_files(project, png_files[:1])
    with LabelStudioClient(label_studio.url, label_studio.pat) as c:
        url = c.get_task(task_id)["data"]["image"]
        assert url.startswith("/data/local-files/?d=")
        assert c.fetch_image_bytes(url, task_id) == png_files[0].read_bytes()
        with pytest.raises(LabelStudioError) as info:
            c.fetch_image_bytes(url.replace(".png", "-missing.png"))
        assert info.value.status_code == 404


@pytest.mark.e2e
@pytest.mark.slow
def test_download_cap_on_label_studio(label_studio: LabelStudio, uploaded: tuple[int, list[int]]) -> None:
    _, task_ids = uploaded
    with LabelStudioClient(label_studio.url, label_studio.token, max_download_bytes=100) as c:
        url = c.get_task(task_ids[0])["data"]["image"]
        with pytest.raises(DownloadTooLargeError, match="100-byte download limit"):
            c.fetch_image_bytes(url)


@pytest.mark.e2e
@pytest.mark.slow
def test_other_host_refused_with_label_studio_running(
    label_studio: LabelStudio, other_host: Recorder
) -> None:
    other_host.routes["/data/upload/1/x.png"] = (200, {}, b"x")
    with LabelStudioClient(label_studio.url, label_studio.token) as c:
        for url in (
            f"{other_host.origin}/data/upload/1/x.png",
            label_studio.url.replace("127.0.0.1", "localhost"),
        ):
            with pytest.raises(HostNotAllowedError):
                c.fetch_image_bytes(url)
    assert other_host.requests == []


@pytest.mark.e2e
@pytest.mark.slow
def test_iter_tasks_paginates_and_filters_labeled(label_studio: LabelStudio) -> None:
    project = label_studio.create_project(CONFIG)
    task_ids = label_studio.import_tasks(project, [{"image": f"/data/upload/x/{i}.png"} for i in range(7)])
    result = [
        {
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": 4,
            "original_height": 4,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": [0, 0, 0, 64, 0, 0], "brushlabels": ["Cat"]},
        }
    ]
    annotation = label_studio.annotate(task_ids[1], result)
    label_studio.annotate(task_ids[5], result)
    label_studio.annotate(task_ids[6], [], was_cancelled=True)  # a skip is not a label

    with LabelStudioClient(label_studio.url, label_studio.pat) as c:
        for page_size in (2, 3, 7, 100):
            assert [t["id"] for t in c.iter_tasks(project, page_size=page_size)] == task_ids
        labeled = list(c.iter_tasks(project, only_labeled=True, page_size=1))
        assert [t["id"] for t in labeled] == [task_ids[1], task_ids[5]]
        assert labeled[0]["annotations"][0]["id"] == annotation
        assert labeled[0]["annotations"][0]["result"][0]["value"]["brushlabels"] == ["Cat"]
        assert labeled[0]["data"] == {"image": "/data/upload/x/1.png"}
        empty = label_studio.create_project(CONFIG)
        assert list(c.iter_tasks(empty)) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_create_prediction_is_visible(label_studio: LabelStudio, uploaded: tuple[int, list[int]]) -> None:
    project_id, task_ids = uploaded
    result = [
        {
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": 32,
            "original_height": 24,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": [0, 0, 11, 255, 0], "brushlabels": ["Dog"]},
            "score": 0.8,
        }
    ]
    with LabelStudioClient(label_studio.url, label_studio.pat) as c:
        created = c.create_prediction(task_ids[0], result, 0.8, "seggpt-test-1", project_id=project_id)
        stored = [p for p in label_studio.predictions(task_ids[0]) if p["id"] == created["id"]]
        assert len(stored) == 1
        assert stored[0]["project"] == project_id
        assert stored[0]["model_version"] == "seggpt-test-1"
        assert stored[0]["score"] == pytest.approx(0.8)
        assert stored[0]["result"][0]["value"]["brushlabels"] == ["Dog"]
        assert created["id"] in [p["id"] for p in c.get_task(task_ids[0])["predictions"]]
        with pytest.raises(LabelStudioError) as info:
            c.create_prediction(987654, result, 0.5, "v")
        assert info.value.status_code == 400 and "/api/predictions" in str(info.value)


def _brush(label: str) -> list[dict]:
    return [
        {
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": 4,
            "original_height": 4,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": [0, 0, 0, 64, 0, 0], "brushlabels": [label]},
        }
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_list_and_delete_predictions_leave_annotations_alone(label_studio: LabelStudio) -> None:
    project = label_studio.create_project(CONFIG)
    task, other = label_studio.import_tasks(project, [{"image": "/data/upload/x/a.png"}] * 2)
    annotation = label_studio.annotate(task, _brush("Cat"))
    with LabelStudioClient(label_studio.url, label_studio.pat) as c:
        assert c.list_predictions(task) == []
        old = c.create_prediction(task, _brush("Dog"), 0.4, "seggpt-old", project_id=project)
        new = c.create_prediction(task, _brush("Cat"), 0.9, "seggpt-new", project_id=project)
        elsewhere = c.create_prediction(other, _brush("Dog"), 0.5, "seggpt-old", project_id=project)

        listed = c.list_predictions(task)
        assert sorted((p["id"], p["model_version"]) for p in listed) == [
            (old["id"], "seggpt-old"),
            (new["id"], "seggpt-new"),
        ]
        assert all(p["task"] == task for p in listed)
        assert [p["id"] for p in c.list_predictions(other)] == [elsewhere["id"]]

        assert c.delete_prediction(old["id"]) is None
        assert [p["id"] for p in c.list_predictions(task)] == [new["id"]]
        c.delete_prediction(old["id"])  # already gone: a 404, not an error
        assert [p["id"] for p in label_studio.predictions(task)] == [new["id"]]  # seen by Label Studio too
        assert [p["id"] for p in c.list_predictions(other)] == [elsewhere["id"]]

        stored = c.get_task(task)
        assert [a["id"] for a in stored["annotations"]] == [annotation]
        assert stored["annotations"][0]["result"][0]["value"]["brushlabels"] == ["Cat"]
        assert [p["id"] for p in stored["predictions"]] == [new["id"]]
