"""Model version: engine part published by workers, examples part from the store."""

from __future__ import annotations

from seggpt_backend.service.http.runtime import Runtime, fallback_engine_version
from seggpt_backend.service.store.examples import record_from_annotation
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.queue import InProcessJobQueue
from seggpt_backend.settings import Settings
from tests.service_support import captured


def _runtime(**over) -> Runtime:
    queue = InProcessJobQueue(lambda *a: None)
    return Runtime(Settings.from_env({}, **over), MemoryKV(), queue)


def test_fallback_engine_version_is_derived_from_the_weights_spec() -> None:
    assert fallback_engine_version("demo") == "seggpt-demo"
    assert fallback_engine_version("BAAI/seggpt-vit-large") == "seggpt-seggpt-vit-large"
    assert fallback_engine_version("/models/my weights.pth") == "seggpt-my_weights.pth"


def test_model_version_follows_engine_and_examples() -> None:
    rt = _runtime(seggpt_weights="demo")
    try:
        assert rt.model_version("1") == "seggpt-demo.ex-none"
        rt.kv.hset("engine", {"version": "seggpt-demo-abc123"})
        assert rt.model_version("1") == "seggpt-demo-abc123.ex-none"
        body = captured("webhook_annotation_created")
        rec = record_from_annotation(body["annotation"], body["task"], {"image": "image"})
        assert rec is not None
        rt.examples.upsert("1", rec)
        with_example = rt.model_version("1")
        assert (
            with_example.startswith("seggpt-demo-abc123.ex-") and with_example != "seggpt-demo-abc123.ex-none"
        )
        assert rt.model_version("2") == "seggpt-demo-abc123.ex-none"  # per project
        assert rt.redis_status() == "embedded"
    finally:
        rt.close()
