"""Examples become pixels once, are cached in (real) Redis, and revisions never serve stale pixels."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend.service.errors import ExampleError
from seggpt_backend.service.jobs.materialize import Materializer
from seggpt_backend.service.store.examples import record_from_annotation
from seggpt_backend.service.store.kv import RedisKV
from tests.fixtures import scene
from tests.service_support import brush_result, cleanup_redis, new_prefix, png_bytes, redis_url


@pytest.fixture
def kv():
    prefix = new_prefix()
    yield RedisKV.from_url(redis_url(), prefix)
    cleanup_redis(prefix)


def _record(masks, ann_id=1, url="/data/upload/1/a.png"):
    ann = {"id": ann_id, "result": brush_result(masks), "updated_at": "2026-01-01T00:00:00Z"}
    rec = record_from_annotation(ann, {"id": 10, "data": {"image": url}}, {"image": "image"})
    assert rec is not None
    return rec


def test_build_cache_and_shrink(kv) -> None:
    image, masks = scene(300, 1000, seed=4)
    files = {"/data/upload/1/a.png": png_bytes(image)}
    calls: list[str] = []

    def fetch(url: str, task_id: int | None) -> bytes:
        calls.append(url)
        return files[url]

    rec = _record(masks)
    mat = Materializer(kv, fetch, max_pixels=10**8, max_side=500).get("1", rec, "image")
    assert mat.image.shape == (150, 500, 3)
    assert set(mat.masks) == {("tag", "Cat"), ("tag", "Dog")}
    cat = mat.masks[("tag", "Cat")]
    assert cat.shape == (150, 500)
    # Area-resized mask agrees with the original on a 2x grid (up to edge pixels).
    assert abs(cat.mean() - masks["Cat"].mean()) < 0.01
    ex = mat.example(None, "Cat")
    assert ex.masks["Cat"] is not None and ex.id.startswith("ann1-")
    # A second process (fresh materializer) reads Redis instead of downloading again.
    again = Materializer(kv, fetch, max_pixels=10**8, max_side=500).get("1", rec, "image")
    assert calls == ["/data/upload/1/a.png"]
    assert np.array_equal(again.image, mat.image) and np.array_equal(again.masks[("tag", "Cat")], cat)
    assert np.allclose(again.descriptor, mat.descriptor)
    # Forgetting a revision drops the shared cache.
    Materializer(kv, fetch, max_pixels=10**8).forget("1", rec.annotation_id, rec.rev)
    Materializer(kv, fetch, max_pixels=10**8, max_side=500).get("1", rec, "image")
    assert len(calls) == 2


def test_unreachable_or_corrupt_example_raises_example_error(kv) -> None:
    _, masks = scene(40, 60, seed=1)

    def missing(url: str, task_id: int | None) -> bytes:
        raise OSError("404 Not Found")

    with pytest.raises(ExampleError, match=r"task 10.*could not be fetched"):
        Materializer(kv, missing, max_pixels=10**8).get("1", _record(masks), "image")
    with pytest.raises(ExampleError, match="unreadable"):
        Materializer(kv, lambda u, t: b"not an image", max_pixels=10**8).get("1", _record(masks, 2), "image")
