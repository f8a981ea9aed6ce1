"""Pre-labelling progress per project: queued, done, failed (with reasons), rate and ETA.

Written by whoever queues pre-labelling (``seggpt-backend prelabel``, the ``TASKS_CREATED``
webhook with ``SEGGPT_AUTO_PRELABEL``) and by the worker that computes it (jobs with
``writeback="always"``); read by ``GET /projects/{id}/progress``, ``/metrics`` and the command's
progress bar. Keys (under the KV prefix), for project ``P``:

- ``pl:P``        hash: ``queued``, ``done``, ``failed`` (task counts of the current run),
  ``started_at``, ``updated_at``, ``first_done_at`` (Unix seconds)
- ``pl:P:tasks``  hash task id -> ``q`` (queued), ``d`` (done) or ``f`` (failed); it makes
  counting idempotent: a task re-queued or reported twice is counted once
- ``pl:P:failed`` hash task id -> reason (at most :data:`MAX_REASONS` kept; the count is exact)
- ``pl:projects`` hash project -> last update (the projects ``/metrics`` shows; trimmed to
  :data:`MAX_PROJECTS`)

Bounded: every key expires :data:`PROGRESS_TTL_S` after the last update, a run is capped at
:data:`MAX_TASKS` tracked tasks, and a new run (queued while the last one has nothing left)
starts from zero. The read-modify-write of a task's state is not atomic; chunks hold distinct
tasks, so two writers race on one task only when a job is duplicated, and then both write the
same final state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from seggpt_backend.service.store.kv import KV

PROGRESS_TTL_S = 24 * 3600
MAX_REASONS = 200
MAX_TASKS = 200_000
MAX_PROJECTS = 100
PROJECTS_KEY = "pl:projects"


@dataclass(frozen=True)
class Progress:
    """One project's pre-labelling figures.

    ``queued``: tasks in the current run (done and failed included); ``left`` = queued - done -
    failed. ``rate``: finished tasks per second since the first one finished (0 before);
    ``eta_s``: ``left / rate`` seconds (``None`` while the rate is unknown). ``failures``: task
    id -> reason (at most :data:`MAX_REASONS`). Times are Unix seconds.
    """

    project: str
    queued: int = 0
    done: int = 0
    failed: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    rate: float = 0.0
    eta_s: float | None = None
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def left(self) -> int:
        return max(0, self.queued - self.done - self.failed)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["left"] = self.left
        d["failures"] = [{"task": t, "reason": r} for t, r in sorted(self.failures.items())]
        return d


class ProgressStore:
    """See the module docstring."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def _touch(self, project: str, now: float) -> None:
        for key in (f"pl:{project}", f"pl:{project}:tasks", f"pl:{project}:failed"):
            self.kv.expire(key, PROGRESS_TTL_S)
        self.kv.hset(f"pl:{project}", {"updated_at": repr(now)})
        self.kv.hset(PROJECTS_KEY, {project: repr(now)})
        self.kv.expire(PROJECTS_KEY, PROGRESS_TTL_S)
        known = self.kv.hgetall(PROJECTS_KEY)
        if len(known) > MAX_PROJECTS:
            oldest = sorted(known, key=lambda p: float(known[p]))[: len(known) - MAX_PROJECTS]
            self.kv.hdel(PROJECTS_KEY, *oldest)

    def queue(self, project: str, task_ids: Iterable[int], *, now: float | None = None) -> int:
        """Count ``task_ids`` as queued; returns how many were newly counted.

        A task already queued in this run is not counted twice; a failed one counts as queued
        again (it is being retried). When the last run has nothing left, a new run starts.
        """
        now = time.time() if now is None else now
        current = self.get(project, with_failures=False)
        if current.queued and current.left == 0:
            self.clear(project)
            current = Progress(project)
        if not current.queued:
            self.kv.hset(f"pl:{project}", {"started_at": repr(now)})
        states = self.kv.hgetall(f"pl:{project}:tasks")
        new: dict[str, str] = {}
        retried: list[str] = []
        room = MAX_TASKS - len(states)
        for tid in task_ids:
            key = str(int(tid))
            state = states.get(key)
            if state in (b"q", b"d") or key in new:
                continue
            if state == b"f":
                retried.append(key)
            elif room <= 0:
                continue
            else:
                room -= 1
            new[key] = "q"
        if new:
            self.kv.hset(f"pl:{project}:tasks", new)
        if retried:
            self.kv.hincrby(f"pl:{project}", "failed", -len(retried))
            self.kv.hdel(f"pl:{project}:failed", *retried)
        counted = len(new) - len(retried)
        if counted:
            self.kv.hincrby(f"pl:{project}", "queued", counted)
        self._touch(project, now)
        return counted

    def finish(
        self, project: str, task_id: int, *, error: str | None = None, now: float | None = None
    ) -> None:
        """Task ``task_id`` was computed (``error`` None) or failed; ignored unless it is queued."""
        now = time.time() if now is None else now
        key = str(int(task_id))
        if self.kv.hget(f"pl:{project}:tasks", key) != b"q":
            return  # not pre-labelled (a /predict job), or counted already
        self.kv.hset(f"pl:{project}:tasks", {key: "d" if error is None else "f"})
        self.kv.hincrby(f"pl:{project}", "done" if error is None else "failed", 1)
        if error is not None and len(self.kv.hgetall(f"pl:{project}:failed")) < MAX_REASONS:
            self.kv.hset(f"pl:{project}:failed", {key: error[:500]})
        if self.kv.hget(f"pl:{project}", "first_done_at") is None:
            self.kv.hset(f"pl:{project}", {"first_done_at": repr(now)})
        self._touch(project, now)

    def drop(self, project: str, task_ids: Iterable[int], *, now: float | None = None) -> int:
        """Take still-queued tasks out of the run (their chunk was cancelled); returns how many."""
        states = self.kv.hgetall(f"pl:{project}:tasks")
        gone = [str(int(t)) for t in task_ids if states.get(str(int(t))) == b"q"]
        if gone:
            self.kv.hdel(f"pl:{project}:tasks", *gone)
            self.kv.hincrby(f"pl:{project}", "queued", -len(gone))
            self._touch(project, time.time() if now is None else now)
        return len(gone)

    def get(self, project: str, *, with_failures: bool = True, now: float | None = None) -> Progress:
        """The project's figures (all zero when nothing was queued within the TTL)."""
        now = time.time() if now is None else now
        raw = self.kv.hgetall(f"pl:{project}")

        def num(name: str) -> float:
            v = raw.get(name)
            return float(v) if v is not None else 0.0

        queued, done, failed = int(num("queued")), int(num("done")), int(num("failed"))
        first = num("first_done_at")
        left = max(0, queued - done - failed)
        # The first finished task marks the start of steady work (the model may load before it);
        # it is itself not counted in the rate.
        span = (num("updated_at") if left == 0 else now) - first
        finished = done + failed - 1
        rate = finished / span if first and span > 0 and finished > 0 else 0.0
        failures: dict[int, str] = {}
        if with_failures and failed:
            failures = {int(k): v.decode() for k, v in self.kv.hgetall(f"pl:{project}:failed").items()}
        return Progress(
            project=project,
            queued=queued,
            done=done,
            failed=failed,
            started_at=num("started_at"),
            updated_at=num("updated_at"),
            rate=rate,
            eta_s=(0.0 if left == 0 else left / rate if rate > 0 else None),
            failures=failures,
        )

    def projects(self) -> list[str]:
        """Projects with progress recorded within the TTL."""
        return sorted(self.kv.hgetall(PROJECTS_KEY))

    def clear(self, project: str) -> None:
        self.kv.delete(f"pl:{project}", f"pl:{project}:tasks", f"pl:{project}:failed")
