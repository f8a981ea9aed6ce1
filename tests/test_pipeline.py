"""One job's computation with the real (tiny, random-weight) engine on real image bytes."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from seggpt_backend.engine.engine import load_engine
from seggpt_backend.engine.images import load_image_and_size
from seggpt_backend.service.contract import JobTask, Target
from seggpt_backend.service.jobs.materialize import Materializer
from seggpt_backend.service.jobs.pipeline import Chunk, ChunkRunner, ExamplePicker, Options
from seggpt_backend.service.jobs.refine import Prompt
from seggpt_backend.service.store.examples import record_from_annotation
from seggpt_backend.service.store.kv import MemoryKV
from tests.fixtures import scene
from tests.service_support import brush_result, png_bytes

TARGETS = [Target("tag", "image", "image", ("Cat", "Dog"))]


@pytest.fixture(scope="module")
def engine():
    return load_engine("random:tiny", device="cpu")


class Files:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.pool = ThreadPoolExecutor(2)

    def fetch(self, url: str, task_id: int | None) -> bytes:
        if url not in self.data:
            raise OSError(f"404 for {url}")
        return self.data[url]

    def load(self, url: str, task_id: int) -> Future:
        return self.pool.submit(lambda: load_image_and_size(self.fetch(url, task_id), target_size=448))


def _example(
    files: Files, ann_id: int, task_id: int, seed: int, labels=("Cat", "Dog"), when="2026-01-01T00:00:00Z"
):
    image, masks = scene(64, 96, seed=seed)
    url = f"/data/upload/1/ex{ann_id}.png"
    files.data[url] = png_bytes(image)
    ann = {"id": ann_id, "updated_at": when, "result": brush_result({k: masks[k] for k in labels})}
    return record_from_annotation(ann, {"id": task_id, "data": {"image": url}}, {"image": "image"})


def _runner(files, engine) -> ChunkRunner:
    materializer = Materializer(MemoryKV(), files.fetch, max_pixels=10**8)
    return ChunkRunner(engine=engine, load=files.load, materializer=materializer, pool=files.pool)


def _run(files, records, tasks, engine, options=None, prompt=None):
    chunk = Chunk(
        project="1",
        model_version="v1",
        targets=TARGETS,
        tasks=[JobTask.from_json(t) for t in tasks],
        records=records,
        prompt=prompt,
    )
    return _runner(files, engine).run(chunk, options or Options(num_examples=2))


def test_chunk_predicts_every_task_and_isolates_a_corrupt_image(engine) -> None:
    files = Files()
    records = [_example(files, 1, 100, seed=1), _example(files, 2, 101, seed=2)]
    q1, _ = scene(72, 90, seed=7)
    files.data["/q1.png"] = png_bytes(q1)
    files.data["/bad.png"] = b"\x89PNG\r\n\x1a\n garbage"
    tasks = [
        {"id": 5, "images": {"image": "/q1.png"}},
        {"id": 6, "images": {"image": "/bad.png"}},
        {"id": 7, "images": {"image": "/missing.png"}},
        {"id": 8, "images": {}},
    ]
    out = _run(files, records, tasks, engine)
    assert set(out.entries) == {5, 6, 7, 8}
    ok = out.entries[5]
    assert ok.ok and ok.model_version == "v1" and 0.0 <= ok.score <= 1.0
    labels = sorted(r["value"]["brushlabels"][0] for r in ok.result)
    assert set(labels) <= {"Cat", "Dog"} and labels  # random weights still paint something
    for r in ok.result:
        assert (r["original_width"], r["original_height"]) == (90, 72)
        assert (r["from_name"], r["to_name"], r["type"]) == ("tag", "image", "brushlabels")
    assert (out.entries[6].error or "").startswith("task 6: image '/bad.png'")
    assert "404" in (out.entries[7].error or "") and "task 7" in (out.entries[7].error or "")
    assert out.entries[8].error == "task 8: no image URL in data['image']"


def test_labels_without_examples_are_skipped_with_a_message(engine) -> None:
    files = Files()
    records = [_example(files, 1, 100, seed=1, labels=("Cat",))]
    q, _ = scene(64, 64, seed=9)
    files.data["/q.png"] = png_bytes(q)
    out = _run(files, records, [{"id": 1, "images": {"image": "/q.png"}}], engine)
    assert {r["value"]["brushlabels"][0] for r in out.entries[1].result} <= {"Cat"}
    assert any("'Dog' skipped" in m for m in out.messages)
    none = _run(files, [], [{"id": 1, "images": {"image": "/q.png"}}], engine)
    assert (
        none.entries[1].ok
        and none.entries[1].result == ()
        and any("no examples yet" in m for m in none.messages)
    )


def test_engine_failure_on_one_request_fails_only_that_task(engine, caplog) -> None:
    class Flaky:
        model_version = engine.model_version

        def segment(self, requests, **kw):
            if any(r.query.shape[0] == 33 for r in requests):
                raise RuntimeError("CUDA error: device-side assert")  # a fault we cannot cause on CPU
            return engine.segment(requests, **kw)

    files = Files()
    records = [_example(files, 1, 100, seed=1)]
    files.data["/a.png"] = png_bytes(scene(33, 40, seed=1)[0])
    files.data["/b.png"] = png_bytes(scene(40, 40, seed=2)[0])
    out = _run(
        files,
        records,
        [{"id": 1, "images": {"image": "/a.png"}}, {"id": 2, "images": {"image": "/b.png"}}],
        Flaky(),
    )
    assert "segmentation failed: RuntimeError: CUDA error" in (out.entries[1].error or "")
    assert out.entries[2].ok
    # The swallowed exception is logged with its traceback, not only its message.
    failed = [r for r in caplog.records if "task 1: segmentation failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None


def test_interactive_prompt_returns_only_its_label_refined(engine) -> None:
    files = Files()
    records = [_example(files, 1, 100, seed=1)]
    files.data["/q.png"] = png_bytes(scene(60, 80, seed=3)[0])
    prompt = Prompt("Dog", "tag", "image", points=(), boxes=((10.0, 10.0, 30.0, 30.0),))
    out = _run(files, records, [{"id": 4, "images": {"image": "/q.png"}}], engine, prompt=prompt)
    regions = out.entries[4].result
    assert len(regions) == 1 and regions[0]["value"]["brushlabels"] == ["Dog"]
    from seggpt_backend.labelstudio import rle

    mask = rle.decode(regions[0]["value"]["rle"], 60, 80) > 0
    assert mask.any() and not mask[:, 40:].any() and not mask[30:, :].any()  # inside the rectangle


def test_picker_dedups_tasks_limits_pool_and_retrieves_look_alikes() -> None:
    files = Files()
    old = _example(files, 1, 100, seed=1, when="2026-01-01T00:00:00Z")
    newer_same_task = _example(files, 2, 100, seed=2, when="2026-01-02T00:00:00Z")
    other = _example(files, 3, 101, seed=3, when="2026-01-03T00:00:00Z")
    mat = Materializer(MemoryKV(), files.fetch, max_pixels=10**8)
    picker = ExamplePicker(
        "1", [old, newer_same_task, other], mat, Options(num_examples=1, pool=5), single_target=True
    )
    assert [c.key for c in picker.candidates(TARGETS[0], "Cat")] == [3, 2]
    small_pool = ExamplePicker("1", [old, newer_same_task, other], mat, Options(pool=1), single_target=True)
    assert [c.key for c in small_pool.candidates(TARGETS[0], "Cat")] == [3]
    from seggpt_backend.service.jobs.selection import describe

    query = scene(64, 96, seed=2)[0]  # the same picture as annotation 2
    (chosen,) = picker.pick(TARGETS[0], "Cat", describe(query))
    assert chosen.id.startswith("ann2-")
    recent = ExamplePicker(
        "1", [old, newer_same_task, other], mat, Options(num_examples=1, selection="recent"), True
    )
    assert recent.pick(TARGETS[0], "Cat", None)[0].id.startswith("ann3-")
    assert np.asarray(chosen.masks["Cat"]).dtype == bool


def test_exif_rotated_query_gets_regions_in_displayed_size(engine, tmp_path) -> None:
    from tests.fixtures import jpeg_with_exif_orientation

    files = Files()
    records = [_example(files, 1, 100, seed=1)]
    path = tmp_path / "rotated.jpg"
    displayed = jpeg_with_exif_orientation(path, 6, (64, 96))  # displayed W=64, H=96; stored 96 x 64
    assert displayed.shape[:2] == (96, 64)
    files.data["/rot.jpg"] = path.read_bytes()
    out = _run(files, records, [{"id": 1, "images": {"image": "/rot.jpg"}}], engine)
    assert out.entries[1].result
    for region in out.entries[1].result:
        assert (region["original_width"], region["original_height"]) == (64, 96)


def test_split_components_gives_one_connected_region_each(engine) -> None:
    from seggpt_backend.labelstudio import rle
    from seggpt_backend.masks import label

    files = Files()
    records = [_example(files, 1, 100, seed=1)]
    files.data["/q.png"] = png_bytes(scene(64, 96, seed=5)[0])
    out = _run(
        files,
        records,
        [{"id": 1, "images": {"image": "/q.png"}}],
        engine,
        options=Options(num_examples=1, split_components=True),
    )
    regions = out.entries[1].result
    assert len({r["id"] for r in regions}) == len(regions) > 0
    for r in regions:
        assert label(rle.decode(r["value"]["rle"], 64, 96) > 0)[1] == 1


def test_two_brush_controls_on_two_images(engine) -> None:
    files = Files()
    a, ma = scene(48, 64, seed=1)
    b, mb = scene(48, 64, seed=2)
    files.data["/a.png"], files.data["/b.png"] = png_bytes(a), png_bytes(b)
    result = brush_result({"Cat": ma["Cat"]}) + brush_result(
        {"Dog": mb["Dog"]}, from_name="tag2", to_name="image2"
    )
    rec = record_from_annotation(
        {"id": 1, "updated_at": "t", "result": result},
        {"id": 9, "data": {"image": "/a.png", "other": "/b.png"}},
        {"image": "image", "image2": "other"},
    )
    assert rec is not None and rec.images == {"image": "/a.png", "image2": "/b.png"}
    targets = [Target("tag", "image", "image", ("Cat",)), Target("tag2", "image2", "other", ("Dog",))]
    files.data["/qa.png"], files.data["/qb.png"] = (
        png_bytes(scene(40, 50, seed=3)[0]),
        png_bytes(scene(30, 70, seed=4)[0]),
    )
    chunk = Chunk("1", "v", targets, [JobTask(1, {"image": "/qa.png", "other": "/qb.png"})], [rec])
    out = _runner(files, engine).run(chunk, Options())
    seen = {
        (r["from_name"], r["to_name"], r["value"]["brushlabels"][0], r["original_width"])
        for r in out.entries[1].result
    }
    assert seen == {("tag", "image", "Cat", 50), ("tag2", "image2", "Dog", 70)}


class CountingEngine:
    """The real engine, counting its forward calls (how the cache is observed)."""

    def __init__(self, engine) -> None:
        self.inner = engine
        self.calls = 0

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def segment(self, requests, **kwargs):
        self.calls += 1
        return self.inner.segment(requests, **kwargs)


def test_an_opened_task_fills_the_cache_and_a_click_is_answered_without_a_forward_pass(engine) -> None:
    from seggpt_backend.service.store.taskcache import TaskCache

    files = Files()
    records = [_example(files, 1, 100, seed=1)]
    files.data["/q.png"] = png_bytes(scene(60, 80, seed=3)[0])
    counting = CountingEngine(engine)
    cache = TaskCache(MemoryKV(), 600)
    runner = ChunkRunner(
        engine=counting,
        load=files.load,
        materializer=Materializer(MemoryKV(), files.fetch, max_pixels=10**8),
        pool=files.pool,
        cache=cache,
    )
    task = JobTask.from_json({"id": 4, "images": {"image": "/q.png"}})
    other = JobTask.from_json({"id": 5, "images": {"image": "/q.png"}})
    bulk = Chunk(project="1", model_version="v1", targets=TARGETS, tasks=[task, other], records=records)
    runner.run(bulk, Options(num_examples=1))  # bulk pre-labelling: nothing cached (Redis stays small)
    assert counting.calls == 1 and cache.get_soft("1", "v1", 4, "Cat") is None
    counting.calls = 0
    batch = Chunk(project="1", model_version="v1", targets=TARGETS, tasks=[task], records=records)
    runner.run(batch, Options(num_examples=1))  # the task opened in the editor: cached
    assert counting.calls == 1
    soft = cache.get_soft("1", "v1", 4, "Cat")
    assert soft is not None and soft.shape == (60, 80) and cache.get_image("1", 4, "/q.png") is not None
    mask = soft > 128 / 255
    r, c = (int(v[0]) for v in np.nonzero(mask)) if mask.any() else (0, 0)
    prompt = Prompt("Cat", "tag", "image", points=(((c + 0.5) / 80 * 100, (r + 0.5) / 60 * 100, True),))
    files.data.clear()  # nothing may be downloaded: the cache has what the click needs
    clicked = runner.run(
        Chunk(project="1", model_version="v1", targets=TARGETS, tasks=[task], records=records, prompt=prompt),
        Options(num_examples=1),
    )
    assert clicked.entries[4].ok and counting.calls == 1
    # A box zooms in (one forward pass on the crop), then the same box comes from the zoom cache.
    files.data["/q.png"] = png_bytes(scene(60, 80, seed=3)[0])
    box = Prompt("Cat", "tag", "image", boxes=((10.0, 10.0, 40.0, 40.0),))
    boxed = Chunk(project="1", model_version="v1", targets=TARGETS, tasks=[task], records=records, prompt=box)
    first = runner.run(boxed, Options(num_examples=1))
    assert counting.calls == 2
    again = runner.run(boxed, Options(num_examples=1))
    assert counting.calls == 2 and again.entries[4].result == first.entries[4].result
    from seggpt_backend.labelstudio import rle

    for region in first.entries[4].result:
        m = rle.decode(region["value"]["rle"], 60, 80) > 0
        assert not m[:, 40:].any() and not m[30:, :].any() and not m[:6, :].any()  # inside the box only
