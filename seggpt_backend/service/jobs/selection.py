"""Choosing the k in-context examples for one query image and one label.

Two strategies (``SEGGPT_EXAMPLE_SELECTION``):

- ``recent``: the k most recently updated annotations that contain the label.
- ``retrieval``: the k annotations whose image looks most like the query under a cheap global
  descriptor (:func:`describe`), most recent first among equals. Retrieval looks only at the
  ``pool`` most recent candidates so a large project costs a bounded amount per query.

The descriptor is 128 float32 values, L2-normalised, so similarity is a dot product:

- 64 values: a joint RGB colour histogram (4 bins per channel), square-rooted (Hellinger) so a
  dominant colour does not swamp the rest;
- 64 values: an 8x8 grey-level thumbnail, mean-removed and normalised (coarse layout/texture).

It is computed on a 32x32 (colour) / 8x8 (layout) downsample, so the input resolution does not
matter and one descriptor costs well under a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SelectionMode = Literal["recent", "retrieval"]
SELECTION_MODES: tuple[str, ...] = ("recent", "retrieval")
DESCRIPTOR_DIM = 128


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Box-filter downsample of an ``(H, W, C)`` uint8 image to ``(size, size, C)`` float32."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def describe(image: np.ndarray) -> np.ndarray:
    """Global descriptor of an ``(H, W, 3) uint8`` RGB image: ``(128,) float32``, unit L2 norm."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"describe() wants an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    small = _resize(image, 32)
    bins = np.clip((small // 64).astype(np.int64), 0, 3)
    index = bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]
    hist = np.bincount(index.ravel(), minlength=64).astype(np.float32)
    colour = np.sqrt(hist / hist.sum())
    grey = _resize(image, 8).mean(axis=2).ravel()
    grey = grey - grey.mean()
    norm = float(np.linalg.norm(grey))
    layout = grey / norm if norm > 1e-6 else np.zeros_like(grey)
    # Equal weight for the two halves: each half has unit norm before concatenation.
    desc = np.concatenate([colour / max(float(np.linalg.norm(colour)), 1e-6), layout]).astype(np.float32)
    return desc / max(float(np.linalg.norm(desc)), 1e-6)


@dataclass(frozen=True)
class Candidate:
    """A stored example that contains the label being predicted.

    ``key`` identifies the example (annotation id); ``recency`` sorts newer-first when larger
    (e.g. ``(updated_at, annotation_id)``); ``descriptor`` is :func:`describe` of its image, or
    ``None`` when not yet known (recent mode never needs it).
    """

    key: int
    recency: tuple[str, int]
    descriptor: np.ndarray | None = None


def most_recent(candidates: Sequence[Candidate], n: int) -> list[Candidate]:
    """The ``n`` newest candidates, newest first."""
    return sorted(candidates, key=lambda c: c.recency, reverse=True)[: max(0, n)]


def select(
    candidates: Sequence[Candidate],
    k: int,
    *,
    mode: SelectionMode,
    query_descriptor: np.ndarray | None = None,
) -> list[Candidate]:
    """Pick at most ``k`` candidates for one query and label, best first.

    ``retrieval`` needs ``query_descriptor`` and each candidate's descriptor; candidates without a
    descriptor rank after those with one (then by recency). Deterministic for equal inputs.
    """
    if k <= 0 or not candidates:
        return []
    if mode == "recent" or query_descriptor is None:
        return most_recent(candidates, k)
    if mode != "retrieval":
        raise ValueError(f"unknown example selection mode {mode!r}; use one of {SELECTION_MODES}")

    def score(c: Candidate) -> float:
        return -2.0 if c.descriptor is None else float(np.dot(c.descriptor, query_descriptor))

    ordered = sorted(candidates, key=lambda c: (score(c), c.recency), reverse=True)
    return ordered[:k]
