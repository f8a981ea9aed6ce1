"""The prompt store on a real Redis: safetensors bytes + JSON, versions, pointer, rollback, bounds."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend.service.store.kv import MemoryKV, RedisKV
from seggpt_backend.service.store.prompts import (
    MAX_RUNS,
    LabelRun,
    PromptStore,
    TuneRun,
    decode_tensors,
    encode_tensors,
    to_pixels,
)
from tests.service_support import cleanup_redis, new_prefix, redis_url


@pytest.fixture
def store():
    prefix = new_prefix()
    yield PromptStore(RedisKV.from_url(redis_url(), prefix), keep=2)
    cleanup_redis(prefix)


def _arrays(seed: int, size: tuple[int, int] = (8, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(3, *size)).astype(np.float32),
        rng.normal(size=(3, *size)).astype(np.float32),
    )


def _promote(store: PromptStore, label: str, seed: int, engine: str = "seggpt-a") -> str:
    image, target = _arrays(seed)
    meta = store.promote(
        "1", label=label, image=image, target=target, engine_version=engine, mode="ensemble", run="1", miou={}
    )
    return meta.version


def test_tensors_travel_as_safetensors_not_pickle() -> None:
    image, target = _arrays(0)
    data = encode_tensors(image, target)
    assert b"pickle" not in data and data[8:9] == b"{"  # safetensors: 8-byte length, JSON header
    back = decode_tensors(data)
    assert np.array_equal(back[0], image) and np.array_equal(back[1], target)
    with pytest.raises(ValueError, match="unreadable"):
        decode_tensors(data[:20])
    pixels = to_pixels(image)
    assert pixels.shape == (8, 6, 3) and pixels.dtype == np.uint8


def test_promotion_points_at_a_complete_version_and_changes_the_digest(store: PromptStore) -> None:
    assert store.digest("1", "seggpt-a") is None
    v1 = _promote(store, "Cat", 1)
    assert store.active("1") == {"Cat": v1}
    image, _ = store.load("1", v1)
    assert np.array_equal(image, _arrays(1)[0])
    d1 = store.digest("1", "seggpt-a")
    v2 = _promote(store, "Cat", 2)
    assert v2 != v1 and store.active("1") == {"Cat": v2}
    assert store.digest("1", "seggpt-a") not in (None, d1)
    assert store.rollback("1", "Cat", v1).version == v1
    assert store.digest("1", "seggpt-a") == d1  # the version names the prompts served


def test_prompts_of_other_weights_are_kept_but_not_served(store: PromptStore) -> None:
    v = _promote(store, "Cat", 1, engine="seggpt-demo-x")
    assert store.served("1", "seggpt-vit-large") == {} and store.digest("1", "seggpt-vit-large") is None
    assert store.served("1", "seggpt-demo-x")["Cat"].version == v
    assert v in store.metas("1")


def test_rollback_refuses_unknown_or_foreign_versions(store: PromptStore) -> None:
    v = _promote(store, "Cat", 1)
    with pytest.raises(KeyError, match="no prompt version '99'"):
        store.rollback("1", "Cat", "99")
    with pytest.raises(KeyError, match="is for 'Cat', not 'Dog'"):
        store.rollback("1", "Dog", v)
    store.kv.delete(f"pr:1:blob:{v}")  # tensors gone: no pointer to them
    with pytest.raises(KeyError, match="no tensors"):
        store.rollback("1", "Cat", v)


def test_versions_are_bounded_per_label_and_the_promoted_one_is_kept(store: PromptStore) -> None:
    first = _promote(store, "Cat", 1)
    _promote(store, "Cat", 2)
    third = _promote(store, "Cat", 3)
    dog = _promote(store, "Dog", 4)
    cat_versions = sorted(v for v, m in store.metas("1").items() if m.label == "Cat")
    assert first not in cat_versions and len(cat_versions) == 2  # keep=2
    assert not store.kv.exists(f"pr:1:blob:{first}")
    assert store.active("1") == {"Cat": third, "Dog": dog}
    store.rollback("1", "Cat", sorted(cat_versions)[0])  # the older kept one, now promoted
    _promote(store, "Cat", 5)
    _promote(store, "Cat", 6)
    assert store.active("1")["Cat"] in store.metas("1")


def test_runs_are_recorded_newest_first_and_bounded() -> None:
    store = PromptStore(MemoryKV())
    for _ in range(MAX_RUNS + 3):
        run = TuneRun(id=store.new_run_id("1"), project="1", engine_version="e", trigger="cli", started_at=0)
        run.labels.append(LabelRun(label="Cat", decision="rejected", reason="r", miou={"served": 0.5}))
        store.save_run(run)
    runs = store.runs("1")
    assert len(runs) == MAX_RUNS and runs[0].id == str(MAX_RUNS + 3)
    assert runs[0].labels[0].reason == "r" and runs[0].labels[0].gain == 0.0


def test_automatic_trigger_counts_accepted_annotations() -> None:
    store = PromptStore(MemoryKV())
    assert [store.count_accepted("1", 3) for _ in range(7)] == [False, False, True, False, False, True, False]
    assert not any(store.count_accepted("2", 0) for _ in range(5))
