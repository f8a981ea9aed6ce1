"""The KV surface behaves the same on real Redis and in memory (embedded mode)."""

from __future__ import annotations

import threading
import time

import pytest

from seggpt_backend.service.store.kv import MemoryKV, RedisKV
from tests.service_support import cleanup_redis, new_prefix, redis_url


@pytest.fixture(params=["redis", "memory"])
def kv(request):
    if request.param == "memory":
        yield MemoryKV()
        return
    prefix = new_prefix()
    store = RedisKV.from_url(redis_url(), prefix)
    yield store
    cleanup_redis(prefix)


def test_strings_expiry_and_nx(kv) -> None:
    assert kv.get("a") is None
    assert kv.set("a", "1")
    assert kv.get("a") == b"1"
    assert not kv.set("a", "2", nx=True)
    assert kv.get("a") == b"1"
    assert kv.set("b", b"x", ex=0.2)
    assert kv.mget(["a", "b", "c"]) == [b"1", b"x", None]
    time.sleep(0.35)
    assert kv.get("b") is None and not kv.exists("b")
    assert kv.delete("a", "missing") == 1
    assert not kv.exists("a")


def test_hashes_and_counters(kv) -> None:
    kv.hset("h", {"x": "1", "y": b"two"})
    assert kv.hget("h", "y") == b"two"
    assert kv.hgetall("h") == {"x": b"1", "y": b"two"}
    assert kv.hincrby("h", "x", 4) == 5
    assert kv.hincrbyfloat("h", "f", 0.25) == pytest.approx(0.25)
    assert kv.hdel("h", "x", "y", "nope") == 2
    assert set(kv.hgetall("h")) == {"f"}
    assert kv.hgetall("missing") == {}


def test_blpop_wakes_a_waiting_thread(kv) -> None:
    assert kv.blpop("q", 0.1) is None
    got: list[bytes | None] = []
    t = threading.Thread(target=lambda: got.append(kv.blpop("q", 5.0)))
    t.start()
    time.sleep(0.1)
    kv.rpush("q", "7", "8")
    t.join(5)
    assert got == [b"7"]
    assert kv.blpop("q", 0.1) == b"8"


def test_redis_keys_are_prefixed() -> None:
    prefix = new_prefix()
    kv = RedisKV.from_url(redis_url(), prefix)
    try:
        kv.set("k", "v")
        assert kv.client.get(f"{prefix}:k") == b"v"
        assert kv.client.get("k") is None
    finally:
        cleanup_redis(prefix)


def test_memory_kv_sweeps_expired_keys_nobody_reads() -> None:
    kv = MemoryKV()
    for i in range(10):
        kv.set(f"old{i}", "x", ex=0.01)
    time.sleep(0.05)
    for i in range(MemoryKV.SWEEP_EVERY):
        kv.set("fresh", str(i))
    assert not any(k.startswith("old") for k in kv._data)
