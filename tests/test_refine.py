"""Interactive refinement: context parsing (captured request) and mask editing rules."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (_kp(101, 5), "x=101 is outside the image"),
        (_kp(5, -3), "y=-3 is outside the image"),
        (_rect(1, 1, 0, 5), "no area"),
        (_rect(90, 10, 20, 5), "leaves the image"),
        ({**_kp(5, 5), "to_name": "other_image"}, "on image 'other_image'"),
    ],
)
def test_bad_context_names_the_problem(item: dict, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_context({"result": [item]}, TARGETS)


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((100, 200), bool)
    mask[10:40, 10:60] = True  # left blob: x 5-30 %, y 10-40 %
    mask[50:90, 120:180] = True  # right blob: x 60-90 %, y 50-90 %
    soft = np.where(mask, 0.9, 0.1).astype(np.float32)
    return mask, soft


def _prompt(points=(), boxes=()) -> Prompt:
    return Prompt("Cat", "tag", "image", tuple(points), tuple(boxes))


class PaintedZoom:
    """A :class:`Zoom` over a known "true" soft map: returns its crop and records the calls
    (stands in for SegGPT seeing an object the whole-image pass missed)."""

    def __init__(self, truth: np.ndarray, side: float | None = 20.0) -> None:
        self.truth = truth
        self.side = side
        self.calls: list[list[tuple[int, int, int, int]]] = []

    def __call__(self, windows, fills):
        self.calls.append(list(windows))
        return [self.truth[r0:r1, c0:c1].copy() for r0, r1, c0, c1 in windows]

    def object_side(self):
        return self.side


def test_positive_click_on_the_mask_changes_nothing_and_needs_no_forward_pass() -> None:
    mask, soft = _two_blobs()
    zoom = PaintedZoom(soft)
    out = refine(mask, soft, _prompt([(15.0, 20.0, True)]), zoom=zoom)
    assert (out.mask == mask).all() and zoom.calls == [] and out.forward_passes == 0


def test_positive_click_on_a_weak_object_takes_its_soft_region_without_zooming() -> None:
    mask, soft = _two_blobs()
    soft[60:70, 20:30] = 0.4  # weak object the binary mask missed
    zoom = PaintedZoom(soft)
    out = refine(mask, soft, _prompt([(12.5, 65.0, True)]), zoom=zoom)
    assert out.mask[60:70, 20:30].all() and zoom.calls == []
    # The object is added to the label's mask: the other components stay.
    assert out.mask[10:40, 10:60].all() and out.mask[50:90, 120:180].all()


def test_positive_click_on_a_missed_object_recovers_it_by_zooming() -> None:
    mask, soft = _two_blobs()
    truth = soft.copy()
    truth[62:72, 80:95] = 0.95  # only the zoom sees this one
    zoom = PaintedZoom(truth)
    out = refine(mask, soft, _prompt([(43.0, 66.0, True)]), zoom=zoom)
    assert out.mask[62:72, 80:95].all() and out.forward_passes == 1
    assert out.mask.sum() == mask.sum() + 10 * 15  # nothing else added
    # Nothing anywhere: a note, and the mask is unchanged.
    out = refine(mask, soft, _prompt([(45.0, 5.0, True)]), zoom=PaintedZoom(soft))
    assert (out.mask == mask).all() and "no object found" in out.notes[0]


def test_rectangle_zooms_in_and_never_returns_a_filled_box() -> None:
    mask = np.zeros((100, 200), bool)
    soft = np.zeros((100, 200), np.float32)
    truth = soft.copy()
    truth[30:38, 110:116] = 0.9  # a small object inside the box
    zoom = PaintedZoom(truth)
    out = refine(mask, soft, _prompt(boxes=[(50.0, 20.0, 15.0, 30.0)]), zoom=zoom)
    assert out.mask.sum() == 8 * 6 and out.mask[30:38, 110:116].all()
    (window,) = zoom.calls[0]
    r0, r1, c0, c1 = window
    assert r0 <= 20 and r1 >= 50 and c0 <= 100 and c1 >= 130  # box plus margin
    # Nothing in the box: empty mask and a note, not the rectangle.
    empty = refine(mask, soft, _prompt(boxes=[(10.0, 10.0, 10.0, 20.0)]), zoom=PaintedZoom(soft))
    assert not empty.mask.any() and "nothing found inside the rectangle" in empty.notes[0]


def test_rectangle_keeps_only_what_lies_inside_it() -> None:
    mask, soft = _two_blobs()
    out = refine(mask, soft, _prompt(boxes=[(0.0, 0.0, 40.0, 50.0)]), zoom=PaintedZoom(soft))
    assert out.mask[10:40, 10:60].all() and not out.mask[50:, :].any()


def test_negative_click_drops_its_component_without_specks() -> None:
    mask, soft = _two_blobs()
    mask[40:42, 30] = True  # a thin weak tail hanging off the left blob
    soft[40:42, 30] = 0.2
    out = refine(mask, soft, _prompt([(15.0, 20.0, False)]))
    assert not out.mask[:45, :100].any() and out.mask[50:90, 120:180].all()


def test_negative_click_splits_a_merged_component_along_the_soft_valley() -> None:
    mask = np.zeros((60, 120), bool)
    mask[10:50, 10:110] = True  # one component...
    soft = np.where(mask, 0.9, 0.1).astype(np.float32)
    soft[10:50, 55:65] = 0.52  # ...made of two objects joined by a weak bridge
    out = refine(mask, soft, _prompt([(80.0, 50.0, False)]))
    assert out.mask[10:50, 10:55].all()  # the left object stays whole
    assert not out.mask[:, 65:].any()  # the clicked object is gone
    # Without a valley the whole component goes (a plain false positive).
    flat = refine(mask, np.where(mask, 0.9, 0.1).astype(np.float32), _prompt([(80.0, 50.0, False)]))
    assert not flat.mask.any()


def test_negative_click_inside_a_positive_component_cuts_it() -> None:
    mask, soft = _two_blobs()
    out = refine(mask, soft, _prompt([(6.0, 25.0, True), (29.0, 25.0, False)]))
    assert out.mask[25, 12] and not out.mask[25, 58]
    assert out.mask[50:90, 120:180].all()  # clicks add/remove locally; the rest stays


def test_clicks_and_boxes_combine_deterministically_in_any_order() -> None:
    mask, soft = _two_blobs()
    truth = soft.copy()
    truth[62:72, 80:95] = 0.95
    items = [(43.0, 66.0, True), (75.0, 70.0, False)]
    box = (0.0, 0.0, 100.0, 100.0)
    a = refine(mask, soft, _prompt(items, [box]), zoom=PaintedZoom(truth))
    b = refine(mask, soft, _prompt(items[::-1], [box]), zoom=PaintedZoom(truth))
    assert (a.mask == b.mask).all()
    assert a.mask[62:72, 80:95].all() and not a.mask[50:90, 120:180].any() and a.mask[10:40, 10:60].all()


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        refine(np.zeros((4, 4), bool), np.zeros((4, 5), np.float32), _prompt())


def test_readme_config_offers_smart_tools_that_parse_to_prompts() -> None:
    import re
    from pathlib import Path

    from seggpt_backend.service.contract import parse_targets

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    config = re.search(r"<View>.*?</View>", readme, re.S).group(0)  # type: ignore[union-attr]
    assert '<KeyPointLabels name="kp" toName="image" smart="true">' in config
    assert '<RectangleLabels name="box" toName="image" smart="true">' in config
    targets = parse_targets(config)
    prompt = parse_context({"result": [_kp(10, 10, "Dog"), _rect(5, 5, 20, 30, "Dog")]}, targets)
    assert prompt is not None and prompt.from_name == "tag" and prompt.label == "Dog"
