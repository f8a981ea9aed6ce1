"""End to end: "Start Training" pressed through the REAL Label Studio 1.23's API.

``POST /api/ml/{id}/train`` makes Label Studio send ``START_TRAINING`` to the backend's webhook; a
worker listening on the ``tune`` queue runs the tuning job on the project's accepted annotations
(read from Label Studio), the run is recorded, and when its prompts are promoted the next
"Retrieve Predictions" stores predictions carrying the new model version (``...pr-<digest>``).
The run is made to promote (``SEGGPT_TUNE_MARGIN=-1``, a few steps): whether tuning helps is the
benchmark's question (``bench/learning.py``), not this test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.prompts import PromptStore
from tests.e2e_support import build_pictures, check_prediction, logs_on_failure, running_backend
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, redis_url, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_start_training_records_a_run_and_the_next_predictions_carry_the_new_version(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    ls = label_studio
    pics = build_pictures(tmp_path)
    tune = {"SEGGPT_TUNE_STEPS": "3", "SEGGPT_TUNE_MARGIN": "-1", "SEGGPT_TUNE_BUDGET_S": "60"}
    with (
        running_backend(
            "redis", ls, tmp_path, queues=("interactive", "batch", "tune"), env_extra=tune
        ) as backend,
        logs_on_failure(backend, ls),
    ):
        store = PromptStore(RedisKV(redis.Redis.from_url(redis_url()), backend.env["SEGGPT_KEY_PREFIX"]))
        project = ls.create_project(LABEL_CONFIG)
        names = ["q_png", "q_wide", "later", "opened", "q_jpg"]
        ids = dict(zip(names, ls.import_images(project, [pics[n].path for n in names]), strict=True))
        for name in names[:4]:  # 4 accepted annotations with Cat and Dog: 2 to tune, 2 to validate
            ls.annotate(ids[name], brush_result(pics[name].masks))
        ml_id = ls.connect_ml_backend(project, backend.url, is_interactive=True)
        before = backend.version_with_examples(project)

        r = ls.api.post(f"/api/ml/{ml_id}/train", json={})  # the "Start Training" button
        assert r.status_code < 300, r.text  # the answer may have no JSON body
        run = wait_for(
            lambda: (runs := store.runs(str(project))) and runs[0].status != "running" and runs[0],
            timeout=300,
        )
        assert run.status == "finished" and run.trigger == "start-training", run
        assert {lr.label: lr.decision for lr in run.labels} == {"Cat": "promoted", "Dog": "promoted"}
        assert all(len(lr.validation) == 2 and lr.steps == 3 for lr in run.labels)
        after = backend.setup(project)
        assert after.startswith(before + ".pr-"), (before, after)

        ls.retrieve_predictions(project, [ids["q_jpg"]])
        (pred,) = wait_for(lambda: ls.predictions(ids["q_jpg"]), timeout=60)
        check_prediction(pred, pics["q_jpg"], after)
