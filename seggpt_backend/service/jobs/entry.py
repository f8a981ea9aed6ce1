"""Job entry points (what RQ calls by dotted path) and the per-process worker context.

``predict_job(payload)`` computes a chunk of tasks (or one interactive request) and stores the
results; ``sync_job(payload)`` fills a project's examples from Label Studio; ``tune_job(payload)``
tunes, validates and maybe promotes learned prompts (:mod:`.tuning`). Each takes one JSON
payload (:class:`~seggpt_backend.service.contract.PredictJob` / ``SyncJob`` / ``TuneJob``) and uses the process-wide
:class:`WorkerContext` that :mod:`seggpt_backend.service.jobs.worker` installs after loading the engine once (in
embedded mode, the server's in-process queue installs its own).

Idempotence: results are keyed by (project, requested model version, task id); a retried or
duplicated job skips tasks whose result exists. Each result carries the version it was actually
computed with (see :mod:`seggpt_backend.service.http.runtime`). Delivery to Label Studio happens
exactly once per result, in the waiting request's response or by write-back: see
:mod:`seggpt_backend.service.jobs.delivery`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from seggpt_backend.engine.interface import Engine, LearnedPrompt, TuneOptions
from seggpt_backend.service.contract import (
    JobTask,
    PredictJob,
    ProjectOptions,
    PruneJob,
    QualityJob,
    SyncJob,
    TaskResult,
    TuneJob,
)
from seggpt_backend.service.jobs import quality, refresh, sync
from seggpt_backend.service.jobs.clients import ClientRouter, working_on
from seggpt_backend.service.jobs.delivery import Delivery
from seggpt_backend.service.jobs.materialize import Materializer
from seggpt_backend.service.jobs.pipeline import Chunk, ChunkRunner, Options, ServedPrompt
from seggpt_backend.service.jobs.prefetch import ImagePrefetcher
from seggpt_backend.service.jobs.regions import calibration_for
from seggpt_backend.service.jobs.tuning import Tuner, TuningPolicy, run_summary
from seggpt_backend.service.store.connections import ConnectionStore
from seggpt_backend.service.store.examples import ExampleStore, compose_model_version
from seggpt_backend.service.store.kv import KV, RedisKV
from seggpt_backend.service.store.metrics import Metrics
from seggpt_backend.service.store.prelabel import RefreshGate
from seggpt_backend.service.store.progress import ProgressStore
from seggpt_backend.service.store.project_options import ProjectOptionsStore
from seggpt_backend.service.store.prompts import PromptStore, TuneRun
from seggpt_backend.service.store.quality import QualityStore
from seggpt_backend.service.store.queue import JobQueue, RQJobQueue
from seggpt_backend.service.store.results import ResultStore
from seggpt_backend.service.store.taskcache import TaskCache
from seggpt_backend.settings import Settings

log = logging.getLogger(__name__)

FILL_RETRY_S = 60


@dataclass
class WorkerContext:
    """Everything a job needs in one process; the engine is loaded once and reused."""

    settings: Settings
    kv: KV
    engine_loader: Callable[[], Engine]
    client: Any = None  # the configured LabelStudioClient, or None without LABEL_STUDIO_URL
    # Where jobs enqueue follow-up jobs (the refresh after a promotion): embedded mode sets the
    # in-process queue; on Redis it is built on first use (:meth:`job_queue`).
    queue: JobQueue | None = None
    clients: ClientRouter = field(init=False)  # per project: configured, else from /setup
    examples: ExampleStore = field(init=False)
    results: ResultStore = field(init=False)
    metrics: Metrics = field(init=False)
    materializer: Materializer = field(init=False)
    prefetcher: ImagePrefetcher = field(init=False)
    delivery: Delivery = field(init=False)
    prompts: PromptStore = field(init=False)
    progress: ProgressStore = field(init=False)
    _engine: Engine | None = field(default=None, init=False)
    _runner: ChunkRunner | None = field(default=None, init=False)
    # (project, version) -> the prompt's arrays, read from the KV once per worker.
    _learned: dict[tuple[str, str], LearnedPrompt] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.examples = ExampleStore(self.kv)
        self.results = ResultStore(self.kv)
        self.metrics = Metrics(self.kv)
        self.prompts = PromptStore(self.kv, keep=self.settings.prompt_versions_kept)
        self.progress = ProgressStore(self.kv)
        self.clients = ClientRouter(self.settings, ConnectionStore(self.kv), self.client)
        self.materializer = Materializer(self.kv, self.fetch, max_pixels=self.settings.max_image_pixels)
        self.prefetcher = ImagePrefetcher(
            self.fetch, max_pixels=self.settings.max_image_pixels, keep=max(16, 4 * self.settings.chunk_size)
        )
        self.delivery = Delivery(
            self.results,
            self.clients.for_project,
            self.metrics,
            replace_superseded=self.settings.replace_superseded,
        )

    def fetch(self, url: str, task_id: int | None) -> bytes:
        """Image bytes through the Label Studio client of the project worked on (host
        allow-list, auth; see :mod:`.clients`)."""
        client = self.clients.current()
        if client is None:
            raise RuntimeError(
                "LABEL_STUDIO_URL is not set and Label Studio has not called /setup for this project: "
                "cannot download task images"
            )
        return client.fetch_image_bytes(url, task_id)

    def job_queue(self) -> JobQueue | None:
        """The queue follow-up jobs go to: the one set, else RQ on this worker's Redis (None on
        another KV without a queue set)."""
        if self.queue is None and isinstance(self.kv, RedisKV):
            self.queue = RQJobQueue(
                self.kv.client, self.settings.key_prefix, job_timeout_s=self.settings.job_timeout_s
            )
        return self.queue

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                started = time.monotonic()
                self._engine = self.engine_loader()
                log.info("engine %s ready in %.1f s", self._engine.model_version, time.monotonic() - started)
                self.publish_engine()
            return self._engine

    @property
    def runner(self) -> ChunkRunner:
        """The chunk runner on this process's engine, prefetcher and materializer (loads the engine)."""
        if self._runner is None:
            self._runner = ChunkRunner(
                engine=self.engine,
                load=self.prefetcher.load,
                materializer=self.materializer,
                pool=self.prefetcher.pool,
                cache=TaskCache(self.kv, self.settings.refine_cache_ttl_s),
            )
        return self._runner

    def publish_engine(self) -> None:
        """Tell the server which engine computes (its ``/setup`` version); again after Redis lost it."""
        if self._engine is not None:
            self.kv.hset("engine", {"version": self._engine.model_version, "loaded_at": repr(time.time())})

    def model_version(self, project: str, options: ProjectOptions | None = None) -> str:
        """The version this worker predicts ``project`` with now (its engine, current examples,
        the promoted prompts tuned for its engine, the project's own options)."""
        engine = self.engine.model_version
        return compose_model_version(
            engine,
            self.examples.digest(project),
            prompts=self.prompts.digest(project, engine),
            options=None if options is None else options.version_tag(),
        )

    def served_prompts(self, project: str) -> dict[str, ServedPrompt]:
        """``{label: prompt}`` of the promoted prompts this worker's engine may serve.

        Only prompts tuned for the loaded engine's version; the arrays are read once per
        (project, version) and kept (a new promotion is a new version). A prompt whose tensors
        are missing or unreadable is left out (logged) and examples alone are served.
        """
        out: dict[str, ServedPrompt] = {}
        for label, meta in self.prompts.served(project, self.engine.model_version).items():
            key = (project, meta.version)
            prompt = self._learned.get(key)
            if prompt is None:
                try:
                    image, target = self.prompts.load(project, meta.version)
                    prompt = LearnedPrompt(f"prompt:{project}:{meta.version}", image, target)
                except (KeyError, ValueError) as exc:
                    log.warning("project %s: learned prompt for %r not served: %s", project, label, exc)
                    continue
                if len(self._learned) >= 256:
                    self._learned.pop(next(iter(self._learned)))
                self._learned[key] = prompt
            out[label] = ServedPrompt(prompt, meta.mode, meta.version)
        return out

    def project_options(self, project: str) -> ProjectOptions:
        """``project``'s options: its stored Extra params over the environment's defaults."""
        return ProjectOptionsStore(self.kv).get(project, ProjectOptions.defaults(self.settings))

    def tuning_policy(self, project: ProjectOptions) -> TuningPolicy:
        """The tuning knobs (settings) and the project's way of serving examples (``k``,
        ensemble), so that the promotion gate measures what the project is served."""
        s = self.settings
        balance = s.tune_fg_balance
        if balance < 0:  # the weights' own training balance: the demo model used 0.25
            balance = 0.25 if s.seggpt_weights == "demo" else 0.0
        return TuningPolicy(
            options=TuneOptions(
                steps=s.tune_steps,
                lr=s.tune_lr,
                batch_size=s.tune_batch,
                time_budget_s=s.tune_budget_s,
                fg_balance=balance,
            ),
            margin=s.tune_margin,
            num_examples=project.num_examples,
            ensemble=project.ensemble,
            seg_type=s.seg_type,
        )

    def options(self, project: ProjectOptions | None = None) -> Options:
        """The pipeline's knobs: the job's project options (:class:`~seggpt_backend.service.contract.ProjectOptions`), else the environment's."""
        s = self.settings
        p = ProjectOptions.defaults(s) if project is None else project
        return Options(
            num_examples=p.num_examples,
            selection=p.selection,
            pool=s.example_pool,
            split_components=p.split_components,
            ensemble=p.ensemble,
            seg_type=s.seg_type,
            multilabel=s.multilabel,
            polygon_tolerance=s.polygon_tolerance,
            threshold=p.threshold,
            min_region_area=p.min_region_area,
            min_score=p.min_score,
            score_calibration=calibration_for(s.seggpt_weights),
        )

    def close(self) -> None:
        self.prefetcher.close()


