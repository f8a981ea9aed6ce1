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
    with pytest.raises(PromptError, match="non-positive"):
        parse_context({"result": [_rect(1, 1, 0, 5)]}, TARGETS)


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((100, 200), bool)
    mask[10:40, 10:60] = True  # left blob: x 5-30 %, y 10-40 %
    mask[50:90, 120:180] = True  # right blob: x 60-90 %, y 50-90 %
    soft = np.where(mask, 0.9, 0.1).astype(np.float32)
    return mask, soft


def _prompt(points=(), boxes=()) -> Prompt:
    return Prompt("Cat", "tag", "image", tuple(points), tuple(boxes))


def test_positive_click_keeps_only_its_component() -> None:
    mask, soft = _two_blobs()
    out = refine(mask, soft, _prompt([(15.0, 20.0, True)]))
    assert out[10:40, 10:60].all() and not out[50:90, 120:180].any()


def test_negative_click_drops_its_component() -> None:
    mask, soft = _two_blobs()
    out = refine(mask, soft, _prompt([(75.0, 70.0, False)]))
    assert out[10:40, 10:60].all() and not out[50:90, 120:180].any()


def test_negative_click_inside_a_positive_component_cuts_it() -> None:
    mask, soft = _two_blobs()
    # Positive on the left end of the left blob, negative on its right end.
    out = refine(mask, soft, _prompt([(6.0, 25.0, True), (29.0, 25.0, False)]))
    assert out[25, 12] and not out[25, 58]
    assert not out[50:90, 120:180].any()


def test_positive_click_on_background_takes_the_weak_region() -> None:
    mask, soft = _two_blobs()
    soft[60:70, 20:30] = 0.4  # weak object the binary mask missed
    out = refine(mask, soft, _prompt([(12.5, 65.0, True)]))
    assert out[60:70, 20:30].all() and not out[10:40, 10:60].any()
    # A click on plain background adds nothing.
    assert not refine(mask, soft, _prompt([(50.0, 5.0, True)])).any()


def test_rectangle_restricts_fills_holes_and_falls_back() -> None:
    mask, soft = _two_blobs()
    mask[20:25, 20:25] = False  # hole inside the left blob
    out = refine(mask, soft, _prompt(boxes=[(0.0, 0.0, 40.0, 50.0)]))
    assert out[10:40, 10:60].all() and not out[50:, :].any()
    # An empty rectangle falls back to the rectangle itself (percent -> pixels).
    empty = refine(np.zeros_like(mask), np.zeros_like(soft), _prompt(boxes=[(50.0, 10.0, 10.0, 20.0)]))
    assert empty.sum() == 20 * 20 and empty[10:30, 100:120].all()


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        refine(np.zeros((4, 4), bool), np.zeros((4, 5), np.float32), _prompt())
