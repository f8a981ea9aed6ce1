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


def regions_for_label(
    prediction: MaskPrediction,
    *,
    task_id: int,
    label: str,
    from_name: str,
    to_name: str,
    split_components: bool,
    mask: np.ndarray | None = None,
    kind: str = "brush",
    polygon_tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """Regions for one label: one region, or one per connected component when ``split_components``.

    ``mask`` overrides ``prediction.mask`` (e.g. after interactive refinement). A component's score
    is the mean soft value inside it; the single region uses ``prediction.score`` unless the mask
    was overridden, in which case it is recomputed the same way. Empty masks give no region.
    """
    final = prediction.mask if mask is None else mask
    final = np.asarray(final, dtype=bool)
    if not final.any():
        return []
    soft = np.asarray(prediction.soft, dtype=np.float32)
    if soft.shape != final.shape:
        soft = final.astype(np.float32)

    def mean_soft(m: np.ndarray) -> float:
        return float(np.clip(soft[m].mean(), 0.0, 1.0))

    if kind == "polygon":  # a PolygonLabels control: one polygon per connected part
        return polygon_regions(
            final,
            mean_soft,
            task_id=task_id,
            label=label,
            from_name=from_name,
            to_name=to_name,
            tolerance=polygon_tolerance,
        )
    if not split_components:
        score = prediction.score if mask is None else mean_soft(final)
        return [
            brush_region(
                final, task_id=task_id, label=label, from_name=from_name, to_name=to_name, score=score
            )
        ]
    return [
        brush_region(
            part,
            task_id=task_id,
            label=label,
            from_name=from_name,
            to_name=to_name,
            score=mean_soft(part),
            index=i,
        )
        for i, part in enumerate(masks.split(final))
    ]


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
