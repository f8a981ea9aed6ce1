"""Brush regions in Label Studio's format, and the result store's exactly-once delivery."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from seggpt_backend.engine.interface import MaskPrediction
from seggpt_backend.service.contract import TaskResult
from seggpt_backend.service.jobs.regions import (
    SCORE_INTERCEPT,
    SCORE_SLOPE,
    RegionFilter,
    calibrated_score,
    calibration_for,
    prediction_result,
    regions_for_label,
)
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.results import ERROR_TTL_S, Pending, ResultStore
from tests.service_support import cleanup_redis, new_prefix, redis_url


def _cal(raw: float) -> float:
    """The calibrated score of a region whose mean soft value is ``raw``."""
    return round(min(1.0, max(0.0, SCORE_SLOPE * raw + SCORE_INTERCEPT)), 4)


def _prediction() -> MaskPrediction:
    mask = np.zeros((30, 50), bool)
    mask[2:10, 3:15] = True
    mask[20:28, 30:45] = True
    soft = np.where(mask, 0.98, 0.05).astype(np.float32)
    soft[20:28, 30:45] = 0.9
    return MaskPrediction(soft=soft, mask=mask, score=0.7)


def test_single_region_matches_label_studio_format() -> None:
    pred = _prediction()
    (region,) = regions_for_label(
        pred, task_id=3, label="Cat", from_name="tag", to_name="image", split_components=False
    )
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == (50, 30)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Cat"]
    # 96 px at 0.98 and 120 px at 0.9: the calibrated score of the mean soft value
    assert region["score"] == pytest.approx(_cal((96 * 0.98 + 120 * 0.9) / 216), abs=1e-4)
    decoded = decode_rle(region["value"]["rle"]).reshape(30, 50, 4)[:, :, 3]
    assert np.array_equal(decoded > 0, pred.mask)
    again = regions_for_label(
        pred, task_id=3, label="Cat", from_name="tag", to_name="image", split_components=False
    )
    assert again[0]["id"] == region["id"]  # deterministic, so retries are idempotent


def test_split_components_scores_each_part() -> None:
    regions = regions_for_label(
        _prediction(), task_id=3, label="Cat", from_name="tag", to_name="image", split_components=True
    )
    assert [r["score"] for r in regions] == pytest.approx([_cal(0.98), _cal(0.9)], abs=1e-4)
    assert regions[0]["score"] > regions[1]["score"]
    assert len({r["id"] for r in regions}) == 2


def test_empty_mask_gives_no_region_and_override_rescores() -> None:
    pred = _prediction()
    assert (
        regions_for_label(
            MaskPrediction(pred.soft, np.zeros_like(pred.mask), 0.0),
            task_id=1,
            label="Cat",
            from_name="tag",
            to_name="image",
            split_components=False,
        )
        == []
    )
    only_right = np.zeros_like(pred.mask)
    only_right[20:28, 30:45] = True
    (r,) = regions_for_label(
        pred,
        task_id=1,
        label="Cat",
        from_name="tag",
        to_name="image",
        split_components=False,
        mask=only_right,
    )
    assert r["score"] == pytest.approx(_cal(0.9), abs=1e-4)


def test_calibrated_score_maps_the_confident_band_onto_iou_units() -> None:
    """The raw mean soft value of real predictions sits at 0.90-0.99: the map spreads it over
    [0, 1] and keeps the order (a monotone map: ranking by it is ranking by the raw mean)."""
    mask = np.ones((4, 4), bool)
    raws = [0.5, 0.88, 0.9, 0.95, 0.99, 1.0]
    scores = [calibrated_score(np.full((4, 4), v, np.float32), mask) for v in raws]
    assert scores == sorted(scores) and scores[0] == 0.0 and scores[-1] <= 1.0
    # 0.90 vs 0.99: 0.09 apart raw, stretched by the fit's slope (1.5 for the stage-6 demo weights)
    assert SCORE_SLOPE > 1.2 and scores[4] - scores[2] == pytest.approx(SCORE_SLOPE * 0.09, abs=2e-4)
    assert calibrated_score(np.ones((4, 4), np.float32), np.zeros((4, 4), bool)) == 0.0


def test_only_the_demo_weights_get_the_demo_fit() -> None:
    """A fit belongs to its weights: ViT-L (or any other spec) keeps the raw mean soft value."""
    mask = np.ones((4, 4), bool)
    soft = np.full((4, 4), 0.95, np.float32)
    assert calibrated_score(soft, mask, calibration_for("demo")) == pytest.approx(_cal(0.95), abs=1e-4)
    for weights in ("BAAI/seggpt-vit-large", "random:tiny", "/models/seggpt_vit_large.pth"):
        assert calibrated_score(soft, mask, calibration_for(weights)) == pytest.approx(0.95)


def test_speck_filters_drop_small_and_low_score_regions() -> None:
    pred = _prediction()  # left part 96 px scoring higher, right part 120 px scoring lower
    kw = {"task_id": 1, "label": "Cat", "from_name": "tag", "to_name": "image"}
    small = regions_for_label(pred, **kw, filters=RegionFilter(split_components=True, min_area=100))
    assert [r["value"]["brushlabels"] for r in small] == [["Cat"]] and small[0]["score"] == pytest.approx(
        _cal(0.9), abs=1e-4
    )  # the 96 px part is gone
    low = regions_for_label(pred, **kw, filters=RegionFilter(split_components=True, min_score=_cal(0.95)))
    assert [r["score"] for r in low] == pytest.approx([_cal(0.98)], abs=1e-4)
    assert regions_for_label(pred, **kw, filters=RegionFilter(min_score=1.0)) == []


def test_threshold_recuts_the_soft_map() -> None:
    pred = _prediction()
    (r,) = regions_for_label(
        pred, task_id=1, label="Cat", from_name="tag", to_name="image", filters=RegionFilter(threshold=0.95)
    )
    decoded = decode_rle(r["value"]["rle"]).reshape(30, 50, 4)[:, :, 3] > 0
    assert decoded.sum() == 96 and decoded[2:10, 3:15].all()  # only the 0.98 part passes 0.95


def test_prediction_result_scores() -> None:
    assert prediction_result([], "v1") == TaskResult(result=(), score=0.0, model_version="v1")
    e = prediction_result([{"score": 0.5}, {"score": 1.0}], "v1")
    assert e.ok and e.score == 0.75 and e.model_version == "v1"


def test_store_and_exactly_once_claims() -> None:
    prefix = new_prefix()
    store = ResultStore(RedisKV.from_url(redis_url(), prefix))
    try:
        done = TaskResult(
            result=({"id": "r1", "type": "brushlabels"},), score=0.5, model_version="v", messages=("m",)
        )
        store.put("1", "v", 5, done)
        store.put("1", "v", 6, TaskResult.failure("task 6: broken"))
        assert store.get_many("1", "v", [5, 6, 7]) == {5: done, 6: TaskResult.failure("task 6: broken")}
        ttl = store.kv.client.ttl  # type: ignore[attr-defined]
        assert (
            0 < ttl(f"{prefix}:res:1:v:6") <= ERROR_TTL_S < ttl(f"{prefix}:res:1:v:5")
        )  # failures retry soon
        assert store.get_many("1", "other", [5]) == {}
        assert store.claim("1", "v", 5) and not store.claim("1", "v", 5)
        assert store.claim("1", "v2", 5)  # a claim is per delivered model version
        store.release("1", "v", 5)
        assert store.claim("1", "v", 5)
        assert not store.waiter_alive("chan")
        store.hold_waiter("chan")
        assert store.waiter_alive("chan") and not store.waiter_alive("")
        store.release_waiter("chan")
        assert not store.waiter_alive("chan")
        store.add_pending(Pending("1", "v", 5, channel="chan", since=2.0))
        store.add_pending(Pending("1", "v", 6, since=1.0))
        assert [p.task_id for p in store.pending()] == [6, 5]  # oldest first
        assert store.pending()[1] == Pending("1", "v", 5, channel="chan", since=2.0)
        store.settle("1", "v", 6)
        assert [p.task_id for p in store.pending()] == [5]
        store.notify("chan", [5])
        assert store.wait("chan", 1.0) and not store.wait("chan", 0.05)
    finally:
        cleanup_redis(prefix)
