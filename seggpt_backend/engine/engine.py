"""The SegGPT inference engine: load once, prepare prompts once, segment many queries.

    engine = SegGptEngine.from_spec("demo")                     # expensive: weights -> device
    prompts = engine.prepare_prompts([image], [mask])           # once per example set
    paintings = engine.paint([query1, query2], prompts)         # cheap, batched
    predictions = engine.segment([SegmentRequest(...)])         # the service's entry point

Images are ``(H, W, 3) uint8`` RGB, masks ``(H, W) bool`` (or ``(H, W, 3) uint8`` colour
masks). Queries x prompts are batched into as few forward passes as possible; on CUDA under
bf16/fp16 autocast, on CPU in fp32. A batch that runs out of GPU memory is split and retried.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from seggpt_backend.engine import processing as P
from seggpt_backend.engine.interface import (
    EnsembleMode,
    Example,
    LearnedPrompt,
    MaskPrediction,
    MultiLabelMode,
    SegmentRequest,
    SegType,
    TuneOptions,
    TuneOutcome,
)
from seggpt_backend.model.checkpoint import build_model
from seggpt_backend.model.seggpt import SegGpt
from seggpt_backend.model.tuning import tune_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PromptSet:
    """``k`` prepared examples: normalised ``images`` and ``targets``, each ``(k, 3, h, w)``."""

    images: Tensor
    targets: Tensor

    @property
    def k(self) -> int:
        return self.images.shape[0]

    def __add__(self, other: PromptSet) -> PromptSet:
        """Join two sets into one feature ensemble (e.g. a tuned prompt plus real examples)."""
        return PromptSet(torch.cat([self.images, other.images]), torch.cat([self.targets, other.targets]))


@dataclass(eq=False)
class _Group:
    query: Tensor  # (3, h, w) normalised
    prompts: PromptSet
    result: Tensor | None = field(default=None)


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """``auto`` picks CUDA with bf16 autocast when available, else CPU in fp32.
    Returns the device and the autocast dtype (``None`` = plain fp32)."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    if dtype == "auto":
        return dev, (torch.bfloat16 if dev.type == "cuda" else None)
    table = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    table |= {"fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16")
    return dev, table[dtype]


