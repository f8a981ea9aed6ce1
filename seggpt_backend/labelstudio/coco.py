"""Label Studio brush annotations to COCO instance segmentation with exact RLE masks.

Label Studio's own "BRUSH_TO_COCO" export traces polygons around the brush masks, which loses
holes, splits multi-part masks and reports polygon areas. Here every brush region is decoded
(:mod:`seggpt_backend.labelstudio.rle`) and stored as a compressed COCO RLE
(``pycocotools.mask.encode``), so the exported mask is the painted mask, pixel for pixel.

Input: tasks as in Label Studio's JSON export, ``[{"id": 1, "data": {"image": "/data/..."},
"annotations": [{"result": [region, ...]}], "predictions": [{"result": [...], "score": s}]}]``,
where a brush region is ``{"type": "brushlabels", "original_width": W, "original_height": H,
"value": {"format": "rle", "rle": [ints 0..255], "brushlabels": ["Cat"]}, "score": s}``.
``W`` x ``H`` is the displayed image size (after EXIF orientation) in pixels; it becomes the
COCO image ``width``/``height``. A pixel belongs to a region when its decoded alpha is > 0.

Output coordinates are COCO's: pixels, origin top-left, ``bbox = [x, y, w, h]`` with ``w``/``h``
counting whole pixels; ``area`` is the pixel count of the mask.

Choice of source per task: for ``"annotations"``, the ground-truth annotation if one is marked,
else the last non-cancelled one; for ``"predictions"``, the last prediction. Regions that cannot
be used (not a brush region, bad RLE, size mismatch, empty mask, unknown label) are skipped,
logged and listed in ``coco["info"]["skipped"]``: one bad region never fails the export.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from seggpt_backend.labelstudio import rle as brush_rle

__all__ = ["tasks_to_coco", "tasks_to_coco_results"]

logger = logging.getLogger(__name__)


class _Skip(Exception):
    """A region (or task) that cannot be exported; the message says why."""


def _pick_result(task: Mapping[str, Any], use: str) -> tuple[list[Any], float | None]:
    """The region list of the chosen annotation/prediction and its prediction-level score."""
    items = task.get(use) or []
    if not isinstance(items, list):
        raise _Skip(f"task field {use!r} is not a list")
    items = [it for it in items if isinstance(it, Mapping) and not it.get("was_cancelled")]
    if not items:
        return [], None
    chosen = items[-1]
    if use == "annotations":
        chosen = next((it for it in reversed(items) if it.get("ground_truth")), chosen)
    result = chosen.get("result") or []
    if not isinstance(result, list):
        raise _Skip(f"{use[:-1]} 'result' is not a list")
    score = chosen.get("score")
    return result, float(score) if isinstance(score, int | float) else None


def _region_label(region: Mapping[str, Any]) -> str:
    value = region.get("value")
    if not isinstance(value, Mapping):
        raise _Skip("region has no 'value' object")
    names = value.get("brushlabels", value.get("labels"))
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise _Skip("brush region has no label in value.brushlabels")
    return names[0]


def _region_mask(region: Mapping[str, Any], size: tuple[int, int] | None) -> np.ndarray:
    """Decode one brush region to an ``(H, W) bool`` mask, checking it against the image size."""
    if str(region.get("type", "")).lower() != "brushlabels":
        raise _Skip(f"region type {region.get('type')!r} is not brushlabels")
    value = region["value"]
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise _Skip(f"brush region format {value.get('format')!r} has no 'rle' list")
    h, w = region.get("original_height"), region.get("original_width")
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        raise _Skip(f"region lacks a positive original_width/original_height (got {w!r} x {h!r})")
    if size is not None and (h, w) != size:
        raise _Skip(f"region size {w} x {h} differs from the image size {size[1]} x {size[0]}")
    try:
        mask = brush_rle.decode(value["rle"], h, w) > 0
    except (TypeError, ValueError) as exc:
        raise _Skip(f"bad brush RLE: {exc}") from None
    if not mask.any():
        raise _Skip("empty mask")
    return mask


def _mask_and_label(region: object, size: tuple[int, int] | None) -> tuple[np.ndarray, str]:
    """A brush region's decoded mask and its label; raises :class:`_Skip` when unusable."""
    if not isinstance(region, Mapping):
        raise _Skip("region is not an object")
    return _region_mask(region, size), _region_label(region)