def engine_loader(settings: Settings) -> Callable[[], Engine]:
    """A function loading the configured engine; called lazily (first job), never at import."""

    def load() -> Engine:
        from seggpt_backend.engine.engine import load_engine

        return load_engine(
            settings.seggpt_weights,
            device=settings.device,
            dtype=settings.dtype,
            download_dir=settings.model_dir,
        )

    return load


def make_client(settings: Settings) -> Any:
    """A Label Studio API client from settings, or ``None`` when no URL is configured."""
    if not settings.label_studio_url:
        return None
    from seggpt_backend.labelstudio.client import LabelStudioClient

    return LabelStudioClient(
        settings.label_studio_url,
        settings.label_studio_api_key,
        allowed_hosts=settings.allowed_hosts,
        download_deadline_s=settings.download_deadline_s,
    )


_context: WorkerContext | None = None


def install(context: WorkerContext | None) -> None:
    """Make ``context`` the one jobs in this process use (the worker does this at start-up)."""
    global _context
    _context = context


def current() -> WorkerContext:
    if _context is None:
        raise RuntimeError("no WorkerContext installed: start workers with `seggpt-backend worker`")
    return _context


def predict_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point for ``predict`` payloads (:class:`PredictJob` as JSON)."""
    return execute_predict(current(), PredictJob.from_json(payload))


def prune_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point for ``prune`` payloads (:class:`PruneJob` as JSON)."""
    return execute_prune(current(), PruneJob.from_json(payload))