class SegGptEngine:
    """Batched SegGPT inference on one device (see module docstring)."""

    def __init__(
        self,
        model: SegGpt,
        *,
        version: str,
        autocast: torch.dtype | None = None,
        max_batch: int = 16,
        cache_size: int = 512,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.cfg = model.cfg
        self.device = next(model.parameters()).device
        self.autocast = autocast
        self.max_batch = max_batch
        self._version = version
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        download_dir: str | Path | None = None,
        **kwargs: object,
    ) -> SegGptEngine:
        """Load weights (see :func:`seggpt_backend.model.checkpoint.load_weights`) onto a device;
        weights downloaded from the hub are kept in ``download_dir``."""
        dev, autocast = resolve_device(device, dtype)
        model, version = build_model(
            spec, device=dev, download_dir=Path(download_dir) if download_dir else None
        )
        log.info("loaded SegGPT weights %s (%s) on %s, autocast=%s", spec, version, dev, autocast)
        return cls(model, version=version, autocast=autocast, **kwargs)  # type: ignore[arg-type]

    @property
    def model_version(self) -> str:
        return f"seggpt-{self._version}"

    @property
    def half_size(self) -> tuple[int, int]:
        return self.cfg.half_size

    # ----------------------------------------------------------------- prompts
    def prepare_prompts(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        ensemble: EnsembleMode = "feature",
    ) -> PromptSet:
        """Prepare ``k`` examples once. ``masks[i]`` is ``(H, W) bool`` (painted white) or an
        ``(H, W, 3) uint8`` colour mask. ``ensemble="spatial"`` tiles them into one prompt,
        ``"none"`` keeps only the first."""
        if not images or len(images) != len(masks):
            raise ValueError(f"need as many masks as images (>= 1), got {len(images)} and {len(masks)}")
        rgb = [m if m.ndim == 3 else P.colour_masks([m], P.palette(1)) for m in masks]
        for img, msk in zip(images, rgb, strict=True):
            if img.shape[:2] != msk.shape[:2]:
                raise ValueError(f"example image {img.shape[:2]} and mask {msk.shape[:2]} differ in size")
        if ensemble == "none":
            images, rgb = images[:1], rgb[:1]
        elif ensemble == "spatial" and len(images) > 1:
            tiled = P.tile_examples(images, rgb, self.half_size)
            images, rgb = [tiled[0]], [tiled[1]]
        return PromptSet(
            torch.stack([P.preprocess_image(i, self.half_size) for i in images]),
            torch.stack([P.preprocess_target(m, self.half_size) for m in rgb]),
        )

    def tune(
        self,
        init: Example,
        label: str,
        pairs: Sequence[Example],
        *,
        options: TuneOptions,
        seg_type: SegType = "instance",
    ) -> TuneOutcome:
        """See :meth:`seggpt_backend.engine.interface.TunableEngine.tune`. Uses the engine's
        autocast dtype (bf16 on CUDA) and, on CUDA, activation checkpointing."""
        if not pairs:
            raise ValueError(f"tuning {label!r} needs at least one (image, mask) pair")
        started = time.monotonic()
        init_set = self._prompt_set([init], (label,), "none")
        prepared = [self._prompt_set([e], (label,), "none") for e in pairs]
        tuned = tune_prompt(
            self.model,
            init_set.images[0],
            init_set.targets[0],
            torch.cat([p.images for p in prepared]),
            torch.cat([p.targets for p in prepared]),
            steps=options.steps,
            lr=options.lr,
            batch_size=options.batch_size,
            seg_type=seg_type,
            autocast_dtype=self.autocast,
            checkpointing=self.device.type == "cuda",
            fg_balance=options.fg_balance,
            background=P.normalize(np.zeros((1, 1, 3), np.uint8)).view(3),
            time_budget_s=options.time_budget_s,
            seed=options.seed,
        )
        prompt = LearnedPrompt(
            id=f"tuned:{label}",
            image=tuned.image.float().numpy().astype(np.float32, copy=False),
            target=tuned.target.float().numpy().astype(np.float32, copy=False),
        )
        return TuneOutcome(prompt, tuned.losses, time.monotonic() - started)

    # ----------------------------------------------------------------- low level
    def paint(
        self,
        queries: Sequence[np.ndarray],
        prompts: PromptSet | Sequence[PromptSet],
        *,
        seg_type: SegType = "instance",
    ) -> list[Tensor]:
        """The model's painting of each query, ``(3, h, w) float32`` RGB in ``[0, 255]`` at the
        model's half size (CPU). ``prompts``: one set for all queries or one per query."""
        sets = [prompts] * len(queries) if isinstance(prompts, PromptSet) else list(prompts)
        if len(sets) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(sets)} prompt sets")
        groups = [
            _Group(P.preprocess_image(q, self.half_size), s) for q, s in zip(queries, sets, strict=True)
        ]
        self._run(groups, seg_type)
        return [g.result for g in groups]  # type: ignore[misc]

    def predict_masks(
        self,
        queries: Sequence[np.ndarray],
        prompts: PromptSet | Sequence[PromptSet],
        *,
        seg_type: SegType = "instance",
    ) -> list[MaskPrediction]:
        """Binary segmentation of each query at its original size (white-on-black prompts)."""
        out = []
        for query, painting in zip(queries, self.paint(queries, prompts, seg_type=seg_type), strict=True):
            soft, mask = P.binary_from_painting(painting, query.shape[:2])
            out.append(MaskPrediction(soft, mask, P.mask_score(soft, mask)))
        return out

    def _run(self, groups: list[_Group], seg_type: SegType) -> None:
        by_k: dict[int, list[_Group]] = {}
        for g in groups:
            by_k.setdefault(g.prompts.k, []).append(g)
        for k, same_k in by_k.items():
            per_pass = max(1, self.max_batch // k)
            for start in range(0, len(same_k), per_pass):
                self._forward_split(same_k[start : start + per_pass], k, seg_type)

    def _forward_split(self, groups: list[_Group], k: int, seg_type: SegType) -> None:
        try:
            outputs = self._forward(groups, k, seg_type)
        except torch.OutOfMemoryError:
            if len(groups) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(groups) // 2
            log.warning("out of memory with %d x %d rows; retrying in halves", len(groups), k)
            self._forward_split(groups[:half], k, seg_type)
            self._forward_split(groups[half:], k, seg_type)
            return
        for g, out in zip(groups, outputs, strict=True):
            g.result = out

    @torch.inference_mode()
    def _forward(self, groups: list[_Group], k: int, seg_type: SegType) -> Tensor:
        prompt_imgs = torch.cat([g.prompts.images for g in groups])
        prompt_tgts = torch.cat([g.prompts.targets for g in groups])
        queries = torch.stack([g.query for g in groups]).repeat_interleave(k, dim=0)
        images = torch.cat([prompt_imgs, queries], dim=2).to(self.device, non_blocking=True)
        targets = torch.cat([prompt_tgts, torch.zeros_like(queries)], dim=2).to(
            self.device, non_blocking=True
        )
        with torch.autocast(
            self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None
        ):
            pred = self.model(images, targets, seg_type=seg_type, ensemble=k)
        return P.denormalize(pred).cpu()

    # ----------------------------------------------------------------- service API
    def _cached(self, key: tuple, make: object) -> Tensor:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = make()  # type: ignore[operator]
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def _example_image(self, ex: Example) -> Tensor:
        return self._cached(("img", ex.id), lambda: P.preprocess_image(ex.image, self.half_size))

    def _example_target(self, ex: Example, labels: tuple[str, ...], colours: np.ndarray) -> Tensor:
        def make() -> Tensor:
            masks = P.masks_for_labels(ex.masks, labels, ex.image.shape[:2])
            return P.preprocess_target(P.colour_masks(masks, colours), self.half_size)

        return self._cached(("tgt", ex.id, labels, colours.tobytes()), make)

    def _learned_set(self, prompt: LearnedPrompt) -> PromptSet | None:
        """The learned prompt as a k = 1 set (cached by id), or ``None`` when its size is not
        this model's half size (a prompt tuned for other weights: ignored, with a warning)."""
        if prompt.size != tuple(self.half_size):
            log.warning(
                "learned prompt %s is %s, not this model's %s: ignored",
                prompt.id,
                prompt.size,
                self.half_size,
            )
            return None
        image = self._cached(("learned-img", prompt.id), lambda: torch.from_numpy(prompt.image.copy()))
        target = self._cached(("learned-tgt", prompt.id), lambda: torch.from_numpy(prompt.target.copy()))
        return PromptSet(image[None], target[None])

    def _prompt_set(
        self, examples: Sequence[Example], labels: tuple[str, ...], ensemble: EnsembleMode
    ) -> PromptSet:
        colours = P.palette(len(labels))
        if ensemble == "spatial" and len(examples) > 1:
            rgb = [
                P.colour_masks(P.masks_for_labels(e.masks, labels, e.image.shape[:2]), colours)
                for e in examples
            ]
            return self.prepare_prompts([e.image for e in examples], rgb, ensemble="spatial")
        if ensemble == "none":
            examples = examples[:1]
        return PromptSet(
            torch.stack([self._example_image(e) for e in examples]),
            torch.stack([self._example_target(e, labels, colours) for e in examples]),
        )

    def segment(
        self,
        requests: Sequence[SegmentRequest],
        *,
        ensemble: EnsembleMode = "feature",
        seg_type: SegType = "instance",
        multilabel: MultiLabelMode = "per-label",
    ) -> list[dict[str, MaskPrediction]]:
        """See :meth:`seggpt_backend.engine.interface.Engine.segment`.

        ``per-label``: one binary (white-on-black) pass per label with that label's examples.
        ``palette``: one pass per query; the union of the examples, each label in its colour.
        A label's learned prompt (``req.learned``) is the first item of its feature ensemble;
        such labels always get their own pass (a learned prompt is white-on-black).
        """
        jobs: list[tuple[int, tuple[str, ...], _Group]] = []
        for index, req in enumerate(requests):
            query = P.preprocess_image(req.query, self.half_size)
            labelled = {label: list(exs) for label, exs in req.examples.items() if exs}
            learned = {
                label: prepared
                for label, prompt in req.learned.items()
                if (prepared := self._learned_set(prompt)) is not None
            }
            plain = {label: exs for label, exs in labelled.items() if label not in learned}
            single = list(learned)
            if multilabel == "palette" and len(plain) > 1:
                labels = tuple(sorted(plain))
                union = _interleave_unique(list(plain.values()), max(map(len, plain.values())))
                group = _Group(query, self._prompt_set(union, labels, ensemble))
                jobs.append((index, labels, group))
            else:
                single = list(dict.fromkeys([*plain, *learned]))
            for label in single:
                exs = labelled.get(label, [])
                sets = [learned[label]] if label in learned else []
                if exs:
                    sets.append(self._prompt_set(exs, (label,), ensemble))
                prompts = sets[0] if len(sets) == 1 else sets[0] + sets[1]
                jobs.append((index, (label,), _Group(query, prompts)))
        self._run([g for _, _, g in jobs], seg_type)
        results: list[dict[str, MaskPrediction]] = [{} for _ in requests]
        for index, labels, group in jobs:
            size = requests[index].output_size
            assert group.result is not None
            if len(labels) == 1:
                decoded = {labels[0]: P.binary_from_painting(group.result, size)}
            else:
                decoded = P.palette_from_painting(group.result, size, P.palette(len(labels)), labels)
            for label, (soft, mask) in decoded.items():
                results[index][label] = MaskPrediction(soft, mask, P.mask_score(soft, mask))
        return results


def _interleave_unique(lists: list[list[Example]], limit: int) -> list[Example]:
    """Round-robin over the labels' example lists, without repeating an image, at most ``limit``."""
    chosen: dict[str, Example] = {}
    for row in itertools.zip_longest(*lists):
        for ex in row:
            if ex is not None and len(chosen) < limit:
                chosen.setdefault(ex.id, ex)
    return list(chosen.values())


def load_engine(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    download_dir: str | Path | None = None,
    **kwargs: object,
) -> SegGptEngine:
    """Shorthand for :meth:`SegGptEngine.from_spec`."""
    return SegGptEngine.from_spec(spec, device=device, dtype=dtype, download_dir=download_dir, **kwargs)
