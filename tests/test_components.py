"""Connected components against a brute-force flood fill."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seggpt_backend.masks import fill_holes, label, split


def _flood(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    h, w = mask.shape
    out = np.zeros((h, w), np.int32)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    n = 0
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not out[y, x]:
                n += 1
                stack = [(y, x)]
                out[y, x] = n
                while stack:
                    a, b = stack.pop()
                    for dy, dx in steps:
                        c, d = a + dy, b + dx
                        if 0 <= c < h and 0 <= d < w and mask[c, d] and not out[c, d]:
                            out[c, d] = n
                            stack.append((c, d))
    return out, n


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 14), st.integers(1, 14))), st.sampled_from([4, 8]))
def test_label_matches_flood_fill(mask: np.ndarray, connectivity: int) -> None:
    got, n = label(mask, connectivity=connectivity)
    want, m = _flood(mask, connectivity)
    assert n == m
    assert np.array_equal(got, want)


def test_diagonal_contact_depends_on_connectivity() -> None:
    mask = np.array([[1, 0], [0, 1]], bool)
    assert label(mask, connectivity=8)[1] == 1
    assert label(mask, connectivity=4)[1] == 2
    with pytest.raises(ValueError):
        label(mask, connectivity=6)


def test_split_and_fill_holes() -> None:
    mask = np.zeros((10, 12), bool)
    mask[1:8, 1:6] = True
    mask[3:5, 2:4] = False  # a hole
    mask[2:4, 8:11] = True
    parts = split(mask)
    assert [p.sum() for p in parts] == [31, 6]
    assert split(mask, min_pixels=7)[0].sum() == 31
    filled = fill_holes(mask)
    assert filled.sum() == mask.sum() + 4 and filled[3:5, 2:4].all()
    border_gap = np.ones((5, 5), bool)
    border_gap[2, 0:3] = False  # background touching the border stays background
    assert not fill_holes(border_gap)[2, 1]
