"""Interactive refinement: turn the editor's smart-tool context into a prompt and apply it to a mask.

Label Studio sends ``params.context = {"result": [...]}`` with the regions the annotator just drew:

- keypoints (``type: keypointlabels``): ``value.x``/``value.y`` in **percent** of the displayed
  image (0..100), ``is_positive`` false for a negative (alt-) click, absent/true otherwise;
- rectangles (``type: rectanglelabels``): ``value.x/y/width/height`` in percent.

The label of the most recent context item is the label to answer with; the answer is one brush
region of the BrushLabels control that owns that label. SegGPT predicts the label from the
project's examples, then :func:`refine` edits the binary mask in pixel space:

1. Rectangles: keep only what lies inside a rectangle. A rectangle where the model found nothing
   takes the model's low-confidence region (``soft >= low``) inside it, else the whole rectangle
   (the annotator asserted an object there); holes in what is kept are filled.
2. Positive clicks: keep only the connected components under a positive click. A positive click
   on background adds the low-confidence component under it, if any.
3. Negative clicks: drop the component under the click; if that component also holds a positive
   click, remove only the pixels closer to the negative click(s) than to the positive one(s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seggpt_backend.service import components
from seggpt_backend.service.contract import Prompt, Target


class PromptError(ValueError):
    """The interactive context cannot be answered (e.g. its label has no BrushLabels control)."""


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise PromptError(f"context region has a non-numeric {name!r}: {value!r}")
    return float(value)


def parse_context(context: Mapping[str, Any] | None, targets: Sequence[Target]) -> Prompt | None:
    """Build a :class:`Prompt` from ``params.context``; ``None`` when it holds no keypoint/rectangle.

    Raises :class:`PromptError` with a readable message when the context is malformed or its label
    belongs to no BrushLabels control of the config.
    """
    if not context:
        return None
    items = context.get("result") if isinstance(context, Mapping) else None
    if not isinstance(items, list):
        return None
    usable: list[tuple[str, str, Mapping[str, Any]]] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        value = item.get("value")
        if not isinstance(value, Mapping):
            raise PromptError(f"context {kind} region has no 'value' object")
        labels = value.get(kind) or []
        if not labels:
            raise PromptError(f"context {kind} region carries no label in value.{kind}")
        usable.append((kind, str(labels[0]), item))
    if not usable:
        return None
    label = usable[-1][1]
    to_name = usable[-1][2].get("to_name")
    owners = [t for t in targets if label in t.labels and (to_name is None or t.to_name == to_name)]
    if not owners:
        owners = [t for t in targets if label in t.labels]
    if not owners:
        known = sorted({lab for t in targets for lab in t.labels})
        raise PromptError(f"label {label!r} of the smart tool is not a BrushLabels label (known: {known})")
    target = owners[0]
    points: list[tuple[float, float, bool]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for kind, item_label, item in usable:
        if item_label != label:
            continue
        value = item["value"]
        x, y = _num(value.get("x"), "x"), _num(value.get("y"), "y")
        if kind == "keypointlabels":
            positive = item.get("is_positive", value.get("is_positive", True))
            points.append((x, y, positive is not False))
        else:
            w, h = _num(value.get("width"), "width"), _num(value.get("height"), "height")
            if w <= 0 or h <= 0:
                raise PromptError(f"context rectangle has a non-positive size {w} x {h} (percent)")
            boxes.append((x, y, w, h))
    return Prompt(label, target.from_name, target.to_name, tuple(points), tuple(boxes))


def _pixel(x_pct: float, y_pct: float, width: int, height: int) -> tuple[int, int]:
    """Percent coordinates -> (row, col) of the pixel containing that point, clamped to the image."""
    col = min(width - 1, max(0, int(np.floor(x_pct / 100.0 * width))))
    row = min(height - 1, max(0, int(np.floor(y_pct / 100.0 * height))))
    return row, col


def _box_slices(box: tuple[float, float, float, float], width: int, height: int) -> tuple[slice, slice]:
    x, y, w, h = box
    c0 = min(width - 1, max(0, int(np.floor(x / 100.0 * width))))
    r0 = min(height - 1, max(0, int(np.floor(y / 100.0 * height))))
    c1 = min(width, max(c0 + 1, int(np.ceil((x + w) / 100.0 * width))))
    r1 = min(height, max(r0 + 1, int(np.ceil((y + h) / 100.0 * height))))
    return slice(r0, r1), slice(c0, c1)


def refine(mask: np.ndarray, soft: np.ndarray, prompt: Prompt, *, low: float = 0.25) -> np.ndarray:
    """Apply ``prompt`` to the model's ``(H, W) bool`` mask; ``soft`` is its ``(H, W)`` [0, 1] map.

    Returns a new ``(H, W) bool`` mask (rules in the module docstring).
    """
    if mask.shape != soft.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and soft {soft.shape} must be the same (H, W)")
    height, width = mask.shape
    work = np.asarray(mask, dtype=bool).copy()
    allowed = np.ones_like(work)
    if prompt.boxes:
        allowed[:] = False
        for box in prompt.boxes:
            allowed[_box_slices(box, width, height)] = True
        work &= allowed
        for box in prompt.boxes:
            sl = _box_slices(box, width, height)
            if not work[sl].any():
                weak = soft[sl] >= low
                work[sl] = weak if weak.any() else True
        work = components.fill_holes(work) & allowed

    pos = [_pixel(x, y, width, height) for x, y, p in prompt.points if p]
    neg = [_pixel(x, y, width, height) for x, y, p in prompt.points if not p]
    for r, c in pos:
        if not work[r, c] and soft[r, c] >= low:
            weak_labels, _ = components.label((soft >= low) & allowed)
            work |= weak_labels == weak_labels[r, c]

    labels, n = components.label(work)
    if n == 0:
        return work
    keep = {int(labels[r, c]) for r, c in pos} - {0} if pos else set(range(1, n + 1))
    result = np.isin(labels, sorted(keep))
    for comp in {int(labels[r, c]) for r, c in neg} - {0}:
        if comp not in keep:
            continue
        comp_pos = [(r, c) for r, c in pos if labels[r, c] == comp]
        if not comp_pos:
            result[labels == comp] = False
            continue
        comp_neg = np.array([(r, c) for r, c in neg if labels[r, c] == comp], dtype=np.float64)
        rows, cols = np.nonzero(labels == comp)
        pix = np.stack([rows, cols], axis=1).astype(np.float64)
        d_neg = np.min(((pix[:, None, :] - comp_neg[None]) ** 2).sum(-1), axis=1)
        d_pos = np.min(((pix[:, None, :] - np.array(comp_pos, dtype=np.float64)[None]) ** 2).sum(-1), axis=1)
        cut = d_neg < d_pos
        result[rows[cut], cols[cut]] = False
    if pos:
        # A cut can split a component: keep only the pieces still under a positive click.
        relabelled, _ = components.label(result)
        keep_after = {int(relabelled[r, c]) for r, c in pos} - {0}
        result = np.isin(relabelled, sorted(keep_after))
    return result
