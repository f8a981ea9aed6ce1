"""End to end with a REAL Label Studio 1.23: submitted corrections show up in ``report``, and a
PolygonLabels project gets polygon predictions that Label Studio stores.

The backend runs as a user runs it (``serve`` + ``worker`` subprocesses on the local Redis, or
``serve`` alone in embedded mode), started by :func:`tests.test_e2e.running_backend`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seggpt_backend.labelstudio.polygon import rasterize, region_mask
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.quality import QualityStore
from tests.e2e_support import command, logs_on_failure, running_backend
from tests.fixtures import scene, write_png
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, polygon_result, redis_url, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

POLYGON_CONFIG = (
    '<View>\n  <Image name="image" value="$image"/>\n  <PolygonLabels name="poly" toName="image">\n'
    '    <Label value="Cat"/>\n    <Label value="Dog"/>\n  </PolygonLabels>\n</View>'
)


def _pictures(tmp: Path, seeds: list[int]) -> tuple[list[Path], list[dict[str, np.ndarray]]]:
    paths, masks = [], []
    for seed in seeds:
        pixels, m = scene(96, 128, seed=seed, shapes={"Cat": 1, "Dog": 1})
        paths.append(write_png(tmp / f"img{seed}.png", pixels))
        masks.append(m)
    return paths, masks


def _label_masks(result: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for region in result:
        mask = region_mask(region)
        assert mask is not None, region
        (label,) = region["value"][region["type"]]
        out[label] = out[label] | mask if label in out else mask
    return out


def _iou(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 0.0
    return float((a & b).sum() / (a | b).sum())


def test_submitted_corrections_show_up_in_the_report(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    with running_backend("redis", label_studio, tmp_path) as backend, logs_on_failure(backend, label_studio):
        ls = label_studio
        project = ls.create_project(LABEL_CONFIG)
        paths, truth = _pictures(tmp_path, [31, 32, 33, 34])
        ids = ls.import_images(project, paths)
        for i in (0, 1):
            ls.annotate(ids[i], brush_result(truth[i]))
        ls.connect_ml_backend(project, backend.url, is_interactive=False)
        version = backend.version_with_examples(project, LABEL_CONFIG)
        queries = ids[2:]
        ls.retrieve_predictions(project, queries)
        preds = {t: wait_for(lambda t=t: ls.predictions(t), timeout=120)[0] for t in queries}
        assert {p["model_version"] for p in preds.values()} == {version}

        # The annotators submit the true masks (Label Studio sends ANNOTATION_CREATED).
        for i, task in zip((2, 3), queries, strict=True):
            ls.annotate(task, brush_result(truth[i]), parent_prediction=preds[task]["id"])
        store = QualityStore(RedisKV.from_url(redis_url(), backend.env["SEGGPT_KEY_PREFIX"]))
        entries = wait_for(lambda: len(e := store.entries(str(project))) == 2 and e, timeout=60)
        assert {e.task_id for e in entries} == set(queries)
        for entry in entries:
            assert entry.model_version == version and entry.source == "examples"
            assert entry.prediction_id == preds[entry.task_id]["id"]
            predicted = _label_masks(preds[entry.task_id]["result"])
            i = ids.index(entry.task_id)
            for x in entry.labels:  # the IoU of what Label Studio stored, recomputed here
                assert x.iou == pytest.approx(_iou(predicted.get(x.label), truth[i][x.label]), abs=1e-6)
            assert {x.label for x in entry.labels} == {"Cat", "Dog"}

        out = tmp_path / "report"
        run = subprocess.run(
            [*command(), "report", "--project", str(project), "--out", str(out)],
            env=backend.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        figures = json.loads((out / "figures.json").read_text())
        assert figures["measurements"] == 2 and set(figures["labels"]) == {"Cat", "Dog"}
        assert {r["model_version"] for r in figures["iou_by_version"]} == {version}
        assert all((out / name).stat().st_size > 1000 for name in ("iou_over_time.png", "score_vs_iou.png"))
        metrics = backend.http.get("/metrics").text
        assert f'seggpt_suggestion_iou_rolling{{label="Cat",project="{project}"}}' in metrics


def test_a_polygon_project_gets_polygon_predictions_label_studio_stores(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    with (
        running_backend("embedded", label_studio, tmp_path) as backend,
        logs_on_failure(backend, label_studio),
    ):
        ls = label_studio
        project = ls.create_project(POLYGON_CONFIG)
        paths, truth = _pictures(tmp_path, [41, 42, 43, 44])
        ids = ls.import_images(project, paths)
        for i in (0, 1):  # polygon annotations are the examples
            ls.annotate(ids[i], polygon_result(truth[i]))
        ls.connect_ml_backend(project, backend.url, is_interactive=False)
        version = backend.version_with_examples(project, POLYGON_CONFIG)
        queries = ids[2:]
        ls.retrieve_predictions(project, queries)
        ious = []
        for task in queries:
            (pred,) = wait_for(lambda t=task: ls.predictions(t), timeout=120)  # read back from Label Studio
            assert pred["model_version"] == version
            assert pred["result"], "an empty prediction"
            for region in pred["result"]:
                assert region["type"] == "polygonlabels" and region["from_name"] == "poly"
                assert (region["original_width"], region["original_height"]) == (128, 96)
                points = region["value"]["points"]
                assert len(points) >= 3 and all(0 <= v <= 100 for xy in points for v in xy)
                assert region["value"]["polygonlabels"][0] in ("Cat", "Dog")
                assert rasterize(points, 128, 96).any()
            masks = _label_masks(pred["result"])
            ious += [_iou(masks.get(label), truth[ids.index(task)][label]) for label in ("Cat", "Dog")]
        if backend.weights == "demo":
            assert float(np.mean(ious)) >= 0.5, ious
