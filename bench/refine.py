"""Benchmark: interactive refinement (boxes and clicks) on held-out synthetic tasks, and its latency.

Quality. Tasks are built so the one-shot suggestion misses or blurs objects: the query is a 2 x 2
mosaic of four held-out scenes of the same target class (several instances, each object 4 x
smaller in area than in its own scene: mostly 0.3-3 % of the image), the prompt is one labelled
scene at its own scale. Half of the tasks come from :mod:`seggpt_backend.demo.synthetic`
(held-out seeds, ``semantic``), half from the evaluation-only family
:mod:`seggpt_backend.demo.eval_tasks` (each scene resized to 160 x 160). The suggestion is the
engine's whole-image prediction with that one example; refinement is the service's own
:func:`seggpt_backend.service.jobs.refine.refine` with its :class:`~seggpt_backend.service.jobs.zoom.ZoomSegmenter`.

- Clicks (the interactive-segmentation protocol): each simulated click goes to the interior
  point (deepest under erosion) of the largest error region: positive on the largest missed
  ground-truth part, negative on the largest false positive, whichever is larger. The context
  holds every click so far (as Label Studio re-sends them). mIoU after 0, 1, 3 and 5 clicks
  (whole-image IoU per task, averaged), and NoC@85: clicks until IoU >= 0.85 (capped at
  :data:`MAX_CLICKS`; a task that never gets there counts the cap).
- Boxes: for every ground-truth object under 5 % of the image, its ground-truth box alone;
  IoU with that object before (the suggestion inside the box) and after.
- Missed objects: every ground-truth object the suggestion covers less than half of; one
  positive click on its interior point; recovered when the component of the answer under the
  click has IoU >= 0.5 with that object.

Latency (``--latency``): the worker's real :class:`~seggpt_backend.service.jobs.pipeline.ChunkRunner`
with the task cache in a real Redis (``--redis-url``): a batch chunk fills the cache, then
interactive jobs: a positive click on the suggestion (answered from the cache, no forward pass)
and a box on an uncached window (one zoomed forward pass), idle and while a second process runs
batch predictions on the same CPU. Not measured: the HTTP round trip and the RQ queue hop
(see bench/interactive.py for those: ~50 ms idle).

    .venv/bin/python bench/refine.py --tasks 40 --latency
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import cpu_name  # noqa: E402
from seggpt_backend import masks  # noqa: E402
from seggpt_backend.demo.eval_tasks import make_eval_task  # noqa: E402
from seggpt_backend.demo.synthetic import heldout_seed, make_task  # noqa: E402
from seggpt_backend.engine.engine import SegGptEngine, load_engine  # noqa: E402
from seggpt_backend.engine.interface import Example, SegmentRequest  # noqa: E402
from seggpt_backend.service.contract import Prompt  # noqa: E402
from seggpt_backend.service.jobs.refine import refine  # noqa: E402
from seggpt_backend.service.jobs.zoom import ZoomSegmenter  # noqa: E402
from seggpt_backend.service.store.kv import MemoryKV  # noqa: E402
from seggpt_backend.service.store.taskcache import TaskCache  # noqa: E402

RESULTS = REPO / "bench" / "results_refine.md"
MAX_CLICKS = 10
SMALL = 0.05  # "objects under 5 % of the image"
SEED_BASE = 700_000  # held-out seed range of this bench (quality.py uses < 600_000)
LABEL = "Object"


@dataclass
class BenchTask:
    """``query (H, W, 3) uint8``, ``gt (H, W) bool``, one ``example``; ``family`` for the table."""

    query: np.ndarray
    gt: np.ndarray
    example: Example
    family: str


def _mosaic(tiles: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)


def _resize(a: np.ndarray, size: int, *, mask: bool) -> np.ndarray:
    if mask:
        return (
            np.asarray(
                Image.fromarray(a.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
            )
            > 127
        )
    return np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC))


def build_tasks(n: int) -> list[BenchTask]:
    """``n`` mosaic tasks, alternating the two generators (deterministic)."""
    out: list[BenchTask] = []
    for i in range(n):
        if i % 2 == 0:
            base = make_task(heldout_seed(SEED_BASE + i * 5), split="heldout", kind="semantic")
            cls = base.labels[0]
            scenes = [
                make_task(
                    heldout_seed(SEED_BASE + i * 5 + 1 + j), split="heldout", kind="semantic", classes=(cls,)
                )
                for j in range(4)
            ]
            tiles, gts = [s.query_image for s in scenes], [s.query_mask[0] for s in scenes]
            example = Example(f"bench{i}", base.prompt_images[0], {LABEL: base.prompt_masks[0][0]})
            family = "synthetic"
        else:
            base = make_eval_task(SEED_BASE + i * 5)
            cls = base.labels[0]
            scenes = [make_eval_task(SEED_BASE + i * 5 + 1 + j, classes=(cls,)) for j in range(4)]
            tiles = [_resize(s.query_image, 160, mask=False) for s in scenes]
            gts = [_resize(s.query_mask[0], 160, mask=True) for s in scenes]
            example = Example(f"bench{i}", base.prompt_images[0], {LABEL: base.prompt_masks[0][0]})
            family = "eval family"
        out.append(BenchTask(_mosaic(tiles), _mosaic(gts), example, family))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` deepest under repeated 4-neighbour erosion (nearest its centroid)."""
    last = region
    cur = region
    while cur.any():
        last = cur
        p = np.pad(cur, 1)
        cur = cur & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    rows, cols = np.nonzero(last)
    cy, cx = rows.mean(), cols.mean()
    i = int(np.argmin((rows - cy) ** 2 + (cols - cx) ** 2))
    return int(rows[i]), int(cols[i])


