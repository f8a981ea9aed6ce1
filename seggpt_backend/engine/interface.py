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
class LearnedPrompt:
    """A prompt learned by in-context tuning (paper sec. 3.3): the top half of both canvases.

    ``image`` and ``target``: ``(3, h, w) float32`` in ImageNet-normalised space (the model's
    input space, not pixels), at the engine's ``half_size`` ``(h, w)``; ``target`` is the
    white-on-black mask half for one label. ``id`` names it stably (e.g. ``"prompt:7:Cat:3"``):
    the engine caches the prepared tensors under it, so a new prompt needs a new id.
    """

    id: str
    image: np.ndarray = field(repr=False)
    target: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("image", "target"):
            a = getattr(self, name)
            if a.ndim != 3 or a.shape[0] != 3 or a.dtype != np.float32:
                raise ValueError(
                    f"learned prompt {self.id}: {name} must be (3, h, w) float32, got {a.shape} {a.dtype}"
                )
        if self.image.shape != self.target.shape:
            raise ValueError(
                f"learned prompt {self.id}: image {self.image.shape} and target {self.target.shape} differ"
            )

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of each half."""
        return int(self.image.shape[1]), int(self.image.shape[2])


@dataclass(frozen=True, eq=False)
class SegmentRequest:
    """One query image and, per label to predict, the examples chosen for that label (k >= 1).

    ``learned``: per label, a learned prompt that joins that label's examples as one more item
    of the feature ensemble (with an empty example list it is the only prompt). A label with
    neither examples nor a learned prompt is skipped by the engine (no prediction for it).
    Labels with a learned prompt are always predicted in their own (per-label) pass.
    ``size`` is the ``(H, W)`` the masks are returned at; ``None`` means ``query.shape[:2]``.
    Set it when ``query`` was decoded at reduced size (JPEG draft mode) from a larger original.
    """

    query: np.ndarray
    examples: Mapping[str, Sequence[Example]]
    size: tuple[int, int] | None = None
    learned: Mapping[str, LearnedPrompt] = field(default_factory=dict)

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


@dataclass(frozen=True, eq=False)
class TuneOutcome:
    """What :meth:`TunableEngine.tune` returns: the prompt, the loss of every step run (the
    length is the number of steps: a time budget may stop it early) and its wall seconds."""

    prompt: LearnedPrompt
    losses: list[float]
    seconds: float


@dataclass(frozen=True)
class TuneOptions:
    """Knobs of one in-context tuning run: Adam ``lr`` in normalised units per step, ``steps``
    and ``time_budget_s`` (whichever ends first), ``batch_size`` query pairs per step,
    ``fg_balance`` foreground/background loss balance in [0, 1] (0: the authors' loss; the demo
    model was trained with 0.25), ``seed`` for the batch order."""

    steps: int = 60
    lr: float = 0.01
    batch_size: int = 4
    time_budget_s: float | None = None
    fg_balance: float = 0.0
    seed: int = 0


@runtime_checkable
class TunableEngine(Engine, Protocol):
    """An engine that can learn a prompt with its weights frozen (in-context tuning)."""

    @property
    def half_size(self) -> tuple[int, int]:
        """``(h, w)`` of one canvas half: the size of a :class:`LearnedPrompt`."""
        ...

    def tune(
        self,
        init: Example,
        label: str,
        pairs: Sequence[Example],
        *,
        options: TuneOptions,
        seg_type: SegType = "instance",
    ) -> TuneOutcome:
        """Learn a prompt for ``label`` initialised from ``init`` (its image and ``masks[label]``),
        fitted to ``pairs`` (each an image with ``masks[label]``), weights frozen. The returned
        prompt's id is ``"tuned:<label>"``; give it a real id before serving it."""
        ...
