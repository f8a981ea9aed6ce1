"""Interactive refinement: context parsing (captured request) and mask editing rules."""

from __future__ import annotations

import numpy as np
import pytest

from seggpt_backend import masks
from seggpt_backend.service.contract import Prompt, Target
from seggpt_backend.service.errors import PromptError
from seggpt_backend.service.http.context import parse_context
from seggpt_backend.service.jobs.refine import refine
from tests.service_support import captured

TARGETS = [Target("tag", "image", "image", ("Cat", "Dog"))]


def _kp(x: float, y: float, label: str = "Cat", positive: bool | None = None) -> dict:
    item = {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }
    if positive is not None:
        item["is_positive"] = positive
    return item


def _rect(x: float, y: float, w: float, h: float, label: str = "Cat") -> dict:
    return {
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "image",
        "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [label]},
    }


def test_captured_context_parses_to_a_positive_click() -> None:
    context = captured("predict_interactive")["params"]["context"]
    prompt = parse_context(context, TARGETS)
    assert prompt == Prompt("Cat", "tag", "image", ((30.0, 40.0, True),), ())
    assert Prompt.from_json(prompt.to_json()) == prompt


def test_context_variants_and_errors() -> None:
    assert parse_context(None, TARGETS) is None
    assert parse_context({"result": []}, TARGETS) is None
    assert parse_context({"result": [{"type": "brushlabels", "value": {}}]}, TARGETS) is None
    p = parse_context(
        {"result": [_kp(10, 10, positive=False), _rect(5, 5, 20, 30), _kp(1, 1, "Dog")]}, TARGETS
    )
    assert p is not None and p.label == "Dog" and p.points == ((1.0, 1.0, True),) and p.boxes == ()
    p = parse_context({"result": [_kp(10, 10, positive=False), _rect(5, 5, 20, 30)]}, TARGETS)
    assert p is not None and p.points == ((10.0, 10.0, False),) and p.boxes == ((5.0, 5.0, 20.0, 30.0),)
    with pytest.raises(PromptError, match="'Bird'"):
        parse_context({"result": [_kp(1, 1, "Bird")]}, TARGETS)
    with pytest.raises(PromptError, match="non-numeric"):
        parse_context({"result": [_kp("a", 1)]}, TARGETS)  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="no area"):
        parse_context({"result": [_rect(1, 1, 0, 5)]}, TARGETS)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (_kp(101.0, 5.0), "x=101 is outside the image"),
        (_kp(5.0, -3.0), "y=-3 is outside the image"),
        (_rect(10, 10, 0, 0), "no area"),
        (_rect(80, 10, 30, 10), "leaves the image"),
        ({**_kp(5.0, 5.0), "to_name": "other"}, "bind the smart tool to the same image"),
    ],
)
def test_bad_context_is_a_readable_prompt_error(item: dict, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_context({"result": [item]}, TARGETS)


def test_float_noise_at_the_edge_is_clamped_not_rejected() -> None:
    p = parse_context({"result": [_rect(90.0, 0.0, 10.0004, 100.0)]}, TARGETS)
    assert p is not None and p.boxes == ((90.0, 0.0, 10.0, 100.0),)


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((100, 200), bool)
    mask[10:40, 10:60] = True  # left blob: x 5-30 %, y 10-40 %
    mask[50:90, 120:180] = True  # right blob: x 60-90 %, y 50-90 %
    soft = np.where(mask, 0.9, 0.1).astype(np.float32)
    return mask, soft


def _prompt(points=(), boxes=()) -> Prompt:
    return Prompt("Cat", "tag", "image", tuple(points), tuple(boxes))


class FakeZoom:
    """A stand-in SegGPT for zoomed windows: ``truth`` is what the model sees when zoomed in
    (soft 0.9 on it, 0.05 elsewhere); counts calls like the real segmenter's forward passes."""

    def __init__(self, truth: np.ndarray, side: float | None = 20.0) -> None:
        self.truth = truth
        self.side = side
        self.calls: list[list[tuple[int, int, int, int]]] = []

    def __call__(self, windows, fills):
        self.calls.append(list(windows))
        return [
            np.where(self.truth[r0:r1, c0:c1], 0.9, 0.05).astype(np.float32) for r0, r1, c0, c1 in windows
        ]

    def object_side(self) -> float | None:
        return self.side


def test_positive_click_inside_the_mask_changes_nothing() -> None:
    mask, soft = _two_blobs()
    out = refine(mask, soft, _prompt([(15.0, 20.0, True)]))
    assert (out.mask == mask).all() and out.notes == [] and out.forward_passes == 0


def test_negative_click_drops_its_component() -> None:
    mask, soft = _two_blobs()
    out = refine(mask, soft, _prompt([(75.0, 70.0, False)])).mask
    assert out[10:40, 10:60].all() and not out[50:90, 120:180].any()


def test_negative_click_inside_a_positive_component_cuts_it() -> None:
    mask, soft = _two_blobs()
    # Positive on the left end of the left blob, negative on its right end.
    out = refine(mask, soft, _prompt([(6.0, 25.0, True), (29.0, 25.0, False)])).mask
    assert out[25, 12] and not out[25, 58]
    assert out[50:90, 120:180].all()  # the other blob is untouched


def test_negative_click_splits_a_merged_component_along_the_soft_valley_without_specks() -> None:
    mask = np.zeros((60, 120), bool)
    mask[10:50, 10:110] = True  # two objects merged into one component
    soft = np.where(mask, 0.95, 0.05).astype(np.float32)
    soft[10:50, 55:65] = 0.52  # the valley between them: above 0.5, below the split levels
    out = refine(mask, soft, _prompt([(80.0, 50.0, False)])).mask  # on the right object
    assert out[10:50, 10:55].all()  # the left object stays whole
    assert not out[:, 66:].any()  # the right object is gone, no speck left over
    _, n = masks.label(out)
    assert n == 1


def test_positive_click_on_background_takes_the_weak_region_without_a_forward_pass() -> None:
    mask, soft = _two_blobs()
    soft[60:70, 20:30] = 0.4  # weak object the binary mask missed
    zoom = FakeZoom(np.zeros_like(mask))
    out = refine(mask, soft, _prompt([(12.5, 65.0, True)]), zoom=zoom)
    assert out.mask[60:70, 20:30].all() and out.mask[10:40, 10:60].all()
    assert zoom.calls == [] and out.forward_passes == 0


def test_positive_click_on_a_missed_object_recovers_it_by_zooming() -> None:
    mask, soft = _two_blobs()
    truth = np.zeros_like(mask)
    truth[70:80, 40:52] = True  # invisible at the whole-image scale (soft stays 0.1 there)
    zoom = FakeZoom(truth)
    out = refine(mask, soft, _prompt([(23.0, 75.0, True)]), zoom=zoom)
    assert out.mask[70:80, 40:52].all() and out.mask[10:40, 10:60].all() and out.mask[50:90, 120:180].all()
    assert out.mask.sum() == mask.sum() + truth.sum()
    assert len(zoom.calls) == 1 and out.forward_passes == 1
    # Nothing there even when zoomed: the mask is unchanged and a note says so.
    nothing = refine(mask, soft, _prompt([(23.0, 5.0, True)]), zoom=FakeZoom(np.zeros_like(mask)))
    assert (nothing.mask == mask).all() and "no object found" in nothing.notes[0]


def test_rectangle_zooms_in_and_never_returns_the_filled_box() -> None:
    mask, soft = _two_blobs()
    truth = np.zeros_like(mask)
    truth[70:76, 30:36] = True  # a small object the suggestion missed
    zoom = FakeZoom(truth)
    out = refine(mask, soft, _prompt(boxes=[(10.0, 60.0, 15.0, 25.0)]), zoom=zoom)  # rows 60-85, cols 20-50
    assert (out.mask == truth).all() and len(zoom.calls) == 1
    # The zoom window is the box plus a margin, squared up.
    ((r0, r1, c0, c1),) = zoom.calls[0]
    assert r0 <= 60 and r1 >= 85 and c0 <= 20 and c1 >= 50 and r1 - r0 == c1 - c0
    # An empty rectangle: nothing, and a note (no filled box).
    empty = refine(
        np.zeros_like(mask),
        np.zeros_like(soft),
        _prompt(boxes=[(50.0, 10.0, 10.0, 20.0)]),
        zoom=FakeZoom(np.zeros_like(mask)),
    )
    assert not empty.mask.any() and "nothing found inside the rectangle" in empty.notes[0]
    # Without a zoom the box keeps the suggestion inside it.
    plain = refine(mask, soft, _prompt(boxes=[(0.0, 0.0, 40.0, 50.0)]))
    assert plain.mask[10:40, 10:60].all() and not plain.mask[50:, :].any()


def test_boxes_and_clicks_combine_and_the_order_of_the_context_does_not_matter() -> None:
    mask, soft = _two_blobs()
    truth = np.zeros_like(mask)
    truth[70:76, 30:36] = True
    points = [(16.5, 73.0, True), (75.0, 70.0, False)]
    boxes = [(0.0, 0.0, 40.0, 50.0), (60.0, 50.0, 30.0, 40.0)]
    a = refine(mask, soft, _prompt(points, boxes), zoom=FakeZoom(truth)).mask
    b = refine(mask, soft, _prompt(points[::-1], boxes[::-1]), zoom=FakeZoom(truth)).mask
    assert (a == b).all()
    assert a[10:40, 10:60].all()  # kept by the first box
    assert not a[50:90, 120:180].any()  # kept by the second box, removed by the negative click
    assert a[70:76, 30:36].all()  # recovered by the positive click


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        refine(np.zeros((4, 4), bool), np.zeros((4, 5), np.float32), _prompt())
