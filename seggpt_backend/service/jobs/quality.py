"""Measure a suggestion against the annotation accepted for it (runs on a worker).

The webhook handler only queues a :class:`~seggpt_backend.service.contract.QualityJob` (it must
answer within Label Studio's 1 s and decoding masks takes longer); the job reads the task from
the Label Studio API (its annotations and predictions), picks this backend's prediction the
annotation was made on, decodes both sides per label (brush RLE or polygons, see
:func:`seggpt_backend.labelstudio.polygon.region_mask`) and records a
:class:`~seggpt_backend.service.store.quality.Measurement`.

Which prediction: the annotation's ``parent_prediction`` when it is one of ours; otherwise our
most recent prediction of the task (highest id) created before the annotation was last updated,
falling back to our most recent one. Predictions of other model versions (other backends,
imports) are never measured. A cancelled (skipped) annotation is not measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from seggpt_backend.labelstudio.polygon import region_labels, region_mask
from seggpt_backend.service.store.examples import is_own_version
from seggpt_backend.service.store.quality import LabelQuality, Measurement

log = logging.getLogger(__name__)


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` at ``shape`` (nearest neighbour), for a prediction made at another image size."""
    if mask.shape == shape:
        return mask
    rows = (np.arange(shape[0]) * mask.shape[0] // shape[0]).clip(0, mask.shape[0] - 1)
    cols = (np.arange(shape[1]) * mask.shape[1] // shape[1]).clip(0, mask.shape[1] - 1)
    return mask[rows][:, cols]


def label_masks(result: Iterable[Any]) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """``({label: union mask}, {label: region scores})`` of a result's brush and polygon regions.

    Regions are keyed by label alone (the Image they lie on is not told apart: a project measured
    here has one segmentation control per Image in practice). Unreadable regions are skipped.
    """
    masks: dict[str, np.ndarray] = {}
    scores: dict[str, list[float]] = {}
    for region in result:
        if not isinstance(region, Mapping):
            continue
        labels = region_labels(region)
        if not labels:
            continue
        try:
            mask = region_mask(region)
        except (TypeError, ValueError) as exc:
            log.warning("region %s skipped: %s", region.get("id"), exc)
            continue
        if mask is None:
            continue
        for label in labels:
            masks[label] = masks[label] | _fit(mask, masks[label].shape) if label in masks else mask
            if isinstance(region.get("score"), int | float):
                scores.setdefault(label, []).append(float(region["score"]))
    return masks, scores


def compare(predicted: Iterable[Any], accepted: Iterable[Any]) -> tuple[LabelQuality, ...]:
    """Per label (sorted), the IoU of the predicted regions with the accepted ones.

    ``predicted``/``accepted``: Label Studio results (lists of regions). A label present on one
    side only has IoU 0; the predicted mask is compared at the accepted mask's size.
    """
    pred, scores = label_masks(predicted)
    true, _ = label_masks(accepted)
    out: list[LabelQuality] = []
    for label in sorted(set(pred) | set(true)):
        t = true.get(label)
        p = pred.get(label)
        if t is not None and p is not None:
            p = _fit(p, t.shape)
        inter = int(np.logical_and(p, t).sum()) if p is not None and t is not None else 0
        union = int(np.logical_or(p, t).sum()) if p is not None and t is not None else None
        p_px = 0 if p is None else int(p.sum())
        t_px = 0 if t is None else int(t.sum())
        if union is None:
            union = p_px + t_px
        label_scores = scores.get(label)
        out.append(
            LabelQuality(
                label=label,
                iou=round(inter / union, 6) if union else 1.0,
                score=round(sum(label_scores) / len(label_scores), 4) if label_scores else None,
                predicted_pixels=p_px,
                accepted_pixels=t_px,
            )
        )
    return tuple(out)


def our_prediction(annotation: Mapping[str, Any], predictions: Iterable[Any]) -> Mapping[str, Any] | None:
    """The prediction of this backend the annotation was made on (see the module docstring)."""
    ours = [
        p
        for p in predictions
        if isinstance(p, Mapping)
        and isinstance(p.get("id"), int)
        and is_own_version(str(p.get("model_version") or ""))
    ]
    if not ours:
        return None
    parent = annotation.get("parent_prediction")
    for p in ours:
        if parent is not None and p["id"] == parent:
            return p
    stamp = str(annotation.get("updated_at") or annotation.get("created_at") or "")
    before = [p for p in ours if stamp and str(p.get("created_at") or "") <= stamp]
    return max(before or ours, key=lambda p: int(p["id"]))


def measure(
    task: Mapping[str, Any], annotation_id: int, *, predictions: Iterable[Any] | None = None
) -> Measurement | None:
    """The :class:`Measurement` of ``annotation_id`` on ``task`` (as ``GET /api/tasks/{id}``
    returns it), or ``None`` when there is nothing to measure (annotation gone or cancelled, no
    prediction of ours). ``predictions`` overrides the task's own list."""
    annotation = next(
        (a for a in task.get("annotations") or [] if isinstance(a, Mapping) and a.get("id") == annotation_id),
        None,
    )
    if annotation is None or annotation.get("was_cancelled"):
        return None
    prediction = our_prediction(
        annotation, task.get("predictions") or [] if predictions is None else predictions
    )
    if prediction is None:
        return None
    labels = compare(prediction.get("result") or [], annotation.get("result") or [])
    if not labels:
        return None
    return Measurement(
        annotation_id=int(annotation_id),
        task_id=int(task["id"]),
        prediction_id=int(prediction["id"]),
        model_version=str(prediction.get("model_version") or ""),
        measured_at=time.time(),
        labels=labels,
    )
