"""Worker side of the delivery guarantee: every computed prediction reaches Label Studio once.

Whoever holds a result owns its delivery. A worker that stored a task's result:

1. records it as pending (``deliveries`` hash, see :mod:`seggpt_backend.service.store.results`);
2. if the request that asked for it still waits (its ``waiter:`` lease is live), leaves it to
   that request's HTTP response; otherwise writes it back through the Label Studio API
   (``POST /api/predictions``).

Each delivery, by response or write-back, first takes the ``posted:`` claim of (project, computed
version, task), so a task gets at most one prediction per model version however many requests,
retries and workers touched it. :meth:`Delivery.sweep`, run by every worker a few times a minute,
finishes what a dead server left: a pending result whose request's lease expired is written back,
and a failed write-back is retried with back-off. So a server killed mid-batch loses nothing:
what it had not answered yet is written back within :data:`~seggpt_backend.service.store.results.
WAITER_TTL_S` plus one sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from seggpt_backend.labelstudio.client import LabelStudioError
from seggpt_backend.service.contract import Superseded, superseded_ids
from seggpt_backend.service.store.metrics import Metrics
from seggpt_backend.service.store.results import Pending, ResultStore

log = logging.getLogger(__name__)

RETRY_MIN_S = 5.0  # first retry of a failed write-back; doubles up to RETRY_MAX_S
RETRY_MAX_S = 600.0
GIVE_UP_S = 24 * 3600.0  # a result nobody could deliver for a day is dropped (and logged)


class Delivery:
    """Writes results back to Label Studio under the delivery claim; see the module docstring.

    ``clients``: project -> a ``LabelStudioClient`` (``create_prediction``), or ``None`` without
    ``LABEL_STUDIO_URL`` nor a ``/setup`` connection (results then only reach Label Studio in
    responses); see :mod:`.clients`.
    """

    def __init__(
        self,
        results: ResultStore,
        clients: Callable[[str], Any],
        metrics: Metrics,
        *,
        replace_superseded: bool,
    ) -> None:
        self.results = results
        self.clients = clients
        self.metrics = metrics
        self.replace_superseded = replace_superseded

    def offer(
        self,
        *,
        project: str,
        model_version: str,
        task_id: int,
        channel: str,
        always: bool = False,
        supersedes: Superseded = (),
        verify: bool = False,
    ) -> None:
        """A result was just stored: leave it to the waiting request or write it back now.

        ``model_version``: the version it is stored under. ``always``: write back even if a
        request waits (background pre-labelling has no response to carry it). ``supersedes``:
        the task's older predictions from this backend (see :meth:`prune`). ``verify``: look in
        Label Studio for a prediction of this version first (see :attr:`Pending.verify`).
        """
        pending = Pending(
            project,
            model_version,
            task_id,
            channel="" if always else channel,
            since=time.time(),
            supersedes=supersedes,
            verify=verify,
        )
        self.results.add_pending(pending)
        # Recorded first, checked second: if the request gives up right after this check, its
        # last look (after releasing the lease) finds the stored result; if it dies, the sweep does.
        if always or not self.results.waiter_alive(channel):
            self.write_back(pending)

    def write_back(self, pending: Pending) -> bool:
        """Deliver one pending result through the API unless someone else delivered it.

        Returns True when the task needs nothing more (delivered now or before, or no result).
        """
        project, model_version, task_id = pending.project, pending.model_version, pending.task_id
        entry = self.results.get_many(project, model_version, [task_id]).get(task_id)
        if entry is None or not entry.ok:
            self.results.settle(project, model_version, task_id)  # nothing to deliver
            return True
        version = entry.delivered_version(model_version)
        if not self.results.claim(project, version, task_id):
            self.results.settle(project, model_version, task_id)  # a response or a worker has it
            return True
        client = self.clients(project)
        if client is None:
            # No API to write to: keep the claim off so a later request can still answer it.
            self.results.release(project, version, task_id)
            self.results.settle(project, model_version, task_id)
            log.error("task %s: cannot write the prediction back: LABEL_STUDIO_URL is not set", task_id)
            self.metrics.inc("seggpt_writeback_failures_total")
            return True
        try:
            if pending.verify and self._already_in_label_studio(client, task_id, version):
                self.results.settle(project, model_version, task_id)  # claim kept: it is delivered
                log.info("task %s: Label Studio already has its prediction of version %s", task_id, version)
                return True
            client.create_prediction(
                task_id,
                list(entry.result),
                entry.score,
                version,
                project_id=int(project) if project.isdigit() else None,
            )
        except Exception as exc:
            self.results.release(project, version, task_id)
            self.metrics.inc("seggpt_writeback_failures_total")
            # An API refusal is expected now and then; anything else is a bug: keep its trace.
            trace = None if isinstance(exc, LabelStudioError) else exc
            log.warning(
                "task %s: writing the prediction back failed (will retry): %s", task_id, exc, exc_info=trace
            )
            return False
        self.results.settle(project, model_version, task_id)
        self.metrics.inc("seggpt_predictions_served_total", channel="writeback")
        log.info("task %s: prediction written back to Label Studio (model version %s)", task_id, version)
        self.prune(project, superseded_ids(pending.supersedes, keep=version))
        return True

    @staticmethod
    def _already_in_label_studio(client: Any, task_id: int, version: str) -> bool:
        return any(p.get("model_version") == version for p in client.list_predictions(task_id))

    def prune(self, project: str, prediction_ids: Sequence[int]) -> list[int]:
        """Delete this backend's superseded predictions (if ``SEGGPT_REPLACE_SUPERSEDED``);
        returns the ids that could not be deleted (already gone counts as deleted)."""
        client = self.clients(project) if self.replace_superseded and prediction_ids else None
        if client is None:
            return []
        failed: list[int] = []
        for pid in prediction_ids:
            try:
                client.delete_prediction(pid)
            except Exception as exc:
                log.warning("project %s: deleting superseded prediction %s failed: %s", project, pid, exc)
                failed.append(pid)
        if len(failed) < len(prediction_ids):
            self.metrics.inc("seggpt_predictions_replaced_total", len(prediction_ids) - len(failed))
        return failed

    def sweep(self, *, now: float | None = None) -> int:
        """Write back pending results nobody waits for any more; returns how many were settled."""
        now = time.time() if now is None else now
        settled = 0
        for p in self.results.pending():
            if p.retry_at > now or self.results.waiter_alive(p.channel):
                continue
            if now - p.since > GIVE_UP_S:
                log.error("task %s: prediction undeliverable for a day, dropped", p.task_id)
                self.results.settle(p.project, p.model_version, p.task_id)
                continue
            if self.write_back(p):
                settled += 1
                continue
            delay = min(RETRY_MAX_S, RETRY_MIN_S * 2**p.attempts)
            self.results.add_pending(replace(p, channel="", attempts=p.attempts + 1, retry_at=now + delay))
        return settled
