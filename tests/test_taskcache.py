"""The per-task refine cache on a real Redis: round trips, TTL, safe format, off switch."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.taskcache import MAGIC, SOFT_MAX_SIDE, TaskCache, decode_soft, encode_soft
from tests.service_support import cleanup_redis, new_prefix, redis_url


@pytest.fixture
def kv():
    prefix = new_prefix()
    yield RedisKV.from_url(redis_url(), prefix)
    cleanup_redis(prefix)


def test_soft_maps_and_images_round_trip_across_instances(kv) -> None:
    rng = np.random.default_rng(0)
    soft = rng.random((60, 90)).astype(np.float32)
    image = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    TaskCache(kv, 60).put_soft("7", "v1", 3, "Cat", soft)
    TaskCache(kv, 60).put_image("7", 3, "/data/upload/7/a.jpg", image, (60, 90))
    other = TaskCache(kv, 60)  # another worker: same Redis, no shared memory
    got = other.get_soft("7", "v1", 3, "Cat")
    assert got is not None and got.shape == (60, 90) and got.dtype == np.float32
    assert np.abs(got - soft).max() <= 0.5 / 255 + 1e-6  # 8-bit quantisation only
    pixels, size = other.get_image("7", 3, "/data/upload/7/a.jpg")  # type: ignore[misc]
    assert (pixels == image).all() and size == (60, 90)
    # Keys are per version, task, label and URL.
    assert other.get_soft("7", "v2", 3, "Cat") is None and other.get_soft("7", "v1", 3, "Dog") is None
    assert other.get_image("7", 3, "/data/upload/7/b.jpg") is None
    window = (0, 10, 5, 25)
    other.put_zoom("7", "v1", 3, "Cat", window, soft[:10, 5:25])
    assert other.get_zoom("7", "v1", 3, "Cat", window).shape == (10, 20)  # type: ignore[union-attr]
    assert other.get_zoom("7", "v1", 3, "Cat", (0, 10, 5, 26)) is None


def test_entries_expire_and_ttl_zero_turns_the_cache_off(kv) -> None:
    cache = TaskCache(kv, 60)
    cache.put_soft("7", "v1", 3, "Cat", np.zeros((4, 4), np.float32))
    key = next(k for k in kv.client.scan_iter(f"{kv.prefix}:tc:*"))
    assert 0 < kv.client.pttl(key) <= 60_000
    off = TaskCache(kv, 0)
    off.put_soft("7", "v1", 4, "Cat", np.zeros((4, 4), np.float32))
    assert not off.enabled and off.get_soft("7", "v1", 3, "Cat") is None
    assert cache.get_soft("7", "v1", 4, "Cat") is None


def test_large_maps_are_stored_small_in_a_framed_png_not_a_pickle() -> None:
    soft = np.zeros((3000, 4000), np.float32)
    soft[1000:2000, 1000:3000] = 1.0
    raw = encode_soft(soft)
    assert raw.startswith(MAGIC) and b"\x89PNG" in raw[:64] and len(raw) < 100_000
    back = decode_soft(raw)
    assert back.shape == (3000, 4000) and back[1500, 2000] == 1.0 and back[100, 100] == 0.0
    assert SOFT_MAX_SIDE <= 1024
    with pytest.raises(ValueError):
        decode_soft(b"\x80\x04pickle")


def test_unreadable_values_read_as_misses(kv) -> None:
    cache = TaskCache(kv, 60)
    cache.put_soft("7", "v1", 3, "Cat", np.zeros((4, 4), np.float32))
    key = next(k for k in kv.client.scan_iter(f"{kv.prefix}:tc:*")).decode()
    kv.client.set(key, b"garbage")
    assert cache.get_soft("7", "v1", 3, "Cat") is None
