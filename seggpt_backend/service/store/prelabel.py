"""Which tasks background pre-labelling computes, the chunk job ids, and the refresh debounce.

Shared by both rooms: the server (``seggpt-backend prelabel``, the ``TASKS_CREATED`` webhook,
:mod:`seggpt_backend.service.http.prelabel`) and the workers (the refresh after a new prompt set,
:mod:`seggpt_backend.service.jobs.refresh`). The selection is pure: it reads a task's
``annotations`` and ``predictions`` as Label Studio sends them (API or webhook JSON), so any object
with those attributes will do (the protocol's pydantic ``Task``, the worker's :class:`ApiTask`).

Task selection (``only``), always leaving out tasks that hold a prediction of the current
model version (so a rerun resumes where the last one stopped):

- ``unlabeled`` (default): tasks with no annotation that is not cancelled;
- ``missing``: unlabelled tasks holding no prediction of this backend at all (older versions
  are left as they are);
- ``all``: every task, labelled ones too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from seggpt_backend.service.contract import Superseded
from seggpt_backend.service.store.examples import is_own_version

Only = Literal["unlabeled", "missing", "all"]
ONLY: tuple[str, ...] = ("unlabeled", "missing", "all")


class TaskLike(Protocol):
    """What the selection reads of a Label Studio task."""

    @property
    def id(self) -> int: ...
    @property
    def predictions(self) -> Sequence[Any]: ...
    @property
    def annotations(self) -> Sequence[Any]: ...


T = TypeVar("T", bound=TaskLike)


@dataclass(frozen=True)
class ApiTask:
    """A task as ``GET /api/tasks`` lists it, reduced to what pre-labelling reads (worker side)."""

    id: int
    data: Mapping[str, Any]
    predictions: Sequence[Any] = ()
    annotations: Sequence[Any] = ()

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> ApiTask:
        """Raises ``ValueError`` naming the task when its id or data is unusable."""
        tid, data = raw.get("id"), raw.get("data")
        if isinstance(tid, bool) or not isinstance(tid, int) or not isinstance(data, Mapping):
            raise ValueError(f"task {tid!r} is malformed: needs an integer id and a data object")
        return cls(
            id=tid,
            data=dict(data),
            predictions=tuple(p for p in raw.get("predictions") or () if isinstance(p, Mapping)),
            annotations=tuple(a for a in raw.get("annotations") or () if isinstance(a, Mapping)),
        )


def is_labelled(task: TaskLike) -> bool:
    return any(isinstance(a, Mapping) and not a.get("was_cancelled") for a in task.annotations)


def holds_version(task: TaskLike, model_version: str) -> bool:
    """True when the task holds a prediction of ``model_version`` (with a result list)."""
    return any(
        isinstance(p, Mapping)
        and p.get("model_version") == model_version
        and isinstance(p.get("result"), list)
        for p in task.predictions
    )


def own_predictions(task: TaskLike) -> Superseded:
    """``(id, model version)`` of the predictions this backend made that the task holds."""
    out: list[tuple[int, str]] = []
    for p in task.predictions:
        if not isinstance(p, Mapping):
            continue
        pid, version = p.get("id"), p.get("model_version")
        if (
            isinstance(pid, int)
            and not isinstance(pid, bool)
            and isinstance(version, str)
            and is_own_version(version)
        ):
            out.append((pid, version))
    return tuple(out)


@dataclass
class Selection(Generic[T]):
    """The outcome of :func:`select_tasks`: ``chosen`` tasks in Label Studio's order and how
    many were left out and why (``have_prediction``: of the current version; ``labelled``;
    ``other_version``: ``missing`` leaves tasks with an older prediction; ``over_limit``)."""

    chosen: list[T] = field(default_factory=list)
    total: int = 0
    have_prediction: int = 0
    labelled: int = 0
    other_version: int = 0
    over_limit: int = 0


def select_tasks(
    tasks: Iterable[T], model_version: str, *, only: Only = "unlabeled", limit: int | None = None
) -> Selection[T]:
    """Which tasks to pre-label (see the module docstring); ``limit``: at most that many chosen."""
    if only not in ONLY:
        raise ValueError(f"only must be one of {', '.join(ONLY)}, got {only!r}")
    out: Selection[T] = Selection()
    for task in tasks:
        out.total += 1
        if holds_version(task, model_version):
            out.have_prediction += 1
        elif only != "all" and is_labelled(task):
            out.labelled += 1
        elif only == "missing" and own_predictions(task):
            out.other_version += 1
        elif limit is not None and len(out.chosen) >= limit:
            out.over_limit += 1
        else:
            out.chosen.append(task)
    return out


def job_id(prefix: str, project: str, version: str, task_ids: Sequence[int]) -> str:
    """Deterministic per chunk: queuing the same chunk again reuses the live job."""
    body = f"{prefix}|prelabel|{project}|{version}|{','.join(str(t) for t in sorted(task_ids))}"
    return "seggpt-prelabel-" + hashlib.sha1(body.encode()).hexdigest()[:24]


DEFERRED_KEY = "rf:deferred"


class RefreshGate:
    """The debounce of automatic refreshes: at most one per project per ``interval_s``.

    Key ``rf:<project>`` (a KV ``SET NX EX``: atomic, so two workers promoting at once start one
    refresh) holds the time of the last refresh and expires after the interval; with
    ``interval_s`` 0 every request passes. A refresh refused within the window is deferred, not
    dropped: hash ``rf:deferred`` maps the project to the window's end (Unix seconds; one field
    per project, removed when taken), and a worker between jobs takes the due ones
    (:meth:`take_due`, each project by exactly one worker) and refreshes to whatever version is
    current then.
    """

    def __init__(self, kv: Any, interval_s: float) -> None:
        self.kv = kv
        self.interval_s = interval_s

    def try_claim(self, project: str) -> bool:
        """True (and the window starts) if no refresh of ``project`` ran within the interval."""
        if self.interval_s <= 0:
            return True
        ttl = max(1, round(self.interval_s))
        return bool(self.kv.set(f"rf:{project}", repr(time.time()).encode(), ex=ttl, nx=True))

    def last(self, project: str) -> float | None:
        """When the last refresh within the window started (``time.time()``), or None."""
        raw = self.kv.get(f"rf:{project}")
        return float(raw) if raw else None

    def defer(self, project: str) -> float:
        """Ask for a refresh of ``project`` when the current window ends; returns that time."""
        due = (self.last(project) or time.time()) + self.interval_s
        self.kv.hset(DEFERRED_KEY, {project: repr(due)})
        return due

    def take_due(self, *, now: float | None = None) -> list[str]:
        """The deferred projects whose window has ended, each returned to one caller only."""
        now = time.time() if now is None else now
        due = [p for p, raw in self.kv.hgetall(DEFERRED_KEY).items() if float(raw) <= now]
        return [p for p in due if self.kv.hdel(DEFERRED_KEY, p)]
