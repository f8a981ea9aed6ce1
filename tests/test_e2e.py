"""End to end: the user story against a REAL Label Studio 1.23 and the backend run as a user runs it.

The user story runs once per deployment mode:

- ``redis``: ``seggpt-backend serve`` plus one ``seggpt-backend worker`` subprocess on the local
  Redis (a unique ``SEGGPT_KEY_PREFIX``, deleted at the end); images fetched with the legacy token.
- ``embedded``: ``seggpt-backend serve`` alone (no ``REDIS_URL``: jobs run in-process); images
  fetched with the personal access token.

Scenario (everything through Label Studio's API, as the UI would do it):

1. A BrushLabels project (Cat, Dog) with non-square images: PNGs and EXIF-rotated JPEGs whose
   displayed size (W x H after the orientation tag) differs from their stored size.
2. Two accepted annotations with **Cat only**, made before the backend is connected: connecting
   (``POST /api/ml``, interactive) must make the backend pick them up from the API (its model
   version leaves ``...ex-none``) and Label Studio registers the backend's ``/webhook``.
3. "Retrieve Predictions" on every unlabelled task: each gets exactly one stored prediction with
   the backend's model version, whose brush regions decode to masks of the image's DISPLAYED size,
   with the config's names and labels, scores in [0, 1], and no Dog region (no Dog example yet).
4. An interactive request (``POST /api/ml/{id}/interactive-annotating``, a positive keypoint on a
   cat of a rotated JPEG): one Cat region at the displayed size that keeps the clicked object;
   nothing is stored.
5. A new accepted annotation with Cat AND Dog (Label Studio sends ANNOTATION_CREATED to the
   backend): the model version changes at once, and the very next "Retrieve Predictions" stores
   predictions with the new version that now contain Dog regions (only the new example has Dog).
6. A task imported afterwards and opened in the editor (``GET /api/tasks/{id}``) gets its
   prediction on the spot, with the new version.

A second test starts the worker only after "Retrieve Predictions" was answered (the worker still
loading its weights, as in a fresh deployment): the predictions it writes back must not be
computed again and duplicated by the next "Retrieve Predictions".

The backend, the pictures and the checks are :mod:`tests.e2e_support`'s (weights ``demo`` unless
``SEGGPT_E2E_WEIGHTS`` says otherwise; mask quality is asserted only with ``demo``). A clean stop
on SIGTERM (no SIGKILL needed, nothing logged at WARNING or above) is part of the test. On failure
the backend logs are printed with the assertion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seggpt_backend import masks as mask_ops
from tests.e2e_support import (
    IOU_FLOOR,
    IOU_FLOOR_ONE,
    Backend,
    Picture,
    assert_clean_stop,
    build_pictures,
    check_prediction,
    check_regions,
    iou,
    keypoint,
    label_iou,
    logs_on_failure,
    ok,
    running_backend,
    wait_ready,
)
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


# ---------------------------------------------------------------------------------------- scenario
def run_scenario(ls: LabelStudio, backend: Backend, pics: dict[str, Picture]) -> None:
    demo = backend.weights == "demo"

    # 1. Project and images (one upload per file, so ids follow this order).
    project = ls.create_project(LABEL_CONFIG)
    first_batch = [n for n in pics if n != "opened"]
    ids = dict(zip(first_batch, ls.import_images(project, [pics[n].path for n in first_batch]), strict=True))

    # 2. Cat-only examples, then connect the backend.
    for name in ("ex_png", "ex_jpg"):
        ls.annotate(ids[name], brush_result({"Cat": pics[name].masks["Cat"]}))
    ml_id = ls.connect_ml_backend(project, backend.url, is_interactive=True)
    hooks = ok(ls.api.get("/api/webhooks/", params={"project": project}))
    assert any(h["url"] == f"{backend.url}/webhook" and h["project"] == project for h in hooks), hooks
    # Connecting is enough for the backend to read the two annotations made before it existed.
    version = backend.version_with_examples(project)

    # 3. Retrieve Predictions for every unlabelled task.
    unlabelled = ["q_png", "q_wide", "q_jpg", "later"]
    ls.retrieve_predictions(project, [ids[n] for n in unlabelled])
    assert backend.setup(project) == version  # nothing changed the examples meanwhile
    assert ok(ls.api.get(f"/api/ml/{ml_id}"))["model_version"] == version
    cat_ious = []
    first: dict[str, dict[str, Any]] = {}
    for name in unlabelled:
        preds = ls.predictions(ids[name])
        assert len(preds) == 1, (name, [p["model_version"] for p in preds])
        first[name] = preds[0]
        masks = check_prediction(preds[0], pics[name], version)
        assert "Dog" not in masks, f"{name}: a Dog region although no example has a Dog"
        cat_ious.append(label_iou(masks, pics[name], "Cat"))
    if demo:
        assert float(np.mean(cat_ious)) >= IOU_FLOOR, f"Cat IoU per task (0 = no region): {cat_ious}"

    # 4. Interactive: a positive click on the cat of the rotated JPEG.
    pic = pics["q_jpg"]
    item, (row, col) = keypoint(pic, "Cat")
    answer = ok(
        ls.api.post(
            f"/api/ml/{ml_id}/interactive-annotating",
            json={"task": ids["q_jpg"], "context": {"result": [item]}},
        )
    )
    assert "errors" not in answer, answer
    suggestion = answer["data"]
    assert suggestion["model_version"] == version
    regions = suggestion["result"]
    assert len(regions) <= 1, regions
    masks = check_regions(regions, pic)
    assert set(masks) <= {"Cat"}, set(masks)
    if demo:
        assert "Cat" in masks, "the click on a cat returned nothing"
    if "Cat" in masks:
        mask = masks["Cat"]
        assert mask[row, col], "the clicked pixel is not in the suggestion"
        assert mask_ops.label(mask)[1] == 1, "a positive click keeps one object, not several"
        if demo:
            assert iou(mask, pic.masks["Cat"]) >= IOU_FLOOR_ONE
    assert len(ls.predictions(ids["q_jpg"])) == 1  # a suggestion is not stored

    # 5. A new accepted annotation with Cat and Dog reaches the backend by webhook.
    ls.annotate(ids["later"], brush_result(pics["later"].masks))
    new_version = wait_for(lambda: (v := backend.setup(project)) != version and v, timeout=15)
    assert new_version.split(".ex-")[0] == version.split(".ex-")[0]  # same engine, new examples
    queries = ["q_png", "q_wide", "q_jpg"]
    ls.retrieve_predictions(project, [ids[n] for n in queries])
    dog_ious = []
    dog_seen = 0
    for name in queries:
        # The default version policy replaces the backend's own superseded prediction.
        (new,) = wait_for(
            lambda n=name: (
                (p := ls.predictions(ids[n])) and [x["model_version"] for x in p] == [new_version] and p
            ),
            timeout=60,
        )
        assert new["id"] != first[name]["id"]
        masks = check_prediction(new, pics[name], new_version)
        dog_seen += "Dog" in masks
        dog_ious.append(label_iou(masks, pics[name], "Dog"))
    # Only the new example has a Dog: Dog regions prove the very next prediction used it.
    assert dog_seen >= 1, "no prediction after the webhook has a Dog region"
    if demo:
        assert float(np.mean(dog_ious)) >= IOU_FLOOR, f"Dog IoU per task (0 = no region): {dog_ious}"
    assert ok(ls.api.get(f"/api/ml/{ml_id}"))["model_version"] == new_version

    # 6. A task added now and opened in the editor (GET /api/tasks/{id}) is predicted on the spot.
    (opened,) = ls.import_images(project, [pics["opened"].path])
    ok(ls.api.get(f"/api/tasks/{opened}/"))
    preds = ls.predictions(opened)
    assert len(preds) == 1, [p["model_version"] for p in preds]
    masks = check_prediction(preds[0], pics["opened"], new_version)
    if demo:
        for label in ("Cat", "Dog"):
            assert label_iou(masks, pics["opened"], label) >= IOU_FLOOR_ONE, (label, set(masks))


@pytest.mark.parametrize("mode", ["redis", "embedded"])
def test_label_studio_user_story(label_studio: LabelStudio, tmp_path: Path, mode: str) -> None:  # noqa: F811
    pics = build_pictures(tmp_path)
    with running_backend(mode, label_studio, tmp_path) as backend, logs_on_failure(backend, label_studio):
        run_scenario(label_studio, backend, pics)
    assert set(backend.procs) == ({"serve", "worker"} if mode == "redis" else {"serve"})
    assert_clean_stop(backend)


def test_predictions_written_back_once_the_worker_is_up_are_not_recomputed(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Retrieve Predictions while no worker runs yet (e.g. it is still loading large weights).

    The server answers at once and the worker writes the predictions back through the API when it
    comes up. They must carry the model version the backend reports from then on: Label Studio
    skips tasks holding a prediction of the version ``/setup`` returns, so any other version makes
    the next Retrieve Predictions compute every task again and store a second prediction.
    """
    ls = label_studio
    pics = build_pictures(tmp_path)
    with (
        running_backend("redis", ls, tmp_path, worker=False) as backend,
        logs_on_failure(backend, ls),
    ):
        project = ls.create_project(LABEL_CONFIG)
        names = ["ex_png", "q_png", "q_jpg"]
        ids = dict(zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True))
        ls.annotate(ids["ex_png"], brush_result({"Cat": pics["ex_png"].masks["Cat"]}))
        ls.connect_ml_backend(project, backend.url, is_interactive=True)
        queries = [ids["q_png"], ids["q_jpg"]]
        ls.retrieve_predictions(project, queries)  # answered at once, empty: nobody computes yet
        assert all(ls.predictions(t) == [] for t in queries)
        backend.start_worker()
        wait_ready(backend)
        wait_for(lambda: all(ls.predictions(t) for t in queries), timeout=60)  # written back
        version = backend.setup(project)
        ls.retrieve_predictions(project, queries)
        for name in ("q_png", "q_jpg"):
            preds = ls.predictions(ids[name])
            assert len(preds) == 1, (
                f"{name}: {len(preds)} predictions, versions {[p['model_version'] for p in preds]}; "
                f"/setup says {version}"
            )
            check_prediction(preds[0], pics[name], version)
    assert_clean_stop(backend)