def execute_prune(ctx: WorkerContext, job: PruneJob) -> dict[str, Any]:
    """Delete superseded predictions; raises (so RQ retries) if some could not be deleted."""
    failed = ctx.delivery.prune(job.project, job.predictions)
    if failed:
        raise RuntimeError(f"project {job.project}: could not delete superseded predictions {failed}")
    return {"project": job.project, "deleted": len(job.predictions)}


def sync_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point for ``sync`` payloads (:class:`SyncJob` as JSON)."""
    return execute_sync(current(), SyncJob.from_json(payload))


def quality_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point for ``quality`` payloads (:class:`QualityJob` as JSON)."""
    return execute_quality(current(), QualityJob.from_json(payload))


def execute_quality(ctx: WorkerContext, job: QualityJob) -> dict[str, Any]:
    """Measure the task's prediction against the submitted annotation (:mod:`.quality`).

    Without a Label Studio client there is no prediction to read: nothing is recorded. A task
    that is gone (deleted since the webhook) is not an error either.
    """
    summary: dict[str, Any] = {"project": job.project, "task": job.task_id, "annotation": job.annotation_id}
    client = ctx.clients.for_project(job.project)
    if client is None:
        return {**summary, "recorded": False, "reason": "no Label Studio connection for the project"}
    from seggpt_backend.labelstudio.client import LabelStudioError

    try:
        task = client.get_task(job.task_id)
    except LabelStudioError as exc:
        if getattr(exc, "status_code", None) == 404:
            return {**summary, "recorded": False, "reason": f"task {job.task_id} no longer exists"}
        raise
    if not task.get("predictions") and task.get("total_predictions"):
        task = {**task, "predictions": client.list_predictions(job.task_id)}
    measurement = quality.measure(task, job.annotation_id)
    if measurement is None:
        return {**summary, "recorded": False, "reason": "no prediction of this backend to compare with"}
    QualityStore(ctx.kv).record(job.project, measurement)
    for x in measurement.labels:
        ctx.metrics.inc("seggpt_suggestions_measured_total", label=x.label, source=measurement.source)
    log.info(
        "project %s: task %s annotation %s vs prediction %s: %s",
        job.project,
        job.task_id,
        job.annotation_id,
        measurement.prediction_id,
        ", ".join(f"{x.label} IoU {x.iou:.3f}" for x in measurement.labels),
    )
    return {**summary, "recorded": True, "labels": {x.label: x.iou for x in measurement.labels}}


