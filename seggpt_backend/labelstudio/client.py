"""Synchronous Label Studio REST client: authentication, tasks, predictions and image downloads.

Authentication is picked from the key's shape:

- a **legacy token** (40 hex characters) is sent as ``Authorization: Token <key>``; it works only
  when legacy tokens are enabled for the organization (off by default since Label Studio 1.20);
- a **personal access token** (a JWT refresh token: three base64url segments) is exchanged at
  ``POST /api/token/refresh/`` for a short-lived access token (5 minutes in 1.23), sent as
  ``Authorization: Bearer <access>`` and renewed shortly before it expires or after a 401.

Image downloads are the backend's only requests to URLs taken from task data, so they are
restricted (SSRF protection): relative URLs (``/data/upload/...``, ``/data/local-files/?d=...``)
resolve against the Label Studio URL; absolute ``http(s)`` URLs are fetched only from the Label
Studio origin or from ``allowed_hosts``; cloud URIs (``s3://``, ``gs://``, ...) go through Label
Studio's ``/tasks/<id>/resolve/`` endpoint. Redirects are followed by hand and re-checked. The
Label Studio credentials are only ever sent to the Label Studio origin. Downloads are capped in
size (``max_download_bytes``) and in total wall-clock time (``download_deadline_s``, redirects
included), so a host trickling bytes cannot hold a download (and the GPU job waiting on it).

Error messages name the method, the (redacted) URL and the status code; never a credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

__all__ = [
    "DownloadTimeoutError",
    "DownloadTooLargeError",
    "HostNotAllowedError",
    "LabelStudioAuthError",
    "LabelStudioClient",
    "LabelStudioError",
    "is_personal_access_token",
    "parse_project_id",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_DOWNLOAD_BYTES = 256 * 2**20
DEFAULT_DOWNLOAD_DEADLINE_S = 60.0
_ERROR_BODY_BYTES = 8192  # how much of an error body is read for its message
_MAX_REDIRECTS = 5
_REFRESH_MARGIN_S = 30.0  # renew the access token this long before its ``exp``
_FALLBACK_ACCESS_TTL_S = 240.0  # when an access token carries no readable ``exp``/``iat``
# Data Manager filter: tasks with at least one (non-cancelled) annotation.
_LABELED_QUERY = json.dumps(
    {"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
    ]}}
)  # fmt: skip
_SECRET_QUERY_WORDS = ("sig", "token", "key", "credential", "secret", "password", "auth")


class LabelStudioError(RuntimeError):
    """A Label Studio request failed. ``status_code`` is ``None`` when no HTTP answer came back."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


class LabelStudioAuthError(LabelStudioError):
    """Label Studio rejected the API key (401/403), or the personal access token could not be refreshed."""


class HostNotAllowedError(LabelStudioError):
    """An image URL points outside Label Studio and the allow-list; no request was made."""


class DownloadTooLargeError(LabelStudioError):
    """A download exceeded ``max_download_bytes``."""


class DownloadTimeoutError(LabelStudioError):
    """A download (redirects included) ran past ``download_deadline_s`` seconds of wall-clock time."""


def parse_project_id(value: str | int) -> int:
    """The numeric project id from Label Studio's ``project`` field.

    ``/setup`` and ``/predict`` send ``"<id>.<created timestamp>"`` (e.g. ``"1.1795307990"``);
    tasks carry a plain integer. Raises ``ValueError`` naming the value otherwise.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid Label Studio project {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"invalid Label Studio project id {value}")
        return value
    text = str(value).strip()
    head = text.split(".", 1)[0]
    if not head.isdigit() or int(head) < 1:
        raise ValueError(f'invalid Label Studio project {value!r}: expected "<id>" or "<id>.<timestamp>"')
    return int(head)


def _b64url_json(segment: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        obj = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def is_personal_access_token(key: str) -> bool:
    """True when ``key`` is a JWT (personal access token), False for a legacy hex token."""
    parts = key.strip().split(".")
    if len(parts) != 3 or not all(parts):
        return False
    header = _b64url_json(parts[0])
    return header is not None and "alg" in header


def _jwt_lifetime(token: str) -> float | None:
    """``exp - iat`` of a JWT in seconds (a duration, so clock skew with the server does not matter)."""
    parts = token.split(".")
    payload = _b64url_json(parts[1]) if len(parts) == 3 else None
    exp, iat = (payload.get("exp"), payload.get("iat")) if payload else (None, None)
    if isinstance(exp, int | float) and isinstance(iat, int | float) and exp > iat:
        return float(exp - iat)
    return None


def redact_url(url: str) -> str:
    """``url`` without user info and with secret-looking query values (presigned signatures) hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "REDACTED" if any(w in k.lower() for w in _SECRET_QUERY_WORDS) else v) for k, v in pairs],
            safe="/",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _origin(url: str | httpx.URL) -> tuple[str, str, int]:
    """(scheme, host, port) as httpx itself parses ``url``: the check and the request agree."""
    u = url if isinstance(url, httpx.URL) else httpx.URL(url)
    return u.scheme, u.host.lower(), u.port or (443 if u.scheme == "https" else 80)