def largest(region: np.ndarray) -> np.ndarray:
    labels, n = masks.label(region)
    if n == 0:
        return region
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return labels == int(np.argmax(sizes[1:]) + 1)


def pct(r: int, c: int, shape: tuple[int, ...]) -> tuple[float, float]:
    """Pixel centre -> percent (x, y) as the editor sends it."""
    return (c + 0.5) / shape[1] * 100.0, (r + 0.5) / shape[0] * 100.0


class Case:
    """One task with its suggestion and a zoom on the real engine (zoomed maps memoised)."""

    def __init__(self, engine: SegGptEngine, task: BenchTask, index: int) -> None:
        self.task = task
        pred = engine.segment([SegmentRequest(task.query, {LABEL: [task.example]})], seg_type="semantic")[0][
            LABEL
        ]
        self.soft, self.mask = pred.soft, pred.mask
        self.zoom = ZoomSegmenter(
            engine=engine,
            label=LABEL,
            size=task.gt.shape,  # type: ignore[arg-type]
            source=lambda: (task.query, [task.example], None),
            cache=TaskCache(MemoryKV(), 3600),
            cache_key=("bench", "v", index),
            engine_kwargs={"seg_type": "semantic"},
        )

    def answer(
        self, points: list[tuple[float, float, bool]], boxes: list[tuple[float, float, float, float]]
    ) -> np.ndarray:
        prompt = Prompt(LABEL, "tag", "image", tuple(points), tuple(boxes))
        return refine(self.mask, self.soft, prompt, zoom=self.zoom).mask


def click_curve(case: Case) -> list[float]:
    """IoU after 0..MAX_CLICKS simulated clicks."""
    gt = case.task.gt
    pred = case.mask
    points: list[tuple[float, float, bool]] = []
    curve = [iou(pred, gt)]
    for _ in range(MAX_CLICKS):
        missed, extra = largest(gt & ~pred), largest(pred & ~gt)
        if not missed.any() and not extra.any():
            curve.append(curve[-1])
            continue
        positive = missed.sum() >= extra.sum()
        r, c = interior_point(missed if positive else extra)
        x, y = pct(r, c, gt.shape)
        points.append((x, y, bool(positive)))
        pred = case.answer(points, [])
        curve.append(iou(pred, gt))
    return curve


