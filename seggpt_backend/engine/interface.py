"""The small surface of the model that the service (HTTP, queue, storage) is allowed to see.

Everything here is numpy and plain Python: the service never touches a tensor. The concrete
implementation is :class:`seggpt_backend.engine.engine.SegGptEngine`.

Conventions
-----------
- Images are ``(H, W, 3) uint8`` RGB arrays, already EXIF-oriented (see ``engine.images``).
- Masks are ``(H, W) bool`` arrays in the pixel grid of their image (row-major, H x W).
- Labels are the Label Studio label strings (``"Cat"``); the engine treats them as opaque keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

EnsembleMode = Literal["feature", "spatial", "none"]
SegType = Literal["instance", "semantic"]
MultiLabelMode = Literal["per-label", "palette"]


@dataclass(frozen=True, eq=False)
class Example:
    """One labelled image used as an in-context example.

    ``id`` identifies the image (e.g. ``"task:12"``) so that the engine can cache its
    pre-processed tensors and recognise the same image under several labels.
    ``masks`` maps a label to its ``(H, W) bool`` mask on ``image``.
    """

    id: str
    image: np.ndarray
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SegmentRequest:
    """One query image and, per label to predict, the examples chosen for that label (k >= 1).

    A label whose example list is empty is skipped by the engine (no prediction for it).
    ``size`` is the ``(H, W)`` the masks are returned at; ``None`` means ``query.shape[:2]``.
    Set it when ``query`` was decoded at reduced size (JPEG draft mode) from a larger original.
    """

    query: np.ndarray
    examples: Mapping[str, Sequence[Example]]
    size: tuple[int, int] | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size or (self.query.shape[0], self.query.shape[1])


@dataclass(frozen=True, eq=False)
class MaskPrediction:
    """The engine's answer for one (query, label).

    - ``soft``: ``(H, W) float32`` in ``[0, 1]`` at the query's original size: the model's
      foreground intensity (painted colour matched against the label's prompt colour).
    - ``mask``: ``(H, W) bool``, the binary decision (authors' rule: intensity > 0.5).
    - ``score``: ``float`` in ``[0, 1]``: confidence of the mask (mean soft value inside the mask,
      0 for an empty mask).
    """

    soft: np.ndarray
    mask: np.ndarray
    score: float


@runtime_checkable
class Engine(Protocol):
    """What the service needs from a segmentation model."""

    @property
    def model_version(self) -> str:
        """Stable identifier of the loaded weights (changes when the weights change)."""
        ...

    def segment(
        self,
        requests: Sequence[SegmentRequest],
        *,
        ensemble: EnsembleMode = "feature",
        seg_type: SegType = "instance",
        multilabel: MultiLabelMode = "per-label",
    ) -> list[dict[str, MaskPrediction]]:
        """Segment every request; one dict (label -> prediction) per request, in order.

        Batches queries x labels x examples internally and never fails the whole batch
        because of one request's content.
        """
        ...
