"""Zoomed re-segmentation: SegGPT on a crop of the query, with examples cropped to a comparable scale.

A box or a click window covers a small part of the image; at the whole image's scale a small
object is a few pixels of the model's 448 x 448 (ViT-L) or 128 x 128 (demo) input, which is why
the one-shot suggestion blurs or misses it. :class:`ZoomSegmenter` crops the query to the window
and runs the engine on the crop (resized to the model's full input size by the engine), with
each example cropped around its own largest object so that object spans the same fraction of
the crop as the annotator's object is expected to span of the window (``fill``). Windows are in
the query's original pixel grid ``(r0, r1, c0, c1)``; the decoded pixels may be smaller (JPEG
draft decoding) and are cropped at the matching scale. The soft map comes back at the window's
original size. Zoomed maps are kept in the :class:`~seggpt_backend.service.store.taskcache.TaskCache`
so the same context needs no new forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from seggpt_backend import masks
from seggpt_backend.engine.interface import Engine, Example, LearnedPrompt, SegmentRequest
from seggpt_backend.service.jobs.refine import Window
from seggpt_backend.service.store.taskcache import TaskCache, decode_soft, encode_soft


def _largest_box(mask: np.ndarray) -> Window | None:
    """Bounding box ``(r0, r1, c0, c1)`` of the largest 8-connected component (None if empty)."""
    labels, n = masks.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    rows, cols = np.nonzero(labels == int(np.argmax(sizes[1:]) + 1))
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def crop_example(example: Example, label: str, fill: float) -> Example:
    """``example`` cropped to a square around its largest ``label`` object, which then spans
    ``fill`` (0..1] of the crop's side; the whole example when its mask is empty."""
    mask = np.asarray(example.masks.get(label, np.zeros(example.image.shape[:2], bool)), dtype=bool)
    box = _largest_box(mask)
    if box is None:
        return example
    r0, r1, c0, c1 = box
    h, w = mask.shape
    side = max(r1 - r0, c1 - c0) / max(fill, 1e-3)
    hh, ww = min(h, max(8, round(side))), min(w, max(8, round(side)))
    top = min(max(0, round((r0 + r1) / 2 - hh / 2)), h - hh)
    left = min(max(0, round((c0 + c1) / 2 - ww / 2)), w - ww)
    sl = (slice(top, top + hh), slice(left, left + ww))
    return Example(
        id=f"{example.id}#crop{top},{left},{hh},{ww}",
        image=np.ascontiguousarray(example.image[sl]),
        masks={label: mask[sl]},
    )


@dataclass
class ZoomSegmenter:
    """The :class:`~seggpt_backend.service.jobs.refine.Zoom` of one interactive job.

    ``source`` returns ``(pixels (h, w, 3) uint8, examples, learned prompt or None)`` on first
    use (downloads and example choice happen only when a zoom is needed). ``size``: the query's
    original ``(H, W)``. ``cache_key``: ``(project, version, task_id)`` for the task cache.
    ``engine_kwargs``: ``ensemble``/``seg_type`` as for the whole-image prediction.
    """

    engine: Engine
    label: str
    size: tuple[int, int]
    source: Callable[[], tuple[np.ndarray, Sequence[Example], LearnedPrompt | None]]
    cache: TaskCache | None = None
    cache_key: tuple[str, str, int] | None = None
    engine_kwargs: dict[str, str] = field(default_factory=dict)
    forward_passes: int = 0
    _loaded: tuple[np.ndarray, Sequence[Example], LearnedPrompt | None] | None = field(
        default=None, init=False
    )

    def _load(self) -> tuple[np.ndarray, Sequence[Example], LearnedPrompt | None]:
        if self._loaded is None:
            self._loaded = self.source()
        return self._loaded

    def object_side(self) -> float | None:
        """Median extent of the examples' largest objects, scaled to the query's short side."""
        _, examples, _ = self._load()
        ratios = []
        for ex in examples:
            box = _largest_box(np.asarray(ex.masks.get(self.label, np.zeros((1, 1), bool)), dtype=bool))
            if box is not None:
                ratios.append(max(box[1] - box[0], box[3] - box[2]) / min(ex.image.shape[:2]))
        if not ratios:
            return None
        return float(np.median(ratios)) * min(self.size)

    def __call__(self, windows: Sequence[Window], fills: Sequence[float]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(windows)
        if self.cache is not None and self.cache_key is not None:
            project, version, task_id = self.cache_key
            for i, win in enumerate(windows):
                out[i] = self.cache.get_zoom(project, version, task_id, self.label, win)
        todo = [i for i, soft in enumerate(out) if soft is None]
        if todo:
            pixels, examples, learned = self._load()
            requests = [self._request(pixels, examples, learned, windows[i], fills[i]) for i in todo]
            if any(r.examples or r.learned for r in requests):
                self.forward_passes += 1
                predictions = self.engine.segment(requests, **self.engine_kwargs)  # type: ignore[arg-type]
            else:
                predictions = [{} for _ in requests]
            for i, pred in zip(todo, predictions, strict=True):
                r0, r1, c0, c1 = windows[i]
                got = pred.get(self.label)
                soft = got.soft if got is not None else np.zeros((r1 - r0, c1 - c0), np.float32)
                if self.cache is not None and self.cache_key is not None and got is not None:
                    raw = encode_soft(soft)
                    self.cache.put_raw(self.cache.zoom_key(*self.cache_key, self.label, windows[i]), raw)
                    soft = decode_soft(raw)  # answer what later calls will read: deterministic
                out[i] = soft
        return [np.asarray(s, dtype=np.float32) for s in out]

    def _request(
        self,
        pixels: np.ndarray,
        examples: Sequence[Example],
        learned: LearnedPrompt | None,
        window: Window,
        fill: float,
    ) -> SegmentRequest:
        r0, r1, c0, c1 = window
        height, width = self.size
        sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
        pr0, pc0 = int(np.floor(r0 * sy)), int(np.floor(c0 * sx))
        pr1 = max(pr0 + 1, int(np.ceil(r1 * sy)))
        pc1 = max(pc0 + 1, int(np.ceil(c1 * sx)))
        crop = np.ascontiguousarray(pixels[pr0:pr1, pc0:pc1])
        cropped = [crop_example(ex, self.label, fill) for ex in examples]
        # A learned prompt was tuned at the whole-image scale: used only when it is the only prompt.
        extra = {self.label: learned} if learned is not None and not cropped else {}
        return SegmentRequest(
            query=crop,
            examples={self.label: cropped} if cropped else {},
            size=(r1 - r0, c1 - c0),
            learned=extra,
        )
