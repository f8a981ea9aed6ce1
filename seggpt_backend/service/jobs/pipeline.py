"""One job's computation: images in, Label Studio results out (runs on a worker).

For a chunk of tasks: query images are downloaded and decoded in a thread pool (while example
images are materialised), examples are chosen per query and label, all queries go to the engine
in ONE ``segment`` call, and masks become brush regions. Failures are per task: a task whose image
cannot be fetched or decoded gets a failed :class:`TaskResult` (``"task 12: ..."``) and the others proceed; if the
engine raises on the batch, the requests are retried one by one so only the culprit fails.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seggpt_backend.engine.images import ImageError
from seggpt_backend.engine.interface import Engine, Example, LearnedPrompt, MaskPrediction, SegmentRequest
from seggpt_backend.labelstudio.client import LabelStudioError
from seggpt_backend.service.contract import JobTask, Prompt, Target, TaskResult
from seggpt_backend.service.errors import ExampleError
from seggpt_backend.service.jobs.materialize import Materialized, Materializer
from seggpt_backend.service.jobs.refine import refine
from seggpt_backend.service.jobs.regions import (
    DEMO_CALIBRATION,
    RegionFilter,
    prediction_result,
    regions_for_label,
)
from seggpt_backend.service.jobs.selection import Candidate, describe, most_recent, select
from seggpt_backend.service.jobs.zoom import ZoomSegmenter
from seggpt_backend.service.store.examples import ExampleRecord
from seggpt_backend.service.store.taskcache import TaskCache

log = logging.getLogger(__name__)

# The authors' binary rule on the painting's channel mean (> 128 of 255) as a soft-map cut.
BINARY_CUT = 128.0 / 255.0

# What a bad, missing or oversized image raises; anything else is logged with its traceback.
EXPECTED_IMAGE_ERRORS: tuple[type[Exception], ...] = (ImageError, LabelStudioError)
LoadedImage = tuple[np.ndarray, tuple[int, int]]  # (pixels (h, w, 3) uint8, original (H, W))
ImageLoader = Callable[[str, int], "Future[LoadedImage]"]


@dataclass
class Options:
    """The knobs of one job: the environment's, or its project's Extra params
    (:class:`~seggpt_backend.service.contract.ProjectOptions`). ``threshold``: soft-map
    foreground threshold; ``min_region_area`` (pixels) and ``min_score`` drop specks."""

    num_examples: int = 4
    selection: str = "retrieval"
    pool: int = 64
    split_components: bool = False
    ensemble: str = "feature"
    seg_type: str = "instance"
    multilabel: str = "per-label"
    polygon_tolerance: float = 1.0  # pixels, for PolygonLabels targets
    threshold: float = 0.5
    min_region_area: int = 0
    min_score: float = 0.0
    score_calibration: tuple[float, float] = DEMO_CALIBRATION  # the weights' (see regions)

    def region_filter(self, *, interactive: bool) -> RegionFilter:
        return RegionFilter(
            split_components=self.split_components and not interactive,
            threshold=self.threshold,
            min_area=self.min_region_area,
            # An interactive answer is what the annotator asked for: never filtered away.
            min_score=0.0 if interactive else self.min_score,
            calibration=self.score_calibration,
        )


@dataclass(frozen=True, eq=False)
class ServedPrompt:
    """A promoted learned prompt as a worker serves it for one label: ``mode`` ``"ensemble"``
    (with the retrieved examples) or ``"alone"``; ``version``: its prompt-store version."""

    prompt: LearnedPrompt
    mode: str
    version: str


@dataclass
class ChunkOutcome:
    """``entries``: task id -> its prediction or failure; ``messages``: skipped labels etc."""

    entries: dict[int, TaskResult] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


class ExamplePicker:
    """Chooses examples for (target, label, query) from a project's records, materialising lazily."""

    def __init__(
        self,
        project: str,
        records: Sequence[ExampleRecord],
        materializer: Materializer,
        options: Options,
        single_target: bool,
    ) -> None:
        self.project = project
        self.materializer = materializer
        self.options = options
        self.single_target = single_target
        self.records = {r.annotation_id: r for r in records}
        self._failed: set[tuple[int, str]] = set()

    def candidates(self, target: Target, label: str) -> list[Candidate]:
        """The newest annotation per task that has ``label`` on ``target``'s image (at most ``pool``)."""
        newest: dict[int, ExampleRecord] = {}
        for r in self.records.values():
            # With one BrushLabels control, a renamed control keeps its old annotations usable.
            from_name = None if self.single_target else target.from_name
            if target.to_name not in r.images or label not in r.labels(from_name):
                continue
            cur = newest.get(r.task_id)
            if cur is None or (r.updated_at, r.annotation_id) > (cur.updated_at, cur.annotation_id):
                newest[r.task_id] = r
        cands = [Candidate(r.annotation_id, (r.updated_at, r.annotation_id)) for r in newest.values()]
        return most_recent(cands, self.options.pool)

    def materialize(self, annotation_id: int, to_name: str) -> Materialized | None:
        if (annotation_id, to_name) in self._failed:
            return None
        try:
            return self.materializer.get(self.project, self.records[annotation_id], to_name)
        except ExampleError as exc:
            log.warning("project %s: example skipped: %s", self.project, exc)
            self._failed.add((annotation_id, to_name))
            return None

    def pick(self, target: Target, label: str, query_desc: np.ndarray | None) -> list[Example]:
        cands = self.candidates(target, label)
        if self.options.selection == "retrieval" and query_desc is not None:
            with_desc = []
            for c in cands:
                mat = self.materialize(c.key, target.to_name)
                if mat is not None:
                    with_desc.append(Candidate(c.key, c.recency, mat.descriptor))
            cands = with_desc
        chosen: list[Example] = []
        mode = "retrieval" if self.options.selection == "retrieval" else "recent"
        for c in select(cands, len(cands), mode=mode, query_descriptor=query_desc):  # type: ignore[arg-type]
            mat = self.materialize(c.key, target.to_name)
            if mat is not None:
                chosen.append(mat.example(None if self.single_target else target.from_name, label))
            if len(chosen) >= self.options.num_examples:
                break
        return chosen


