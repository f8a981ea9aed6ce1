"""The small key-value surface every store of the service is written against.

Two implementations share it: :class:`RedisKV` (the real deployment: HTTP server and GPU workers in
separate processes share one Redis) and :class:`MemoryKV` (embedded mode: one process, no Redis).
Keys are logical names; the Redis implementation puts ``<key_prefix>:`` in front so several
deployments (or tests) can share one Redis database. Values are ``bytes``; callers store JSON or
PNG bytes, never pickles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

Value = bytes | str | int | float


def _b(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class KV(Protocol):
    """Subset of Redis used by the service (strings, hashes, lists, expiry)."""

    def ping(self) -> bool: ...
    def get(self, key: str) -> bytes | None: ...
    def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def set(self, key: str, value: Value, *, ex: float | None = None, nx: bool = False) -> bool: ...
    def delete(self, *keys: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def expire(self, key: str, seconds: float) -> None: ...
    def hget(self, key: str, field: str) -> bytes | None: ...
    def hgetall(self, key: str) -> dict[str, bytes]: ...
    def hset(self, key: str, mapping: Mapping[str, Value]) -> None: ...
    def hdel(self, key: str, *fields: str) -> int: ...
    def hincrby(self, key: str, field: str, amount: int = 1) -> int: ...
    def hincrbyfloat(self, key: str, field: str, amount: float) -> float: ...
    def rpush(self, key: str, *values: Value) -> int: ...
    def blpop(self, key: str, timeout: float) -> bytes | None: ...


class RedisKV:
    """:class:`KV` on a real Redis; ``prefix`` namespaces every key (``<prefix>:<key>``)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str, *, socket_timeout: float = 10.0) -> RedisKV:
        import redis  # deferred: embedded mode never needs it

        client = redis.Redis.from_url(
            url, socket_connect_timeout=min(2.0, socket_timeout), socket_timeout=socket_timeout
        )
        return cls(client, prefix)

    def _k(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def ping(self) -> bool:
        return bool(self.client.ping())

    def get(self, key: str) -> bytes | None:
        return self.client.get(self._k(key))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self.client.mget([self._k(k) for k in keys]))

    def set(self, key: str, value: Value, *, ex: float | None = None, nx: bool = False) -> bool:
        px = None if ex is None else max(1, int(ex * 1000))
        return bool(self.client.set(self._k(key), _b(value), px=px, nx=nx))

    def delete(self, *keys: str) -> int:
        return int(self.client.delete(*[self._k(k) for k in keys])) if keys else 0

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(self._k(key)))

    def expire(self, key: str, seconds: float) -> None:
        self.client.pexpire(self._k(key), max(1, int(seconds * 1000)))

    def hget(self, key: str, field: str) -> bytes | None:
        return self.client.hget(self._k(key), field)

    def hgetall(self, key: str) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.client.hgetall(self._k(key)).items()}

    def hset(self, key: str, mapping: Mapping[str, Value]) -> None:
        if mapping:
            self.client.hset(self._k(key), mapping={k: _b(v) for k, v in mapping.items()})

    def hdel(self, key: str, *fields: str) -> int:
        return int(self.client.hdel(self._k(key), *fields)) if fields else 0

    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        return int(self.client.hincrby(self._k(key), field, amount))

    def hincrbyfloat(self, key: str, field: str, amount: float) -> float:
        return float(self.client.hincrbyfloat(self._k(key), field, amount))

    def rpush(self, key: str, *values: Value) -> int:
        return int(self.client.rpush(self._k(key), *[_b(v) for v in values]))

    def blpop(self, key: str, timeout: float) -> bytes | None:
        # Redis >= 6 accepts fractional timeouts; 0 would block forever, so never pass it.
        got = self.client.blpop([self._k(key)], timeout=max(0.01, timeout))
        return None if got is None else got[1]


class MemoryKV:
    """In-process :class:`KV` for embedded mode (thread-safe; expiry checked lazily)."""

    SWEEP_EVERY = 1000  # writes between sweeps of expired keys (lazy expiry alone would leak)

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._cond = threading.Condition()
        self._writes = 0

    def _sweep(self) -> None:
        self._writes += 1
        if self._writes % self.SWEEP_EVERY:
            return
        now = time.monotonic()
        for key in [k for k, deadline in self._expiry.items() if deadline <= now]:
            self._data.pop(key, None)
            self._expiry.pop(key, None)

    def _live(self, key: str) -> bool:
        deadline = self._expiry.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._data.pop(key, None)
            self._expiry.pop(key, None)
        return key in self._data

    def _hash(self, key: str) -> dict[str, bytes]:
        if not self._live(key):
            self._data[key] = {}
        value = self._data[key]
        if not isinstance(value, dict):
            raise TypeError(f"key {key!r} does not hold a hash")
        return value

    def ping(self) -> bool:
        return True

    def get(self, key: str) -> bytes | None:
        with self._cond:
            return self._data[key] if self._live(key) else None

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._cond:
            return [self._data[k] if self._live(k) else None for k in keys]

    def set(self, key: str, value: Value, *, ex: float | None = None, nx: bool = False) -> bool:
        with self._cond:
            if nx and self._live(key):
                return False
            self._sweep()
            self._data[key] = _b(value)
            if ex is None:
                self._expiry.pop(key, None)
            else:
                self._expiry[key] = time.monotonic() + ex
            return True

    def delete(self, *keys: str) -> int:
        with self._cond:
            n = 0
            for k in keys:
                if self._live(k):
                    n += 1
                self._data.pop(k, None)
                self._expiry.pop(k, None)
            return n

    def exists(self, key: str) -> bool:
        with self._cond:
            return self._live(key)

    def expire(self, key: str, seconds: float) -> None:
        with self._cond:
            if self._live(key):
                self._expiry[key] = time.monotonic() + seconds

    def hget(self, key: str, field: str) -> bytes | None:
        with self._cond:
            return self._data[key].get(field) if self._live(key) else None

    def hgetall(self, key: str) -> dict[str, bytes]:
        with self._cond:
            return dict(self._data[key]) if self._live(key) else {}

    def hset(self, key: str, mapping: Mapping[str, Value]) -> None:
        with self._cond:
            self._hash(key).update({k: _b(v) for k, v in mapping.items()})

    def hdel(self, key: str, *fields: str) -> int:
        with self._cond:
            if not self._live(key):
                return 0
            h = self._data[key]
            n = sum(1 for f in fields if h.pop(f, None) is not None)
            if not h:
                self._data.pop(key, None)
            return n

    def hincrby(self, key: str, field: str, amount: int = 1) -> int:
        with self._cond:
            h = self._hash(key)
            value = int(h.get(field, b"0")) + amount
            h[field] = _b(value)
            return value

    def hincrbyfloat(self, key: str, field: str, amount: float) -> float:
        with self._cond:
            h = self._hash(key)
            value = float(h.get(field, b"0")) + amount
            h[field] = _b(repr(value))
            return value

    def rpush(self, key: str, *values: Value) -> int:
        with self._cond:
            if not self._live(key):
                self._data[key] = []
            lst = self._data[key]
            lst.extend(_b(v) for v in values)
            self._cond.notify_all()
            return len(lst)

    def blpop(self, key: str, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._live(key) and self._data[key]:
                    value = self._data[key].pop(0)
                    if not self._data[key]:
                        self._data.pop(key, None)
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
