"""Example selection: recency and retrieval by the global descriptor."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend.service.jobs.selection import DESCRIPTOR_DIM, Candidate, describe, select
from tests.fixtures import scene


def test_descriptor_shape_norm_and_resolution_independence() -> None:
    image, _ = scene(120, 160, seed=3)
    d = describe(image)
    assert d.shape == (DESCRIPTOR_DIM,) and d.dtype == np.float32
    assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)
    big = np.repeat(np.repeat(image, 3, axis=0), 3, axis=1)
    assert float(d @ describe(big)) > 0.99
    with pytest.raises(ValueError, match="uint8"):
        describe(image.astype(np.float32))


def test_similar_scenes_are_closer_than_different_ones() -> None:
    a, _ = scene(96, 128, seed=1)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-10, 10, a.shape), 0, 255).astype(
        np.uint8
    )
    other = np.zeros_like(a)
    other[..., 2] = 255
    assert float(describe(a) @ describe(noisy)) > float(describe(a) @ describe(other))


def test_recent_mode_orders_by_recency() -> None:
    cands = [Candidate(i, (f"2026-01-0{i}", i)) for i in (1, 3, 2)]
    assert [c.key for c in select(cands, 2, mode="recent")] == [3, 2]
    assert select(cands, 0, mode="recent") == [] and select([], 3, mode="recent") == []


def test_retrieval_prefers_the_look_alike_then_recency() -> None:
    q, _ = scene(96, 128, seed=5)
    lookalike, _ = scene(96, 128, seed=5)
    far = np.full_like(q, 250)
    cands = [
        Candidate(1, ("2026-01-09", 1), describe(far)),
        Candidate(2, ("2026-01-01", 2), describe(lookalike)),
        Candidate(3, ("2026-01-05", 3), None),
    ]
    chosen = select(cands, 3, mode="retrieval", query_descriptor=describe(q))
    assert [c.key for c in chosen] == [2, 1, 3]  # unknown descriptors rank last
    # Without a query descriptor retrieval falls back to recency.
    assert [c.key for c in select(cands, 1, mode="retrieval")] == [1]
    with pytest.raises(ValueError, match="unknown example selection"):
        select(cands, 1, mode="nearest", query_descriptor=describe(q))  # type: ignore[arg-type]
