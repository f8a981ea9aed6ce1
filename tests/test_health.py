"""``/health``: answered from a background snapshot on the event loop, counting live workers only.

Real pieces: uvicorn on a loopback socket with its real anyio threadpool, Redis, RQ's worker
registry. The threadpool is saturated by a test-only slow sync route (a ``/predict`` without
workers answers at once, so it cannot hold a thread on its own).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from rq import SimpleWorker, Worker
from rq.utils import now, utcformat

from seggpt_backend.service.http.health import HealthMonitor, health_body
from seggpt_backend.service.http.runtime import Runtime
from seggpt_backend.service.server import create_app
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.queue import QUEUES, InProcessJobQueue, RQJobQueue
from seggpt_backend.settings import Settings
from tests.service_support import cleanup_redis, new_prefix, redis_url, wait_for

ANYIO_THREAD_TOKENS = 40  # anyio's default limit of worker threads for sync routes
# Client wall time on loopback, from a 2-core box that also runs the 50 waiting client threads.
HEALTH_P99_S = 0.1


def _redis_settings(prefix: str, **over: Any) -> Settings:
    env = {
        "SEGGPT_WEIGHTS": "random:tiny",
        "SEGGPT_DEVICE": "cpu",
        "LABEL_STUDIO_URL": "http://127.0.0.1:9",  # never contacted here
        "LABEL_STUDIO_API_KEY": "test-token",
    }
    return Settings.from_env(env, redis_url=redis_url(), key_prefix=prefix, **over)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = new_prefix()
    yield p
    cleanup_redis(p)


def test_health_answers_fast_while_the_threadpool_is_saturated(prefix: str) -> None:
    app = create_app(_redis_settings(prefix))
    release = threading.Event()
    inside = threading.Semaphore(0)
    entered = [0]
    lock = threading.Lock()

    def slow() -> dict[str, bool]:  # sync: holds one threadpool token until released
        with lock:
            entered[0] += 1
        inside.release()
        release.wait(60)
        return {"ok": True}

    def sync_ping() -> dict[str, bool]:
        return {"ok": True}

    app.get("/slow")(slow)
    app.get("/sync-ping")(sync_ping)

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it Nagle plus delayed ACKs add ~40 ms to every loopback response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    extra = 10  # requests beyond the pool's tokens: they wait in anyio's queue
    pool = ThreadPoolExecutor(max_workers=ANYIO_THREAD_TOKENS + extra)
    futures: list[Any] = []
    try:
        wait_for(lambda: server.started, timeout=30)
        futures = [
            pool.submit(httpx.get, f"{base}/slow", timeout=90) for _ in range(ANYIO_THREAD_TOKENS + extra)
        ]
        for _ in range(ANYIO_THREAD_TOKENS):
            assert inside.acquire(timeout=30), "slow requests did not reach the threadpool"
        time.sleep(0.2)  # let the extra ones queue up behind the tokens
        assert entered[0] == ANYIO_THREAD_TOKENS  # every token is held, the rest wait
        with pytest.raises(httpx.ReadTimeout):  # a sync route cannot run now
            httpx.get(f"{base}/sync-ping", timeout=0.5)

        times: list[float] = []
        with httpx.Client(base_url=base, timeout=5) as client:
            client.get("/health")  # connect once; measure requests, not the TCP handshake
            for _ in range(20):
                t0 = time.perf_counter()
                r = client.get("/health")
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
                body = r.json()
                assert body["status"] == "UP" and body["mode"] == "redis" and body["redis"] == "ok"
                assert body["workers"] == 0 and "no worker" in body["warning"]
                assert body["queues"] == dict.fromkeys(QUEUES, 0)
        times.sort()
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        assert p99 < HEALTH_P99_S, f"/health p99 {p99 * 1000:.0f} ms (all: {times})"
    finally:
        release.set()
        for f in futures:
            f.result(timeout=60)
        pool.shutdown(wait=True)
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


def test_workers_counts_only_recent_heartbeats(prefix: str) -> None:
    conn = redis.Redis.from_url(redis_url())
    q = RQJobQueue(conn, prefix, job_timeout_s=60, live_s=30)
    fresh = Worker([q.queues["interactive"], q.queues["batch"]], connection=conn, name=f"{prefix}-fresh")
    dead = Worker([q.queues["batch"]], connection=conn, name=f"{prefix}-dead")
    try:
        assert q.workers() == 0
        fresh.register_birth()
        dead.register_birth()
        assert q.workers() == 2
        # What a SIGKILLed worker leaves: still registered, key alive, beat stuck in the past.
        conn.hset(dead.key, "last_heartbeat", utcformat(now() - timedelta(seconds=120)))
        assert q.workers() == 1  # the fresh one, counted once across its two queues
        assert dead.key.encode() in conn.smembers("rq:workers")  # RQ itself still lists it
        conn.hset(fresh.key, "last_heartbeat", utcformat(now() - timedelta(seconds=29)))
        assert q.workers() == 1  # within live_s
        fresh.heartbeat()
        assert q.workers() == 1
    finally:
        fresh.register_death()
        dead.register_death()
        conn.close()


def test_runtime_liveness_bound_outlasts_an_idle_workers_beat(prefix: str) -> None:
    """An idle RQ worker beats once per dequeue timeout; a live one must never drop out between."""
    for heartbeat_s in (0.1, 15.0, 60.0):
        rt = Runtime.create(_redis_settings(prefix, worker_heartbeat_s=heartbeat_s))
        try:
            assert isinstance(rt.queue, RQJobQueue)
            client = rt.kv.client  # type: ignore[attr-defined]
            # The worker_ttl service/jobs/worker.py gives its SegGptWorker (a SimpleWorker).
            idle = SimpleWorker([], connection=client, worker_ttl=int(2 * heartbeat_s) + 30)
            assert rt.queue.live_s >= idle.dequeue_timeout + 10
        finally:
            rt.close()


def _memory_runtime() -> Runtime:
    return Runtime(Settings.from_env({}), MemoryKV(), InProcessJobQueue(lambda *a: None))


def test_monitor_survives_a_failing_refresh(caplog: pytest.LogCaptureFixture) -> None:
    rt = _memory_runtime()
    boom = threading.Event()
    real_status = rt.worker_status

    def worker_status() -> tuple[int, str | None]:
        if boom.is_set():
            raise RuntimeError("registry exploded")
        return real_status()

    rt.worker_status = worker_status  # type: ignore[method-assign]
    monitor = HealthMonitor(rt, interval_s=0.02)
    try:
        monitor.start()
        assert monitor.snapshot().up and monitor.snapshot().redis == "embedded"
        with caplog.at_level(logging.ERROR, logger="seggpt_backend.service.http.health"):
            boom.set()
            failed = wait_for(lambda: (s := monitor.snapshot()).redis.startswith("unknown") and s, timeout=5)
        assert failed.problem == "health check failed: RuntimeError" and failed.workers == 0
        body, status = health_body(failed, model_class="SegGPT", mode="embedded")
        assert status == 503 and body["status"] == "DOWN" and body["workers"] == 0
        assert any(r.exc_info and "registry exploded" in str(r.exc_info[1]) for r in caplog.records)
        boom.clear()
        wait_for(lambda: monitor.snapshot().up, timeout=5)
        before = monitor.refreshes
        wait_for(lambda: monitor.refreshes >= before + 3, timeout=5)  # the thread keeps going
        assert monitor._thread is not None and monitor._thread.is_alive()
    finally:
        monitor.close()
        rt.close()
    assert monitor._thread is not None and not monitor._thread.is_alive()


def test_first_snapshot_is_taken_once_without_start_and_old_ones_read_down() -> None:
    rt = _memory_runtime()
    monitor = HealthMonitor(rt, interval_s=60, stale_after_s=0.2)
    try:
        snap = monitor.snapshot()  # no thread: taken synchronously, once
        assert snap.up and monitor.refreshes == 1
        assert monitor.snapshot() is snap and monitor.refreshes == 1
        time.sleep(0.3)
        stale = monitor.snapshot()  # nobody refreshed it: do not claim UP from old news
        assert not stale.up and stale.redis.startswith("unknown: no health refresh")
        assert health_body(stale, model_class="SegGPT", mode="embedded")[1] == 503
    finally:
        monitor.close()
        rt.close()