@dataclass(frozen=True)
class Chunk:
    """One job's work: ``tasks`` (ids and ``{data_key: url}``) of ``project`` on ``targets``.

    ``records``: the project's examples; ``model_version``: what the predictions will carry;
    ``prompt``: the editor's smart-tool context (interactive jobs), or None. ``learned``: the
    promoted learned prompt per label (only labels of ``targets`` are used, so the prompt of a
    label removed from the config is ignored).
    """

    project: str
    model_version: str
    targets: Sequence[Target]
    tasks: Sequence[JobTask]
    records: Sequence[ExampleRecord]
    prompt: Prompt | None = None
    learned: Mapping[str, ServedPrompt] = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One decoded query: a task's image for one target (``pixels`` (h, w, 3) uint8, ``size`` (H, W))."""

    task_id: int
    target: Target
    pixels: np.ndarray
    size: tuple[int, int]


@dataclass(frozen=True)
class ChunkRunner:
    """Runs chunks on a worker's long-lived parts: the engine (loaded once), the image loader,
    the example materializer and a thread pool. Build one per worker; call :meth:`run` per job.

    ``cache``: the per-task cache (soft maps, decoded images) batch jobs fill and interactive
    jobs read, so a click that needs no new forward pass is answered from it on any worker.
    """

    engine: Engine
    load: ImageLoader
    materializer: Materializer
    pool: ThreadPoolExecutor | None = None
    cache: TaskCache | None = None

    def run(self, chunk: Chunk, options: Options) -> ChunkOutcome:
        """Predict every task of ``chunk``: one engine call for all of them (see the module docstring).

        With ``chunk.prompt`` (interactive), only the prompt's label on its control is predicted
        (or read from the task cache) and then refined, zooming in where the prompt needs it.
        """
        if chunk.prompt is not None:
            return self._interactive(chunk, chunk.prompt, options)
        out = ChunkOutcome()
        targets = list(chunk.targets)
        # With one BrushLabels control, examples match by label alone (survives a renamed control).
        picker = ExamplePicker(
            chunk.project, chunk.records, self.materializer, options, single_target=len(targets) == 1
        )
        downloads = self._download(chunk.tasks, targets)
        self._warm_examples(picker, targets, options, chunk)  # while the query images download
        units = self._decode(chunk.tasks, targets, downloads, out)
        requests = self._requests(chunk, units, picker, options, out)
        predictions = _segment(self.engine, requests, options, [u.task_id for u in units], out)
        regions: dict[int, list[dict[str, Any]]] = {}
        filt = options.region_filter(interactive=False)
        for unit, preds in zip(units, predictions, strict=True):
            if preds is None:
                continue
            task_regions = regions.setdefault(unit.task_id, [])
            for label, pred in preds.items():
                task_regions.extend(
                    regions_for_label(
                        pred,
                        task_id=unit.task_id,
                        label=label,
                        from_name=unit.target.from_name,
                        to_name=unit.target.to_name,
                        filters=filt,
                        kind=unit.target.kind,
                        polygon_tolerance=options.polygon_tolerance,
                    )
                )
        self._remember(chunk, units, predictions)
        for tid, task_regions in regions.items():
            if tid not in out.entries:
                out.entries[tid] = prediction_result(task_regions, chunk.model_version)
        return out

    def _remember(
        self, chunk: Chunk, units: Sequence[Unit], predictions: Sequence[dict[str, MaskPrediction] | None]
    ) -> None:
        """Keep each unit's decoded image and soft maps in the task cache for later clicks.

        Only for a chunk of one task: that is the task an annotator just opened in the editor
        (Label Studio asks for it alone), the one about to be clicked. A bulk pre-labelling run
        would otherwise fill Redis with megabytes per task nobody may ever click; its tasks pay
        one forward pass on their first click and are cached from then on.
        """
        if self.cache is None or not self.cache.enabled or len(chunk.tasks) != 1:
            return
        urls = {t.id: t.images for t in chunk.tasks}
        for unit, preds in zip(units, predictions, strict=True):
            url = urls.get(unit.task_id, {}).get(unit.target.data_key)
            if preds is None or not isinstance(url, str):
                continue
            try:
                self.cache.put_image(chunk.project, unit.task_id, url, unit.pixels, unit.size)
                for label, pred in preds.items():
                    self.cache.put_soft(chunk.project, chunk.model_version, unit.task_id, label, pred.soft)
            except Exception:  # a cache is an optimisation: the prediction is delivered anyway
                log.warning("task %s: could not fill the refine cache", unit.task_id, exc_info=True)

    # ------------------------------------------------------------------ interactive
    def _interactive(self, chunk: Chunk, prompt: Prompt, options: Options) -> ChunkOutcome:
        """One task, one label: the suggestion (cached or computed), refined by the prompt."""
        out = ChunkOutcome()
        task = chunk.tasks[0]
        targets = [t for t in chunk.targets if t.from_name == prompt.from_name]
        if not targets:
            out.entries[task.id] = TaskResult.failure(
                f"task {task.id}: control {prompt.from_name!r} of the smart tool is not in the label config"
            )
            return out
        target = targets[0]
        label = prompt.label
        url = task.images.get(target.data_key)
        if not isinstance(url, str) or not url:
            out.entries[task.id] = TaskResult.failure(
                f"task {task.id}: no image URL in data[{target.data_key!r}]"
            )
            return out
        picker = ExamplePicker(
            chunk.project, chunk.records, self.materializer, options, single_target=len(chunk.targets) == 1
        )
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        version = chunk.model_version
        loaded: dict[str, Any] = {}

        def image() -> LoadedImage:
            if "image" not in loaded:
                hit = cache.get_image(chunk.project, task.id, url) if cache else None
                if hit is None:
                    hit = self.load(url, task.id).result()
                    if cache:
                        cache.put_image(chunk.project, task.id, url, hit[0], hit[1])
                loaded["image"] = hit
            return loaded["image"]

        def request() -> SegmentRequest:
            if "request" not in loaded:
                pixels, size = image()
                unit = Unit(task.id, target, pixels, size)
                loaded["request"] = self._requests(chunk, [unit], picker, options, out)[0]
            return loaded["request"]

        soft = cache.get_soft(chunk.project, version, task.id, label) if cache else None
        try:
            if soft is None:
                req = request()
                preds = _segment(self.engine, [req], options, [task.id], out)[0]
                if preds is None:
                    return out  # the failure is in out.entries
                pred = preds.get(label)
                if pred is None:
                    out.entries[task.id] = prediction_result([], version)
                    return out
                soft = pred.soft
                if cache:
                    soft = cache.put_soft_exact(chunk.project, version, task.id, label, soft)
            suggestion = soft > BINARY_CUT

            def source() -> tuple[np.ndarray, Sequence[Example], LearnedPrompt | None]:
                req = request()
                served = chunk.learned.get(label)
                return req.query, list(req.examples.get(label, ())), served.prompt if served else None

            zoom = ZoomSegmenter(
                engine=self.engine,
                label=label,
                size=(int(soft.shape[0]), int(soft.shape[1])),
                source=source,
                cache=cache,
                cache_key=(chunk.project, version, task.id),
                engine_kwargs={"ensemble": options.ensemble, "seg_type": options.seg_type},
            )
            refined = refine(suggestion, soft, prompt, zoom=zoom)
        except EXPECTED_IMAGE_ERRORS as exc:
            out.entries[task.id] = TaskResult.failure(f"task {task.id}: image {url!r}: {exc}")
            return out
        except Exception as exc:
            _fail(out, task.id, exc)
            return out
        out.messages.extend(f"task {task.id}: {note}" for note in refined.notes)
        pred = MaskPrediction(refined.soft, refined.mask, 0.0)
        regions = regions_for_label(
            pred,
            task_id=task.id,
            label=label,
            from_name=target.from_name,
            to_name=target.to_name,
            filters=options.region_filter(interactive=True),
            mask=refined.mask,
            kind=target.kind,
            polygon_tolerance=options.polygon_tolerance,
        )
        out.entries[task.id] = prediction_result(regions, version)
        return out

    def _download(
        self, tasks: Sequence[JobTask], targets: Sequence[Target]
    ) -> dict[tuple[int, str], Future[LoadedImage]]:
        futures: dict[tuple[int, str], Future[LoadedImage]] = {}
        for task in tasks:
            for t in targets:
                url = task.images.get(t.data_key)
                if isinstance(url, str) and url:
                    futures[(task.id, t.data_key)] = self.load(url, task.id)
        return futures

    def _warm_examples(
        self, picker: ExamplePicker, targets: Sequence[Target], options: Options, chunk: Chunk
    ) -> None:
        """Materialise the example pool in the background (retrieval needs every candidate)."""
        if self.pool is None or not chunk.records:
            return
        limit = options.num_examples if options.selection != "retrieval" else None
        for t in targets:
            for label in t.labels if chunk.prompt is None else (chunk.prompt.label,):
                for c in picker.candidates(t, label)[:limit]:
                    # The context names the project whose Label Studio client fetches (jobs.clients).
                    self.pool.submit(contextvars.copy_context().run, picker.materialize, c.key, t.to_name)

    @staticmethod
    def _decode(
        tasks: Sequence[JobTask],
        targets: Sequence[Target],
        downloads: dict[tuple[int, str], Future[LoadedImage]],
        out: ChunkOutcome,
    ) -> list[Unit]:
        """The decoded queries; a task none of whose images decodes fails, naming each problem."""
        units: list[Unit] = []
        for task in tasks:
            problems: list[str] = []
            before = len(units)
            for t in targets:
                fut = downloads.get((task.id, t.data_key))
                if fut is None:
                    problems.append(f"task {task.id}: no image URL in data[{t.data_key!r}]")
                    continue
                try:
                    pixels, size = fut.result()
                    units.append(Unit(task.id, t, pixels, size))
                except Exception as exc:
                    problems.append(f"task {task.id}: image {task.images.get(t.data_key)!r}: {exc}")
                    if not isinstance(exc, EXPECTED_IMAGE_ERRORS):  # a bug, not a bad image: keep the trace
                        log.error("task %s: unexpected error loading its image", task.id, exc_info=exc)
            if problems and len(units) == before:
                out.entries[task.id] = TaskResult.failure("; ".join(problems))
                log.warning("%s", "; ".join(problems))
        return units

    @staticmethod
    def _requests(
        chunk: Chunk, units: Sequence[Unit], picker: ExamplePicker, options: Options, out: ChunkOutcome
    ) -> list[SegmentRequest]:
        """One engine request per unit, with the examples chosen for each of its labels."""
        requests: list[SegmentRequest] = []
        skipped: set[str] = set()
        for unit in units:
            qdesc = describe(unit.pixels) if options.selection == "retrieval" else None
            labels = unit.target.labels if chunk.prompt is None else (chunk.prompt.label,)
            examples: dict[str, list[Example]] = {}
            extra: dict[str, LearnedPrompt] = {}
            for label in labels:
                served = chunk.learned.get(label)
                alone = served is not None and served.mode == "alone"
                chosen = [] if alone else picker.pick(unit.target, label, qdesc)
                if served is not None:
                    extra[label] = served.prompt
                if chosen:
                    examples[label] = chosen
                elif served is None:
                    skipped.add(label)
            requests.append(
                SegmentRequest(query=unit.pixels, examples=examples, size=unit.size, learned=extra)
            )
        for label in sorted(skipped):
            msg = (
                f"project {chunk.project}: label {label!r} skipped: no accepted annotation with a brush "
                "region for it yet"
            )
            out.messages.append(msg)
            log.info("%s", msg)
        if units and not any(r.examples or r.learned for r in requests):
            out.messages.append(
                f"project {chunk.project}: no examples yet; annotate at least one image with brush labels "
                "(every accepted annotation becomes an example)"
            )
        return requests