def object_cases(case: Case) -> tuple[list[tuple[float, float, float]], list[tuple[float, bool]]]:
    """Per small object: (area fraction, IoU before, IoU after its box); per missed object:
    (IoU of the clicked component, recovered)."""
    gt = case.task.gt
    height, width = gt.shape
    boxes: list[tuple[float, float, float]] = []
    clicks: list[tuple[float, bool]] = []
    for obj in masks.split(gt, min_pixels=12):
        rows, cols = np.nonzero(obj)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        if obj.mean() < SMALL:
            box = (c0 / width * 100, r0 / height * 100, (c1 - c0) / width * 100, (r1 - r0) / height * 100)
            before = iou(case.mask[r0:r1, c0:c1], obj[r0:r1, c0:c1])
            after = iou(case.answer([], [box]), obj)
            boxes.append((float(obj.mean()), before, after))
        if (case.mask & obj).sum() < 0.5 * obj.sum():
            r, c = interior_point(obj)
            x, y = pct(r, c, gt.shape)
            out = case.answer([(x, y, True)], [])
            labels, _ = masks.label(out)
            comp = labels == labels[r, c] if labels[r, c] else np.zeros_like(out)
            score = iou(comp, obj)
            clicks.append((score, score >= 0.5))
    return boxes, clicks


# ---------------------------------------------------------------------------- latency


