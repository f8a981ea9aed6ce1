"""Deployment files (Dockerfile, docker-compose.yml, docker/entrypoint.sh, .dockerignore) checked
without Docker, which cannot run on the development machines.

Static checks parse the files and hold them to the code: services, commands (against the real
CLI parser), ports, health checks, dependencies, the GPU reservation, that every environment
variable is a real setting (or a named third-party one), that the build context holds what the
Dockerfile copies. Behavioural checks run the pieces for real on this machine: the health-check
snippets against a real ``seggpt-backend serve`` (embedded and Redis mode) and a real
``seggpt-backend worker``, the Redis service's command line and health check on a real
``redis-server`` with a password, and the entrypoint's weight prefetch from a Hugging Face cache.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from seggpt_backend.cli import build_parser
from seggpt_backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
OUR_SERVICES = ("backend", "worker", "tuner")  # the services that run our image
# Variables of the host's shell/.env that only compose reads (documented in docs/DEPLOY.md).
COMPOSE_VARS = {
    "REDIS_PASSWORD",
    "BACKEND_PUBLISH",
    "LABEL_STUDIO_PUBLISH",
    "LABEL_STUDIO_USERNAME",
    "LABEL_STUDIO_PASSWORD",
}
# Variables read by something other than our settings, inside our containers.
THIRD_PARTY_ENV = {"PATH", "PYTHONUNBUFFERED", "HF_HOME", "HF_HUB_CACHE", "CUDA_VISIBLE_DEVICES", "HOME"}
# The image leaves these to the image/defaults (the port is what EXPOSE and HEALTHCHECK use).
NOT_PASSED_THROUGH = {"HOST", "PORT", "MODEL_DIR"}
LABEL_STUDIO_ENV = {
    "LABEL_STUDIO_USERNAME",
    "LABEL_STUDIO_PASSWORD",
    "LABEL_STUDIO_USER_TOKEN",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
    "SSRF_PROTECTION_ENABLED",
    "ML_BLOCK_LOCAL_IP",
    "LATEST_VERSION_CHECK",
    "COLLECT_ANALYTICS",
}
_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# ---------------------------------------------------------------- parsing helpers


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR:?msg}`` (and the
    colon-less forms). A missing required variable raises ``KeyError`` with compose's message."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op") or "", m.group("arg") or ""
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-") and unset:
            return arg
        if op.endswith("?") and unset:
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def variables(text: str) -> set[str]:
    return {m.group("braced") or m.group("bare") for m in _VAR.finditer(text) if m.group(0) != "$$"}


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, env) for v in node]
    return node


def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose model (YAML anchors and ``<<`` merges applied), interpolated with ``env``."""
    return resolve(yaml.safe_load(compose_text()), {"REDIS_PASSWORD": "s3cret"} if env is None else env)


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs; continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        instr, _, args = pending.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        pending = ""
    return out


def instructions(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def dockerfile_args() -> dict[str, str]:
    return dict(a.partition("=")[::2] for a in instructions("ARG"))


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def healthcheck_code() -> str:
    """The Python source the Dockerfile's HEALTHCHECK runs."""
    (args,) = instructions("HEALTHCHECK")
    cmd = shlex.split(args.split(" CMD ", 1)[1])
    assert cmd[:2] == ["python", "-c"] and len(cmd) == 3, cmd
    return cmd[2]


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is excluded when it or a parent matches the last matching pattern."""
    parts = rel.split("/")
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pattern[3:])
            ):
                excluded = not negate
                break
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(code: str, env: Mapping[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment for child processes: no settings inherited from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.env_names() and not k.startswith("HF_")}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(tmp_path / "home"))
    env["HF_HOME"] = str(tmp_path / "home" / ".cache" / "huggingface")
    return env


@contextmanager
def process(cmd: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_until(
    check: Callable[[], bool], what: str, log: Path, proc: subprocess.Popen[bytes], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"{what}: not within {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def compose_redis(
    tmp_path: Path, password: str = "p4ss-w0rd"
) -> Iterator[tuple[int, str, subprocess.Popen[bytes]]]:
    """The redis service's own command line (interpolated), on a free loopback port."""
    argv = compose({"REDIS_PASSWORD": password})["services"]["redis"]["command"]
    port = free_port()
    log = tmp_path / f"redis-{port}.log"
    with process(
        [*argv, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)], {}, log
    ) as proc:
        client = redis.Redis(port=port, password=password)
        wait_until(lambda: _pings(client), "redis-server", log, proc, timeout=20)
        yield port, password, proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def compose_redis_url(port: int, password: str) -> str:
    """The backend's REDIS_URL exactly as compose builds it, pointed at a loopback port."""
    url = compose({"REDIS_PASSWORD": password})["services"]["worker"]["environment"]["REDIS_URL"]
    assert url == f"redis://:{password}@redis:6379/0"
    return url.replace("@redis:6379", f"@127.0.0.1:{port}")