def tune_job(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point for ``tune`` payloads (:class:`TuneJob` as JSON)."""
    return run_summary(execute_tune(current(), TuneJob.from_json(payload)))


def execute_tune(ctx: WorkerContext, job: TuneJob) -> TuneRun:
    """One tuning run of ``job.project`` (see :mod:`.tuning`); recorded in the prompt store.

    Runs of one project never overlap (two tuner workers): a KV lock, held for at most the
    run's budget plus 10 minutes, makes the second wait for the first and then measure against
    what the first promoted.
    """
    lock = f"pr:{job.project}:lock"
    hold_s = 2 * ctx.settings.tune_budget_s + 600
    deadline = time.monotonic() + hold_s
    while not ctx.kv.set(lock, b"1", ex=hold_s, nx=True):
        if time.monotonic() > deadline:
            raise RuntimeError(f"project {job.project}: another tuning run holds the lock for too long")
        time.sleep(1.0)
    try:
        with working_on(job.project):
            ensure_examples(ctx, job.project)
            tuner = Tuner(
                engine=ctx.engine,
                materializer=ctx.materializer,
                prompts=ctx.prompts,
                metrics=ctx.metrics,
                policy=ctx.tuning_policy(ctx.project_options(job.project)),
                served=ctx.served_prompts,
            )
            run = tuner.run(job, ctx.examples.records(job.project))
    finally:
        ctx.kv.delete(lock)
    if run.promoted:
        after_promotion(ctx, job.project, trigger="tuning")
    return run


def after_promotion(ctx: WorkerContext, project: str, *, trigger: str) -> dict[str, Any] | None:
    """A new prompt set is served: refresh the unlabelled tasks if the project asks for it
    (:mod:`.refresh`). Best effort: the run is recorded already, so a Label Studio failure here
    is logged, not raised (``seggpt-backend prelabel`` does the same work by hand)."""
    try:
        with working_on(project):
            return refresh.refresh_project(ctx, project, trigger=trigger)
    except Exception as exc:
        log.warning("project %s: refresh after %s not queued: %s", project, trigger, exc)
        ctx.metrics.inc("seggpt_refresh_total", trigger=trigger, outcome="failed")
        return None


def run_deferred_refreshes(ctx: WorkerContext, *, now: float | None = None) -> list[dict[str, Any]]:
    """Refresh the projects whose debounced refresh is due (:class:`RefreshGate`); called by a
    worker between jobs. Returns each refresh's summary."""
    gate = RefreshGate(ctx.kv, ctx.settings.refresh_interval_s)
    done = [after_promotion(ctx, project, trigger="deferred") for project in gate.take_due(now=now)]
    return [d for d in done if d is not None]


def ensure_examples(ctx: WorkerContext, project: str, *, force: bool = False) -> None:
    """Fill the project's examples from Label Studio unless done already (first use)."""
    if not force and ctx.examples.is_populated(project):
        return
    client = ctx.clients.for_project(project)
    if client is None:
        log.warning(
            "project %s: LABEL_STUDIO_URL not set and no /setup seen; examples come only from webhooks",
            project,
        )
        return
    backoff = f"ex:{project}:fill_failed"
    if not force and ctx.kv.exists(backoff):
        return  # Label Studio failed us recently: do not add its timeout to every job
    try:
        sync.fill(
            client,
            ctx.examples,
            ctx.kv,
            project,
            on_removed=lambda a, r: ctx.materializer.forget(project, a, r),
        )
    except Exception:  # predictions still run with the examples webhooks delivered
        log.exception(
            "project %s: cannot fill examples from Label Studio (retry in %d s)", project, FILL_RETRY_S
        )
        ctx.kv.set(backoff, b"1", ex=FILL_RETRY_S)


def execute_sync(ctx: WorkerContext, job: SyncJob) -> dict[str, Any]:
    with working_on(job.project):
        ensure_examples(ctx, job.project, force=job.force)
    return {"project": job.project, "examples": ctx.examples.count(job.project)}


def execute_predict(ctx: WorkerContext, job: PredictJob) -> dict[str, Any]:
    """Compute one predict job; stores entries, delivers them (see above), wakes the waiter."""
    started = time.monotonic()
    ctx.metrics.observe("seggpt_job_wait_seconds", max(0.0, time.time() - job.enqueued_at), queue=job.queue)
    try:
        with working_on(job.project):
            summary = _predict(ctx, job)
    except Exception:
        ctx.metrics.inc("seggpt_jobs_total", queue=job.queue, status="failed")
        raise
    ctx.metrics.inc("seggpt_jobs_total", queue=job.queue, status="finished")
    ctx.metrics.observe("seggpt_job_duration_seconds", time.monotonic() - started, queue=job.queue)
    return summary


def _offer(ctx: WorkerContext, job: PredictJob, task: JobTask) -> None:
    ctx.delivery.offer(
        project=job.project,
        model_version=job.model_version,
        task_id=task.id,
        channel=job.channel,
        always=job.writeback == "always",
        supersedes=task.supersedes,
        verify=job.recovered,
    )


def _progress(ctx: WorkerContext, job: PredictJob, task_id: int, error: str | None) -> None:
    """Background pre-labelling (``writeback="always"``) counts each finished task in the
    project's progress (:mod:`seggpt_backend.service.store.progress`); the count is best effort:
    a failure to record it must not fail a computed job."""
    if job.writeback != "always":
        return
    try:
        ctx.progress.finish(job.project, task_id, error=error)
    except Exception as exc:
        log.warning("project %s: task %s: progress not recorded: %s", job.project, task_id, exc)


def _predict(ctx: WorkerContext, job: PredictJob) -> dict[str, Any]:
    project, version, ids = job.project, job.model_version, job.task_ids
    tasks = list(job.tasks)
    if job.prompt is None:
        # A retried or duplicated job: tasks already computed are only (re)offered for delivery.
        done = ctx.results.get_many(project, version, ids)
        cached = [t for t in ids if t in done and done[t].ok]
        if cached:
            ctx.metrics.inc("seggpt_tasks_total", len(cached), outcome="cached")
            for task in job.tasks:
                if task.id in cached:
                    _offer(ctx, job, task)
                    _progress(ctx, job, task.id, None)
        tasks = [t for t in tasks if t.id not in cached]
        if not tasks:
            ctx.results.notify(job.channel, ids)
            return {"tasks": len(ids), "computed": 0}
    by_id = {t.id: t for t in job.tasks}
    ensure_examples(ctx, project)
    records = ctx.examples.records(project)
    # Results are stored under the requested version (the waiting request looks them up by it) but
    # carry the version actually computed, which is what /setup reports from now on.
    actual = ctx.model_version(project, job.options)
    chunk = Chunk(
        project=project,
        model_version=actual,
        targets=job.targets,
        tasks=tasks,
        records=records,
        prompt=job.prompt,
        learned=ctx.served_prompts(project),
    )
    outcome = ctx.runner.run(chunk, ctx.options(job.options))
    ctx.prefetcher.release(url for t in tasks for url in t.images.values())
    failed = sum(1 for e in outcome.entries.values() if not e.ok)
    ctx.metrics.inc("seggpt_tasks_total", len(outcome.entries) - failed, outcome="predicted")
    if failed:
        ctx.metrics.inc("seggpt_tasks_total", failed, outcome="failed")
    if job.prompt is not None:
        tid = ids[0]
        entry = outcome.entries.get(tid, TaskResult.failure(f"task {tid}: nothing computed"))
        ctx.results.put_interactive(job.channel, entry.with_messages(outcome.messages))
    else:
        for tid, entry in outcome.entries.items():
            ctx.results.put(
                project, version, tid, entry.with_messages(outcome.messages) if entry.ok else entry
            )
            if entry.ok:
                _offer(ctx, job, by_id[tid])
            _progress(ctx, job, tid, entry.error)
    ctx.results.notify(job.channel, ids)
    return {"tasks": len(ids), "computed": len(outcome.entries), "failed": failed}