def _detail(response: httpx.Response, deadline: float | None = None) -> str:
    """A short reason from an error body (Label Studio answers JSON ``detail``; HTML pages are skipped).

    A streamed body is read up to 8 KiB only, and no further than ``deadline`` (a
    :func:`time.monotonic` instant, in seconds) or a failed read: the reason is then what came.
    """
    if not response.is_stream_consumed:
        # a streamed download: read a bounded prefix only, the body may be large or trickle
        head = b""
        try:
            for chunk in response.iter_bytes():
                head += chunk
                if len(head) > _ERROR_BODY_BYTES or (deadline is not None and time.monotonic() >= deadline):
                    break
        except httpx.HTTPError:
            pass  # the status code already says what failed; the body is only a hint
        raw = head[:_ERROR_BODY_BYTES]
    else:
        raw = response.content
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return "" if text.startswith("<") else text[:200]
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"])[:300])
        return " ".join(p for p in parts if p)
    return str(body)[:200]


class LabelStudioClient:
    """Talks to one Label Studio instance (``url``) with one API key; thread-safe.

    ``allowed_hosts`` lists extra hosts images may be downloaded from: ``"host"`` (any port),
    ``"host:port"``, or ``"*.example.com"`` (any subdomain). ``timeout`` is per request phase
    (connect, each read), in seconds. ``max_download_bytes`` caps one image download, in bytes.
    ``download_deadline_s`` caps the wall-clock time of one image download, redirects included, in
    seconds (> 0): a host sending a byte now and then, each within ``timeout``, is cut off there.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        allowed_hosts: Sequence[str] = (),
        timeout: float = 30,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        download_deadline_s: float = DEFAULT_DOWNLOAD_DEADLINE_S,
    ) -> None:
        base = url.strip().rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Label Studio URL must be http(s)://host[:port], got {redact_url(url)!r}")
        if not api_key or not api_key.strip():
            raise ValueError("a Label Studio API key is required (LABEL_STUDIO_API_KEY)")
        if not download_deadline_s > 0:  # also refuses NaN
            raise ValueError(f"download_deadline_s must be > 0 seconds, got {download_deadline_s!r}")
        self.url = base
        self._origin = _origin(base)
        self._key = api_key.strip()
        self.uses_personal_access_token = is_personal_access_token(self._key)
        self.allowed_hosts = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        self.max_download_bytes = max_download_bytes
        self.download_deadline_s = float(download_deadline_s)
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_expires = 0.0

    def __repr__(self) -> str:
        kind = "personal access token" if self.uses_personal_access_token else "legacy token"
        return f"LabelStudioClient({self.url!r}, {kind})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ auth
    def _refresh_access(self) -> str:
        url = f"{self.url}/api/token/refresh/"
        try:
            r = self._http.post(url, json={"refresh": self._key})
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"POST {url} failed: {type(exc).__name__}: {exc}", url=url) from None
        if r.status_code != 200:
            cls = LabelStudioAuthError if r.status_code in (400, 401, 403) else LabelStudioError
            raise cls(
                f"Label Studio refused the personal access token at POST {url} ({r.status_code}): "
                f"{_detail(r) or r.reason_phrase}. Check LABEL_STUDIO_API_KEY.",
                status_code=r.status_code,
                url=url,
            )
        try:
            access = r.json().get("access")
        except (ValueError, AttributeError):
            access = None
        if not isinstance(access, str) or not access:
            raise LabelStudioError(f"POST {url} answered without an access token", status_code=200, url=url)
        self._access = access
        self._access_expires = time.time() + (_jwt_lifetime(access) or _FALLBACK_ACCESS_TTL_S)
        return access

    def _auth_header(self, *, force_refresh: bool = False) -> str:
        if not self.uses_personal_access_token:
            return f"Token {self._key}"
        with self._lock:
            if (
                force_refresh
                or self._access is None
                or time.time() > self._access_expires - _REFRESH_MARGIN_S
            ):
                self._refresh_access()
            return f"Bearer {self._access}"

    def _send(
        self, method: str, url: str | httpx.URL, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One authenticated request to the Label Studio origin; retried once after a refresh on 401."""
        for attempt in (0, 1):
            headers = {"Authorization": self._auth_header(force_refresh=attempt == 1)}
            r = self._plain(method, url, headers=headers, stream=stream, **kwargs)
            if r.status_code == 401 and self.uses_personal_access_token and attempt == 0:
                r.close()  # the access token may have been revoked or expired early: renew once
                continue
            return r
        raise AssertionError("unreachable")

    def _plain(
        self, method: str, url: str | httpx.URL, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        try:
            return self._http.send(self._http.build_request(method, url, **kwargs), stream=stream)
        except httpx.HTTPError as exc:
            shown = redact_url(str(url))
            raise LabelStudioError(
                f"{method} {shown} failed: {type(exc).__name__}: {exc}", url=shown
            ) from None

    def _check(self, r: httpx.Response, method: str, *, deadline: float | None = None) -> None:
        """Raise for a non-2xx answer; a streamed error body is read no further than ``deadline``
        (a :func:`time.monotonic` instant, in seconds)."""
        if r.is_success:
            return
        url = redact_url(str(r.request.url))
        reason = _detail(r, deadline) or r.reason_phrase
        if r.status_code in (401, 403):
            kind = "personal access token" if self.uses_personal_access_token else "legacy API token"
            hint = (
                " Legacy tokens work only when enabled for the organization; a personal access token "
                "(Account & Settings) always works."
                if not self.uses_personal_access_token
                else ""
            )
            raise LabelStudioAuthError(
                f"Label Studio rejected the {kind} ({r.status_code}) for {method} {url}: {reason}.{hint}",
                status_code=r.status_code,
                url=url,
            )
        raise LabelStudioError(
            f"{method} {url} failed ({r.status_code}): {reason}", status_code=r.status_code, url=url
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._send(method, f"{self.url}{path}", **kwargs)
        self._check(r, method)
        log.debug("%s %s -> %d", method, path, r.status_code)
        return r.json() if r.content else None

    # ------------------------------------------------------------------ API
    def get_project(self, project_id: int) -> dict[str, Any]:
        """``GET /api/projects/{id}``: the project, including ``label_config``."""
        return self._json("GET", f"/api/projects/{int(project_id)}")

    def get_task(self, task_id: int) -> dict[str, Any]:
        """``GET /api/tasks/{id}``: ``data``, ``annotations`` and ``predictions`` of one task."""
        return self._json("GET", f"/api/tasks/{int(task_id)}")

    def iter_tasks(
        self, project_id: int, *, only_labeled: bool = False, page_size: int = 100
    ) -> Iterator[dict]:
        """Every task of a project with its annotations and predictions, page by page.

        ``only_labeled`` keeps tasks with at least one annotation that is not cancelled (filtered by
        Label Studio's data manager, and checked again here).
        """
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        params: dict[str, Any] = {"project": int(project_id), "fields": "all", "page_size": int(page_size)}
        if only_labeled:
            params["query"] = _LABELED_QUERY
        seen = 0
        page = 1
        while True:
            r = self._send("GET", f"{self.url}/api/tasks", params={**params, "page": page})
            if r.status_code == 404 and page > 1:
                return  # Label Studio answers 404 "Invalid page." past the last page
            self._check(r, "GET")
            body = r.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            for task in tasks:
                if only_labeled and not any(
                    not a.get("was_cancelled") for a in task.get("annotations") or []
                ):
                    continue
                yield task
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if not tasks or len(tasks) < page_size or (isinstance(total, int) and seen >= total):
                return
            page += 1

    def create_prediction(
        self,
        task_id: int,
        result: list[dict[str, Any]],
        score: float,
        model_version: str,
        *,
        project_id: int | None = None,
    ) -> dict[str, Any]:
        """``POST /api/predictions``: store a prediction for a task; returns it (with its ``id``).
        Label Studio derives the project from the task but logs a warning unless it is given."""
        body: dict[str, Any] = {
            "task": int(task_id),
            "result": result,
            "score": float(score),
            "model_version": model_version,
        }
        if project_id is not None:
            body["project"] = int(project_id)
        return self._json("POST", "/api/predictions", json=body)

    def list_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """``GET /api/predictions/?task={id}``: every prediction of one task (any model version).

        Label Studio 1.23 answers a plain JSON list; a paginated answer (``{"results": [...],
        "next": url}``) is followed page by page on the Label Studio origin. Only predictions whose
        ``task`` is ``task_id`` are returned, so a server ignoring the filter cannot hand other
        tasks' predictions to a caller about to delete superseded ones.
        """
        task = int(task_id)
        url: str | None = f"{self.url}/api/predictions/"
        params: dict[str, Any] | None = {"task": task}
        out: list[dict[str, Any]] = []
        for _ in range(10_000):  # a bound against a ``next`` link that points back at itself
            if url is None:
                break
            r = self._send("GET", url, params=params)
            self._check(r, "GET")
            body = r.json() if r.content else []
            if isinstance(body, dict):
                page = body.get("results") or []
                nxt = body.get("next")
                url = urljoin(f"{self.url}/", nxt) if isinstance(nxt, str) and nxt else None
                params = None  # ``next`` carries the query
                if url is not None and _origin(url) != self._origin:
                    raise LabelStudioError(
                        f"GET {self.url}/api/predictions/ paginated to another origin: {redact_url(url)}",
                        url=redact_url(url),
                    )
            else:
                page, url = body, None
            out.extend(p for p in page if isinstance(p, dict) and p.get("task") == task)
        log.debug("GET /api/predictions/?task=%d -> %d predictions", task, len(out))
        return out

    def delete_prediction(self, prediction_id: int) -> None:
        """``DELETE /api/predictions/{id}/``: remove one prediction. A 404 is success (already gone),
        so a retried clean-up is harmless; annotations of the task are not touched."""
        url = f"{self.url}/api/predictions/{int(prediction_id)}/"
        r = self._send("DELETE", url)
        if r.status_code == 404:
            log.debug("DELETE %s -> 404 (already gone)", url)
            return
        self._check(r, "DELETE")
        log.debug("DELETE %s -> %d", url, r.status_code)

    # ------------------------------------------------------------------ images
    def is_allowed(self, url: str | httpx.URL) -> bool:
        """True when ``url`` (absolute http(s)) may be fetched: the Label Studio origin or an allowed host."""
        try:
            u = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except httpx.InvalidURL:
            return False
        if u.userinfo:
            return False  # credentials embedded in a task URL: never follow
        scheme, host, port = _origin(u)
        if scheme not in ("http", "https") or not host:
            return False
        if (scheme, host, port) == self._origin:
            return True
        for entry in self.allowed_hosts:
            name, _, want_port = entry.partition(":") if not entry.startswith("[") else (entry, "", "")
            if want_port and (not want_port.isdigit() or int(want_port) != port):
                continue
            if name.startswith("*."):
                if host.endswith(name[1:]) and host != name[2:]:
                    return True
            elif host == name.strip("[]"):  # "[::1]" entries compare with httpx's bare "::1"
                return True
        return False

    def resolve_url(self, url_or_path: str, task_id: int | None = None) -> str:
        """The absolute URL an image reference is downloaded from (no request, no host check)."""
        ref = url_or_path.strip()
        if not ref:
            raise ValueError("empty image URL")
        scheme = urlsplit(ref).scheme.lower() if "://" in ref else ""
        if scheme in ("http", "https"):
            return ref
        if scheme:  # s3://, gs://, azure-blob://...: Label Studio presigns or proxies it per task
            if task_id is None:
                raise ValueError(f"cloud storage URI {redact_url(ref)!r} needs the task id to be resolved")
            encoded = base64.urlsafe_b64encode(ref.encode()).decode()
            return f"{self.url}/tasks/{int(task_id)}/resolve/?{urlencode({'fileuri': encoded})}"
        if ref.startswith("//"):
            raise ValueError(f"scheme-relative image URL {redact_url(ref)!r} is not supported")
        return urljoin(self.url + "/", ref.lstrip("/")) if not ref.startswith("/") else self.url + ref

    def fetch_image_bytes(self, url_or_path: str, task_id: int | None = None) -> bytes:
        """The raw bytes of a task image (encoded file as stored: PNG, JPEG...).

        Accepts ``/data/upload/...``, ``/data/local-files/?d=...``, absolute http(s) URLs,
        ``data:`` URIs and cloud URIs (with ``task_id``). Raises :class:`HostNotAllowedError`
        before any request for a host outside Label Studio and ``allowed_hosts``,
        :class:`DownloadTooLargeError` past ``max_download_bytes``,
        :class:`DownloadTimeoutError` once the download (redirects included) has taken
        ``download_deadline_s`` seconds, :class:`LabelStudioError` (with ``status_code`` and the
        redacted URL) for failed requests, ``ValueError`` for references that cannot be resolved.

        The deadline is checked before each redirect hop and between received chunks, and each
        request's connect/read timeouts are capped at the time left when it starts; so a download
        ends within about ``download_deadline_s + min(timeout, download_deadline_s)`` seconds even
        if the server stalls, and within ``download_deadline_s`` plus one chunk if it trickles.
        """
        if url_or_path.startswith("data:"):
            return self._data_uri(url_or_path)
        deadline = time.monotonic() + self.download_deadline_s
        url = self.resolve_url(url_or_path, task_id)
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                target = httpx.URL(url)
            except httpx.InvalidURL as exc:
                raise ValueError(f"invalid image URL {redact_url(url)!r}: {exc}") from None
            if time.monotonic() >= deadline:  # before each hop: a slow redirect chain counts too
                raise self._deadline_error(url)
            if not self.is_allowed(target):
                raise HostNotAllowedError(
                    f"refusing to download {redact_url(url)}: host is neither the Label Studio host "
                    f"({self._origin[1]}:{self._origin[2]}) nor in the allowed hosts "
                    f"({', '.join(self.allowed_hosts) or 'none'}; set SEGGPT_ALLOWED_HOSTS)",
                    url=redact_url(url),
                )
            timeout = self._capped_timeout(deadline)
            try:
                if _origin(target) == self._origin:
                    r = self._send("GET", target, stream=True, timeout=timeout)
                else:  # another host: never send it the Label Studio credentials
                    r = self._plain("GET", target, stream=True, timeout=timeout)
            except LabelStudioError as exc:
                if exc.status_code is None and time.monotonic() >= deadline:
                    raise self._deadline_error(url) from None  # the capped timeout fired
                raise
            try:
                if r.is_redirect:
                    url = urljoin(str(target), r.headers.get("location", ""))
                    continue
                self._check(r, "GET", deadline=deadline)
                return self._read_capped(r, url, deadline)
            finally:
                r.close()
        raise LabelStudioError(
            f"too many redirects downloading {redact_url(url_or_path)}", url=redact_url(url)
        )

    def _capped_timeout(self, deadline: float) -> httpx.Timeout:
        """The client's timeouts with each phase capped at the seconds left until ``deadline``
        (a :func:`time.monotonic` instant), so a stalled connect or read cannot outlast it by much."""
        left = max(deadline - time.monotonic(), 0.001)
        t = self._http.timeout

        def cap(value: float | None) -> float:
            return left if value is None else min(value, left)

        return httpx.Timeout(connect=cap(t.connect), read=cap(t.read), write=cap(t.write), pool=cap(t.pool))

    def _deadline_error(self, url: str, status_code: int | None = None) -> DownloadTimeoutError:
        shown = redact_url(url)
        return DownloadTimeoutError(
            f"downloading {shown} took longer than the {self.download_deadline_s:g} s download "
            "deadline (SEGGPT_DOWNLOAD_DEADLINE_S)",
            status_code=status_code,
            url=shown,
        )

    def _read_capped(self, r: httpx.Response, url: str, deadline: float | None = None) -> bytes:
        """The body of a streamed response, at most ``max_download_bytes`` bytes, received before
        ``deadline`` (a :func:`time.monotonic` instant, in seconds; ``None``: no deadline)."""
        cap = self.max_download_bytes
        declared = r.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise DownloadTooLargeError(
                f"{redact_url(url)} is {int(declared)} bytes, over the {cap}-byte download limit",
                status_code=r.status_code,
                url=redact_url(url),
            )
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in r.iter_bytes():
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._deadline_error(url, r.status_code)
                size += len(chunk)
                if size > cap:
                    raise DownloadTooLargeError(
                        f"{redact_url(url)} exceeds the {cap}-byte download limit",
                        status_code=r.status_code,
                        url=redact_url(url),
                    )
                chunks.append(chunk)
        except httpx.HTTPError as exc:  # a read timed out or the connection broke mid-body
            if deadline is not None and time.monotonic() >= deadline:
                raise self._deadline_error(url, r.status_code) from None
            shown = redact_url(url)
            raise LabelStudioError(
                f"GET {shown} failed while reading the body: {type(exc).__name__}: {exc}",
                status_code=r.status_code,
                url=shown,
            ) from None
        return b"".join(chunks)

    def _data_uri(self, uri: str) -> bytes:
        header, sep, payload = uri.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError("only base64 data: URIs are supported for images")
        if len(payload) * 3 // 4 > self.max_download_bytes:
            raise DownloadTooLargeError(f"data: URI exceeds the {self.max_download_bytes}-byte limit")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 in data: URI: {exc}") from None
