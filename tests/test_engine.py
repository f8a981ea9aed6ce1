"""The inference engine: batching, ensembles, multi-label modes, OOM splitting, prompt tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seggpt_backend.engine.engine import SegGptEngine, load_engine
from seggpt_backend.engine.interface import Engine, Example, SegmentRequest, TuneOptions


@pytest.fixture(scope="module")
def engine() -> SegGptEngine:
    return load_engine("random:tiny", device="cpu")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _example(i: int, h: int = 50, w: int = 70) -> Example:
    rng = np.random.default_rng(100 + i)
    cat = np.zeros((h, w), bool)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    cat[y : y + h // 3, x : x + w // 3] = True
    return Example(f"ex{i}", _image(h, w, i), {"Cat": cat, "Dog": ~cat})


def test_engine_satisfies_the_service_protocol(engine: SegGptEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.model_version == "seggpt-random-tiny-0"


def test_predictions_have_the_query_size_and_valid_ranges(engine: SegGptEngine) -> None:
    query = _image(33, 47, 7)
    [result] = engine.segment(
        [SegmentRequest(query, {"Cat": [_example(0)], "Dog": [_example(1)], "Bird": []})]
    )
    assert set(result) == {"Cat", "Dog"}  # a label without examples is skipped
    for pred in result.values():
        assert pred.mask.shape == pred.soft.shape == (33, 47)
        assert pred.mask.dtype == bool and pred.soft.dtype == np.float32
        assert 0.0 <= pred.soft.min() <= pred.soft.max() <= 1.0
        assert 0.0 <= pred.score <= 1.0
        assert np.array_equal(pred.mask, pred.soft > 128 / 255)


def test_output_size_overrides_the_decoded_size(engine: SegGptEngine) -> None:
    [result] = engine.segment([SegmentRequest(_image(30, 40, 3), {"Cat": [_example(0)]}, size=(120, 160))])
    assert result["Cat"].mask.shape == (120, 160)


def test_batching_does_not_change_results(engine: SegGptEngine) -> None:
    requests = [
        SegmentRequest(_image(40, 30 + i, i), {"Cat": [_example(i % 3), _example(3)]}) for i in range(5)
    ]
    together = engine.segment(requests)
    alone = [engine.segment([r])[0] for r in requests]
    small = SegGptEngine(engine.model, version="x", max_batch=2).segment(requests)
    for a, b, c in zip(together, alone, small, strict=True):
        assert np.abs(a["Cat"].soft - b["Cat"].soft).max() <= 1e-5
        assert np.abs(a["Cat"].soft - c["Cat"].soft).max() <= 1e-5


def test_identical_examples_equal_one_example(engine: SegGptEngine) -> None:
    query = _image(40, 40, 9)
    ex = _example(0)
    one = engine.segment([SegmentRequest(query, {"Cat": [ex]})])[0]["Cat"]
    # same pixels under other ids: no caching shortcut, a real 3-prompt ensemble
    three = [Example(f"copy{i}", ex.image, ex.masks) for i in range(3)]
    ens = engine.segment([SegmentRequest(query, {"Cat": three})])[0]["Cat"]
    assert np.abs(one.soft - ens.soft).max() <= 1e-5


@pytest.mark.parametrize("ensemble", ["feature", "spatial", "none"])
def test_ensemble_modes(engine: SegGptEngine, ensemble: str) -> None:
    query = _image(40, 40, 9)
    exs = [_example(i) for i in range(4)]
    out = engine.segment([SegmentRequest(query, {"Cat": exs})], ensemble=ensemble)[0]["Cat"]  # type: ignore[arg-type]
    first = engine.segment([SegmentRequest(query, {"Cat": exs[:1]})])[0]["Cat"]
    differs = np.abs(out.soft - first.soft).max() > 1e-4
    assert differs == (ensemble != "none")


def test_palette_mode_returns_every_label_in_one_pass(engine: SegGptEngine) -> None:
    calls = []
    original = engine._forward

    def counting(groups, k, seg_type):  # type: ignore[no-untyped-def]
        calls.append(len(groups))
        return original(groups, k, seg_type)

    engine._forward = counting  # type: ignore[method-assign]
    try:
        exs = [_example(i) for i in range(2)]
        [result] = engine.segment(
            [SegmentRequest(_image(30, 30, 1), {"Cat": exs, "Dog": exs})], multilabel="palette"
        )
    finally:
        del engine._forward
    assert set(result) == {"Cat", "Dog"} and sum(calls) == 1
    assert not (result["Cat"].mask & result["Dog"].mask).any()  # nearest colour: disjoint


def test_out_of_memory_splits_the_batch_and_retries(engine: SegGptEngine) -> None:
    """A fault we cannot cause on a CPU: simulate the allocator failing on batches > 2 groups."""
    requests = [SegmentRequest(_image(30, 30, i), {"Cat": [_example(i)]}) for i in range(5)]
    expected = engine.segment(requests)
    original = engine._forward

    def flaky(groups, k, seg_type):  # type: ignore[no-untyped-def]
        if len(groups) > 2:
            raise torch.OutOfMemoryError("simulated")
        return original(groups, k, seg_type)

    engine._forward = flaky  # type: ignore[method-assign]
    try:
        got = engine.segment(requests)
    finally:
        del engine._forward
    for a, b in zip(expected, got, strict=True):
        assert np.abs(a["Cat"].soft - b["Cat"].soft).max() <= 1e-5


def test_prepared_prompts_are_reused_for_many_queries(engine: SegGptEngine) -> None:
    ex = _example(0)
    prompts = engine.prepare_prompts([ex.image], [ex.masks["Cat"]])
    paintings = engine.paint([_image(30, 30, 1), _image(20, 50, 2)], prompts)
    assert [tuple(p.shape) for p in paintings] == [(3, *engine.half_size)] * 2
    masks = engine.predict_masks([_image(30, 30, 1)], prompts)
    assert masks[0].mask.shape == (30, 30)
    with pytest.raises(ValueError, match="differ in size"):
        engine.prepare_prompts([ex.image], [np.zeros((5, 5), bool)])


def test_prompt_tuning_lowers_the_loss_and_freezes_the_model(engine: SegGptEngine) -> None:
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    pairs = [_example(i) for i in range(4)]
    outcome = engine.tune(pairs[0], "Cat", pairs, options=TuneOptions(steps=30, lr=0.1, batch_size=4))
    losses = outcome.losses
    assert outcome.prompt.image.shape == outcome.prompt.target.shape == (3, *engine.half_size)
    assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])
    for name, tensor in engine.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not any(p.requires_grad for p in engine.model.parameters())
    # the learned prompt joins the label's examples as one more member of the feature ensemble
    query = _image(40, 60, 9)
    alone, joined = engine.segment(
        [
            SegmentRequest(query, {"Cat": []}, learned={"Cat": outcome.prompt}),
            SegmentRequest(query, {"Cat": [pairs[1]]}, learned={"Cat": outcome.prompt}),
        ],
        ensemble="feature",
    )
    assert alone["Cat"].mask.shape == joined["Cat"].mask.shape == (40, 60)
    assert not np.array_equal(alone["Cat"].soft, joined["Cat"].soft)
