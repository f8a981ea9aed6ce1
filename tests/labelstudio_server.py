"""A real Label Studio 1.23 for end-to-end tests: installed on demand, started on loopback, offline.

Use it from a test module (pytest registers a fixture imported into the module namespace)::

    from tests.labelstudio_server import label_studio  # noqa: F401  (session-scoped fixture)

    def test_x(label_studio):
        project = label_studio.create_project(CONFIG)
        task_ids = label_studio.import_images(project, [path])

How it runs:

- ``scripts/install-label-studio.sh`` puts Label Studio in its own venv ``.ls-venv`` (it pins its
  own Django/numpy/SDK versions); a no-op once installed.
- A migrated data dir is cached in ``.cache/ls-data-template`` (``label-studio init``: migrations
  plus the test user with a legacy token, ~1 min once). Each session copies it to a temporary dir
  and starts ``label-studio start`` on ``127.0.0.1`` and a free port in a few seconds.
- The environment keeps Label Studio offline (no Sentry, analytics or version check) and lets it
  call a backend on loopback (``ML_BLOCK_LOCAL_IP=false``, ``SSRF_PROTECTION_ENABLED=false``).
  Local-files serving is enabled under :attr:`LabelStudio.local_files_root`.
- The legacy token is fixed when the template is made; the personal access token (a JWT refresh
  token) is created for each session with ``POST /api/token/`` authenticated by the legacy token.

``python -m tests.labelstudio_server`` starts one for manual use and prints its URL and tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
LS_VENV = REPO / ".ls-venv"
LS_BIN = LS_VENV / "bin" / "label-studio"
INSTALL_SCRIPT = REPO / "scripts" / "install-label-studio.sh"
CACHE = REPO / ".cache"
TEMPLATE = CACHE / "ls-data-template"
TEMPLATE_INFO = "seggpt-template.json"
TEMPLATE_FORMAT = 1  # bump when the template's contents change
USERNAME = "seggpt-tests@example.com"

# Keeps Label Studio offline and lets it reach an ML backend on 127.0.0.1 (see LABEL_STUDIO.md).
OFFLINE_ENV = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
    "CONVERTER_DOWNLOAD_RESOURCES": "false",
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    "PYTHONUNBUFFERED": "1",
}
_PASS_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


class LabelStudioStartError(RuntimeError):
    """Label Studio could not be installed or started; the message carries its log tail."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)


def ensure_installed(timeout: float = 1200) -> Path:
    """Run the install script (fast when already installed); returns the ``label-studio`` path."""
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0 or not LS_BIN.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise LabelStudioStartError(f"installing Label Studio failed (exit {proc.returncode}):\n{tail}")
    return LS_BIN


def ls_env(data_dir: Path, local_files_root: Path, home: Path) -> dict[str, str]:
    """The whole environment of a Label Studio process (nothing else leaks in: no HOST, no DB vars)."""
    env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
    env.update(OFFLINE_ENV)
    env.update(
        HOME=str(home),
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(local_files_root),
    )
    return env


def _installed_spec() -> str:
    return (LS_VENV / ".installed").read_text().strip() if (LS_VENV / ".installed").exists() else "?"


def _read_template_info() -> Credentials | None:
    try:
        info = json.loads((TEMPLATE / TEMPLATE_INFO).read_text())
    except (OSError, ValueError):
        return None
    if info.get("format") != TEMPLATE_FORMAT or info.get("installed") != _installed_spec():
        return None
    return Credentials(info["username"], info["password"], info["token"])


