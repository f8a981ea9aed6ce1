"""Interactive refinement: apply an annotator's clicks and boxes to the mask SegGPT predicted.

The prompt comes from the editor's smart-tool context (parsed on the server by
:func:`seggpt_backend.service.http.context.parse_context`; points and boxes in percent of the
displayed image). SegGPT predicts the prompt's label from the project's examples, then
:func:`refine` edits the binary mask in pixel space:

1. Rectangles: keep only what lies inside a rectangle. A rectangle where the model found nothing
   takes the model's low-confidence region (``soft >= low``) inside it, else the whole rectangle
   (the annotator asserted an object there); holes in what is kept are filled.
2. Positive clicks: keep only the connected components under a positive click. A positive click
   on background adds the low-confidence component under it, if any.
3. Negative clicks: drop the component under the click; if that component also holds a positive
   click, remove only the pixels closer to the negative click(s) than to the positive one(s).
"""

from __future__ import annotations

import numpy as np

from seggpt_backend import masks
from seggpt_backend.service.contract import Prompt


def _pixel(x_pct: float, y_pct: float, width: int, height: int) -> tuple[int, int]:
    """Percent coordinates -> (row, col) of the pixel containing that point, clamped to the image."""
    col = min(width - 1, max(0, int(np.floor(x_pct / 100.0 * width))))
    row = min(height - 1, max(0, int(np.floor(y_pct / 100.0 * height))))
    return row, col


def _box_slices(box: tuple[float, float, float, float], width: int, height: int) -> tuple[slice, slice]:
    x, y, w, h = box
    c0 = min(width - 1, max(0, int(np.floor(x / 100.0 * width))))
    r0 = min(height - 1, max(0, int(np.floor(y / 100.0 * height))))
    c1 = min(width, max(c0 + 1, int(np.ceil((x + w) / 100.0 * width))))
    r1 = min(height, max(r0 + 1, int(np.ceil((y + h) / 100.0 * height))))
    return slice(r0, r1), slice(c0, c1)


def refine(mask: np.ndarray, soft: np.ndarray, prompt: Prompt, *, low: float = 0.25) -> np.ndarray:
    """Apply ``prompt`` to the model's ``(H, W) bool`` mask; ``soft`` is its ``(H, W)`` [0, 1] map.

    Returns a new ``(H, W) bool`` mask (rules in the module docstring).
    """
    if mask.shape != soft.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and soft {soft.shape} must be the same (H, W)")
    height, width = mask.shape
    work = np.asarray(mask, dtype=bool).copy()
    allowed = np.ones_like(work)
    if prompt.boxes:
        allowed[:] = False
        for box in prompt.boxes:
            allowed[_box_slices(box, width, height)] = True
        work &= allowed
        for box in prompt.boxes:
            sl = _box_slices(box, width, height)
            if not work[sl].any():
                weak = soft[sl] >= low
                work[sl] = weak if weak.any() else True
        work = masks.fill_holes(work) & allowed

    pos = [_pixel(x, y, width, height) for x, y, p in prompt.points if p]
    neg = [_pixel(x, y, width, height) for x, y, p in prompt.points if not p]
    for r, c in pos:
        if not work[r, c] and soft[r, c] >= low:
            weak_labels, _ = masks.label((soft >= low) & allowed)
            work |= weak_labels == weak_labels[r, c]

    labels, n = masks.label(work)
    if n == 0:
        return work
    keep = {int(labels[r, c]) for r, c in pos} - {0} if pos else set(range(1, n + 1))
    result = np.isin(labels, sorted(keep))
    for comp in {int(labels[r, c]) for r, c in neg} - {0}:
        if comp not in keep:
            continue
        comp_pos = [(r, c) for r, c in pos if labels[r, c] == comp]
        if not comp_pos:
            result[labels == comp] = False
            continue
        comp_neg = np.array([(r, c) for r, c in neg if labels[r, c] == comp], dtype=np.float64)
        rows, cols = np.nonzero(labels == comp)
        pix = np.stack([rows, cols], axis=1).astype(np.float64)
        d_neg = np.min(((pix[:, None, :] - comp_neg[None]) ** 2).sum(-1), axis=1)
        d_pos = np.min(((pix[:, None, :] - np.array(comp_pos, dtype=np.float64)[None]) ** 2).sum(-1), axis=1)
        cut = d_neg < d_pos
        result[rows[cut], cols[cut]] = False
    if pos:
        # A cut can split a component: keep only the pieces still under a positive click.
        relabelled, _ = masks.label(result)
        keep_after = {int(relabelled[r, c]) for r, c in pos} - {0}
        result = np.isin(relabelled, sorted(keep_after))
    return result