# ---------------------------------------------------------------- compose: structure


def test_services_images_and_profiles():
    services = compose()["services"]
    assert set(services) == {"redis", "backend", "worker", "tuner", "label-studio"}
    assert services["redis"]["image"].startswith("redis:7")
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:1.23")
    assert services["label-studio"]["profiles"] == ["label-studio"]
    for name in ("redis", *OUR_SERVICES):
        assert "profiles" not in services[name], name
    for name in OUR_SERVICES:
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert services[name]["image"] == services["backend"]["image"]
        assert services[name]["restart"] == "unless-stopped"


def test_commands_exist_in_the_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    parser = build_parser()
    services = compose()["services"]
    commands = {name: services[name]["command"] for name in OUR_SERVICES}
    commands["Dockerfile CMD"] = json.loads(instructions("CMD")[0])
    for where, cmd in commands.items():
        assert cmd[0] in scripts, where
        parser.parse_args(cmd[1:])  # exits (SystemExit) on an unknown command or flag
    assert commands["backend"][1] == "serve" and commands["Dockerfile CMD"][1] == "serve"
    assert commands["worker"][1] == "worker"
    # Tuning runs (minutes) never hold the worker that serves the smart tools.
    assert commands["worker"][2:] == ["--queues", "interactive", "batch"]
    assert commands["tuner"][1:] == ["worker", "--queues", "tune"]
    assert json.loads(instructions("ENTRYPOINT")[0]) == ["/usr/local/bin/seggpt-entrypoint"]
    assert any(
        c.endswith("docker/entrypoint.sh /usr/local/bin/seggpt-entrypoint") for c in instructions("COPY")
    )


def test_ports():
    assert instructions("EXPOSE") == [str(Settings().port)]
    assert compose()["services"]["backend"]["ports"] == ["9090:9090"]
    local = compose({"REDIS_PASSWORD": "x", "BACKEND_PUBLISH": "127.0.0.1:9191"})
    assert local["services"]["backend"]["ports"] == ["127.0.0.1:9191:9090"]
    assert compose()["services"]["label-studio"]["ports"] == ["8080:8080"]
    assert "ports" not in compose()["services"]["redis"]  # only the compose network reaches it


