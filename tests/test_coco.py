"""COCO-RLE export of Label Studio brush tasks, read back with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seggpt_backend.labelstudio.coco import tasks_to_coco, tasks_to_coco_results
from tests.service_support import brush_region

H1, W1 = 30, 41  # image of task 11 (odd sizes on purpose)
H2, W2 = 24, 17  # image of task 12


def _ring() -> np.ndarray:
    yy, xx = np.mgrid[:H1, :W1]
    d2 = (yy - 14) ** 2 + (xx - 12) ** 2
    return (d2 < 10**2) & (d2 >= 4**2)  # a disc with a hole


def _two_parts() -> np.ndarray:
    mask = np.zeros((H1, W1), bool)
    mask[2:8, 27:38] = True
    mask[20:28, 30:35] = True
    return mask


def _rect() -> np.ndarray:
    mask = np.zeros((H2, W2), bool)
    mask[5:, 0:9] = True  # touches the left and bottom borders
    return mask


def _tasks(pred_masks: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Two tasks as in Label Studio's JSON export; predictions repeat the annotations."""
    gt1 = [brush_region("a", _ring(), "Cat"), brush_region("b", _two_parts(), "Dog")]
    gt2 = [brush_region("c", _rect(), "Cat")]
    preds = pred_masks or {"a": _ring(), "b": _two_parts(), "c": _rect()}
    pr1 = [brush_region("a", preds["a"], "Cat", score=0.9), brush_region("b", preds["b"], "Dog", score=0.8)]
    pr2 = [brush_region("c", preds["c"], "Cat", score=0.7)]
    return [
        {
            "id": 11,
            "data": {"image": "/data/upload/1/abc-one.png"},
            "annotations": [
                {"id": 1, "result": [brush_region("old", _rect()[:1, :1], "Cat")], "was_cancelled": True},
                {"id": 2, "result": gt1, "was_cancelled": False, "ground_truth": False},
            ],
            "predictions": [{"id": 5, "result": pr1, "score": 0.85, "model_version": "v1"}],
        },
        {
            "id": 12,
            "data": {"image": "/data/upload/1/def-two.jpg"},
            "annotations": [{"id": 3, "result": gt2}],
            "predictions": [{"id": 6, "result": pr2, "score": 0.7, "model_version": "v1"}],
        },
    ]


def _load(coco: dict[str, Any], tmp_path: Path) -> COCO:
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _source_masks() -> dict[tuple[int, str], list[np.ndarray]]:
    return {(11, "Cat"): [_ring()], (11, "Dog"): [_two_parts()], (12, "Cat"): [_rect()]}


def test_export_round_trips_masks_exactly(tmp_path: Path) -> None:
    coco = tasks_to_coco(_tasks())
    api = _load(coco, tmp_path)

    assert {c["name"]: c["id"] for c in coco["categories"]} == {"Cat": 1, "Dog": 2}
    images = {img["id"]: img for img in api.loadImgs(api.getImgIds())}
    assert images[11]["width"] == W1 and images[11]["height"] == H1
    assert images[12]["width"] == W2 and images[12]["height"] == H2
    assert images[11]["file_name"] == "/data/upload/1/abc-one.png"

    anns = api.loadAnns(api.getAnnIds())
    assert len(anns) == 3  # the cancelled annotation is ignored
    names = {c["id"]: c["name"] for c in coco["categories"]}
    source = _source_masks()
    for ann in anns:
        expected = source[(ann["image_id"], names[ann["category_id"]])][0]
        mask = api.annToMask(ann).astype(bool)
        assert np.array_equal(mask, expected)  # holes and both parts survive
        rows, cols = np.nonzero(expected)
        assert ann["area"] == expected.sum()
        assert ann["bbox"] == [
            cols.min(),
            rows.min(),
            cols.max() - cols.min() + 1,
            rows.max() - rows.min() + 1,
        ]
        assert ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["segmentation"]["size"] == list(expected.shape)
    assert coco["info"]["skipped"] == []


def test_split_components_gives_one_annotation_per_part(tmp_path: Path) -> None:
    coco = tasks_to_coco(_tasks(), split_components=True)
    api = _load(coco, tmp_path)
    dog = [a for a in api.loadAnns(api.getAnnIds(catIds=[2]))]
    assert len(dog) == 2
    parts = [api.annToMask(a).astype(bool) for a in dog]
    assert not (parts[0] & parts[1]).any()
    assert np.array_equal(parts[0] | parts[1], _two_parts())
    ring = api.loadAnns(api.getAnnIds(imgIds=[11], catIds=[1]))
    assert len(ring) == 1 and np.array_equal(api.annToMask(ring[0]).astype(bool), _ring())


