"""Label Studio results from engine masks (runs on a worker).

Label Studio results from engine masks, and the shared store of finished task results.

Region format (what Label Studio accepts for BrushLabels)::

    {"id": ..., "from_name": <BrushLabels name>, "to_name": <Image name>, "type": "brushlabels",
     "original_width": W, "original_height": H, "image_rotation": 0,
     "value": {"format": "rle", "rle": [...], "brushlabels": [label]}, "score": s}

``W``/``H`` are the displayed (EXIF-corrected) image size, which is the size of the decoded query
image, so the mask needs no further transform.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from seggpt_backend import masks
from seggpt_backend.engine.interface import MaskPrediction
from seggpt_backend.service.contract import TaskResult


def _region_id(task_id: int, from_name: str, label: str, index: int) -> str:
    # Deterministic ids: recomputing a task (retry, second worker) yields identical regions.
    return hashlib.sha1(f"{task_id}/{from_name}/{label}/{index}".encode()).hexdigest()[:10]


def brush_region(
    mask: np.ndarray,
    *,
    task_id: int,
    label: str,
    from_name: str,
    to_name: str,
    score: float,
    index: int = 0,
) -> dict[str, Any]:
    """One ``brushlabels`` region for an ``(H, W) bool`` mask (``original_width`` = W, height = H)."""
    from seggpt_backend.labelstudio import rle

    height, width = mask.shape
    return {
        "id": _region_id(task_id, from_name, label, index),
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": [int(v) for v in rle.encode(mask)], "brushlabels": [label]},
        "score": round(float(score), 4),
    }


# Calibration of region scores: expected IoU ~ slope * (mean soft value inside the region) +
# intercept, clipped to [0, 1]. A fit belongs to one set of weights: DEMO_CALIBRATION was fitted by
# ``bench/calibration.py --fit`` for the demo model (synthetic tasks, seeds disjoint from its
# evaluation set), whose raw mean sits at 0.90-0.99 whatever the IoU; the map keeps the ranking
# (Spearman unchanged) and puts the score in IoU units. Other weights keep the raw mean
# (IDENTITY) until fitted: a demo fit would squash ViT-L's scores. Refit with every new demo stage.
SCORE_SLOPE = 1.4974
SCORE_INTERCEPT = -1.0804
DEMO_CALIBRATION = (SCORE_SLOPE, SCORE_INTERCEPT)
IDENTITY = (1.0, 0.0)


def calibration_for(weights: str) -> tuple[float, float]:
    """The (slope, intercept) score map of a weights spec (``SEGGPT_WEIGHTS``)."""
    return DEMO_CALIBRATION if weights == "demo" else IDENTITY


@dataclass(frozen=True)
class RegionFilter:
    """How masks become regions: ``split_components`` (one region per connected part),
    ``threshold`` on the soft map in (0, 1) (0.5: the engine's own mask), and the speck filters
    ``min_area`` (pixels of the original image) and ``min_score`` (calibrated score, [0, 1]);
    ``calibration``: the weights' (slope, intercept) score map (:func:`calibration_for`)."""

    split_components: bool = False
    threshold: float = 0.5
    min_area: int = 0
    min_score: float = 0.0
    calibration: tuple[float, float] = DEMO_CALIBRATION


def calibrated_score(
    soft: np.ndarray, mask: np.ndarray, calibration: tuple[float, float] = DEMO_CALIBRATION
) -> float:
    """Expected IoU of ``mask`` (``(H, W) bool``) with the true object, from the soft map
    (``(H, W) float32`` in [0, 1]) and the weights' ``calibration`` (see
    :data:`DEMO_CALIBRATION`). 0 for an empty mask."""
    if not mask.any():
        return 0.0
    raw = float(np.clip(soft[mask].mean(), 0.0, 1.0))
    slope, intercept = calibration
    return float(np.clip(slope * raw + intercept, 0.0, 1.0))


def regions_for_label(
    prediction: MaskPrediction,
    *,
    task_id: int,
    label: str,
    from_name: str,
    to_name: str,
    filters: RegionFilter | None = None,
    split_components: bool | None = None,
    mask: np.ndarray | None = None,
    kind: str = "brush",
    polygon_tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """Regions for one label: one region, or one per connected component when splitting.

    ``mask`` overrides the mask (e.g. after interactive refinement); otherwise it is
    ``prediction.mask``, or ``soft > threshold`` for another threshold than 0.5. Each region's
    score is :func:`calibrated_score` (expected IoU). Regions below ``min_area`` pixels or
    ``min_score`` are dropped; empty masks give no region. ``split_components`` (legacy keyword)
    overrides ``filters.split_components``.
    """
    f = filters or RegionFilter()
    if split_components is not None:
        f = replace(f, split_components=split_components)
    soft = np.asarray(prediction.soft, dtype=np.float32)
    if mask is not None:
        final = np.asarray(mask, dtype=bool)
    elif f.threshold != 0.5 and soft.shape == prediction.mask.shape:
        final = soft > f.threshold
    else:
        final = np.asarray(prediction.mask, dtype=bool)
    if not final.any():
        return []
    if soft.shape != final.shape:
        soft = final.astype(np.float32)
    if kind == "polygon":  # a PolygonLabels control: one polygon per connected part
        polygons = polygon_regions(
            final,
            lambda part: calibrated_score(soft, part, f.calibration),
            task_id=task_id,
            label=label,
            from_name=from_name,
            to_name=to_name,
            tolerance=polygon_tolerance,
        )
        return [r for r in polygons if r["score"] >= f.min_score]
    parts = masks.split(final) if f.split_components else [final]
    out: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        score = calibrated_score(soft, part, f.calibration)
        if int(part.sum()) < f.min_area or score < f.min_score:
            continue  # a speck
        out.append(
            brush_region(
                part,
                task_id=task_id,
                label=label,
                from_name=from_name,
                to_name=to_name,
                score=score,
                index=i if f.split_components else 0,
            )
        )
    return out


def polygon_regions(
    mask: np.ndarray,
    score_of: Any,
    *,
    task_id: int,
    label: str,
    from_name: str,
    to_name: str,
    tolerance: float,
) -> list[dict[str, Any]]:
    """``polygonlabels`` regions for an ``(H, W) bool`` mask: one per connected part, outer
    boundary only (holes filled, see :mod:`seggpt_backend.labelstudio.polygon`), points in
    percent, simplified at ``tolerance`` pixels; ``score_of(part mask)`` gives each score."""
    from seggpt_backend.labelstudio import polygon

    height, width = mask.shape
    out: list[dict[str, Any]] = []
    for index, points in enumerate(polygon.mask_to_polygons(mask, tolerance=tolerance)):
        part = polygon.rasterize(points, int(width), int(height)) & mask
        out.append(
            {
                "id": _region_id(task_id, from_name, label, index),
                "from_name": from_name,
                "to_name": to_name,
                "type": "polygonlabels",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {"points": points, "polygonlabels": [label], "closed": True},
                "score": round(float(score_of(part)) if part.any() else 0.0, 4),
            }
        )
    return out


def prediction_result(regions: Sequence[Mapping[str, Any]], model_version: str) -> TaskResult:
    """One task's prediction: regions plus the prediction-level score (mean region score, 0 if none)."""
    scores = [float(r.get("score", 0.0)) for r in regions]
    return TaskResult(
        result=tuple(dict(r) for r in regions),
        score=round(sum(scores) / len(scores), 4) if scores else 0.0,
        model_version=model_version,
    )