def _image_size(task: Mapping[str, Any], regions: list[Any]) -> tuple[int, int] | None:
    """(H, W) of the image: from the chosen regions, else from any region of the task."""
    others = [
        region
        for field in ("annotations", "predictions")
        for item in (task.get(field) or [])
        if isinstance(item, Mapping) and isinstance(item.get("result"), list)
        for region in item["result"]
    ]
    for region in [*regions, *others]:
        if isinstance(region, Mapping):
            h, w = region.get("original_height"), region.get("original_width")
            if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
                return h, w
    return None


def _file_name(task: Mapping[str, Any]) -> str:
    data = task.get("data")
    if not isinstance(data, Mapping):
        return ""
    image = data.get("image")
    if isinstance(image, str):
        return image
    return next((v for v in data.values() if isinstance(v, str)), "")


def _encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO fields of one ``(H, W) bool`` mask: compressed RLE (counts as str), area, bbox."""
    from pycocotools import mask as mask_utils  # C extension; imported only when exporting

    encoded = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y, x = int(rows[0]), int(cols[0])
    return {
        "segmentation": {
            "size": [int(mask.shape[0]), int(mask.shape[1])],
            "counts": encoded["counts"].decode("ascii"),
        },
        "area": int(np.count_nonzero(mask)),
        "bbox": [x, y, int(cols[-1]) - x + 1, int(rows[-1]) - y + 1],
    }


def _parts(mask: np.ndarray, split_components: bool) -> Iterator[np.ndarray]:
    if not split_components:
        yield mask
        return
    # 8-connectivity, as in OpenCV's contours: diagonal neighbours belong to one object.
    from seggpt_backend.masks import label

    labels, n = label(mask, connectivity=8)
    for i in range(1, n + 1):
        yield labels == i


def _task_regions(
    tasks: Sequence[Mapping[str, Any]], use: str, skipped: list[dict[str, Any]]
) -> Iterator[tuple[int, Mapping[str, Any], tuple[int, int] | None, list[Any], float | None]]:
    """Per usable task: (index, task, image size (H, W) or None, regions, prediction score)."""
    for index, task in enumerate(tasks):
        task_id = task.get("id") if isinstance(task, Mapping) else None
        try:
            if not isinstance(task, Mapping):
                raise _Skip(f"task is a {type(task).__name__}, not an object")
            regions, score = _pick_result(task, use)
        except _Skip as exc:
            _note(skipped, task_id, None, str(exc))
            continue
        yield index, task, _image_size(task, regions), regions, score


def _note(skipped: list[dict[str, Any]], task_id: Any, region_id: Any, reason: str) -> None:
    logger.warning("COCO export skips task %r region %r: %s", task_id, region_id, reason)
    skipped.append({"task": task_id, "region": region_id, "reason": reason})


def tasks_to_coco(
    tasks: Sequence[Mapping[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    use: Literal["annotations", "predictions"] = "annotations",
    split_components: bool = False,
) -> dict[str, Any]:
    """Build a COCO instance-segmentation dataset from Label Studio tasks.

    ``labels``: category names in id order (ids 1..n); default: the labels found, sorted.
    Regions whose label is not in ``labels`` are skipped. ``use``: which task field supplies
    the regions (predictions also carry a ``score`` per annotation). ``split_components``: one
    annotation per 8-connected component instead of one per region.

    Returns a JSON-serialisable dict with ``images`` (``id``, ``file_name``, ``width``,
    ``height``, ``ls_task_id``), ``annotations`` (RLE ``segmentation`` with str ``counts``,
    ``area``, ``bbox`` ints, ``iscrowd`` 0), ``categories`` and ``info`` (with ``skipped``).
    Image ids are the task ids when they are unique ints, else 1..n in task order;
    ``file_name`` is the task's ``data.image`` exactly as Label Studio stores it (URL or path).
    """
    if use not in ("annotations", "predictions"):
        raise ValueError(f"use must be 'annotations' or 'predictions', got {use!r}")
    skipped: list[dict[str, Any]] = []
    found = list(_task_regions(tasks, use, skipped))
    task_ids = [task.get("id") for _, task, _, _, _ in found]
    unique_ints = all(type(t) is int for t in task_ids) and len(set(task_ids)) == len(task_ids)

    # (task id, region id, image id, label, mask, score) of every decodable region
    decoded: list[tuple[Any, Any, int, str, np.ndarray, Any]] = []
    images: list[dict[str, Any]] = []
    for n, (_, task, size, regions, pred_score) in enumerate(found, start=1):
        task_id = task.get("id")
        if size is None:
            _note(skipped, task_id, None, "image size unknown: no region carries original_width/height")
            continue
        image_id = int(task_id) if unique_ints and task_id is not None else n
        images.append(
            {
                "id": image_id,
                "file_name": _file_name(task),
                "width": size[1],
                "height": size[0],
                "ls_task_id": task_id,
            }
        )
        for region in regions:
            region_id = region.get("id") if isinstance(region, Mapping) else None
            try:
                mask, name = _mask_and_label(region, size)
            except _Skip as exc:
                _note(skipped, task_id, region_id, str(exc))
                continue
            score = region.get("score", pred_score)
            decoded.append((task_id, region_id, image_id, name, mask, score))

    names = list(labels) if labels is not None else sorted({d[3] for d in decoded})
    category_id = {name: i for i, name in enumerate(names, start=1)}
    annotations: list[dict[str, Any]] = []
    for task_id, region_id, image_id, name, mask, score in decoded:
        if name not in category_id:
            _note(skipped, task_id, region_id, f"label {name!r} is not in the label list")
            continue
        for part in _parts(mask, split_components):
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id[name],
            }
            ann.update(_encode(part))
            ann["iscrowd"] = 0
            if use == "predictions" and isinstance(score, int | float):
                ann["score"] = float(score)
            annotations.append(ann)

    return {
        "info": {
            "description": f"Label Studio brush {use} exported as COCO RLE by seggpt-backend",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
            "skipped": skipped,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in category_id.items()],
    }


def tasks_to_coco_results(
    tasks: Sequence[Mapping[str, Any]], coco: Mapping[str, Any], *, split_components: bool = False
) -> list[dict[str, Any]]:
    """COCO results (for ``COCO.loadRes`` / ``COCOeval``) from the tasks' predictions.

    ``coco``: the ground-truth dataset from :func:`tasks_to_coco`; tasks are matched to its
    images by ``ls_task_id`` and labels to its categories by name. Each brush region of the
    last prediction gives one result (one per component with ``split_components``):
    ``image_id``, ``category_id``, ``segmentation`` (RLE, str counts), ``area``, ``bbox``,
    ``score`` (region ``score``, else the prediction's, else 1.0). Regions that do not fit
    (unknown task or label, size unlike the image, bad RLE) are skipped and logged.
    """
    image_by_task = {img.get("ls_task_id"): img for img in coco.get("images", [])}
    category_id = {cat["name"]: cat["id"] for cat in coco.get("categories", [])}
    skipped: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for _, task, _, regions, pred_score in _task_regions(tasks, "predictions", skipped):
        task_id = task.get("id")
        image = image_by_task.get(task_id)
        if image is None:
            if regions:
                _note(skipped, task_id, None, "task is not among the COCO images")
            continue
        size = (int(image["height"]), int(image["width"]))
        for region in regions:
            region_id = region.get("id") if isinstance(region, Mapping) else None
            try:
                mask, name = _mask_and_label(region, size)
                if name not in category_id:
                    raise _Skip(f"label {name!r} is not a COCO category")
            except _Skip as exc:
                _note(skipped, task_id, region_id, str(exc))
                continue
            score = region.get("score", pred_score)
            for part in _parts(mask, split_components):
                res = {"image_id": image["id"], "category_id": category_id[name]}
                res.update(_encode(part))
                res["score"] = float(score) if isinstance(score, int | float) else 1.0
                results.append(res)
    return results