def _segment(
    engine: Engine, requests: list[SegmentRequest], options: Options, task_ids: list[int], out: ChunkOutcome
) -> list[dict[str, MaskPrediction] | None]:
    """One engine call for all requests; if it raises, one call per request to isolate the failure."""
    todo = [i for i, r in enumerate(requests) if r.examples or r.learned]
    results: list[dict[str, MaskPrediction] | None] = [{} for _ in requests]
    if not todo:
        return results
    kwargs = {"ensemble": options.ensemble, "seg_type": options.seg_type, "multilabel": options.multilabel}
    try:
        batch = engine.segment([requests[i] for i in todo], **kwargs)  # type: ignore[arg-type]
        for i, res in zip(todo, batch, strict=True):
            results[i] = res
        return results
    except Exception as exc:
        if len(todo) == 1:
            _fail(out, task_ids[todo[0]], exc)
            results[todo[0]] = None
            return results
        log.warning("engine failed on a batch of %d; retrying one by one", len(todo), exc_info=exc)
    for i in todo:
        try:
            results[i] = engine.segment([requests[i]], **kwargs)[0]  # type: ignore[arg-type]
        except Exception as exc:
            _fail(out, task_ids[i], exc)
            results[i] = None
    return results


def _fail(out: ChunkOutcome, task_id: int, exc: BaseException) -> None:
    msg = f"task {task_id}: segmentation failed: {type(exc).__name__}: {exc}"
    log.error("%s", msg, exc_info=exc)  # a model failure is a bug or a resource limit: keep the trace
    out.entries[task_id] = TaskResult.failure(msg)
