"""``POST /predict`` on the server side: split, enqueue, wait within the budget, answer in order.

Answer shape: ``{"results": [entry_or_list, ...], "model_version": v, "messages": [...]}`` with
exactly one item per task, in request order. An item is either a prediction
``{"result": [...regions], "score": s, "model_version": v}`` or an empty list ``[]``. Label
Studio accepts a list per task (zero or more predictions), so ``[]`` stores nothing for that
task and keeps the count aligned. ``[]`` is used when:

- the task did not finish within ``SEGGPT_PREDICT_BUDGET_S`` (Label Studio gives up after
  100 s): the job keeps running and **writes the prediction back through the Label Studio API**
  (``POST /api/predictions``) when it completes, so no task is silently left out;
- another request or a worker delivered this task's prediction already (every delivery takes
  the ``posted:`` claim first, see :mod:`seggpt_backend.service.jobs.delivery`), so concurrent
  requests for the same tasks (Retrieve Predictions while annotators open them) store one;
- the task failed (unreadable image...): the reason is in ``messages`` and the worker log, and
  the next "Retrieve Predictions" tries again;
- Label Studio already holds this task's prediction for the current model version (nothing is
  recomputed and no duplicate is stored).

A task whose prediction is legitimately empty (no examples yet, nothing found) gets a real
prediction with an empty ``result``: the model version changes as soon as examples change, so
it is recomputed then.

Interactive requests (``params.context`` with keypoints/rectangles) go to the ``interactive``
queue, are never cached or written back, and answer ``results[0].result`` with one region.

While it waits, a batch request holds a lease (``waiter:<channel>``): workers leave it what they
compute. It claims its answers only when it is about to return, so a server killed while waiting
has claimed nothing and the workers write everything back. Jobs it enqueued are remembered by
:class:`~seggpt_backend.service.http.outstanding.Outstanding` until their results exist, and put on the
queue again if Redis lost them.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from seggpt_backend.service.contract import (
    JobTask,
    PredictJob,
    ProjectOptions,
    Prompt,
    PruneJob,
    Target,
    TaskResult,
    Writeback,
    parse_targets,
    superseded_ids,
)
from seggpt_backend.service.errors import Unavailable
from seggpt_backend.service.http.context import parse_context
from seggpt_backend.service.http.protocol import (
    PredictRequest,
    Task,
    existing_prediction,
    own_predictions,
    project_key,
    task_images,
)
from seggpt_backend.service.http.runtime import Runtime

log = logging.getLogger(__name__)

POLL_S = 0.5


def predict_job(
    *,
    project: str,
    model_version: str,
    targets: list[Target],
    tasks: list[Task],
    channel: str,
    queue: str,
    prompt: Prompt | None = None,
    writeback: Writeback = "requested",
    options: ProjectOptions | None = None,
) -> PredictJob:
    """The job for ``tasks``: ids, URLs and label names only (no pixels, no credentials)."""
    return PredictJob(
        project=project,
        model_version=model_version,
        targets=tuple(targets),
        tasks=tuple(JobTask(t.id, task_images(t, targets), own_predictions(t)) for t in tasks),
        channel=channel,
        queue=queue,
        prompt=prompt,
        writeback=writeback,
        options=options,
    )


@dataclass
class BatchCall:
    """One batch ``/predict`` call: what it asks for and how far it got.

    ``tasks``: the distinct tasks, in request order. Every task ends in exactly one of
    ``answers`` (its answer item: a prediction dict or ``[]``), ``found`` (a stored result, not
    yet claimed) or ``pending`` (not computed yet). ``messages``: notes for Label Studio, each once.
    """

    project: str
    version: str
    targets: list[Target]
    tasks: dict[int, Task]
    answers: dict[int, Any] = field(default_factory=dict)
    found: dict[int, TaskResult] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    options: ProjectOptions | None = None

    def note(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)


class Predictor:
    """Serves ``/predict`` through the runtime's queue and stores."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.s = runtime.settings

    def predict(self, req: PredictRequest) -> dict[str, Any]:
        """Raises ``ConfigUnsupported``/``PromptError`` (-> 422) and :class:`Unavailable` (-> 503)."""
        started = time.monotonic()
        targets = parse_targets(req.label_config)
        project = project_key(req.project, req.tasks)
        prompt = parse_context(req.params.context, targets)
        workers, problem = self.rt.worker_status()
        if self.rt.queue.embedded and problem and problem != "model loading":
            raise Unavailable(problem)
        options = self.rt.options(project)
        version = self.rt.model_version(project, options)
        kind = "interactive" if prompt is not None else "batch"
        try:
            if prompt is not None and req.tasks:
                return self._interactive(project, version, targets, req.tasks[0], prompt, started, options)
            return self._batch(project, version, targets, req.tasks, started, workers, problem, options)
        finally:
            self.rt.metrics.inc("seggpt_predict_requests_total", kind=kind)
            self.rt.metrics.observe("seggpt_predict_request_seconds", time.monotonic() - started, kind=kind)

    # ------------------------------------------------------------------ interactive
    def _interactive(
        self, project: str, version: str, targets: list[Target], task: Task, prompt: Prompt, started: float,
        options: ProjectOptions,
    ) -> dict[str, Any]:  # fmt: skip
        channel = uuid.uuid4().hex
        job = predict_job(
            project=project,
            model_version=version,
            targets=targets,
            tasks=[task],
            channel=channel,
            queue="interactive",
            prompt=prompt,
            options=options,
        )
        self.rt.queue.enqueue("interactive", job)
        deadline = started + self.s.predict_budget_s
        entry = self.rt.results.get_interactive(channel)
        while entry is None and time.monotonic() < deadline:
            self.rt.results.wait(channel, min(POLL_S, max(0.01, deadline - time.monotonic())))
            entry = self.rt.results.get_interactive(channel)
        messages = list(entry.messages) if entry else []
        if entry is None:
            messages.append(
                f"task {task.id}: interactive prediction did not finish within {self.s.predict_budget_s:g} s"
            )
            entry = TaskResult()
        elif entry.error is not None:
            messages.append(entry.error)
            entry = TaskResult()
        self.rt.metrics.inc("seggpt_predictions_served_total", channel="interactive")
        return {"results": [entry.prediction(version)], "model_version": version, "messages": messages}

    # ------------------------------------------------------------------ batch
    def _batch(
        self, project: str, version: str, targets: list[Target], tasks: list[Task], started: float,
        workers: int, problem: str | None, options: ProjectOptions,
    ) -> dict[str, Any]:  # fmt: skip
        unique: dict[int, Task] = {}
        for t in tasks:
            unique.setdefault(t.id, t)
        call = BatchCall(project, version, targets, unique, options=options)
        for tid, t in unique.items():
            if existing_prediction(t, version) is not None:
                call.answers[tid] = []  # Label Studio has it already: do not store a duplicate
        call.pending = [tid for tid in unique if tid not in call.answers]
        self._collect(call, retry_errors=True)
        if call.pending and self._no_examples_for_sure(project):
            self._answer_empty(call)

        channel = uuid.uuid4().hex
        if call.pending:
            self.rt.results.hold_waiter(channel)
        self._enqueue(call, channel)
        deadline = started + self.s.predict_budget_s
        if workers == 0 and problem != "model loading" and call.pending:
            call.note(f"{problem}; predictions will be written back when a worker computes them")
            deadline = time.monotonic()  # nobody will answer in time: do not hold Label Studio
        while call.pending and time.monotonic() < deadline:
            self.rt.results.wait(channel, min(POLL_S, max(0.01, deadline - time.monotonic())))
            self.rt.results.hold_waiter(channel)
            self._collect(call)
        if call.pending or call.found:
            # Stop waiting first, then look once more: a result stored before the lease ended is
            # seen here, one stored after it is written back by its worker (delivery module).
            self.rt.results.release_waiter(channel)
            self._collect(call)
        self._claim_found(call)

        left = call.pending
        for tid in left:
            call.answers[tid] = []
        if left:
            call.note(
                f"{len(left)} task(s) did not finish within {self.s.predict_budget_s:g} s; their predictions "
                f"will be written back to Label Studio when ready (tasks {left[:20]}{'...' if len(left) > 20 else ''})"
            )
            log.info("project %s: %d task(s) left for write-back", project, len(left))
        served = sum(1 for a in call.answers.values() if isinstance(a, dict))
        if served:
            self.rt.metrics.inc("seggpt_predictions_served_total", served, channel="response")
        # Re-read: a worker may have published its engine version while this request waited.
        current = self.rt.model_version(project, options)
        return {
            "results": [call.answers[t.id] for t in tasks],
            "model_version": current,
            "messages": call.messages,
        }

    def _collect(self, call: BatchCall, *, retry_errors: bool = False) -> None:
        """Move stored results of pending tasks to ``found``; failures and notes add messages.

        ``retry_errors``: a failure stored by an earlier request is dropped so the task is computed
        again (the image may have been fixed) instead of being answered with the old error.
        """
        if not call.pending:
            return
        for tid, entry in self.rt.results.get_many(call.project, call.version, call.pending).items():
            if entry.error is not None:
                if retry_errors:
                    self.rt.results.forget(call.project, call.version, tid)
                    continue
                call.note(entry.error)
            for m in entry.messages:
                call.note(m)
            call.found[tid] = entry
        call.pending = [tid for tid in call.pending if tid not in call.found]

    def _answer_empty(self, call: BatchCall) -> None:
        """No example exists nor can arrive: every pending task gets an empty prediction now."""
        call.note(
            f"project {call.project}: no examples yet; annotate at least one image with brush labels "
            "(every accepted annotation becomes an example)"
        )
        for tid in call.pending:
            # An empty prediction is a prediction too: one per task and version.
            claimed = self.rt.results.claim(call.project, call.version, tid)
            call.answers[tid] = {"result": [], "score": 0.0, "model_version": call.version} if claimed else []
        call.pending = []

    def _enqueue(self, call: BatchCall, channel: str) -> None:
        """Pending tasks in chunks; a single task goes to the interactive queue (someone waits)."""
        queue = "interactive" if len(call.pending) == 1 else "batch"
        chunk = max(1, self.s.chunk_size)
        for i in range(0, len(call.pending), chunk):
            part = [call.tasks[tid] for tid in call.pending[i : i + chunk]]
            job = predict_job(
                project=call.project,
                model_version=call.version,
                targets=call.targets,
                tasks=part,
                channel=channel,
                queue=queue,
                options=call.options,
            )
            job_id = self.rt.queue.enqueue(queue, job, job_id=self._job_id(call.project, call.version, part))
            self.rt.track(queue, job, job_id)

    def _claim_found(self, call: BatchCall) -> None:
        """Answer each found result whose delivery claim this request wins (see the delivery module)."""
        results = self.rt.results
        answered: list[int] = []
        for tid, entry in call.found.items():
            if not entry.ok:
                call.answers[tid] = []
                continue
            if results.claim(call.project, entry.delivered_version(call.version), tid):
                call.answers[tid] = entry.prediction(call.version)
                answered.append(tid)
            else:
                call.answers[tid] = []  # written back, or answered by a concurrent request already
            results.settle(call.project, call.version, tid)
        self.rt.delivered(call.project, call.version, answered)
        self._replace_superseded(
            call.project, [(call.tasks[tid], call.answers[tid]["model_version"]) for tid in answered]
        )

    def _replace_superseded(self, project: str, delivered: list[tuple[Task, str]]) -> None:
        """Queue the deletion of this backend's older predictions of tasks answered just now.

        A job, not a call here: the response must not wait for Label Studio's API. Tasks written
        back later are pruned by their worker (:meth:`~seggpt_backend.service.jobs.delivery.
        Delivery.write_back`).
        """
        if not self.s.replace_superseded:
            return
        ids = [
            pid for task, version in delivered for pid in superseded_ids(own_predictions(task), keep=version)
        ]
        if ids:
            self.rt.queue.enqueue("batch", PruneJob(project=project, predictions=tuple(ids)))

    def _no_examples_for_sure(self, project: str) -> bool:
        """True when the project has no example and none can arrive from a fill."""
        if self.rt.examples.count(project):
            return False
        return self.rt.examples.is_populated(project) or not self.rt.reaches_label_studio(project)

    def _job_id(self, project: str, version: str, tasks: list[Task]) -> str:
        ids = ",".join(str(t.id) for t in sorted(tasks, key=lambda t: t.id))
        body = f"{self.s.key_prefix}|{project}|{version}|{ids}"
        return "seggpt-predict-" + hashlib.sha1(body.encode()).hexdigest()[:24]
