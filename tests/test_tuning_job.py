"""The tuning job (service/jobs/tuning.py) on a real Redis with the tiny random model: split,
gate, promotion, serving; and the engine's learned-prompt path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from seggpt_backend.engine.engine import load_engine
from seggpt_backend.engine.interface import Example, LearnedPrompt, SegmentRequest, TuneOptions
from seggpt_backend.service.contract import JobTask, Target, TaskResult, TuneJob
from seggpt_backend.service.jobs import entry as jobs
from seggpt_backend.service.jobs.pipeline import Chunk
from seggpt_backend.service.jobs.tuning import Score, split
from seggpt_backend.service.store.examples import record_from_annotation
from seggpt_backend.service.store.kv import RedisKV
from seggpt_backend.service.store.project_options import ProjectOptionsStore
from seggpt_backend.settings import Settings
from tests.fixtures import scene
from tests.service_support import (
    ImageServer,
    annotation_event,
    cleanup_redis,
    new_prefix,
    png_bytes,
    redis_url,
)

TARGETS = [Target("tag", "image", "image", ("Cat", "Dog"))]


@pytest.fixture(scope="module")
def engine():
    return load_engine("random:tiny", device="cpu")


def _context(engine, images: ImageServer, prefix: str, **env: str) -> jobs.WorkerContext:
    settings = Settings.from_env(
        {
            "REDIS_URL": redis_url(),
            "SEGGPT_KEY_PREFIX": prefix,
            "LABEL_STUDIO_URL": images.url,
            "LABEL_STUDIO_API_KEY": "test-token",
            "SEGGPT_TUNE_STEPS": "3",
            **env,
        }
    )
    return jobs.WorkerContext(
        settings, RedisKV.from_url(redis_url(), prefix), lambda: engine, client=jobs.make_client(settings)
    )


@pytest.fixture
def world(engine):
    images = ImageServer()
    prefix = new_prefix()
    for i in range(6):
        image, masks = scene(48, 64, seed=i)
        url = images.add(f"/data/upload/1/e{i}.png", png_bytes(image))
        ev = annotation_event(
            "ANNOTATION_CREATED", project=1, annotation_id=i + 1, task_id=i + 1, image_url=url, masks=masks
        )
        record = record_from_annotation(ev["annotation"], ev["task"], {"image": "image"})
        assert record is not None
        RedisKV.from_url(redis_url(), prefix).hset("ex:1:records", {str(i + 1): record.to_json()})
    images.add("/data/upload/1/q.png", png_bytes(scene(48, 64, seed=50)[0]))
    ctxs: list[jobs.WorkerContext] = []

    def make(**env: str) -> jobs.WorkerContext:
        ctx = _context(engine, images, prefix, **env)
        for r in ctx.examples.records("1"):  # revisions too (the digest), as the webhook writes them
            ctx.examples.upsert("1", r)
        ctx.kv.hset("ex:1:state", {"populated": "1"})
        ctxs.append(ctx)
        return ctx

    yield make, images
    for c in ctxs:
        c.close()
    images.close()
    cleanup_redis(prefix)


def _predict(ctx: jobs.WorkerContext) -> TaskResult:
    chunk = Chunk(
        project="1",
        model_version=ctx.model_version("1"),
        targets=TARGETS,
        tasks=[JobTask(9, {"image": "/data/upload/1/q.png"})],
        records=ctx.examples.records("1"),
        learned=ctx.served_prompts("1"),
    )
    return ctx.runner.run(chunk, ctx.options()).entries[9]


def test_split_is_deterministic_with_at_least_two_and_a_fifth_for_validation() -> None:
    assert split("1", "Cat", [1, 2]) is None
    tuning, validation = split("1", "Cat", [1, 2, 3])  # type: ignore[misc]
    assert len(validation) == 2 and len(tuning) == 1
    ids = list(range(1, 21))
    a = split("1", "Cat", ids)
    assert a == split("1", "Cat", list(reversed(ids)))
    assert a is not None and len(a[1]) == 4 and not set(a[0]) & set(a[1])
    # One more annotation moves at most itself into validation: the others keep their side.
    b = split("1", "Cat", [*ids, 21])
    assert b is not None and set(a[1]) - {21} <= set(b[1]) | set(b[0])


def test_the_gate_wants_a_gain_on_most_images_not_one_lucky_one() -> None:
    served = Score(0.5, [0.5, 0.5, 0.5, 0.5])
    lucky = Score(0.6, [0.5, 0.5, 0.5, 0.9])  # +0.1 on average, all from one image
    steady = Score(0.56, [0.55, 0.56, 0.57, 0.56])
    assert lucky.gain_bound(served) < 0.01 < steady.gain_bound(served)
    assert Score(0.6, [0.6]).gain_bound(Score(0.5, [0.5])) == float("-inf")


def test_a_promoted_prompt_is_served_and_named_in_the_model_version(world) -> None:
    make, _ = world
    ctx = make(SEGGPT_TUNE_MARGIN="-1")  # promote whatever the tiny random model learns
    before_version, before = ctx.model_version("1"), _predict(ctx)
    run = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli"))
    assert run.status == "finished" and sorted(run.promoted) == ["Cat", "Dog"]
    cat = next(r for r in run.labels if r.label == "Cat")
    assert len(cat.tuning) == 4 and len(cat.validation) == 2 and cat.steps == 3 and len(cat.losses) == 3
    assert set(cat.miou) == {"served", "alone", "ensemble"} and cat.init in cat.tuning
    after_version = ctx.model_version("1")
    assert after_version.startswith(before_version + ".pr-")
    served = ctx.served_prompts("1")
    assert {label: s.version for label, s in served.items()} == ctx.prompts.active("1")
    after = _predict(ctx)
    assert after.model_version == after_version
    assert after.result != before.result  # the learned prompt reached the model
    # A second worker (fresh process cache) serves the same prompts and version.
    other = make(SEGGPT_TUNE_MARGIN="-1")
    assert other.model_version("1") == after_version and _predict(other).result == after.result
    text = ctx.metrics.render()
    assert 'seggpt_tune_runs_total{status="promoted"} 1' in text
    assert "seggpt_prompt_promotions_total 2" in text


def test_a_run_measures_the_projects_own_k_and_ensemble(world) -> None:
    make, _ = world
    ctx = make()
    default = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli"))
    ProjectOptionsStore(ctx.kv).put("1", {"k": 1, "ensemble": "none"})
    own = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli"))
    assert (default.settings["num_examples"], default.settings["ensemble"]) == (4, "feature")
    assert (own.settings["num_examples"], own.settings["ensemble"]) == (1, "none")


def test_a_run_that_does_not_beat_what_is_served_is_recorded_not_promoted(world) -> None:
    make, _ = world
    ctx = make(SEGGPT_TUNE_MARGIN="0.999")
    version = ctx.model_version("1")
    run = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli", labels=("Cat",)))
    assert [r.decision for r in run.labels] == ["rejected"]
    assert "does not clear the margin 0.999" in run.labels[0].reason
    assert ctx.prompts.active("1") == {} and ctx.model_version("1") == version
    assert ctx.prompts.runs("1")[0].labels[0].miou["served"] == run.labels[0].miou["served"]


def test_prompts_for_other_weights_are_ignored_and_rollback_restores_a_version(world) -> None:
    make, _ = world
    ctx = make(SEGGPT_TUNE_MARGIN="-1")
    plain_version, plain = ctx.model_version("1"), _predict(ctx)
    image, target = np.zeros((3, 32, 32), np.float32), np.ones((3, 32, 32), np.float32)
    ctx.prompts.promote(
        "1",
        label="Cat",
        image=image,
        target=target,
        engine_version="seggpt-vit-large",
        mode="alone",
        run="x",
        miou={},
    )
    assert ctx.served_prompts("1") == {} and ctx.model_version("1") == plain_version
    assert _predict(ctx).result == plain.result
    first = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli", labels=("Cat",)))
    v1, version1 = first.labels[0].version, ctx.model_version("1")
    jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli", labels=("Cat",)))
    assert ctx.prompts.active("1")["Cat"] != v1 and ctx.model_version("1") != version1
    assert v1 is not None
    ctx.prompts.rollback("1", "Cat", v1)
    assert ctx.model_version("1") == version1 and ctx.served_prompts("1")["Cat"].version == v1


def test_too_few_annotations_skip_a_label_and_corrupt_images_are_excluded(world) -> None:
    make, images = world
    images.files["/data/upload/1/e0.png"] = b"not a png"
    ctx = make(SEGGPT_TUNE_MARGIN="-1")
    for aid in (3, 4, 5, 6):
        ctx.examples.delete("1", [aid])
    run = jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli"))
    assert run.status == "finished"
    for lr in run.labels:
        assert lr.decision == "skipped" and "1 usable accepted annotation" in lr.reason
        assert "unreadable" in lr.excluded["1"]


def test_a_label_removed_from_the_config_is_not_served(world) -> None:
    make, _ = world
    ctx = make(SEGGPT_TUNE_MARGIN="-1")
    jobs.execute_tune(ctx, TuneJob(project="1", trigger="cli", labels=("Dog",)))
    assert "Dog" in ctx.served_prompts("1")
    chunk = Chunk(
        project="1",
        model_version="v",
        targets=[Target("tag", "image", "image", ("Cat",))],  # Dog left the config
        tasks=[JobTask(9, {"image": "/data/upload/1/q.png"})],
        records=ctx.examples.records("1"),
        learned=ctx.served_prompts("1"),
    )
    outcome = ctx.runner.run(chunk, ctx.options())
    assert {r["value"]["brushlabels"][0] for r in outcome.entries[9].result} <= {"Cat"}


def test_engine_serves_a_learned_prompt_alone_or_in_the_ensemble(engine) -> None:
    image, masks = scene(48, 64, seed=1)
    ex = Example("e", image, {"Cat": masks["Cat"]})
    tuned = engine.tune(ex, "Cat", [ex, ex], options=TuneOptions(steps=2, time_budget_s=60))
    assert len(tuned.losses) == 2 and tuned.prompt.size == engine.half_size
    prompt = dataclasses.replace(tuned.prompt, id="p1")
    query = scene(48, 64, seed=2)[0]
    alone, ensemble, plain = engine.segment(
        [
            SegmentRequest(query, {"Cat": []}, learned={"Cat": prompt}),
            SegmentRequest(query, {"Cat": [ex]}, learned={"Cat": prompt}),
            SegmentRequest(query, {"Cat": [ex]}),
        ]
    )
    assert alone["Cat"].mask.shape == (48, 64)
    assert not np.array_equal(ensemble["Cat"].soft, plain["Cat"].soft)
    wrong = LearnedPrompt("p2", np.zeros((3, 8, 8), np.float32), np.zeros((3, 8, 8), np.float32))
    (ignored,) = engine.segment([SegmentRequest(query, {"Cat": [ex]}, learned={"Cat": wrong})])
    assert np.allclose(ignored["Cat"].soft, plain["Cat"].soft, atol=1e-5)  # another model's size: not used
