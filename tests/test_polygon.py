"""Polygons <-> masks in Label Studio's percent coordinates, and polygon regions from masks."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend.engine.interface import MaskPrediction
from seggpt_backend.labelstudio import rle
from seggpt_backend.labelstudio.polygon import mask_to_polygons, rasterize, region_labels, region_mask
from seggpt_backend.service.jobs.regions import calibrated_score, regions_for_label


def _blobs(height: int = 60, width: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    ellipse = (yy - 30) ** 2 / 400 + (xx - 30) ** 2 / 300 < 1
    box = (yy > 5) & (yy < 15) & (xx > 60) & (xx < 75)
    return ellipse | box


def _union(polygons: list[list[list[float]]], width: int, height: int) -> np.ndarray:
    out = np.zeros((height, width), dtype=bool)
    for points in polygons:
        out |= rasterize(points, width, height)
    return out


def test_pixel_centre_convention() -> None:
    # The whole image (0..100 %) covers every pixel; a triangle over pixel centres keeps the
    # pixels whose centre lies inside or on it.
    assert rasterize([[0, 0], [100, 0], [100, 100], [0, 100]], 5, 4).all()
    tri = rasterize([[15, 15], [35, 15], [35, 35]], 10, 10)  # centres of (1,1), (1,3), (3,3)
    assert tri[1, 1:4].all() and tri[2, 2:4].all() and tri[3, 3]
    assert tri.sum() == 6


def test_contours_round_trip_exactly_at_tolerance_zero() -> None:
    mask = _blobs()
    polygons = mask_to_polygons(mask, tolerance=0)
    assert len(polygons) == 2  # one polygon per connected part, row-major by first pixel
    assert all(0 <= v <= 100 for points in polygons for xy in points for v in xy)
    assert np.array_equal(_union(polygons, 80, 60), mask)
    # The box (top right) starts on row 6, before the ellipse (row 11): it comes first.
    assert min(y for _, y in polygons[0]) < min(y for _, y in polygons[1])


def test_tolerance_trades_vertices_for_accuracy() -> None:
    mask = _blobs()
    counts, ious = [], []
    for tol in (0.0, 1.0, 3.0):
        polygons = mask_to_polygons(mask, tolerance=tol)
        back = _union(polygons, 80, 60)
        counts.append(sum(len(p) for p in polygons))
        ious.append((back & mask).sum() / (back | mask).sum())
    assert counts[0] > counts[1] > counts[2]
    assert ious[0] == 1.0 and ious[1] >= 0.95 and ious[2] >= 0.85


def test_holes_are_filled_and_specks_dropped() -> None:
    ring = np.zeros((40, 40), dtype=bool)
    ring[5:35, 5:35] = True
    ring[15:25, 15:25] = False  # a hole
    ring[38, 38] = True  # a one-pixel speck: no polygon of 3 vertices
    polygons = mask_to_polygons(ring, tolerance=0)
    assert len(polygons) == 1
    back = _union(polygons, 40, 40)
    filled = np.zeros_like(ring)
    filled[5:35, 5:35] = True
    assert np.array_equal(back, filled)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        rasterize([[0, 0], [10, 10]], 10, 10)
    with pytest.raises(ValueError, match="finite"):
        rasterize([[0, 0], [10, float("nan")], [5, 5]], 10, 10)
    with pytest.raises(ValueError, match="tolerance"):
        mask_to_polygons(np.ones((3, 3), bool), tolerance=-1)


def test_region_mask_reads_brush_and_polygon_regions() -> None:
    mask = _blobs()
    brush = {
        "type": "brushlabels",
        "original_width": 80,
        "original_height": 60,
        "value": {"format": "rle", "rle": rle.encode(mask), "brushlabels": ["Cat"]},
    }
    poly = {
        "type": "polygonlabels",
        "original_width": 80,
        "original_height": 60,
        "value": {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": ["Dog"]},
    }
    assert np.array_equal(region_mask(brush), mask)
    assert region_labels(brush) == ("Cat",) and region_labels(poly) == ("Dog",)
    got = region_mask(poly)
    assert got is not None and got.shape == (60, 80) and got[5, 30] and not got[25, 5]
    assert region_mask({"type": "rectanglelabels", "value": {}}) is None
    assert region_labels({"type": "choices", "value": {"choices": ["x"]}}) == ()


def test_polygon_target_gives_polygonlabels_regions() -> None:
    mask = _blobs()
    soft = np.where(mask, 0.9, 0.1).astype(np.float32)
    pred = MaskPrediction(mask=mask, soft=soft, score=0.9)
    regions = regions_for_label(
        pred,
        task_id=3,
        label="Cat",
        from_name="poly",
        to_name="image",
        split_components=False,
        kind="polygon",
        polygon_tolerance=0.0,
    )
    assert [r["type"] for r in regions] == ["polygonlabels", "polygonlabels"]
    for r in regions:
        assert r["value"]["polygonlabels"] == ["Cat"] and r["value"]["closed"] is True
        assert (r["original_width"], r["original_height"]) == (80, 60)
        assert r["score"] == pytest.approx(calibrated_score(soft, mask), abs=1e-3)
    assert len({r["id"] for r in regions}) == 2
    back = _union([r["value"]["points"] for r in regions], 80, 60)
    assert np.array_equal(back, mask)