def test_a_new_model_version_replaces_the_backends_older_prediction(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The model-version policy against the real Label Studio (docs/DELIVERY.md#model-version).

    A correction changes the model version; "Retrieve Predictions" then gives each task the new
    prediction and removes this backend's older one, so predictions do not pile up. Another
    model's prediction and the annotations (even one made from a deleted prediction) stay.
    """
    ls = label_studio
    pics = build_pictures(tmp_path)
    with running_backend("redis", ls, tmp_path) as backend, logs_on_failure(backend, ls):
        project = ls.create_project(LABEL_CONFIG)
        names = ["ex_png", "q_png", "q_wide", "q_jpg"]
        ids = dict(zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True))
        ls.annotate(ids["ex_png"], brush_result({"Cat": pics["ex_png"].masks["Cat"]}))
        ls.connect_ml_backend(project, backend.url, is_interactive=True)
        first = backend.version_with_examples(project)
        queries = [ids["q_png"], ids["q_wide"], ids["q_jpg"]]
        ls.retrieve_predictions(project, queries)
        assert all([p["model_version"] for p in ls.predictions(t)] == [first] for t in queries)
        other = ok(
            ls.api.post(
                "/api/predictions",
                json={"task": ids["q_png"], "result": [], "score": 0.5, "model_version": "another-model-v1"},
            )
        )
        # An annotator accepts q_jpg's suggestion with a correction: a new example, a new version.
        (suggestion,) = ls.predictions(ids["q_jpg"])
        annotation = ls.annotate(
            ids["q_jpg"],
            brush_result({"Cat": pics["q_jpg"].masks["Cat"]}),
            parent_prediction=suggestion["id"],
        )
        second = wait_for(lambda: (v := backend.setup(project)) != first and v, timeout=30)

        rest = [ids["q_png"], ids["q_wide"]]
        ls.retrieve_predictions(project, rest)

        def versions(task: int) -> list[str]:
            return sorted(p["model_version"] for p in ls.predictions(task))

        wait_for(lambda: versions(ids["q_wide"]) == [second], timeout=60)  # the old one is gone
        assert versions(ids["q_png"]) == sorted([second, "another-model-v1"])
        assert any(p["id"] == other["id"] for p in ls.predictions(ids["q_png"]))
        assert versions(ids["q_jpg"]) == [first]  # not asked again: untouched
        kept = ok(ls.api.get(f"/api/annotations/{annotation}/"))
        assert kept["id"] == annotation and kept["result"]
        # Asking again changes nothing.
        ls.retrieve_predictions(project, rest)
        time.sleep(2)
        assert versions(ids["q_wide"]) == [second]
        assert versions(ids["q_png"]) == sorted([second, "another-model-v1"])
