"""Interactive refinement: turn an annotator's clicks and boxes into a mask, re-segmenting with SegGPT.

The prompt comes from the editor's smart-tool context (parsed on the server by
:func:`seggpt_backend.service.http.context.parse_context`; points and boxes in percent 0..100 of
the displayed image). The starting point is the label's suggestion: the binary ``mask`` and the
``soft`` map of the whole-image prediction (from the task cache when the batch computed it).
Masks are ``(H, W) bool`` and soft maps ``(H, W) float32`` in [0, 1], both in the original
image's pixel grid (row-major). :func:`refine` applies, in this order (so the answer does not
depend on the order of the context's items, and the same context gives the same mask):

1. **Rectangles: zoom in.** The query is cropped to the box plus a margin (squared up, so the
   model's square input is not distorted) and re-segmented at the model's full input size with
   the label's examples cropped around their own masks to a comparable scale (a :class:`Zoom`
   does that). Inside the box the soft map becomes the maximum of the zoomed and the
   whole-image maps; the answer is that map ``>= 0.5`` inside the box (components under a
   tenth of the largest dropped), else its weak region (``>= low``). Never the filled box: if
   nothing is found, the box contributes nothing and a note says so. With rectangles, the mask outside them is not
   kept (the annotator pointed at what they want).
2. **Positive clicks** on a pixel not yet in the mask recover the object there: first from the
   soft map around the click at the lower threshold ``low`` (no new forward pass), accepted when
   that component is bounded inside a window of a few object sizes; else a zoomed
   re-segmentation of windows around the click (1.5, 2, 3 and 4 object sizes, one batched
   engine call), taking the component under the click (at ``high``, else ``low``, else
   ``recover_floor``) in the smallest window whose border does not cut it. The component is
   added to the mask.
3. **Negative clicks** remove the component under them. If the soft map has a valley inside it
   (raising the threshold splits it into substantial pieces, one under the click), only the
   piece under the click is removed (pieces are grown back to the component's extent), which
   splits a merged component; a component that also holds a positive click is cut between the
   clicks if no valley separates them. Fragments of the component left under 5 % of its area
   are removed too (no specks).

Object size (for click windows) comes from the suggestion's components (the query's own
scale), else from the zoom's examples, else a quarter of the image's short side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from seggpt_backend import masks
from seggpt_backend.service.contract import Prompt

Window = tuple[int, int, int, int]  # r0, r1, c0, c1 in original pixels, end exclusive


class Zoom(Protocol):
    """Re-segmentation of parts of the query (see :mod:`seggpt_backend.service.jobs.zoom`)."""

    def __call__(self, windows: Sequence[Window], fills: Sequence[float]) -> list[np.ndarray]:
        """One soft map ``(r1 - r0, c1 - c0) float32`` in [0, 1] per window. ``fills[i]``: the
        fraction of the window's side the object is expected to span (examples are cropped so
        their object spans the same fraction)."""
        ...

    def object_side(self) -> float | None:
        """Typical object extent (pixels of the query's original grid) from the examples."""
        ...


@dataclass(frozen=True)
class RefineOptions:
    """``margin``: box margin per side, as a fraction of the box side; ``high``: the binary
    threshold (the authors' 0.5); ``low``: the recovery threshold; ``speck``: fragments under
    this fraction of their component are removed; ``split_thresholds``: the levels a negative
    click tries to split a component at; ``click_windows``: the zoom windows of a positive click,
    in object sizes; ``recover_floor``: the last threshold tried on a zoomed click window."""

    margin: float = 0.5
    high: float = 0.5
    low: float = 0.3
    speck: float = 0.05
    split_thresholds: tuple[float, ...] = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
    # Click windows in object sizes, all in one batched engine call; four sizes recover 18 % of
    # missed objects with the demo model against 12 % for (2, 4) (bench/results_refine.md).
    click_windows: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
    recover_floor: float = 0.2


@dataclass
class Refined:
    """The refined ``mask`` (``(H, W) bool``), the working ``soft`` map (zoomed maps pasted in)
    and ``notes`` for the answer's messages (nothing found in a box, a click that found nothing)."""

    mask: np.ndarray
    soft: np.ndarray
    notes: list[str] = field(default_factory=list)
    forward_passes: int = 0


def pixel(x_pct: float, y_pct: float, width: int, height: int) -> tuple[int, int]:
    """Percent coordinates -> (row, col) of the pixel containing that point, clamped to the image."""
    col = min(width - 1, max(0, int(np.floor(x_pct / 100.0 * width))))
    row = min(height - 1, max(0, int(np.floor(y_pct / 100.0 * height))))
    return row, col


def box_window(box: tuple[float, float, float, float], width: int, height: int) -> Window:
    """A percent box ``(x, y, w, h)`` -> pixel window ``(r0, r1, c0, c1)``, at least 1 x 1."""
    x, y, w, h = box
    c0 = min(width - 1, max(0, int(np.floor(x / 100.0 * width))))
    r0 = min(height - 1, max(0, int(np.floor(y / 100.0 * height))))
    c1 = min(width, max(c0 + 1, int(np.ceil((x + w) / 100.0 * width))))
    r1 = min(height, max(r0 + 1, int(np.ceil((y + h) / 100.0 * height))))
    return r0, r1, c0, c1


def square_window(cy: float, cx: float, side: float, height: int, width: int) -> Window:
    """A ``side`` x ``side`` window centred on ``(cy, cx)``, shifted (then clipped) into the image."""
    side_i = max(8, round(side))
    hh, ww = min(side_i, height), min(side_i, width)
    r0 = round(cy - hh / 2)
    c0 = round(cx - ww / 2)
    r0 = min(max(0, r0), height - hh)
    c0 = min(max(0, c0), width - ww)
    return r0, r0 + hh, c0, c0 + ww


def _sl(win: Window) -> tuple[slice, slice]:
    return slice(win[0], win[1]), slice(win[2], win[3])


def _touches_inner_border(comp: np.ndarray, win: Window, height: int, width: int) -> bool:
    """True if ``comp`` (window-local) touches a window edge that is not the image's edge."""
    r0, r1, c0, c1 = win
    return bool(
        (r0 > 0 and comp[0].any())
        or (r1 < height and comp[-1].any())
        or (c0 > 0 and comp[:, 0].any())
        or (c1 < width and comp[:, -1].any())
    )


def _component_near(region: np.ndarray, r: int, c: int, radius: float) -> np.ndarray | None:
    """The component of ``region`` under ``(r, c)``, else the nearest one within ``radius``."""
    labels, n = masks.label(region)
    if n == 0:
        return None
    if labels[r, c]:
        return labels == labels[r, c]
    rows, cols = np.nonzero(labels)
    d2 = (rows - r) ** 2 + (cols - c) ** 2
    i = int(np.argmin(d2))
    if d2[i] > radius**2:
        return None
    return labels == labels[rows[i], cols[i]]


def _components_side(mask: np.ndarray) -> float | None:
    """Median bounding-box extent of the mask's components bigger than 0.1 % of the image."""
    labels, n = masks.label(mask)
    if n == 0:
        return None
    minimum = max(4, mask.size // 1000)
    sides = []
    for i in range(1, n + 1):
        rows, cols = np.nonzero(labels == i)
        if len(rows) >= minimum:
            sides.append(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
    return float(np.median(sides)) if sides else None


def _grow(seeds: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Grow labelled ``seeds`` (int, 0 = none) through ``region`` (4-neighbour, geodesic);
    a pixel takes the first label that reaches it (the lowest label on ties)."""
    out = np.where(region, seeds, 0)
    for _ in range(region.shape[0] + region.shape[1]):
        free = region & (out == 0)
        if not free.any():
            break
        best = np.zeros_like(out)
        for shifted in (
            np.pad(out[1:], ((0, 1), (0, 0))),
            np.pad(out[:-1], ((1, 0), (0, 0))),
            np.pad(out[:, 1:], ((0, 0), (0, 1))),
            np.pad(out[:, :-1], ((0, 0), (1, 0))),
        ):
            take = (best == 0) | ((shifted > 0) & (shifted < best))
            best = np.where(take & (shifted > 0), shifted, best)
        new = free & (best > 0)
        if not new.any():
            break
        out[new] = best[new]
    return out


class _Refinement:
    """State of one :func:`refine` call (the working mask and soft map)."""

    def __init__(self, mask: np.ndarray, soft: np.ndarray, zoom: Zoom | None, options: RefineOptions) -> None:
        self.height, self.width = mask.shape
        self.suggestion = np.asarray(mask, dtype=bool)
        self.work = self.suggestion.copy()
        self.soft = np.asarray(soft, dtype=np.float32).copy()
        self.zoom = zoom
        self.o = options
        self.notes: list[str] = []
        self.passes = 0

    def _zoom(self, windows: Sequence[Window], fills: Sequence[float]) -> list[np.ndarray] | None:
        if self.zoom is None:
            return None
        self.passes += 1
        return self.zoom(windows, fills)

    # ------------------------------------------------------------------ rectangles
    def boxes(self, boxes: Sequence[tuple[float, float, float, float]]) -> None:
        result = np.zeros_like(self.work)
        for box in boxes:
            win = box_window(box, self.width, self.height)
            r0, r1, c0, c1 = win
            side = max(r1 - r0, c1 - c0) * (1 + 2 * self.o.margin)
            around = square_window((r0 + r1) / 2, (c0 + c1) / 2, side, self.height, self.width)
            fill = max(r1 - r0, c1 - c0) / max(1, max(around[1] - around[0], around[3] - around[2]))
            zoomed = self._zoom([around], [fill])
            inside = _sl(win)
            if zoomed is not None:
                a0, c_0 = around[0], around[2]
                # Union with the suggestion's evidence: the zoom sees small objects the whole
                # image blurred, the whole image keeps what a crop cuts off (bench/refine.py).
                self.soft[inside] = np.maximum(
                    self.soft[inside], zoomed[0][r0 - a0 : r1 - a0, c0 - c_0 : c1 - c_0]
                )
            found = self.soft[inside] >= self.o.high
            if not found.any():
                found = self.soft[inside] >= self.o.low
            found = self._main_parts(found)
            if not found.any():
                x, y, w, h = box
                self.notes.append(
                    f"nothing found inside the rectangle at x={x:.1f}%, y={y:.1f}%, {w:.1f} x {h:.1f}%"
                )
            result[inside] |= found
        self.work = result

    @staticmethod
    def _main_parts(found: np.ndarray) -> np.ndarray:
        labels, n = masks.label(found)
        if n <= 1:
            return found
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        keep = [i + 1 for i, s in enumerate(sizes) if s >= 0.1 * sizes.max()]
        return np.isin(labels, keep)

    # ------------------------------------------------------------------ positive clicks
    def object_side(self) -> float:
        side = _components_side(self.suggestion)
        if side is None and self.zoom is not None:
            side = self.zoom.object_side()
        return side if side else 0.25 * min(self.height, self.width)

    def positive(self, r: int, c: int, x: float, y: float) -> None:
        if self.work[r, c]:
            return
        side = self.object_side()
        comp = None
        if self.soft[r, c] >= self.o.low:  # the suggestion's weak region: no forward pass
            win = square_window(r, c, 3 * side, self.height, self.width)
            local, _ = masks.label(self.soft[_sl(win)] >= self.o.low)
            lc = local == local[r - win[0], c - win[2]]
            if not _touches_inner_border(lc, win, self.height, self.width) and lc.mean() < 0.5:
                comp = np.zeros_like(self.work)
                comp[_sl(win)] = lc
        if comp is None:
            comp = self._recover(r, c, side)
        if comp is None or not comp.any():
            self.notes.append(f"positive click at x={x:.1f}%, y={y:.1f}%: no object found there")
            return
        self.work |= comp

    def _recover(self, r: int, c: int, side: float) -> np.ndarray | None:
        factors = self.o.click_windows
        windows = [square_window(r, c, f * side, self.height, self.width) for f in factors]
        zoomed = self._zoom(windows, [1.0 / f for f in factors])
        if zoomed is None:
            return None
        chosen: tuple[Window, np.ndarray, np.ndarray] | None = None
        for win, zsoft in zip(windows, zoomed, strict=True):
            lr, lc = r - win[0], c - win[2]
            comp = None
            for t in (self.o.high, self.o.low, self.o.recover_floor):
                # At the click (1 pixel for rounding): a nearby other object is not what was meant.
                comp = _component_near(zsoft >= t, lr, lc, 1.0)
                if comp is not None:
                    break
            if comp is None:
                continue
            chosen = (win, comp, zsoft)
            if not _touches_inner_border(comp, win, self.height, self.width):
                break
        if chosen is None:
            return None
        win, comp, zsoft = chosen
        out = np.zeros_like(self.work)
        out[_sl(win)] = comp
        self.soft[_sl(win)] = np.where(comp, zsoft, self.soft[_sl(win)])
        return out

    # ------------------------------------------------------------------ negative clicks
    def negative(self, r: int, c: int, positives: Sequence[tuple[int, int]]) -> None:
        if not self.work[r, c]:
            return
        labels, _ = masks.label(self.work)
        comp_full = labels == labels[r, c]
        rows, cols = np.nonzero(comp_full)
        win = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
        sl = _sl(win)
        comp = comp_full[sl]
        soft = self.soft[sl]
        lr, lc = r - win[0], c - win[2]
        pos = [(pr - win[0], pc - win[2]) for pr, pc in positives if comp_full[pr, pc]]
        remove = self._split(comp, soft, (lr, lc), pos)
        if remove is None:
            remove = comp.copy() if not pos else self._cut(comp, (lr, lc), pos)
        left = comp & ~remove
        # No specks: fragments of this component that are tiny after the removal go as well.
        frag, n = masks.label(left)
        if n:
            sizes = np.bincount(frag.ravel(), minlength=n + 1)
            keep_pos = {int(frag[pr, pc]) for pr, pc in pos} - {0}
            tiny = [i for i in range(1, n + 1) if sizes[i] < self.o.speck * comp.sum() and i not in keep_pos]
            left &= ~np.isin(frag, tiny)
        self.work[sl] = np.where(comp, left, self.work[sl])

    def _split(
        self, comp: np.ndarray, soft: np.ndarray, neg: tuple[int, int], pos: Sequence[tuple[int, int]]
    ) -> np.ndarray | None:
        area = int(comp.sum())
        for t in self.o.split_thresholds:
            seeds, n = masks.label(comp & (soft >= t))
            if n < 2:
                continue
            sizes = np.bincount(seeds.ravel(), minlength=n + 1)
            big = [i for i in range(1, n + 1) if sizes[i] >= max(4, 0.05 * area)]
            if len(big) < 2:
                continue
            grown = _grow(np.where(np.isin(seeds, big), seeds, 0), comp)
            under = int(grown[neg])
            if under == 0 or any(int(grown[p]) == under for p in pos):
                continue
            kept = (grown > 0) & (grown != under)
            if kept.sum() < 0.15 * area:
                continue
            return comp & ~kept
        return None

    @staticmethod
    def _cut(comp: np.ndarray, neg: tuple[int, int], pos: Sequence[tuple[int, int]]) -> np.ndarray:
        """Pixels of ``comp`` closer to the negative click than to every positive one."""
        rows, cols = np.nonzero(comp)
        pix = np.stack([rows, cols], axis=1).astype(np.float64)
        d_neg = ((pix - np.array(neg, dtype=np.float64)) ** 2).sum(-1)
        d_pos = np.min(((pix[:, None, :] - np.array(pos, dtype=np.float64)[None]) ** 2).sum(-1), axis=1)
        out = np.zeros_like(comp)
        cut = d_neg < d_pos
        out[rows[cut], cols[cut]] = True
        return out


def refine(
    mask: np.ndarray,
    soft: np.ndarray,
    prompt: Prompt,
    *,
    zoom: Zoom | None = None,
    options: RefineOptions | None = None,
) -> Refined:
    """Apply ``prompt`` to the suggestion ``mask`` (``(H, W) bool``) with its ``soft`` map.

    ``zoom`` re-segments windows of the query (None: no new forward pass is possible, boxes and
    clicks use the suggestion and its soft map only). Rules in the module docstring.
    """
    if mask.shape != soft.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and soft {soft.shape} must be the same (H, W)")
    state = _Refinement(mask, soft, zoom, options or RefineOptions())
    height, width = mask.shape
    if prompt.boxes:
        state.boxes(prompt.boxes)
    pos = [(pixel(x, y, width, height), (x, y)) for x, y, p in prompt.points if p]
    neg = [pixel(x, y, width, height) for x, y, p in prompt.points if not p]
    for (r, c), (x, y) in pos:
        state.positive(r, c, x, y)
    for r, c in neg:
        state.negative(r, c, [rc for rc, _ in pos])
    return Refined(state.work, state.soft, state.notes, state.passes)
