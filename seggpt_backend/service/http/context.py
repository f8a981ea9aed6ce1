"""The editor's smart-tool context (``params.context``) as a :class:`~seggpt_backend.service.contract.Prompt`.

Label Studio sends ``params.context = {"result": [...]}`` with the regions the annotator just drew:

- keypoints (``type: keypointlabels``): ``value.x``/``value.y`` in **percent** of the displayed
  image (0..100), ``is_positive`` false for a negative (alt-) click, absent/true otherwise;
- rectangles (``type: rectanglelabels``): ``value.x/y/width/height`` in percent.

The label of the most recent context item is the label to answer with, on the BrushLabels control
that owns it. How the prompt edits the mask is :func:`seggpt_backend.service.jobs.refine.refine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seggpt_backend.service.contract import Prompt, Target
from seggpt_backend.service.errors import PromptError

EPS = 1e-3  # percent: float noise of the editor's coordinates at the image edge


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise PromptError(f"context region has a non-numeric {name!r}: {value!r}")
    return float(value)


def _percent(value: Any, name: str, where: str) -> float:
    v = _num(value, name)
    if not -EPS <= v <= 100 + EPS:
        raise PromptError(f"{where}: {name}={v:g} is outside the image (coordinates are percent, 0..100)")
    return min(100.0, max(0.0, v))


def parse_context(context: Mapping[str, Any] | None, targets: Sequence[Target]) -> Prompt | None:
    """Build a :class:`Prompt` from ``params.context``; ``None`` when it holds no keypoint/rectangle.

    Raises :class:`PromptError` (the answer is a 422 naming the region; nothing of the task is
    touched) when the context is malformed: its label belongs to no BrushLabels control, a
    coordinate is outside 0..100, a rectangle has no area or leaves the image, or a region is on
    another image than the BrushLabels control of its label.
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
    with_label = [t for t in targets if label in t.labels]
    if not with_label:
        known = sorted({lab for t in targets for lab in t.labels})
        raise PromptError(f"label {label!r} of the smart tool is not a BrushLabels label (known: {known})")
    owners = [t for t in with_label if to_name is None or t.to_name == to_name]
    if not owners:
        images = sorted({t.to_name for t in with_label})
        raise PromptError(
            f"the smart tool's region is on image {to_name!r}, but label {label!r} is a brush label "
            f"of image(s) {images}: bind the smart tool to the same image (toName) as the BrushLabels"
        )
    target = owners[0]
    points: list[tuple[float, float, bool]] = []
    boxes: list[tuple[float, float, float, float]] = []
    for kind, item_label, item in usable:
        if item_label != label:
            continue
        value = item["value"]
        if item.get("to_name") not in (None, target.to_name):
            raise PromptError(
                f"context {kind} region {item.get('id', '?')!r} is on image {item.get('to_name')!r}, "
                f"not {target.to_name!r} where label {label!r} is drawn"
            )
        where = f"context {kind} region {item.get('id', '?')!r}"
        x, y = _percent(value.get("x"), "x", where), _percent(value.get("y"), "y", where)
        if kind == "keypointlabels":
            positive = item.get("is_positive", value.get("is_positive", True))
            points.append((x, y, positive is not False))
        else:
            w, h = _num(value.get("width"), "width"), _num(value.get("height"), "height")
            if w <= 0 or h <= 0:
                raise PromptError(f"{where}: the rectangle has no area ({w:g} x {h:g} percent)")
            if x + w > 100 + EPS or y + h > 100 + EPS:
                raise PromptError(
                    f"{where}: the rectangle x={x:g}..{x + w:g}, y={y:g}..{y + h:g} leaves the image "
                    "(coordinates are percent, 0..100)"
                )
            boxes.append((x, y, min(w, 100.0 - x), min(h, 100.0 - y)))
    return Prompt(label, target.from_name, target.to_name, tuple(points), tuple(boxes))