def test_healthchecks_and_dependencies():
    services = compose()["services"]
    assert services["backend"]["healthcheck"]["test"] == ["CMD", "python", "-c", healthcheck_code()]
    assert services["worker"]["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    kind, shell = services["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and "redis-cli" in shell and " -a " in shell and "ping" in shell
    for name in OUR_SERVICES:
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_worker_reserves_one_nvidia_gpu():
    services = compose()["services"]
    for name in ("worker", "tuner"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["backend"]  # the HTTP server never computes in Redis mode


def test_weights_cache_volume_is_shared_and_holds_the_caches():
    (volume,) = json.loads(instructions("VOLUME")[0])
    env = dockerfile_env()
    for key in ("HF_HOME", "MODEL_DIR"):
        assert env[key].startswith(volume + "/"), key
    model = compose()
    for name in OUR_SERVICES:
        mounts = dict(m.split(":", 1)[::-1] for m in model["services"][name]["volumes"])
        assert mounts[volume] in model["volumes"], name


# ---------------------------------------------------------------- environment variables


def test_required_secret_and_resolved_settings():
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        compose({})
    env = compose({"REDIS_PASSWORD": "s3cret", "SEGGPT_NUM_EXAMPLES": "6"})["services"]["worker"][
        "environment"
    ]
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    assert settings.redis_url == "redis://:s3cret@redis:6379/0" and not settings.embedded
    assert settings.seggpt_weights == "BAAI/seggpt-vit-large"
    assert settings.label_studio_url == "http://label-studio:8080"
    assert settings.num_examples == 6
    # Everything else falls back to the code's defaults: empty means "not set".
    expected = Settings(
        redis_url=settings.redis_url,
        seggpt_weights=settings.seggpt_weights,
        label_studio_url=settings.label_studio_url,
        num_examples=6,
    )
    assert settings == expected


def test_every_setting_is_passed_through_to_our_services():
    names = set(Settings.env_names())
    model = compose()
    for name in OUR_SERVICES:
        missing = names - NOT_PASSED_THROUGH - set(model["services"][name]["environment"])
        assert not missing, f"add {sorted(missing)} to x-seggpt-environment in docker-compose.yml"


def test_every_environment_variable_is_known():
    settings = set(Settings.env_names())
    model = compose()
    for name in OUR_SERVICES:
        unknown = set(model["services"][name]["environment"]) - settings - THIRD_PARTY_ENV
        assert not unknown, (name, unknown)
    assert set(model["services"]["label-studio"]["environment"]) <= LABEL_STUDIO_ENV
    assert set(model["services"]["redis"]["environment"]) == {"REDIS_PASSWORD"}
    assert not set(dockerfile_env()) - settings - THIRD_PARTY_ENV
    used = variables(compose_text())
    assert not used - settings - COMPOSE_VARS, used - settings - COMPOSE_VARS
    entry = variables(ENTRYPOINT.read_text())
    assert not entry - settings - THIRD_PARTY_ENV - {"cache", "spec"}, entry
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    undocumented = {v for v in (used - settings) | set(dockerfile_args()) if v not in deploy}
    assert not undocumented, f"document {sorted(undocumented)} in docs/DEPLOY.md"


# ---------------------------------------------------------------- Dockerfile and build context


def test_cuda_base_matches_the_torch_wheel_index():
    args = dockerfile_args()
    image = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert image, args["CUDA_IMAGE"]
    assert instructions("FROM") == ["${CUDA_IMAGE}"]
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/cu{image[1]}{image[2]}"
    # The RUN line takes torch's pin from requirements.txt with this very pattern.
    pins = [
        ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if re.match(r"torch[ =<>~!]", ln)
    ]
    assert len(pins) == 1 and re.match(r"torch==\d+\.\d+\.\d+\s", pins[0]), pins
    assert any("grep -E '^torch[ =<>~!]' /tmp/requirements.txt" in r for r in instructions("RUN"))


def test_runs_as_a_non_root_user():
    users = instructions("USER")
    assert users and users[-1] not in {"root", "0"}
    assert any("useradd" in r and users[-1] in r for r in instructions("RUN"))


def test_dockerignore_keeps_big_and_secret_things_out():
    patterns = dockerignore_patterns()
    for path in (".venv", ".venv/bin/python", ".ls-venv", ".cache", ".git", ".git/HEAD", ".env"):
        assert dockerignored(path, patterns), path
    assert dockerignored("seggpt_backend/__pycache__/cli.cpython-311.pyc", patterns)
    for path in ("seggpt_backend/cli.py", "workers/worker.py", "README.md", "requirements.txt"):
        assert not dockerignored(path, patterns), path


def test_every_copy_source_is_in_the_build_context():
    patterns = dockerignore_patterns()
    for args in instructions("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignored(src, patterns), f"COPY {src}: excluded by .dockerignore"


# ---------------------------------------------------------------- entrypoint


def _tiny_hf_cache(hf_home: Path, repo_id: str) -> None:
    """Random tiny weights as ``repo_id`` in a Hugging Face cache layout under ``hf_home``."""
    from safetensors.torch import save_file

    from seggpt_backend.model.checkpoint import load_weights

    weights = load_weights("random:tiny")
    snap = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.state.items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps(weights.config.to_dict()))


def _entry(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run docker/entrypoint.sh as the container would: ``ENTRYPOINT`` + ``CMD`` arguments."""
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=dict(env), capture_output=True, text=True, timeout=120
    )


def test_entrypoint_is_valid_bash_and_execs_its_command(tmp_path):
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0
    assert os.access(ENTRYPOINT, os.X_OK)
    env = base_env(tmp_path)
    done = _entry(["sh", "-c", 'echo "$0 $1"; exit 3', "a b", "c"], env)
    assert (done.returncode, done.stdout) == (3, "a b c\n")


@pytest.mark.slow
def test_entrypoint_prefetches_weights_for_the_worker(tmp_path):
    env = {**base_env(tmp_path), "SEGGPT_WEIGHTS": "seggpt-tests/tiny"}
    _tiny_hf_cache(Path(env["HF_HOME"]), "seggpt-tests/tiny")
    done = _entry(["seggpt-backend", "worker", "--help"], env)
    assert done.returncode == 0, done.stderr
    assert "weights seggpt-tests/tiny ready" in done.stderr and "--queues" in done.stdout
    assert (tmp_path / "home" / ".cache" / ".seggpt-weights.lock").exists()


@pytest.mark.slow
def test_entrypoint_stops_on_weights_it_cannot_get(tmp_path):
    env = {**base_env(tmp_path), "SEGGPT_WEIGHTS": "seggpt-tests/does-not-exist"}
    done = _entry(["seggpt-backend", "worker", "--help"], env)
    assert done.returncode != 0 and "--queues" not in done.stdout
    assert "seggpt-entrypoint: cannot get weights 'seggpt-tests/does-not-exist'" in done.stderr
    # A server in Redis mode never loads the model: it starts without touching the weights.
    done = _entry(["seggpt-backend", "serve", "--help"], {**env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 0 and "checking weights" not in done.stderr


# ---------------------------------------------------------------- real processes


@pytest.mark.slow
def test_redis_command_and_healthcheck(tmp_path):
    with compose_redis(tmp_path) as (port, password, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"PING\r\n")
            assert conn.recv(100).startswith(b"-NOAUTH")  # the password is enforced
        shell = compose({"REDIS_PASSWORD": password})["services"]["redis"]["healthcheck"]["test"][1]
        assert "-p 6379" in shell
        shell = shell.replace("-p 6379", f"-p {port}")
        ok = subprocess.run(["sh", "-c", shell], env={**os.environ, "REDIS_PASSWORD": password})
        bad = subprocess.run(["sh", "-c", shell], env={**os.environ, "REDIS_PASSWORD": "wrong"})
        assert (ok.returncode, bad.returncode != 0) == (0, True)


@pytest.mark.slow
def test_healthcheck_against_embedded_serve(tmp_path):
    port = free_port()
    check = {"PORT": str(port)}
    assert run_python(healthcheck_code(), check).returncode != 0  # nothing listens yet
    env = {**base_env(tmp_path), "SEGGPT_WEIGHTS": "random:tiny"}
    log = tmp_path / "serve.log"
    cmd = [str(BIN / "seggpt-backend"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with process(cmd, env, log) as proc:
        wait_until(lambda: run_python(healthcheck_code(), check).returncode == 0, "healthy", log, proc)


@pytest.mark.slow
def test_healthcheck_against_redis_mode_serve_and_worker(tmp_path):
    with compose_redis(tmp_path) as (redis_port, password, redis_proc):
        url = compose_redis_url(redis_port, password)
        env = {**base_env(tmp_path), "REDIS_URL": url, "SEGGPT_WEIGHTS": "random:tiny"}
        worker_check = compose()["services"]["worker"]["healthcheck"]["test"][3]
        assert run_python(worker_check, {"REDIS_URL": url}).returncode == 1  # no worker yet
        port = free_port()
        check = {"PORT": str(port)}
        cmd = [str(BIN / "seggpt-backend"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        serve_log, worker_log = tmp_path / "serve.log", tmp_path / "worker.log"
        with process(cmd, env, serve_log) as serve:
            wait_until(
                lambda: run_python(healthcheck_code(), check).returncode == 0, "serve", serve_log, serve
            )
            with process([str(BIN / "seggpt-backend"), "worker"], env, worker_log) as worker:
                healthy = lambda: run_python(worker_check, {"REDIS_URL": url}).returncode == 0  # noqa: E731
                wait_until(healthy, "worker registered", worker_log, worker)
                worker.terminate()
                assert worker.wait(timeout=30) == 0
            assert run_python(worker_check, {"REDIS_URL": url}).returncode == 1  # unregistered
            # Redis gone: the backend answers 503 DOWN (from its next health snapshot, taken every
            # second), which the health check must report.
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
            wait_until(lambda: _http_status(port) == 503, "DOWN", serve_log, serve, timeout=10)
            assert run_python(healthcheck_code(), check).returncode != 0


def _http_status(port: int) -> int | None:
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None