def latency(
    engine_spec: str, redis_url: str, tasks: list[BenchTask], repeats: int, load: bool
) -> dict[str, list[float]]:
    """Worker-side interactive jobs through ChunkRunner with the task cache in Redis."""
    from seggpt_backend.service.contract import JobTask, Target
    from seggpt_backend.service.jobs.materialize import Materializer
    from seggpt_backend.service.jobs.pipeline import Chunk, ChunkRunner, Options
    from seggpt_backend.service.store.examples import record_from_annotation
    from seggpt_backend.service.store.kv import RedisKV
    from tests.service_support import brush_result, png_bytes

    files: dict[str, bytes] = {}
    pool = ThreadPoolExecutor(2)

    def fetch(url: str, task_id: int | None) -> bytes:
        return files[url]

    def loader(url: str, task_id: int) -> Future:
        from seggpt_backend.engine.images import load_image_and_size

        return pool.submit(lambda: load_image_and_size(fetch(url, task_id), target_size=448))

    prefix = f"bench-refine-{os.getpid()}"
    kv = RedisKV.from_url(redis_url, prefix)
    targets = [Target("tag", "image", "image", (LABEL,))]
    records = []
    for i, t in enumerate(tasks[:4]):
        files[f"/ex{i}.png"] = png_bytes(t.example.image)
        ann = {
            "id": i + 1,
            "updated_at": "2026-01-01T00:00:00Z",
            "result": brush_result({LABEL: t.example.masks[LABEL]}),
        }
        records.append(
            record_from_annotation(
                ann, {"id": 1000 + i, "data": {"image": f"/ex{i}.png"}}, {"image": "image"}
            )
        )
    jobs = []
    for i, t in enumerate(tasks):
        files[f"/q{i}.png"] = png_bytes(t.query)
        jobs.append(JobTask(i + 1, {"image": f"/q{i}.png"}))
    engine = load_engine(engine_spec, device="cpu")
    runner = ChunkRunner(
        engine=engine,
        load=loader,
        materializer=Materializer(MemoryKV(), fetch, max_pixels=10**8),
        pool=pool,
        cache=TaskCache(kv, 600),
    )
    options = Options(num_examples=1, seg_type="semantic")

    def chunk(tasks_: list[JobTask], prompt: Prompt | None, version: str) -> Chunk:
        return Chunk(
            project="bench",
            model_version=version,
            targets=targets,
            tasks=tasks_,
            records=records,
            prompt=prompt,
        )

    background = None
    if load:  # a batch computing on the same CPU (another worker process of the deployment)
        background = subprocess.Popen(
            [sys.executable, __file__, "--busy", "--weights", engine_spec],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(3.0)
    times: dict[str, list[float]] = {
        "uncached click (download, decode, full pass; may zoom)": [],
        "cached click": [],
        "zoomed box": [],
        "same box again (zoom cache)": [],
    }
    try:
        for rep in range(repeats):
            version = f"v{rep}-{load}"
            for i, job in enumerate(jobs):
                t = tasks[i]
                r, c = interior_point(largest(t.gt))
                x, y = pct(r, c, t.gt.shape)
                click = Prompt(LABEL, "tag", "image", ((x, y, True),), ())
                obj = largest(t.gt)
                rows, cols = np.nonzero(obj)
                h, w = t.gt.shape
                box = (
                    cols.min() / w * 100,
                    rows.min() / h * 100,
                    (cols.max() + 1 - cols.min()) / w * 100,
                    (rows.max() + 1 - rows.min()) / h * 100,
                )
                box_prompt = Prompt(LABEL, "tag", "image", (), (box,))

                def timed(name: str, prompt: Prompt, version: str = version, job: JobTask = job) -> None:
                    ch = chunk([job], prompt, version)
                    started = time.perf_counter()
                    out = runner.run(ch, options)
                    times[name].append(time.perf_counter() - started)
                    assert out.entries[job.id].ok, out.entries[job.id].error

                timed("uncached click (download, decode, full pass; may zoom)", click, version + "-cold")
                runner.run(chunk([job], None, version), options)  # the batch prediction fills the cache
                # A click the cache answers: on the suggestion itself (no forward pass).
                soft = runner.cache.get_soft("bench", version, job.id, LABEL)  # type: ignore[union-attr]
                assert soft is not None
                suggestion = soft > 128 / 255
                if suggestion.any():
                    sr, sc = interior_point(largest(suggestion))
                    sx, sy = pct(sr, sc, t.gt.shape)
                    cached = Prompt(LABEL, "tag", "image", ((sx, sy, True),), ())
                else:  # nothing suggested: a negative click on background needs no pass either
                    cached = Prompt(LABEL, "tag", "image", ((x, y, False),), ())
                timed("cached click", cached)
                timed("zoomed box", box_prompt)
                timed("same box again (zoom cache)", box_prompt)
    finally:
        if background is not None:
            background.terminate()
            background.wait()
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    return times


def busy(weights: str) -> None:
    """Batch load: whole-image predictions in a loop until killed."""
    engine = load_engine(weights, device="cpu")
    task = build_tasks(1)[0]
    reqs = [SegmentRequest(task.query, {LABEL: [task.example]})] * 8
    while True:
        engine.segment(reqs, seg_type="semantic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="demo")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--latency-tasks", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6"))
    ap.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.busy:
        busy(args.weights)
        return
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.perf_counter()
    engine = load_engine(args.weights, device="cpu")
    tasks = build_tasks(args.tasks)
    curves: list[list[float]] = []
    boxes: list[tuple[float, float, float]] = []
    clicks: list[tuple[float, bool]] = []
    per_family: dict[str, list[list[float]]] = {}
    for i, task in enumerate(tasks):
        case = Case(engine, task, i)
        curve = click_curve(case)
        curves.append(curve)
        per_family.setdefault(task.family, []).append(curve)
        b, c = object_cases(case)
        boxes += b
        clicks += c
    quality_s = time.perf_counter() - started
    lat = None
    if args.latency:
        lt = tasks[: args.latency_tasks]
        lat = {"idle": latency(args.weights, args.redis_url, lt, args.repeats, False)}
        lat["while a batch runs"] = latency(args.weights, args.redis_url, lt, args.repeats, True)
    report(args, curves, per_family, boxes, clicks, lat, quality_s)


def _noc(curve: list[float], target: float = 0.85) -> int:
    for k, v in enumerate(curve):
        if v >= target:
            return k
    return MAX_CLICKS


def report(args, curves, per_family, boxes, clicks, lat, quality_s) -> None:  # type: ignore[no-untyped-def]
    arr = np.array(curves)
    lines = [
        "# Interactive refinement: clicks and boxes (demo model)"
        if args.weights == "demo"
        else f"# Interactive refinement ({args.weights})",
        "",
        f"Script: `bench/refine.py` ({dt.date.today().isoformat()}), weights `{args.weights}`, CPU: {cpu_name()}, "
        f"torch threads {min(2, os.cpu_count() or 1)}, no GPU; load average at the end "
        f"{os.getloadavg()[0]:.1f} (shared machine). {len(curves)} mosaic tasks (see the script's docstring), "
        f"quality part {quality_s:.0f} s. Command: `.venv/bin/python bench/refine.py --tasks {args.tasks}"
        f"{' --latency' if args.latency else ''}`.",
        "",
        "## Clicks (simulated annotator, whole-image IoU)",
        "",
        "| set | n | 0 clicks | 1 | 3 | 5 | NoC@85 (cap 10) | reached 0.85 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, cs in [("all", curves), *sorted(per_family.items())]:
        a = np.array(cs)
        noc = [_noc(c) for c in cs]
        reached = np.mean([max(c) >= 0.85 for c in cs])
        lines.append(
            f"| {name} | {len(cs)} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {a[:, 3].mean():.3f} | "
            f"{a[:, 5].mean():.3f} | {np.mean(noc):.2f} | {reached:.0%} |"
        )
    b = np.array(boxes) if boxes else np.zeros((0, 3))
    lift = float((b[:, 2] - b[:, 1]).mean()) if len(b) else float("nan")
    rec = np.mean([ok for _, ok in clicks]) if clicks else float("nan")
    lines += [
        "",
        f"mIoU after 10 clicks: {arr[:, 10].mean():.3f}.",
        "",
        "## Boxes on small objects and clicks on missed objects",
        "",
        "| measure | n | before | after | target | met |",
        "|---|---:|---:|---:|---|---|",
        f"| ground-truth box on an object < 5 % of the image: IoU with the object | {len(b)} | {b[:, 1].mean():.3f} | "
        f"{b[:, 2].mean():.3f} (lift {lift:+.3f}) | lift >= 0.15 | {'yes' if lift >= 0.15 else 'no'} |",
        f"| one positive click on a missed object (suggestion covers < 50 %): recovered (IoU >= 0.5) | {len(clicks)} | - | "
        f"{rec:.0%} (mean IoU {np.mean([s for s, _ in clicks]):.3f}) | >= 70 % | {'yes' if rec >= 0.7 else 'no'} |",
        "",
        f"Box IoU after, by object size: < 1 %: {_by_size(b, 0, 0.01)}; 1-2.5 %: {_by_size(b, 0.01, 0.025)}; "
        f"2.5-5 %: {_by_size(b, 0.025, 0.05)} (mean IoU before -> after, n).",
    ]
    if lat:
        lines += [
            "",
            "## Latency (worker side, real ChunkRunner, task cache in real Redis)",
            "",
            f"{args.latency_tasks} tasks x {args.repeats} repeats per row; 'while a batch runs': a second process runs "
            "8-query whole-image predictions in a loop on the same 2 CPUs. Excludes the HTTP and RQ hop "
            "(bench/interactive.py: ~50 ms p50 idle).",
            "",
            "| job | condition | n | p50 ms | p90 ms | target |",
            "|---|---|---:|---:|---:|---|",
        ]
        targets = {"cached click": "p50 <= 300 ms", "zoomed box": "p50 <= 1500 ms"}
        for cond, times in lat.items():
            for name, ts in times.items():
                ms = sorted(t * 1000 for t in ts)
                p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
                lines.append(
                    f"| {name} | {cond} | {len(ms)} | {statistics.median(ms):.0f} | {p90:.0f} | {targets.get(name, '-')} |"
                )
    lines += ["", f"Python {platform.python_version()}, {platform.platform()}."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _by_size(b: np.ndarray, lo: float, hi: float) -> str:
    sel = b[(b[:, 0] >= lo) & (b[:, 0] < hi)] if len(b) else b
    if not len(sel):
        return "none"
    return f"{sel[:, 1].mean():.2f} -> {sel[:, 2].mean():.2f} (n={len(sel)})"


if __name__ == "__main__":
    main()