def ensure_template(timeout: float = 600) -> Credentials:
    """The cached migrated data dir, made once (under a file lock shared by parallel sessions)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "ls-data-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        creds = _read_template_info()
        if creds is not None:
            return creds
        # hex, not urlsafe: a password starting with "-" is read by `label-studio init` as an option
        creds = Credentials(USERNAME, secrets.token_hex(16), secrets.token_hex(20))
        work = Path(tempfile.mkdtemp(prefix="ls-data-template.", dir=CACHE))
        data = work / "data"
        cmd = [
            str(LS_BIN), "init", "--data-dir", str(data), "--no-browser",
            "--username", creds.username, "--password", creds.password,
            "--user-token", creds.token, "--enable-legacy-api-token",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd,
                env=ls_env(data, work, work),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if proc.returncode != 0 or not (data / "label_studio.sqlite3").exists():
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
                raise LabelStudioStartError(f"`label-studio init` failed (exit {proc.returncode}):\n{tail}")
            info = {"format": TEMPLATE_FORMAT, "installed": _installed_spec(), **creds.__dict__}
            (data / TEMPLATE_INFO).write_text(json.dumps(info))
            shutil.rmtree(TEMPLATE, ignore_errors=True)
            data.rename(TEMPLATE)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return creds


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, credentials, and helpers for setting up test data."""

    url: str
    token: str = field(repr=False)  # legacy token (Authorization: Token ...)
    pat: str = field(repr=False)  # personal access token (JWT refresh token)
    username: str
    password: str = field(repr=False)
    data_dir: Path
    local_files_root: Path
    log_path: Path
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def api(self) -> httpx.Client:
        """An httpx client on the Label Studio URL authenticated with the legacy token."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=120
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _ok(self, r: httpx.Response) -> Any:
        if not r.is_success:
            raise AssertionError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def create_project(self, label_config: str, title: str | None = None) -> int:
        title = title or f"seggpt-test-{secrets.token_hex(3)}"
        body = {"title": title, "label_config": label_config}
        return int(self._ok(self.api.post("/api/projects", json=body))["id"])

    def import_images(self, project_id: int, paths: Sequence[str | Path]) -> list[int]:
        """Upload image files (multipart) as new tasks; returns their task ids in upload order."""
        ids: list[int] = []
        for p in paths:  # one file per request: the order of task ids then matches ``paths``
            path = Path(p)
            with path.open("rb") as fh:
                files = {"file": (path.name, fh, "application/octet-stream")}
                body = self._ok(
                    self.api.post(
                        f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, files=files
                    )
                )
            ids.extend(int(i) for i in body["task_ids"])
        return ids

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Import tasks given as JSON (``[{"image": url}, ...]`` or ``[{"data": {...}}, ...]``)."""
        r = self.api.post(
            f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=list(tasks)
        )
        return [int(i) for i in self._ok(r)["task_ids"]]

    def add_local_files(self, project_id: int, paths: Sequence[str | Path]) -> list[int]:
        """Copy files under the local-files root, register a local storage, import them as tasks.

        The tasks' image URLs are ``/data/local-files/?d=<path relative to the root>``.
        """
        sub = self.local_files_root / f"project-{project_id}"
        sub.mkdir(parents=True, exist_ok=True)
        storage = {"project": project_id, "path": str(sub), "title": "local", "use_blob_urls": True}
        self._ok(self.api.post("/api/storages/localfiles", json=storage))
        tasks = []
        for p in paths:
            dest = sub / Path(p).name
            shutil.copyfile(p, dest)
            tasks.append(
                {"image": f"/data/local-files/?d={dest.relative_to(self.local_files_root).as_posix()}"}
            )
        return self.import_tasks(project_id, tasks)

    def annotate(self, task_id: int, result: list[dict[str, Any]], **extra: Any) -> int:
        """Create an annotation on a task (``extra`` e.g. ``ground_truth=True``); returns its id."""
        r = self.api.post(f"/api/tasks/{task_id}/annotations", json={"result": result, **extra})
        return int(self._ok(r)["id"])

    def connect_ml_backend(self, project_id: int, url: str, is_interactive: bool = True, **extra: Any) -> int:
        """Connect an ML backend (Label Studio calls its /health and /setup right away); returns its id."""
        body = {
            "url": url,
            "project": project_id,
            "is_interactive": is_interactive,
            "title": "seggpt",
            **extra,
        }
        return int(self._ok(self.api.post("/api/ml", json=body))["id"])

    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int]) -> Any:
        """The Data Manager's "Retrieve Predictions" action on ``task_ids`` (one /predict, waits for it)."""
        body = {"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}}
        params = {"id": "retrieve_tasks_predictions", "project": project_id}
        return self._ok(self.api.post("/api/dm/actions", params=params, json=body))

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        return list(self._ok(self.api.get("/api/predictions", params={"task": task_id})))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LabelStudioProcess:
    """Starts and stops one ``label-studio start`` on a copy of the template data dir."""

    def __init__(self, workdir: Path, creds: Credentials) -> None:
        self.workdir = workdir
        self.creds = creds
        self.data_dir = workdir / "data"
        self.local_files_root = workdir / "local-files"
        self.log_path = workdir / "label-studio.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        c = self.creds
        return [
            str(LS_BIN), "start", "--internal-host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--no-browser", "--username", c.username,
            "--password", c.password, "--user-token", c.token, "--enable-legacy-api-token",
        ]  # fmt: skip

    def start(self, timeout: float = 180) -> LabelStudio:
        shutil.copytree(TEMPLATE, self.data_dir)
        self.local_files_root.mkdir(parents=True, exist_ok=True)
        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=ls_env(self.data_dir, self.local_files_root, home),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends it and nothing else
                preexec_fn=_die_with_parent,
            )
        try:
            url = self._wait_up(timeout)
            pat = self._create_pat(url)
        except BaseException:
            self.stop()
            raise
        return LabelStudio(
            url=url,
            token=self.creds.token,
            pat=pat,
            username=self.creds.username,
            password=self.creds.password,
            data_dir=self.data_dir,
            local_files_root=self.local_files_root,
            log_path=self.log_path,
        )

    def _log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def _wait_up(self, timeout: float) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabelStudioStartError(
                    f"Label Studio exited with {self.proc.returncode}:\n{self._log_tail()}"
                )
            # Label Studio silently moves to the next port when ours was taken meanwhile.
            moved = re.findall(r"Trying to start at (\d+)", self.log_path.read_text(errors="replace"))
            port = int(moved[-1]) if moved else self.port
            url = f"http://127.0.0.1:{port}"
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{url}/health", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    return url
            time.sleep(0.2)
        raise LabelStudioStartError(
            f"Label Studio did not answer within {timeout:.0f} s:\n{self._log_tail()}"
        )

    def _create_pat(self, url: str) -> str:
        # Session copies of the template hold no personal token yet, so creation cannot hit 409.
        r = httpx.post(
            f"{url}/api/token/", headers={"Authorization": f"Token {self.creds.token}"}, timeout=30
        )
        if r.status_code != 201:
            raise LabelStudioStartError(
                f"creating a personal access token failed: {r.status_code} {r.text[:300]}"
            )
        return str(r.json()["token"])

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@contextlib.contextmanager
def running_label_studio(workdir: Path) -> Iterator[LabelStudio]:
    """Install if needed, build the template if needed, start Label Studio in ``workdir``, stop at exit."""
    ensure_installed()
    creds = ensure_template()
    server = LabelStudioProcess(workdir, creds)
    handle = server.start()
    try:
        yield handle
    finally:
        handle.close()
        server.stop()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """A real Label Studio for the whole session (see module docstring)."""
    with running_label_studio(tmp_path_factory.mktemp("label-studio")) as ls:
        yield ls


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops Label Studio too
    with tempfile.TemporaryDirectory(prefix="label-studio-") as tmp, running_label_studio(Path(tmp)) as ls:
        print(
            f"Label Studio {ls.url}\nuser {ls.username} / {ls.password}\nlegacy token {ls.token}\nPAT {ls.pat}"
        )
        print(f"log {ls.log_path}; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    sys.exit(0)
