"""The shared store of finished task results and of their delivery state.

Result store keys (under the KV prefix), for a task ``T`` of project ``P``:

- ``res:P:V:T``  a :class:`~seggpt_backend.service.contract.TaskResult` as JSON, under the
  version ``V`` the request asked for (its ``model_version`` ``D`` is the one it was computed with)
- ``posted:P:D:T`` the delivery claim (SET NX): whoever sets it delivers the prediction of
  version ``D`` to Label Studio, in an HTTP response or by write-back, and nobody else does
- ``waiter:C``  lease of the HTTP request waiting on channel ``C`` (refreshed every poll,
  expires :data:`WAITER_TTL_S` after the request died or gave up)
- ``deliveries`` hash ``P|V|T`` -> JSON :class:`Pending`: computed results not yet known to be
  delivered (left to a live request, or a write-back that failed); swept by the workers

Delivery rule (see :mod:`seggpt_backend.service.jobs.delivery`): a worker that stored a result
records it as pending, then writes it back itself unless a live request waits for it. A request
releases its lease and then looks once more before answering, so each result is either seen by
its request or written back by a worker (both may try; the claim lets one win).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from seggpt_backend.service.contract import Superseded, TaskResult
from seggpt_backend.service.store.kv import KV

RESULT_TTL_S = 7 * 24 * 3600  # computed results are reused across requests for a week
ERROR_TTL_S = 600  # failures are remembered briefly so a retry later recomputes
# A claim covers the time a delivered prediction may not yet show in the task data Label Studio
# sends (a response in flight, a concurrent request); afterwards the task's own ``predictions``
# tell (see protocol.existing_prediction), and a prediction deleted by a user can come back.
CLAIM_TTL_S = 15 * 60
WAITER_TTL_S = 5.0  # a waiting request renews its lease every poll (0.5 s)
PENDING_KEY = "deliveries"


@dataclass(frozen=True)
class Pending:
    """A computed result not yet known to be in Label Studio.

    ``model_version``: the version the result is stored under (``res:`` key). ``channel``: the
    request that may deliver it in its response (empty: nobody; write it back). ``since``,
    ``retry_at``: Unix seconds (first recorded; earliest next write-back attempt). ``supersedes``:
    this backend's older predictions of the task, deleted once this one is written back.
    ``verify``: before writing back, ask Label Studio whether the task already has a prediction
    of this version (the job was recovered after Redis lost its state, claims included).
    """

    project: str
    model_version: str
    task_id: int
    channel: str = ""
    since: float = 0.0
    attempts: int = 0
    retry_at: float = 0.0
    supersedes: Superseded = ()
    verify: bool = False

    @staticmethod
    def field_of(project: str, model_version: str, task_id: int) -> str:
        return f"{project}|{model_version}|{task_id}"

    @property
    def field(self) -> str:
        return self.field_of(self.project, self.model_version, self.task_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Pending:
        d = json.loads(raw)
        return cls(
            project=str(d["project"]),
            model_version=str(d["model_version"]),
            task_id=int(d["task_id"]),
            channel=str(d.get("channel", "")),
            since=float(d.get("since", 0.0)),
            attempts=int(d.get("attempts", 0)),
            retry_at=float(d.get("retry_at", 0.0)),
            supersedes=tuple((int(i), str(v)) for i, v in d.get("supersedes") or ()),
            verify=bool(d.get("verify", False)),
        )


class ResultStore:
    """Finished task results keyed by project, model version and task id (see module docstring)."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    @staticmethod
    def _key(kind: str, project: str, model_version: str, task_id: int) -> str:
        return f"{kind}:{project}:{model_version}:{task_id}"

    def put(self, project: str, model_version: str, task_id: int, result: TaskResult) -> None:
        """Store a task's result (a failure is kept only briefly, so a later request retries)."""
        ttl = RESULT_TTL_S if result.ok else ERROR_TTL_S
        self.kv.set(self._key("res", project, model_version, task_id), json.dumps(result.to_json()), ex=ttl)

    def get_many(self, project: str, model_version: str, task_ids: Sequence[int]) -> dict[int, TaskResult]:
        """Stored results for the given tasks (tasks without one are absent from the dict)."""
        raw = self.kv.mget([self._key("res", project, model_version, t) for t in task_ids])
        return {
            t: TaskResult.from_json(json.loads(v))
            for t, v in zip(task_ids, raw, strict=True)
            if v is not None
        }

    def forget(self, project: str, model_version: str, task_id: int) -> None:
        """Drop a stored entry (used for stale failures before a retry)."""
        self.kv.delete(self._key("res", project, model_version, task_id))

    def claim(self, project: str, delivered_version: str, task_id: int) -> bool:
        """Atomically claim the right to deliver this task's prediction of ``delivered_version``
        (True for exactly one caller until :meth:`release`)."""
        return self.kv.set(
            self._key("posted", project, delivered_version, task_id), b"1", ex=CLAIM_TTL_S, nx=True
        )

    def release(self, project: str, delivered_version: str, task_id: int) -> None:
        """Give a claim back (delivery failed), so the result can be delivered later."""
        self.kv.delete(self._key("posted", project, delivered_version, task_id))

    # ------------------------------------------------------------------ waiting requests
    def hold_waiter(self, channel: str) -> None:
        """The request on ``channel`` is alive and will deliver what it finds (renew each poll)."""
        self.kv.set(f"waiter:{channel}", b"1", ex=WAITER_TTL_S)

    def release_waiter(self, channel: str) -> None:
        """The request stops waiting: results computed from now on are written back."""
        self.kv.delete(f"waiter:{channel}")

    def waiter_alive(self, channel: str) -> bool:
        return bool(channel) and self.kv.exists(f"waiter:{channel}")

    # ------------------------------------------------------------------ pending deliveries
    def add_pending(self, pending: Pending) -> None:
        self.kv.hset(PENDING_KEY, {pending.field: pending.to_json()})

    def settle(self, project: str, model_version: str, task_id: int) -> None:
        """The task's result was delivered (or needs no delivery): stop tracking it."""
        self.kv.hdel(PENDING_KEY, Pending.field_of(project, model_version, task_id))

    def is_pending(self, project: str, model_version: str, task_id: int) -> bool:
        return self.kv.hget(PENDING_KEY, Pending.field_of(project, model_version, task_id)) is not None

    def pending(self) -> list[Pending]:
        """Every result not yet known to be delivered (oldest first)."""
        out = [Pending.from_json(v) for v in self.kv.hgetall(PENDING_KEY).values()]
        return sorted(out, key=lambda p: p.since)

    # Interactive answers are per request, never cached under the model version.
    def put_interactive(self, request_id: str, result: TaskResult) -> None:
        self.kv.set(f"ires:{request_id}", json.dumps(result.to_json()), ex=ERROR_TTL_S)

    def get_interactive(self, request_id: str) -> TaskResult | None:
        raw = self.kv.get(f"ires:{request_id}")
        return None if raw is None else TaskResult.from_json(json.loads(raw))

    def notify(self, channel: str, task_ids: Sequence[int | str]) -> None:
        """Wake the HTTP request waiting on ``channel`` (a list it BLPOPs)."""
        if task_ids:
            self.kv.rpush(f"notify:{channel}", *[str(t) for t in task_ids])
            self.kv.expire(f"notify:{channel}", ERROR_TTL_S)

    def wait(self, channel: str, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification on ``channel``; True if one came."""
        return self.kv.blpop(f"notify:{channel}", timeout) is not None
