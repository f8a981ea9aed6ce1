"""Connected components of binary masks, in numpy only (no scipy/OpenCV dependency).

Run-based labelling: each row's foreground runs are found vectorised, runs that touch runs of the
previous row are merged with a union-find, and labels are painted back with one ``np.repeat``.
Cost is linear in pixels (numpy) plus the number of runs (Python), which is small for the smooth
masks segmentation produces (a 2000x1500 blob mask has ~2000 runs).
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground runs of an ``(H, W) bool`` mask in row-major order: ``(row, start, end)``, end exclusive."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(diff == 1)
    _, ends = np.nonzero(diff == -1)
    return rows_s, starts, ends


def label(mask: np.ndarray, *, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label connected components of an ``(H, W) bool`` mask.

    Returns ``(labels, n)``: ``labels`` is ``(H, W) int32`` with 0 for background and ``1..n``
    for components, numbered in row-major order of their first pixel. ``connectivity`` is 4 or 8.
    """
    if mask.ndim != 2:
        raise ValueError(f"label() wants an (H, W) mask, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends = _runs(mask)
    n_runs = len(rows)
    out = np.zeros(mask.shape, dtype=np.int32)
    if n_runs == 0:
        return out, 0
    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    slack = 1 if connectivity == 8 else 0
    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    sl, el = starts.tolist(), ends.tolist()
    for r in range(1, mask.shape[0]):
        a0, a1 = int(row_first[r - 1]), int(row_first[r])  # runs of the previous row
        b0, b1 = a1, int(row_first[r + 1])  # runs of this row
        i, j = a0, b0
        while i < a1 and j < b1:
            # Overlap test on half-open intervals, widened by one pixel for diagonal contact.
            if sl[i] < el[j] + slack and sl[j] < el[i] + slack:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if el[i] < el[j]:
                i += 1
            else:
                j += 1
    roots = np.fromiter((find(i) for i in range(n_runs)), dtype=np.int64, count=n_runs)
    _, compact = np.unique(roots, return_inverse=True)
    # Roots are the smallest run index of their component, so compact ids follow first-pixel order.
    run_labels = (compact + 1).astype(np.int32)
    flat = out.reshape(-1)
    flat[mask.reshape(-1)] = np.repeat(run_labels, ends - starts)
    return out, int(run_labels.max())


def split(mask: np.ndarray, *, min_pixels: int = 1) -> list[np.ndarray]:
    """The connected components (8-connectivity) of ``mask`` as separate ``(H, W) bool`` masks.

    Components smaller than ``min_pixels`` are dropped; order is row-major by first pixel.
    """
    labels, n = label(mask)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [labels == i for i in range(1, n + 1) if sizes[i] >= min_pixels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region not connected to the border filled (4-connectivity)."""
    background, n = label(~np.asarray(mask, dtype=bool), connectivity=4)
    if n == 0:
        return np.asarray(mask, dtype=bool).copy()
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    outside = np.isin(background, border[border > 0])
    return ~outside
