"""One job's computation: images in, Label Studio results out (runs on a worker).

For a chunk of tasks: query images are downloaded and decoded in a thread pool (while example
images are materialised), examples are chosen per query and label, all queries go to the engine
in ONE ``segment`` call, and masks become brush regions. Failures are per task: a task whose image
cannot be fetched or decoded gets ``{"error": "task 12: ..."}`` and the others proceed; if the
engine raises on the batch, the requests are retried one by one so only the culprit fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seggpt_backend.engine.interface import Engine, Example, LearnedPrompt, MaskPrediction, SegmentRequest
from seggpt_backend.service.contract import JobTask, Prompt, Target
from seggpt_backend.service.errors import ExampleError
from seggpt_backend.service.jobs.materialize import Materialized, Materializer
from seggpt_backend.service.jobs.refine import refine
from seggpt_backend.service.jobs.regions import prediction_entry, regions_for_label
from seggpt_backend.service.jobs.selection import Candidate, describe, most_recent, select
from seggpt_backend.service.store.examples import ExampleRecord

log = logging.getLogger(__name__)

LoadedImage = tuple[np.ndarray, tuple[int, int]]  # (pixels (h, w, 3) uint8, original (H, W))
ImageLoader = Callable[[str, int], "Future[LoadedImage]"]


@dataclass
class Options:
    """Per-deployment knobs (from settings)."""

    num_examples: int = 4
    selection: str = "retrieval"
    pool: int = 64
    split_components: bool = False
    ensemble: str = "feature"
    seg_type: str = "instance"
    multilabel: str = "per-label"


@dataclass(frozen=True, eq=False)
class ServedPrompt:
    """A promoted learned prompt as a worker serves it for one label: ``mode`` ``"ensemble"``
    (with the retrieved examples) or ``"alone"``; ``version``: its prompt-store version."""

    prompt: LearnedPrompt
    mode: str
    version: str


@dataclass
class ChunkOutcome:
    """``entries``: task id -> prediction entry or ``{"error": msg}``; ``messages``: skipped labels etc."""

    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
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


def run_chunk(
    *,
    project: str,
    model_version: str,
    targets: Sequence[Target],
    tasks: Sequence[JobTask],
    records: Sequence[ExampleRecord],
    materializer: Materializer,
    engine: Engine,
    load: ImageLoader,
    options: Options,
    prompt: Prompt | None = None,
    pool: ThreadPoolExecutor | None = None,
    learned: Mapping[str, ServedPrompt] | None = None,
) -> ChunkOutcome:
    """Predict ``tasks`` (ids and ``{data_key: url}``); see the module docstring.

    With ``prompt`` (interactive), only the prompt's label on its control is predicted and refined.
    ``learned``: the promoted learned prompt per label (only labels of ``targets`` are used, so
    the prompt of a label removed from the config is ignored).
    """
    learned = learned or {}
    out = ChunkOutcome()
    # With one BrushLabels control, examples match by label alone (survives a renamed control).
    picker = ExamplePicker(project, records, materializer, options, single_target=len(targets) == 1)
    if prompt is not None:
        targets = [t for t in targets if t.from_name == prompt.from_name]
    futures: dict[tuple[int, str], Future[LoadedImage]] = {}
    for task in tasks:
        tid = task.id
        for t in targets:
            url = task.images.get(t.data_key)
            if isinstance(url, str) and url:
                futures[(tid, t.data_key)] = load(url, tid)
    # Materialise the example pool while the query images download.
    if pool is not None and records:
        for t in targets:
            for label in t.labels if prompt is None else (prompt.label,):
                for c in picker.candidates(t, label)[
                    : options.num_examples if options.selection != "retrieval" else None
                ]:
                    pool.submit(picker.materialize, c.key, t.to_name)

    units: list[tuple[int, Target, LoadedImage]] = []
    for task in tasks:
        tid = task.id
        problems: list[str] = []
        for t in targets:
            fut = futures.get((tid, t.data_key))
            if fut is None:
                problems.append(f"task {tid}: no image URL in data[{t.data_key!r}]")
                continue
            try:
                units.append((tid, t, fut.result()))
            except Exception as exc:
                problems.append(f"task {tid}: image {task.images.get(t.data_key)!r}: {exc}")
        if problems and not any(u[0] == tid for u in units):
            out.entries[tid] = {"error": "; ".join(problems)}
            log.warning("%s", "; ".join(problems))

    requests: list[SegmentRequest] = []
    skipped: set[str] = set()
    for _tid, t, (pixels, size) in units:
        qdesc = describe(pixels) if options.selection == "retrieval" else None
        labels = t.labels if prompt is None else (prompt.label,)
        examples: dict[str, list[Example]] = {}
        extra: dict[str, LearnedPrompt] = {}
        for label in labels:
            served = learned.get(label)
            chosen = [] if served is not None and served.mode == "alone" else picker.pick(t, label, qdesc)
            if served is not None:
                extra[label] = served.prompt
            if chosen:
                examples[label] = chosen
            elif served is None:
                skipped.add(label)
        requests.append(SegmentRequest(query=pixels, examples=examples, size=size, learned=extra))
    for label in sorted(skipped):
        msg = f"project {project}: label {label!r} skipped: no accepted annotation with a brush region for it yet"
        out.messages.append(msg)
        log.info("%s", msg)
    if units and not any(r.examples or r.learned for r in requests):
        out.messages.append(
            f"project {project}: no examples yet; annotate at least one image with brush labels "
            "(every accepted annotation becomes an example)"
        )

    predictions = _segment(engine, requests, options, [u[0] for u in units], out)
    regions: dict[int, list[dict[str, Any]]] = {}
    for (tid, t, _), preds in zip(units, predictions, strict=True):
        if preds is None:
            continue
        task_regions = regions.setdefault(tid, [])
        for label, pred in preds.items():
            mask = refine(pred.mask, pred.soft, prompt) if prompt is not None else None
            task_regions.extend(
                regions_for_label(
                    pred,
                    task_id=tid,
                    label=label,
                    from_name=t.from_name,
                    to_name=t.to_name,
                    split_components=options.split_components and prompt is None,
                    mask=mask,
                )
            )
    for tid, task_regions in regions.items():
        if tid not in out.entries:
            out.entries[tid] = prediction_entry(task_regions, model_version)
    return out


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
        log.warning("engine failed on a batch of %d (%s); retrying one by one", len(todo), exc)
    for i in todo:
        try:
            results[i] = engine.segment([requests[i]], **kwargs)[0]  # type: ignore[arg-type]
        except Exception as exc:
            _fail(out, task_ids[i], exc)
            results[i] = None
    return results


def _fail(out: ChunkOutcome, task_id: int, exc: BaseException) -> None:
    msg = f"task {task_id}: segmentation failed: {type(exc).__name__}: {exc}"
    log.error("%s", msg)
    out.entries[task_id] = {"error": msg}
