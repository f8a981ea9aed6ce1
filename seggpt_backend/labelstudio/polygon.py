"""Label Studio polygons <-> masks, and the mask of any segmentation region.

Coordinates
-----------
A ``polygonlabels`` region stores ``value.points`` as ``[[x, y], ...]`` in percent (0..100) of
the displayed image width and height, origin top-left, plus ``original_width`` /
``original_height`` (the displayed size ``W`` x ``H`` in pixels). Pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)`` in pixel units, so its centre is at percent
``((col + 0.5) / W * 100, (row + 0.5) / H * 100)``.

- :func:`rasterize`: a polygon (percent) -> ``(H, W) bool`` mask of the pixels whose centre lies
  inside or on the polygon (OpenCV's scan-line fill, edges included).
- :func:`mask_to_polygons`: a mask -> polygons in percent, through the centres of its boundary
  pixels (OpenCV's border following), simplified with Douglas-Peucker at ``tolerance`` pixels.
  Rasterising the result gives the mask back exactly for ``tolerance`` 0 (no holes).

Holes policy
------------
A Label Studio polygon is one simple ring: it cannot carry a hole, and a second region cannot
cut one out. Predictions therefore keep outer boundaries only: every connected part of a mask
becomes its own polygon and holes inside a part are filled. A mask with holes loses them (the
IoU cost is the holes' area); brush output keeps them. Parts whose simplified ring has fewer
than 3 vertices (specks of one or two pixels) are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SEGMENTATION_TYPES", "mask_to_polygons", "rasterize", "region_labels", "region_mask"]

SEGMENTATION_TYPES = ("brushlabels", "polygonlabels")
Points = list[list[float]]
_SHIFT = 8  # fractional bits of the fixed-point vertices given to cv2.fillPoly


def rasterize(points: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """The ``(height, width) bool`` mask of a polygon given in percent (see the module docstring).

    Fewer than 3 points, or non-finite coordinates, raise :class:`ValueError`.
    """
    import cv2

    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 [x, y] points, got {np.shape(points)}")
    if not np.isfinite(pts).all():
        raise ValueError("polygon points must be finite numbers")
    # OpenCV puts integer coordinates on pixel centres: percent -> pixel units, minus half a pixel,
    # in fixed point with 8 fractional bits (coordinates stored to 4 decimals of a percent
    # round back to the exact pixel centres they came from).
    xs = pts[:, 0] / 100.0 * width - 0.5
    ys = pts[:, 1] / 100.0 * height - 0.5
    fixed = np.round(np.column_stack([xs, ys]) * (1 << _SHIFT)).astype(np.int32)
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [fixed.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def mask_to_polygons(mask: np.ndarray, *, tolerance: float = 1.0) -> list[Points]:
    """Outer boundaries of an ``(H, W) bool`` mask as polygons in percent (holes filled, see above).

    ``tolerance``: the Douglas-Peucker distance in pixels (0 keeps every boundary pixel; 1 removes
    vertices that stray at most one pixel from the simplified ring). Polygons are ordered by
    first pixel (row-major), each listed clockwise in image coordinates.
    """
    import cv2

    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    height, width = mask.shape
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    rings: list[tuple[tuple[int, int], Points]] = []
    for contour in contours:
        ring = cv2.approxPolyDP(contour, float(tolerance), True) if tolerance > 0 else contour
        xy = ring.reshape(-1, 2).astype(np.float64)
        if len(xy) < 3:
            continue
        first = min((int(y), int(x)) for x, y in contour.reshape(-1, 2))
        pct = np.column_stack([(xy[:, 0] + 0.5) / width * 100.0, (xy[:, 1] + 0.5) / height * 100.0])
        rings.append((first, np.round(pct, 4).tolist()))
    rings.sort(key=lambda r: r[0])
    return [points for _, points in rings]


def region_labels(region: Mapping[str, Any]) -> tuple[str, ...]:
    """The labels of a ``brushlabels`` or ``polygonlabels`` region (empty for any other type)."""
    kind = str(region.get("type", "")).lower()
    if kind not in SEGMENTATION_TYPES:
        return ()
    value = region.get("value") or {}
    return tuple(str(x) for x in value.get(kind) or ())


def region_mask(region: Mapping[str, Any]) -> np.ndarray | None:
    """The ``(original_height, original_width) bool`` mask of a brush or polygon region.

    ``None`` for another region type or one without a usable size, RLE or points; a malformed
    RLE or polygon raises :class:`ValueError`.
    """
    from seggpt_backend.labelstudio import rle

    kind = str(region.get("type", "")).lower()
    width, height = region.get("original_width"), region.get("original_height")
    if (
        kind not in SEGMENTATION_TYPES
        or not isinstance(width, int | float)
        or not isinstance(height, int | float)
    ):
        return None
    if isinstance(width, bool) or isinstance(height, bool) or width < 1 or height < 1:
        return None
    value = region.get("value") or {}
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            return None
        return rle.decode([int(v) for v in value["rle"]], int(height), int(width)) >= 128
    points = value.get("points")
    if not points:
        return None
    return rasterize(points, int(width), int(height))
