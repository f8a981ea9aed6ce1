"""Examples filled from a REAL Label Studio 1.23, and predictions written back to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seggpt_backend.labelstudio import rle
from seggpt_backend.labelstudio.client import LabelStudioClient
from seggpt_backend.service.contract import Target
from seggpt_backend.service.http.predict import predict_job
from seggpt_backend.service.http.protocol import Task
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.jobs import sync
from seggpt_backend.service.jobs.materialize import Materializer
from seggpt_backend.service.store.examples import ExampleStore
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.labelstudio_server import label_studio  # noqa: F401  (session fixture)
from tests.service_support import LABEL_CONFIG, brush_result, cleanup_redis, new_prefix, png_bytes, redis_url

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
TARGETS = [Target("tag", "image", "image", ("Cat", "Dog"))]


@pytest.fixture
def prefix():
    p = new_prefix()
    yield p
    cleanup_redis(p)


def _project(ls, tmp_path: Path) -> tuple[int, list[int], list[dict]]:
    project = ls.create_project(LABEL_CONFIG)
    paths, masks = [], []
    for i in range(3):
        image, m = scene(48, 64, seed=20 + i)
        path = tmp_path / f"img{i}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
        masks.append(m)
    return project, ls.import_images(project, paths), masks


def test_fill_reads_accepted_brush_annotations(label_studio, tmp_path: Path, prefix: str) -> None:  # noqa: F811
    project, tasks, masks = _project(label_studio, tmp_path)
    label_studio.annotate(tasks[0], brush_result(masks[0]))
    label_studio.annotate(tasks[1], brush_result({"Cat": masks[1]["Cat"]}))
    label_studio.annotate(tasks[2], [], was_cancelled=True)  # skipped: not an example
    client = LabelStudioClient(label_studio.url, label_studio.token)
    kv = RedisKV.from_url(redis_url(), prefix)
    store = ExampleStore(kv)
    assert sync.fill(client, store, kv, str(project)) == 2
    assert store.is_populated(str(project))
    records = {r.task_id: r for r in store.records(str(project))}
    assert set(records) == {tasks[0], tasks[1]}
    first = records[tasks[0]]
    assert first.images["image"].startswith(f"/data/upload/{project}/")
    cat = next(r for r in first.regions if r.label == "Cat")
    assert np.array_equal(rle.decode(list(cat.rle), cat.height, cat.width) > 0, masks[0]["Cat"])
    # The example image is downloaded from Label Studio with the API key.
    mat = Materializer(kv, client.fetch_image_bytes, max_pixels=10**8).get(str(project), first, "image")
    assert mat.image.shape == (48, 64, 3)
    assert np.array_equal(mat.masks[("tag", "Cat")], masks[0]["Cat"])


def test_job_fills_examples_on_first_use_and_writes_back_once(
    label_studio,  # noqa: F811
    tmp_path: Path,
    prefix: str,
) -> None:
    project, tasks, masks = _project(label_studio, tmp_path)
    label_studio.annotate(tasks[0], brush_result(masks[0]))
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_url(),
            "SEGGPT_KEY_PREFIX": prefix,
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": label_studio.token,
            "SEGGPT_WEIGHTS": "random:tiny",
            "SEGGPT_DEVICE": "cpu",
        }
    )
    kv = RedisKV.from_url(settings.redis_url, prefix)
    from seggpt_backend.engine.engine import load_engine

    ctx = jobs.WorkerContext(
        settings, kv, lambda: load_engine("random:tiny", device="cpu"), client=jobs.make_client(settings)
    )
    try:
        task = Task(id=tasks[2], data={"image": _image_url(label_studio, tasks[2])})
        version = f"{ctx.engine.model_version}.ex-test"
        payload = predict_job(
            project=str(project),
            model_version=version,
            targets=TARGETS,
            tasks=[task],
            channel="c",
            queue="batch",
            writeback="always",
        )
        jobs.execute_predict(ctx, payload)
        assert ctx.examples.count(str(project)) == 1  # filled from Label Studio on first use
        preds = label_studio.predictions(tasks[2])
        # Written back with the version the worker computed with (what /setup reports from now on).
        assert len(preds) == 1 and preds[0]["model_version"] == ctx.model_version(str(project))
        assert all(r["type"] == "brushlabels" for r in preds[0]["result"])
        jobs.execute_predict(ctx, payload)  # a retried job neither recomputes nor posts again
        assert len(label_studio.predictions(tasks[2])) == 1
    finally:
        ctx.close()


def _image_url(ls, task_id: int) -> str:
    return ls.api.get(f"/api/tasks/{task_id}").json()["data"]["image"]
