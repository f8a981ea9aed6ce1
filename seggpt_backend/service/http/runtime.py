"""The server's handles: stores and queue, from settings.

With ``REDIS_URL`` (:meth:`Runtime.create`): every store lives in Redis and jobs go to RQ,
computed by separate worker processes (:mod:`seggpt_backend.service.jobs.worker`). Without it (embedded mode), the same
stores live on an in-process :class:`~seggpt_backend.service.store.kv.MemoryKV` and a daemon
thread runs the jobs: that runtime is composed by :mod:`seggpt_backend.service.server`, since it
holds worker-side code the HTTP room does not import.

Model version
-------------
``<engine version>.ex-<examples digest>[.pr-<prompts digest>]``, e.g.
``seggpt-demo-3f2a1b.ex-9c0d4e5f61``. The engine
part is what the most recently started worker published when it loaded its weights (key
``engine``); before any worker has, it is derived from ``SEGGPT_WEIGHTS``. The examples part
changes whenever an example of the project is added, edited or deleted, so Label Studio's
"Retrieve Predictions" recomputes tasks after the examples change, and only then. The prompts
part appears once a tuning run promoted a learned prompt tuned for that engine version
(:mod:`seggpt_backend.service.store.prompts`) and changes with every promotion or rollback.

A prediction carries the version its worker computed it with (engine loaded, examples as used),
not the one the request was enqueued under: a batch enqueued before any worker published its
engine version is written back with the version ``/setup`` reports from then on, so Label Studio
does not compute those tasks a second time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from seggpt_backend.service.contract import PredictJob, ProjectOptions
from seggpt_backend.service.http.outstanding import Outstanding
from seggpt_backend.service.store.connections import ConnectionStore
from seggpt_backend.service.store.examples import ExampleStore, compose_model_version
from seggpt_backend.service.store.kv import KV, RedisKV
from seggpt_backend.service.store.metrics import Metrics
from seggpt_backend.service.store.progress import ProgressStore
from seggpt_backend.service.store.project_options import ProjectOptionsStore
from seggpt_backend.service.store.prompts import PromptStore
from seggpt_backend.service.store.queue import InProcessJobQueue, JobQueue, RQJobQueue
from seggpt_backend.service.store.results import ResultStore
from seggpt_backend.settings import Settings

log = logging.getLogger(__name__)


def fallback_engine_version(spec: str) -> str:
    """Engine version used before any worker published one (derived from the weights spec)."""
    return "seggpt-" + re.sub(r"[^A-Za-z0-9._-]+", "_", spec.rsplit("/", 1)[-1] or spec)[:48]


@dataclass
class Runtime:
    """Server-side handles; build with :meth:`create`."""

    settings: Settings
    kv: KV
    queue: JobQueue
    health_kv: KV | None = None
    worker_context: Any = None  # embedded mode: the in-process WorkerContext
    examples: ExampleStore = field(init=False)
    results: ResultStore = field(init=False)
    metrics: Metrics = field(init=False)
    prompts: PromptStore = field(init=False)
    progress: ProgressStore = field(init=False)
    connections: ConnectionStore = field(init=False)
    project_settings: ProjectOptionsStore = field(init=False)
    outstanding: Outstanding | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.examples = ExampleStore(self.kv)
        self.results = ResultStore(self.kv)
        self.metrics = Metrics(self.kv)
        self.prompts = PromptStore(self.kv, keep=self.settings.prompt_versions_kept)
        self.progress = ProgressStore(self.kv)
        self.connections = ConnectionStore(self.kv)
        self.project_settings = ProjectOptionsStore(self.kv)
        if not self.queue.embedded:
            # The in-process queue cannot lose a job without losing this process too.
            self.outstanding = Outstanding(self.queue, self.results)
            self.outstanding.start()

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        """Connect (lazily: nothing is loaded or contacted here) according to ``settings``."""
        if settings.embedded:
            raise ValueError(
                "embedded mode: build the runtime with seggpt_backend.service.server.make_runtime"
            )
        kv = RedisKV.from_url(settings.redis_url, settings.key_prefix, socket_timeout=10.0)
        health = RedisKV.from_url(settings.redis_url, settings.key_prefix, socket_timeout=0.5)
        # Live = beat within the worker_ttl the worker (service/jobs/worker.py) registers (2 x heartbeat + 30 s): an
        # idle worker beats only every worker_ttl - 15 s, so a tighter bound drops live idle ones.
        live_s = max(30.0, 2 * settings.worker_heartbeat_s + 30)
        queue = RQJobQueue(
            kv.client,
            settings.key_prefix,
            job_timeout_s=settings.job_timeout_s,
            live_s=live_s,
            tune_timeout_s=int(settings.tune_budget_s * 2 + 600),
        )
        return cls(settings, kv, queue, health_kv=health)

    # ------------------------------------------------------------------ outstanding work
    def track(self, queue: str, job: PredictJob, job_id: str) -> None:
        """Remember an enqueued batch job until its results exist (see :mod:`.outstanding`)."""
        if self.outstanding is not None:
            self.outstanding.track(queue, job, job_id)

    def delivered(self, project: str, model_version: str, task_ids: list[int]) -> None:
        if self.outstanding is not None:
            self.outstanding.delivered(project, model_version, task_ids)

    # ------------------------------------------------------------------ versions
    def engine_version(self) -> str:
        try:
            raw = self.kv.hget("engine", "version")
        except Exception as exc:
            log.warning("cannot read the engine version: %s", exc)
            raw = None
        return raw.decode() if raw else fallback_engine_version(self.settings.seggpt_weights)

    def default_options(self) -> ProjectOptions:
        return ProjectOptions.defaults(self.settings)

    def options(self, project: str) -> ProjectOptions:
        """The project's effective options: its Extra params (from /setup) over the environment."""
        try:
            return self.project_settings.get(project, self.default_options())
        except Exception as exc:  # Redis down: the environment's options, predictions go on
            log.warning("project %s: cannot read its Extra params: %s", project, exc)
            return self.default_options()

    def reaches_label_studio(self, project: str) -> bool:
        """True when workers can call Label Studio's API for ``project`` (configured or /setup)."""
        if self.settings.label_studio_url and self.settings.label_studio_api_key:
            return True
        try:
            return self.connections.get(project) is not None or bool(self.settings.label_studio_url)
        except Exception:
            return bool(self.settings.label_studio_url)

    def model_version(self, project: str, options: ProjectOptions | None = None) -> str:
        engine = self.engine_version()
        opts = self.options(project) if options is None else options
        return compose_model_version(
            engine,
            self.examples.digest(project),
            prompts=self.prompts.digest(project, engine),
            options=opts.version_tag(),
        )

    # ------------------------------------------------------------------ health
    def redis_status(self) -> str:
        """``"embedded"``, ``"ok"`` or ``"unavailable: <reason>"`` (answers within ~0.5 s)."""
        if self.health_kv is None:
            return "embedded"
        try:
            self.health_kv.ping()
            return "ok"
        except Exception as exc:
            return f"unavailable: {type(exc).__name__}"

    def worker_status(self) -> tuple[int, str | None]:
        """(live workers, problem or None)."""
        if isinstance(self.queue, InProcessJobQueue):
            if self.queue.error is not None:
                return 0, f"model failed to load: {self.queue.error}"
            if not self.queue.ready.is_set():
                return 0, "model loading"
            return 1, None
        try:
            n = self.queue.workers()
        except Exception as exc:
            return 0, f"cannot list workers: {type(exc).__name__}"
        return n, None if n else "no worker is running: start one with `seggpt-backend worker`"

    def close(self) -> None:
        if self.outstanding is not None:
            self.outstanding.close()
        self.queue.close()
        if self.worker_context is not None:
            self.worker_context.close()