def test_labels_fix_category_ids_and_filter_regions() -> None:
    coco = tasks_to_coco(_tasks(), labels=["Dog", "Bird"])
    assert coco["categories"] == [
        {"id": 1, "name": "Dog", "supercategory": ""},
        {"id": 2, "name": "Bird", "supercategory": ""},
    ]
    assert [a["category_id"] for a in coco["annotations"]] == [1]
    reasons = [s["reason"] for s in coco["info"]["skipped"]]
    assert reasons == ["label 'Cat' is not in the label list"] * 2


def test_ground_truth_annotation_wins_and_predictions_carry_scores() -> None:
    tasks = _tasks()
    tasks[0]["annotations"].insert(
        0, {"id": 9, "result": [brush_region("g", _rect_in_image1(), "Dog")], "ground_truth": True}
    )
    coco = tasks_to_coco(tasks)
    assert [a["area"] for a in coco["annotations"] if a["image_id"] == 11] == [int(_rect_in_image1().sum())]
    preds = tasks_to_coco(_tasks(), use="predictions")
    assert sorted(a["score"] for a in preds["annotations"]) == [0.7, 0.8, 0.9]


def _rect_in_image1() -> np.ndarray:
    mask = np.zeros((H1, W1), bool)
    mask[1:4, 1:5] = True
    return mask


def test_bad_regions_are_skipped_not_fatal() -> None:
    tasks = _tasks()
    bad_size = brush_region("wrong", np.ones((H1 + 1, W1), bool), "Cat")
    broken = brush_region("broken", _ring(), "Cat")
    broken["value"]["rle"] = broken["value"]["rle"][:10]
    empty = brush_region("empty", np.zeros((H1, W1), bool), "Cat")
    keypoint = {"id": "kp", "type": "keypointlabels", "value": {"x": 1, "y": 2, "keypointlabels": ["Cat"]}}
    tasks[0]["annotations"][1]["result"] += [bad_size, broken, empty, keypoint]
    tasks.append({"id": 13, "data": {"image": "x.png"}, "annotations": []})  # size unknown
    tasks.append("not a task")  # type: ignore[arg-type]

    coco = tasks_to_coco(tasks)
    assert len(coco["annotations"]) == 3
    skipped = {(s["task"], s["region"]): s["reason"] for s in coco["info"]["skipped"]}
    assert "differs from the image size" in skipped[(11, "wrong")]
    assert "bad brush RLE" in skipped[(11, "broken")]
    assert skipped[(11, "empty")] == "empty mask"
    assert "not brushlabels" in skipped[(11, "kp")]
    assert "image size unknown" in skipped[(13, None)]
    assert "not an object" in skipped[(None, None)]
    json.dumps(coco)  # still plain JSON


def _evaluate(gt: COCO, results: list[dict[str, Any]]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_cocoeval_of_ground_truth_against_itself_is_perfect(tmp_path: Path) -> None:
    coco = tasks_to_coco(_tasks())
    results = tasks_to_coco_results(_tasks(), coco)
    assert len(results) == 3
    assert sorted(r["score"] for r in results) == [0.7, 0.8, 0.9]
    assert _evaluate(_load(coco, tmp_path), results) == pytest.approx(1.0)


def test_cocoeval_drops_for_a_perturbed_prediction(tmp_path: Path) -> None:
    coco = tasks_to_coco(_tasks())
    shifted = np.roll(_two_parts(), 3, axis=1)  # IoU well below 0.95 for the small parts
    results = tasks_to_coco_results(_tasks({"a": _ring(), "b": shifted, "c": _rect()}), coco)
    ap = _evaluate(_load(coco, tmp_path), results)
    assert 0.0 < ap < 1.0


def test_results_skip_predictions_that_do_not_fit() -> None:
    coco = tasks_to_coco(_tasks(), labels=["Cat"])
    tasks = _tasks()
    tasks[1]["predictions"][0]["result"].append(brush_region("big", np.ones((H2, W2 + 1), bool), "Cat"))
    tasks.append({"id": 99, "data": {}, "predictions": [{"result": [brush_region("z", _rect(), "Cat")]}]})
    results = tasks_to_coco_results(tasks, coco)
    # Dog is no category, the oversized region and the unknown task are left out.
    assert sorted((r["image_id"], r["score"]) for r in results) == [(11, 0.9), (12, 0.7)]


def test_export_coco_command_writes_files_cocoeval_reads(tmp_path: Path) -> None:
    from seggpt_backend.cli import main

    export = tmp_path / "ls-export.json"
    export.write_text(json.dumps(_tasks()))
    out, results = tmp_path / "coco.json", tmp_path / "results.json"
    assert main(["export-coco", str(export), "--out", str(out), "--results", str(results)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out))
    assert len(gt.getAnnIds()) == 3
    assert _evaluate(gt, json.loads(results.read_text())) == pytest.approx(1.0)
