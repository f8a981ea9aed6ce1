"""End to end: pre-labelling whole projects and COCO export against the REAL Label Studio 1.23.

- redis mode (``serve`` + one ``worker``): 30 imported tasks, 3 labelled; ``seggpt-backend
  prelabel --wait`` is killed (SIGKILL) half-way and run again: each of the 27 unlabelled tasks
  ends with exactly one prediction, the labelled ones with none and their annotations untouched; a
  third run queues nothing; ``GET /projects/{id}/progress`` and ``/metrics`` show the figures.
- redis mode with ``SEGGPT_AUTO_PRELABEL=1``: importing tasks (``TASKS_CREATED``) pre-labels them.
- embedded mode (no ``REDIS_URL``, the command computes in-process): a task whose image is
  missing fails with its id named and exit code 2 while the others are predicted;
  ``export-coco --project`` round-trips through pycocotools pixel-exact against the masks
  Label Studio stores, and ``--eval`` prints per-label IoU and AP; bad project ids and an
  unsupported label config exit 2 naming the project.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from seggpt_backend.labelstudio import rle
from seggpt_backend.settings import Settings
from tests.e2e_support import REPO, cli, command, logs_on_failure, running_backend, weights_spec
from tests.fixtures import scene, write_png
from tests.labelstudio_server import LabelStudio, label_studio  # noqa: F401
from tests.service_support import LABEL_CONFIG, brush_result, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _pictures(tmp: Path, n: int, seed: int = 100) -> list[tuple[Path, dict[str, np.ndarray]]]:
    out = []
    for i in range(n):
        pixels, masks = scene(64, 80, seed=seed + i, shapes={"Cat": 1, "Dog": 1})
        out.append((write_png(tmp / f"p{seed + i}.png", pixels), masks))
    return out


def _own(ls: LabelStudio, task: int) -> list[dict[str, Any]]:
    return ls.predictions(task)


def _annotations(ls: LabelStudio, task: int) -> list[dict[str, Any]]:
    r = ls.api.get(f"/api/tasks/{task}/annotations/")
    assert r.status_code == 200, r.text
    return list(r.json())


def test_prelabel_gives_each_unlabelled_task_one_prediction_and_resumes_after_a_kill(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    ls = label_studio
    pics = _pictures(tmp_path, 30)
    with running_backend("redis", ls, tmp_path) as backend, logs_on_failure(backend, ls):
        project = ls.create_project(LABEL_CONFIG)
        ids = ls.import_images(project, [p for p, _ in pics])
        labelled = ids[:3]
        for tid, (_, masks) in zip(labelled, pics[:3], strict=True):
            ls.annotate(tid, brush_result(masks))
        before = {t: _annotations(ls, t) for t in labelled}
        unlabelled = ids[3:]
        env = dict(backend.env, SEGGPT_CHUNK_SIZE="2")

        # First run, killed once a few predictions are in.
        log = tmp_path / "prelabel1.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*command(), "prelabel", "--project", str(project), "--wait"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for(lambda: sum(bool(_own(ls, t)) for t in unlabelled) >= 3, timeout=300, interval=0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, log.read_text()  # killed half-way, not finished
        assert "27 to pre-label" in log.read_text(), log.read_text()

        # The rerun finishes what is left (the killed run's queued chunks still run on the worker).
        second = cli(["prelabel", "--project", str(project), "--wait"], env)
        assert second.returncode == 0, second.stdout + second.stderr
        counts = wait_for(lambda: (c := [len(_own(ls, t)) for t in unlabelled]) and all(c) and c, timeout=120)
        assert counts == [1] * 27, counts
        version = backend.setup(project)
        assert {p["model_version"] for t in unlabelled for p in _own(ls, t)} == {version}
        assert all(_own(ls, t) == [] for t in labelled)  # labelled tasks are not pre-labelled
        assert {t: _annotations(ls, t) for t in labelled} == before  # annotations untouched

        third = cli(["prelabel", "--project", str(project), "--wait"], env)
        assert third.returncode == 0 and "27 already predicted" in third.stdout, third.stdout
        assert "0 to pre-label" in third.stdout, third.stdout
        assert [len(_own(ls, t)) for t in unlabelled] == [1] * 27  # still exactly one each

        progress = backend.http.get(f"/projects/{project}/progress").json()
        assert progress["left"] == 0 and progress["failed"] == 0, progress
        assert progress["done"] >= 1 and progress["done"] + progress["failed"] == progress["queued"]
        metrics = backend.http.get("/metrics").text
        assert f'seggpt_prelabel_tasks{{project="{project}",state="done"}}' in metrics


def test_importing_tasks_prelabels_them_with_auto_prelabel_on(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    ls = label_studio
    pics = _pictures(tmp_path, 4, seed=200)
    with (
        running_backend("redis", ls, tmp_path, env_extra={"SEGGPT_AUTO_PRELABEL": "1"}) as backend,
        logs_on_failure(backend, ls),
    ):
        project = ls.create_project(LABEL_CONFIG)
        (example,) = ls.import_images(project, [pics[0][0]])
        ls.annotate(example, brush_result(pics[0][1]))
        ls.connect_ml_backend(project, backend.url, is_interactive=True)
        backend.version_with_examples(project)
        new = ls.add_local_files(project, [p for p, _ in pics[1:]])  # one import: one TASKS_CREATED
        counts = wait_for(lambda: (c := [len(_own(ls, t)) for t in new]) and all(c) and c, timeout=180)
        assert counts == [1, 1, 1], counts
        version = backend.setup(project)
        assert all(_own(ls, t)[0]["model_version"] == version for t in new)
        assert _own(ls, example) == [] and len(_annotations(ls, example)) == 1
        progress = backend.http.get(f"/projects/{project}/progress").json()
        assert (progress["queued"], progress["done"], progress["left"]) == (3, 3, 0), progress


def test_embedded_prelabel_bad_input_and_coco_export_round_trip(
    label_studio: LabelStudio,  # noqa: F811
    tmp_path: Path,
) -> None:
    ls = label_studio
    pics = _pictures(tmp_path, 6, seed=300)
    env = {k: v for k, v in os.environ.items() if k not in Settings.env_names()}
    env.update(
        SEGGPT_WEIGHTS=weights_spec(),
        SEGGPT_DEVICE="cpu",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.pat,
        SEGGPT_CHUNK_SIZE="2",
        LOG_LEVEL="WARNING",
    )
    project = ls.create_project(LABEL_CONFIG)
    ids = ls.import_images(project, [p for p, _ in pics])
    (broken,) = ls.import_tasks(project, [{"image": "/data/upload/999/missing.png"}])
    for tid, (_, masks) in zip(ids[:2], pics[:2], strict=True):
        ls.annotate(tid, brush_result(masks))

    run = cli(["prelabel", "--project", str(project), "--wait"], env)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out  # one task failed: named, the others predicted
    assert f"task {broken}:" in run.stdout and "5 to pre-label" in run.stdout, out
    assert "4 predicted and written back, 1 failed" in run.stdout, out
    assert all(len(_own(ls, t)) == 1 for t in ids[2:]), out
    again = cli(["prelabel", "--project", str(project), "--wait"], env)
    assert again.returncode == 2 and "1 to pre-label" in again.stdout, again.stdout + again.stderr
    assert all(len(_own(ls, t)) == 1 for t in ids[2:])  # no duplicates on a rerun

    # The labelled tasks get predictions too (--only all), so --eval has tasks holding both.
    both = cli(["prelabel", "--project", str(project), "--wait", "--only", "all"], env)
    assert "3 to pre-label" in both.stdout and f"task {broken}:" in both.stdout, both.stdout + both.stderr
    assert all(len(_own(ls, t)) == 1 for t in ids)

    # COCO straight from the API: pixel-exact against the masks Label Studio stores.
    coco_path, res_path = tmp_path / "coco.json", tmp_path / "res.json"
    exp = cli(
        [
            "export-coco",
            "--project",
            str(project),
            "--out",
            str(coco_path),
            "--results",
            str(res_path),
            "--eval",
        ],
        env,
    )
    assert exp.returncode == 0, exp.stdout + exp.stderr
    gt = COCO(str(coco_path))
    by_task = {img["ls_task_id"]: img["id"] for img in gt.dataset["images"]}
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    compared = 0
    for tid in ids[:2]:
        (annotation,) = _annotations(ls, tid)
        stored = {
            r["value"]["brushlabels"][0]: rle.decode(
                r["value"]["rle"], r["original_height"], r["original_width"]
            )
            for r in annotation["result"]
        }
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=[by_task[tid]])):
            mask = gt.annToMask(ann).astype(bool)
            expected = stored[names[ann["category_id"]]]
            assert np.array_equal(mask, expected.astype(bool)), (tid, names[ann["category_id"]])
            compared += 1
    assert compared == 4
    results = json.loads(res_path.read_text())
    assert results and {r["image_id"] for r in results} <= set(by_task.values())
    assert "--eval: 2 task(s) hold both" in exp.stdout, exp.stdout
    table = {
        line.split()[0]: line.split()[1:]
        for line in exp.stdout.splitlines()
        if line.split()[:1] in (["Cat"], ["Dog"])
    }
    assert set(table) == {"Cat", "Dog"} and all(row[0] == "2" for row in table.values()), exp.stdout
    if weights_spec() == "demo":  # the demo model finds the shapes: IoU well above 0
        assert float(table["Cat"][1]) > 0.5, exp.stdout  # 0.88 measured through the engine

    # Bad input: exit 2 with the project named.
    missing = cli(["prelabel", "--project", "987654", "--wait"], env)
    assert missing.returncode == 2 and "project 987654: does not exist" in missing.stderr, missing.stderr
    wrong_key = cli(["export-coco", "--project", str(project), "--out", str(tmp_path / "x.json")],
                     dict(env, LABEL_STUDIO_API_KEY="0" * 40))  # fmt: skip
    assert wrong_key.returncode == 2 and f"project {project}" in wrong_key.stderr, wrong_key.stderr
    text_only = ls.create_project('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                                  '<Choice value="a"/></Choices></View>')  # fmt: skip
    unsupported = cli(["prelabel", "--project", str(text_only)], env)
    assert unsupported.returncode == 2, unsupported.stderr
    assert f"project {text_only}: unsupported labelling config" in unsupported.stderr, unsupported.stderr
