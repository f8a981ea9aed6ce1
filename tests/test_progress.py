"""Pre-labelling progress: idempotent counts, reasons, rate/ETA, new runs, bounds (real Redis too)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seggpt_backend.service.store import progress as progress_mod
from seggpt_backend.service.store.kv import KV, MemoryKV, RedisKV
from seggpt_backend.service.store.progress import PROGRESS_TTL_S, ProgressStore
from tests.service_support import cleanup_redis, new_prefix, redis_url


@pytest.fixture(params=["redis", "memory"])
def kv(request: pytest.FixtureRequest) -> Iterator[KV]:
    if request.param == "memory":
        yield MemoryKV()
        return
    prefix = new_prefix()
    store = RedisKV.from_url(redis_url(), prefix)
    try:
        yield store
    finally:
        cleanup_redis(prefix)


def test_counts_are_idempotent_and_failures_keep_their_reason(kv: KV) -> None:
    store = ProgressStore(kv)
    assert store.queue("7", [1, 2, 3, 4], now=100.0) == 4
    assert store.queue("7", [3, 4], now=101.0) == 0  # queued again (a rerun): counted once
    store.finish("7", 1, now=110.0)
    store.finish("7", 1, now=111.0)  # a duplicated job reports it twice
    store.finish("7", 2, error="task 2: image /x.png: HTTP 404", now=112.0)
    store.finish("7", 99, now=112.0)  # not pre-labelled (a /predict job): ignored
    p = store.get("7", now=120.0)
    assert (p.queued, p.done, p.failed, p.left) == (4, 1, 1, 2)
    assert p.failures == {2: "task 2: image /x.png: HTTP 404"}
    # 1 task finished after the first, 10 s later: 0.1 task/s, 2 left -> 20 s
    assert p.rate == pytest.approx(1 / 10) and p.eta_s == pytest.approx(20.0)
    body = p.to_json()
    assert body["left"] == 2 and body["failures"] == [{"task": 2, "reason": "task 2: image /x.png: HTTP 404"}]
    assert store.projects() == ["7"]


def test_a_retried_failure_is_queued_again_and_a_finished_run_starts_a_new_one(kv: KV) -> None:
    store = ProgressStore(kv)
    store.queue("3", [1, 2], now=0.0)
    store.finish("3", 1, now=1.0)
    store.finish("3", 2, error="task 2: bad", now=2.0)
    p = store.get("3", now=3.0)
    assert (p.left, p.eta_s) == (0, 0.0)
    # A new run after the last one ended: figures start from zero.
    assert store.queue("3", [2], now=10.0) == 1
    p = store.get("3", now=11.0)
    assert (p.queued, p.done, p.failed, p.failures) == (1, 0, 0, {})
    # Within a run, a failed task queued again leaves "failed" and counts as queued once.
    store.queue("3", [5], now=12.0)
    store.finish("3", 5, error="task 5: bad", now=13.0)
    assert store.queue("3", [5], now=14.0) == 0
    p = store.get("3", now=15.0)
    assert (p.queued, p.failed, p.left, p.failures) == (2, 0, 2, {})


def test_dropped_tasks_leave_the_run(kv: KV) -> None:
    store = ProgressStore(kv)
    store.queue("4", [1, 2, 3], now=0.0)
    store.finish("4", 1, now=1.0)
    assert store.drop("4", [1, 2, 3]) == 2  # 1 is done: stays
    p = store.get("4", now=2.0)
    assert (p.queued, p.done, p.left) == (1, 1, 0)


def test_keys_expire_and_reasons_and_projects_are_bounded(kv: KV, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "MAX_REASONS", 2)
    monkeypatch.setattr(progress_mod, "MAX_PROJECTS", 3)
    store = ProgressStore(kv)
    store.queue("1", range(10), now=0.0)
    for t in range(5):
        store.finish("1", t, error=f"task {t}: bad", now=1.0 + t)
    p = store.get("1", now=10.0)
    assert p.failed == 5 and len(p.failures) == 2  # the count is exact, the reasons capped
    for project in ("2", "3", "4"):
        store.queue(project, [1], now=20.0)
    assert len(store.projects()) == 3
    if isinstance(kv, RedisKV):
        for key in ("pl:1", "pl:1:tasks", "pl:1:failed", "pl:projects"):
            ttl = kv.client.ttl(kv._k(key))
            assert 0 < ttl <= PROGRESS_TTL_S, (key, ttl)


def test_max_tasks_bounds_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "MAX_TASKS", 3)
    store = ProgressStore(MemoryKV())
    assert store.queue("1", range(10)) == 3
    assert store.get("1").queued == 3
