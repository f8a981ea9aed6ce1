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
