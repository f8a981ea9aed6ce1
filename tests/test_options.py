"""Per-project options from Label Studio's Extra params: parsing, errors, version tags, contract."""

from __future__ import annotations

import pytest

from seggpt_backend.service.contract import OptionsError, PredictJob, ProjectOptions, Target
from seggpt_backend.service.errors import ContractError
from seggpt_backend.service.store.examples import compose_model_version, is_own_version
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.project_options import ProjectOptionsStore
from seggpt_backend.settings import Settings

DEFAULTS = ProjectOptions.defaults(Settings.from_env({"SEGGPT_NUM_EXAMPLES": "3", "SEGGPT_MIN_SCORE": "0.1"}))


def test_defaults_come_from_the_environment() -> None:
    assert DEFAULTS.num_examples == 3 and DEFAULTS.min_score == 0.1 and DEFAULTS.overridden == ()
    assert ProjectOptions.from_extra_params(None, defaults=DEFAULTS) is DEFAULTS
    assert DEFAULTS.version_tag() is None


def test_extra_params_override_and_are_typed() -> None:
    extra = {
        "k": "2",
        "split_components": "true",
        "threshold": 0.6,
        "auto_prelabel": True,
    }
    o = ProjectOptions.from_extra_params(extra, defaults=DEFAULTS, project="7")
    assert (o.num_examples, o.split_components, o.threshold, o.auto_prelabel) == (2, True, 0.6, True)
    assert o.min_score == 0.1  # not given: the environment's
    assert o.overridden == ("auto_prelabel", "num_examples", "split_components", "threshold")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"kk": 2}, "unknown key 'kk'"),
        ({"k": 0}, "k=0"),
        ({"k": 1.5}, "k=1.5"),
        ({"k": True}, "k=True"),
        ({"ensemble": "mean"}, "ensemble='mean'"),
        ({"threshold": 1.0}, "threshold=1.0"),
        ({"min_score": -0.1}, "min_score=-0.1"),
        ({"split_components": "maybe"}, "split_components='maybe'"),
        ({"min_region_area": "big"}, "min_region_area='big'"),
    ],
)
def test_a_bad_key_or_value_is_an_error_naming_project_and_key(extra: dict, named: str) -> None:
    with pytest.raises(OptionsError) as info:
        ProjectOptions.from_extra_params(extra, defaults=DEFAULTS, project="7")
    assert "project 7" in str(info.value) and named in str(info.value)


def test_version_tag_covers_only_options_that_change_predictions() -> None:
    k2 = ProjectOptions.from_extra_params({"k": 2}, defaults=DEFAULTS)
    k1 = ProjectOptions.from_extra_params({"k": 1}, defaults=DEFAULTS)
    auto = ProjectOptions.from_extra_params({"auto_prelabel": True, "tune_every": 5}, defaults=DEFAULTS)
    assert k2.version_tag() and k1.version_tag() and k2.version_tag() != k1.version_tag()
    assert auto.version_tag() is None  # workflow switches do not change a prediction
    v = compose_model_version("seggpt-demo-1", "none", options=k2.version_tag())
    assert v.endswith(f".p-{k2.version_tag()}") and is_own_version(v)
    assert is_own_version(
        compose_model_version("seggpt-demo-1", "none", prompts="0123456789", options="abcdef0123")
    )


def test_options_travel_in_the_predict_job_and_are_checked_there() -> None:
    o = ProjectOptions.from_extra_params({"k": 2, "min_region_area": 9}, defaults=DEFAULTS)
    job = PredictJob("1", "v", (Target("tag", "image", "image", ("Cat",)),), (), "c", "batch", options=o)
    back = PredictJob.from_json(job.to_json())
    assert back.options == o and back.only([]).options == o
    assert PredictJob.from_json({**job.to_json(), "options": None}).options is None
    with pytest.raises(ContractError, match="num_examples"):
        PredictJob.from_json({**job.to_json(), "options": {**o.to_json(), "num_examples": 0}})


def test_the_store_keeps_params_per_project() -> None:
    store = ProjectOptionsStore(MemoryKV())
    store.put("1", {"k": 2})
    assert store.get("1", DEFAULTS).num_examples == 2 and store.get("2", DEFAULTS) is DEFAULTS
    store.put("1", None)
    assert store.get("1", DEFAULTS) is DEFAULTS


def test_a_workers_pipeline_options_follow_the_jobs_project_options() -> None:
    from seggpt_backend.service.jobs.entry import WorkerContext

    settings = Settings.from_env({"SEGGPT_NUM_EXAMPLES": "4", "SEGGPT_MIN_REGION_AREA": "5"})
    ctx = WorkerContext(settings, MemoryKV(), lambda: None)  # type: ignore[arg-type,return-value]
    try:
        assert (ctx.options().num_examples, ctx.options().min_region_area) == (4, 5)
        o = ProjectOptions.from_extra_params(
            {"k": 1, "split_components": True, "min_score": 0.3, "threshold": 0.7},
            defaults=ProjectOptions.defaults(settings),
        )
        p = ctx.options(o)
        assert (p.num_examples, p.split_components, p.min_score, p.threshold, p.min_region_area) == (
            1,
            True,
            0.3,
            0.7,
            5,
        )
        f = p.region_filter(interactive=True)
        assert f.min_score == 0.0 and not f.split_components  # an interactive answer is never filtered away
    finally:
        ctx.close()
