"""End to end: a tuning promotion refreshes the unlabelled tasks in the REAL Label Studio 1.23.

With ``SEGGPT_AUTO_REFRESH=true``, "Start Training" (``POST /api/ml/{id}/train``) runs a tuning
job that promotes (``SEGGPT_TUNE_MARGIN=-1``); the worker then lists the project's tasks through
the API and queues the unlabelled ones for write-back: the task pre-labelled before with the old
version ends with exactly one prediction, of the new version (the old one replaced,
``SEGGPT_REPLACE_SUPERSEDED``), and the labelled tasks get none and keep their annotation.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.prompts import PromptStore
from tests.e2e_support import build_pictures, check_prediction, logs_on_failure, running_backend
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, redis_url, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_a_promotion_replaces_the_unlabelled_tasks_predictions_once(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    ls = label_studio
    pics = build_pictures(tmp_path)
    env = {
        "SEGGPT_TUNE_STEPS": "3",
        "SEGGPT_TUNE_MARGIN": "-1",
        "SEGGPT_TUNE_BUDGET_S": "60",
        "SEGGPT_AUTO_REFRESH": "true",
    }
    with (
        running_backend(
            "redis", ls, tmp_path, queues=("interactive", "batch", "tune"), env_extra=env
        ) as backend,
        logs_on_failure(backend, ls),
    ):
        store = PromptStore(RedisKV(redis.Redis.from_url(redis_url()), backend.env["SEGGPT_KEY_PREFIX"]))
        project = ls.create_project(LABEL_CONFIG)
        names = ["q_png", "q_wide", "later", "opened", "q_jpg"]
        ids = dict(zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True))
        for name in names[:4]:
            ls.annotate(ids[name], brush_result(pics[name].masks))
        ml_id = ls.connect_ml_backend(project, backend.url, is_interactive=True)
        before = backend.version_with_examples(project)
        ls.retrieve_predictions(project, [ids["q_jpg"]])
        (old,) = wait_for(lambda: ls.predictions(ids["q_jpg"]), timeout=60)
        assert old["model_version"] == before

        r = ls.api.post(f"/api/ml/{ml_id}/train", json={})
        assert r.status_code < 300, r.text
        # The version changes with each label's promotion: the run's end gives the final one.
        run = wait_for(
            lambda: (runs := store.runs(str(project))) and runs[0].status != "running" and runs[0],
            timeout=300,
        )
        assert run.status == "finished" and run.promoted, run
        after = backend.setup(project)
        assert after.startswith(before + ".pr-"), (before, after)
        refreshed = wait_for(
            lambda: (p := ls.predictions(ids["q_jpg"])) and [x["model_version"] for x in p] == [after] and p,
            timeout=120,
        )
        check_prediction(refreshed[0], pics["q_jpg"], after)
        time.sleep(3)  # give a duplicate (if any) time to land
        assert [x["model_version"] for x in ls.predictions(ids["q_jpg"])] == [after]
        for name in names[:4]:
            assert ls.predictions(ids[name]) == [], name
            task = ls.api.get(f"/api/tasks/{ids[name]}").json()
            assert len(task["annotations"]) == 1, name
