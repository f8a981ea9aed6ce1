"""Example records from real Label Studio annotations, and the shared store in real Redis."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from seggpt_backend.labelstudio import rle
from seggpt_backend.service.store.examples import (
    EMPTY_DIGEST,
    ExampleRecord,
    ExampleStore,
    digest_of,
    record_from_annotation,
)
from seggpt_backend.service.store.kv import MemoryKV, RedisKV
from tests.service_support import captured, cleanup_redis, new_prefix, redis_url

FIELDS = {"image": "image"}


@pytest.fixture(params=["redis", "memory"])
def store(request):
    if request.param == "memory":
        yield ExampleStore(MemoryKV())
        return
    prefix = new_prefix()
    yield ExampleStore(RedisKV.from_url(redis_url(), prefix))
    cleanup_redis(prefix)


def _record(annotation_id: int, task_id: int, updated_at: str, label: str = "Cat") -> ExampleRecord:
    body = captured("webhook_annotation_created")
    ann = json.loads(json.dumps(body["annotation"]))
    ann["id"], ann["updated_at"] = annotation_id, updated_at
    for r in ann["result"]:
        r["value"]["brushlabels"] = [label]
    rec = record_from_annotation(ann, {**body["task"], "id": task_id}, FIELDS)
    assert rec is not None
    return rec


def test_captured_annotation_becomes_a_record_with_decodable_masks() -> None:
    body = captured("webhook_annotation_created")
    rec = record_from_annotation(body["annotation"], body["task"], FIELDS)
    assert rec is not None
    assert rec.annotation_id == 1 and rec.task_id == 1
    assert rec.images == {"image": "/data/upload/1/69a30967-img0.png"}
    assert [(r.label, r.width, r.height) for r in rec.regions] == [("Cat", 64, 48), ("Dog", 64, 48)]
    cat = rle.decode(list(rec.regions[0].rle), 48, 64) > 0
    assert 0 < cat.sum() < 48 * 64
    assert ExampleRecord.from_json(rec.to_json()) == rec


def test_unusable_annotations_give_no_record() -> None:
    body = captured("webhook_annotation_created")
    ann, task = body["annotation"], body["task"]
    assert record_from_annotation({**ann, "was_cancelled": True}, task, FIELDS) is None
    assert record_from_annotation({**ann, "result": []}, task, FIELDS) is None
    assert record_from_annotation(ann, {**task, "data": {}}, FIELDS) is None  # no image URL
    assert record_from_annotation(ann, task, {"other": "image"}) is None  # regions on another Image
    keypoint = {
        "type": "keypointlabels",
        "to_name": "image",
        "value": {"x": 1, "y": 2, "keypointlabels": ["Cat"]},
    }
    assert record_from_annotation({**ann, "result": [keypoint]}, task, FIELDS) is None


def test_revision_follows_content_not_timestamps() -> None:
    a = _record(1, 1, "2026-01-01T00:00:00Z")
    b = _record(1, 1, "2026-02-01T00:00:00Z")
    c = _record(1, 1, "2026-01-01T00:00:00Z", label="Dog")
    assert a.rev == b.rev != c.rev


def test_store_upsert_delete_and_digest(store: ExampleStore) -> None:
    assert store.digest("7") == EMPTY_DIGEST and store.count("7") == 0
    first = _record(1, 10, "2026-01-01T00:00:00Z")
    assert store.upsert("7", first) is None
    d1 = store.digest("7")
    assert d1 != EMPTY_DIGEST
    second = _record(2, 11, "2026-01-02T00:00:00Z")
    store.upsert("7", second)
    d2 = store.digest("7")
    assert d2 != d1
    assert [r.annotation_id for r in store.records("7")] == [2, 1]  # most recent first
    edited = _record(1, 10, "2026-01-03T00:00:00Z", label="Dog")
    assert store.upsert("7", edited) == first.rev
    assert store.digest("7") not in (d1, d2)
    assert [r.annotation_id for r in store.records("7")] == [1, 2]
    assert store.delete("7", [1, 99]) == {1: edited.rev}
    assert store.digest("7") == digest_of({"2": second.rev})
    assert store.count("8") == 0  # projects are separate


def test_reconcile_keeps_webhook_records_newer_than_the_listing(store: ExampleStore) -> None:
    stale = _record(1, 10, "2026-01-01T00:00:00Z")
    store.upsert("3", ExampleRecord(**{**stale.__dict__, "stored_at": 1.0}))
    started = time.time()
    during = _record(5, 12, "2026-01-05T00:00:00Z")  # a webhook that arrived during the fill
    store.upsert("3", during)
    listed = [_record(2, 11, "2026-01-02T00:00:00Z")]
    removed = store.reconcile("3", listed, started)
    assert removed == {1: stale.rev}
    assert sorted(r.annotation_id for r in store.records("3")) == [2, 5]
    assert store.is_populated("3")


def test_unreadable_record_is_skipped_not_fatal(store: ExampleStore) -> None:
    store.upsert("4", _record(1, 10, "2026-01-01T00:00:00Z"))
    store.kv.hset("ex:4:records", {"2": "{not json"})
    assert [r.annotation_id for r in store.records("4")] == [1]


def test_masks_of_records_round_trip_exactly() -> None:
    mask = np.zeros((30, 40), bool)
    mask[5:20, 3:17] = True
    ann = {
        "id": 9,
        "result": [
            {
                "type": "brushlabels",
                "from_name": "tag",
                "to_name": "image",
                "original_width": 40,
                "original_height": 30,
                "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": ["Cat"]},
            }
        ],
    }
    rec = record_from_annotation(ann, {"id": 3, "data": {"image": "/x.png"}}, FIELDS)
    assert rec is not None
    assert np.array_equal(rle.decode(list(rec.regions[0].rle), 30, 40) > 0, mask)


def test_polygon_annotation_becomes_a_rasterised_record() -> None:
    from seggpt_backend.labelstudio.polygon import rasterize

    points = [[10.0, 10.0], [60.0, 12.0], [40.0, 80.0]]
    annotation = {
        "id": 5,
        "updated_at": "2026-11-22T00:40:19Z",
        "result": [
            {
                "id": "p1",
                "from_name": "poly",
                "to_name": "image",
                "type": "polygonlabels",
                "original_width": 64,
                "original_height": 48,
                "value": {"points": points, "polygonlabels": ["Cat"], "closed": True},
            }
        ],
    }
    task = {"id": 9, "data": {"image": "/data/upload/1/a.png"}}
    record = record_from_annotation(annotation, task, FIELDS)
    assert record is not None
    (region,) = record.regions
    assert (region.label, region.from_name, region.width, region.height) == ("Cat", "poly", 64, 48)
    mask = rle.decode(list(region.rle), 48, 64) >= 128
    assert np.array_equal(mask, rasterize(points, 64, 48)) and mask.sum() > 100
    annotation["result"][0]["value"]["points"] = [[1, 1], [2, 2]]
    with pytest.raises(ValueError, match="at least 3"):
        record_from_annotation(annotation, task, FIELDS)
