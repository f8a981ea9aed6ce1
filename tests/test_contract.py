"""The serve/worker job contract: round trips through JSON, refuses other versions and bad shapes."""

from __future__ import annotations

import json

import pytest

from seggpt_backend.service.contract import (
    CONTRACT_VERSION,
    JobTask,
    PredictJob,
    Prompt,
    PruneJob,
    QualityJob,
    SyncJob,
    Target,
    TaskResult,
    parse_targets,
    superseded_ids,
)
from seggpt_backend.service.errors import ConfigUnsupported, ContractError
from tests.service_support import LABEL_CONFIG

JOB = PredictJob(
    project="3",
    model_version="seggpt-demo.ex-0123456789",
    targets=(Target("tag", "image", "image", ("Cat", "Dog")),),
    tasks=(JobTask(7, {"image": "/data/upload/3/a.png"}, ((11, "seggpt-demo.ex-none"),)),),
    channel="abc",
    queue="interactive",
    prompt=Prompt("Cat", "tag", "image", points=((10.0, 20.0, True),), boxes=((1.0, 2.0, 3.0, 4.0),)),
    writeback="always",
    enqueued_at=1.5,
)


POLYGON_JOB = PredictJob(
    project="3",
    model_version="seggpt-demo.ex-none",
    targets=(Target("poly", "image", "image", ("Cat",), kind="polygon"),),
    tasks=(JobTask(8, {"image": "/data/upload/3/b.png"}),),
    channel="def",
    queue="batch",
)


@pytest.mark.parametrize(
    "job",
    [
        JOB,
        POLYGON_JOB,
        SyncJob("3", force=True),
        PruneJob("3", (11, 12)),
        QualityJob("3", task_id=7, annotation_id=9),
    ],
)
def test_jobs_round_trip_through_json(job) -> None:
    wire = json.loads(json.dumps(job.to_json()))  # what RQ's JSONSerializer carries
    assert wire["v"] == CONTRACT_VERSION
    assert type(job).from_json(wire) == job


def test_another_version_or_a_bad_shape_is_refused_with_a_clear_error() -> None:
    wire = JOB.to_json()
    with pytest.raises(ContractError, match="version 2 is not 1: serve and workers run different releases"):
        PredictJob.from_json({**wire, "v": 2})
    with pytest.raises(ContractError, match="version None"):
        SyncJob.from_json({"project": "3"})
    with pytest.raises(ContractError, match="malformed predict job: KeyError"):
        PredictJob.from_json({k: v for k, v in wire.items() if k != "targets"})
    with pytest.raises(ContractError, match="unknown writeback"):
        PredictJob.from_json({**wire, "writeback": "sometimes"})
    with pytest.raises(ContractError, match="malformed prune job"):
        PruneJob.from_json({"v": CONTRACT_VERSION, "project": "3", "predictions": ["x"]})


def test_a_job_restricted_to_some_tasks_keeps_everything_else() -> None:
    two = PredictJob(**{**JOB.__dict__, "tasks": (*JOB.tasks, JobTask(8, {}))})
    only = two.only([8])
    assert only.task_ids == [8] and only.channel == two.channel and only.prompt == two.prompt
    assert two.image_urls() == [("/data/upload/3/a.png", 7)]


def test_superseded_ids_keep_the_delivered_version() -> None:
    assert superseded_ids(((1, "a"), (2, "b"), (3, "a")), keep="a") == [2]


def test_targets_come_from_the_label_config() -> None:
    (target,) = parse_targets(LABEL_CONFIG)
    assert (target.from_name, target.to_name, target.data_key) == ("tag", "image", "image")
    with pytest.raises(ConfigUnsupported, match="BrushLabels"):
        parse_targets('<View><Image name="image" value="$image"/></View>')


def test_a_task_result_is_a_prediction_or_a_failure_and_survives_json() -> None:
    done = TaskResult(
        result=({"id": "a", "type": "brushlabels"},), score=0.8, model_version="v2", messages=("x",)
    )
    assert done.ok and TaskResult.from_json(json.loads(json.dumps(done.to_json()))) == done
    assert done.prediction("v1") == {
        "result": [{"id": "a", "type": "brushlabels"}],
        "score": 0.8,
        "model_version": "v2",
    }
    assert TaskResult(model_version="").delivered_version("v1") == "v1"  # stored without one: the requested
    failed = TaskResult.failure("task 7: image 404").with_messages(["label 'Dog' skipped"])
    assert not failed.ok and failed.result == ()
    assert failed.to_json() == {"error": "task 7: image 404", "messages": ["label 'Dog' skipped"]}
    assert TaskResult.from_json(failed.to_json()) == failed


def test_polygon_targets_and_quality_jobs_are_checked() -> None:
    (target,) = parse_targets(
        '<View><Image name="image" value="$image"/>'
        '<PolygonLabels name="poly" toName="image"><Label value="Cat"/></PolygonLabels></View>'
    )
    assert (target.from_name, target.kind, target.labels) == ("poly", "polygon", ("Cat",))
    wire = POLYGON_JOB.to_json()
    wire["targets"][0]["kind"] = "ellipse"
    with pytest.raises(ContractError, match="unknown target kind 'ellipse'"):
        PredictJob.from_json(wire)
    del wire["targets"][0]["kind"]  # a payload from before polygons: brush
    assert PredictJob.from_json(wire).targets[0].kind == "brush"
    with pytest.raises(ContractError, match="malformed quality job"):
        QualityJob.from_json({"v": CONTRACT_VERSION, "project": "3", "task_id": "x", "annotation_id": 1})
