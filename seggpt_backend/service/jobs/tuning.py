"""The tuning job: learn a prompt per label from a project's accepted annotations, validate it
against what is served now, and promote it only if it wins (paper sec. 3.3, in-context tuning:
the model is frozen, the prompt image and mask are the learnable tensors, same loss).

Per label, from the project's example store (every accepted annotation with a brush region):

1. Every annotation with the label is materialised; one whose image or mask cannot be read is
   excluded, with the reason recorded, and the run goes on.
2. A deterministic split (by a hash of project, label and annotation id, so a new annotation
   does not reshuffle the others): validation gets ``max(2, ceil(20 %))`` annotations, tuning
   the rest; fewer than 3 usable annotations: the label is skipped with the reason.
3. The prompt starts from the tuning example most like the others (the medoid under the
   retrieval descriptor) and is optimised on the tuning examples within the step and time
   budget (the run's budget is shared by its labels).
4. On the validation annotations, mean IoU (accumulated over the validation images) of
   (a) what is served now: retrieved examples (from the tuning set), with the promoted prompt
   if there is one; (b) the tuned prompt alone; (c) the tuned prompt plus the retrieved examples
   in one feature ensemble. The better of (b) and (c) is promoted, with that serving mode, only
   if it beats (a) by ``margin``, both in accumulated mIoU and in a 90 % lower confidence bound
   of the paired per-image gain (a lucky draw of a few validation images is not enough).

Every run, promoted or not, is recorded (:class:`~seggpt_backend.service.store.prompts.TuneRun`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seggpt_backend.engine.interface import (
    Engine,
    Example,
    LearnedPrompt,
    SegmentRequest,
    TunableEngine,
    TuneOptions,
)
from seggpt_backend.service.contract import TuneJob
from seggpt_backend.service.errors import ExampleError
from seggpt_backend.service.jobs.materialize import Materialized, Materializer
from seggpt_backend.service.jobs.pipeline import ServedPrompt
from seggpt_backend.service.jobs.selection import Candidate, select
from seggpt_backend.service.store.examples import ExampleRecord
from seggpt_backend.service.store.metrics import Metrics
from seggpt_backend.service.store.prompts import LabelRun, PromptStore, TuneRun

log = logging.getLogger(__name__)

MIN_VALIDATION = 2
VALIDATION_SHARE = 0.2
CONFIDENCE = 0.9
# One-sided 90 % quantiles of Student's t by degrees of freedom (validation images - 1): with 2
# images the spread itself is a guess, so the bound must be wide. Beyond the table: normal.
T90 = {1: 3.078, 2: 1.886, 3: 1.638, 4: 1.533, 5: 1.476, 6: 1.440, 7: 1.415, 8: 1.397, 9: 1.383}
T90 |= {10: 1.372, 12: 1.356, 15: 1.341, 20: 1.325, 30: 1.310}


def t90(df: int) -> float:
    """The one-sided 90 % t quantile for ``df`` >= 1 (the next smaller tabled df: conservative)."""
    return T90[max(k for k in T90 if k <= df)] if df <= 30 else 1.2816


@dataclass(frozen=True)
class TuningPolicy:
    """A run's knobs (from settings): the optimiser's (``options``; its ``time_budget_s`` is the
    whole run's), the promotion ``margin`` (mIoU), and how examples are served (``num_examples``
    retrieved per query, ``ensemble``, ``seg_type``)."""

    options: TuneOptions
    margin: float = 0.01
    num_examples: int = 4
    ensemble: str = "feature"
    seg_type: str = "instance"


@dataclass(frozen=True, eq=False)
class Item:
    """One usable annotation of a label: its id and decoded example."""

    annotation_id: int
    mat: Materialized
    example: Example
    mask: np.ndarray  # (h, w) bool on mat.image


def split(project: str, label: str, ids: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """``(tuning, validation)`` annotation ids, or ``None`` when there are too few (< 3)."""
    n = len(ids)
    n_val = max(MIN_VALIDATION, math.ceil(VALIDATION_SHARE * n))
    if n - n_val < 1:
        return None
    order = sorted(ids, key=lambda a: hashlib.sha1(f"{project}|{label}|{a}".encode()).hexdigest())
    return sorted(order[n_val:]), sorted(order[:n_val])


def newest_per_task(records: Sequence[ExampleRecord], label: str) -> list[tuple[ExampleRecord, str]]:
    """The newest annotation per task holding ``label``, with the Image it is drawn on."""
    newest: dict[int, ExampleRecord] = {}
    for r in records:
        if label not in r.labels():
            continue
        cur = newest.get(r.task_id)
        if cur is None or (r.updated_at, r.annotation_id) > (cur.updated_at, cur.annotation_id):
            newest[r.task_id] = r
    out = []
    for r in sorted(newest.values(), key=lambda r: r.annotation_id):
        to_name = next(reg.to_name for reg in r.regions if reg.label == label)
        out.append((r, to_name))
    return out


def labels_of(records: Sequence[ExampleRecord]) -> list[str]:
    return sorted({label for r in records for label in r.labels()})


class Tuner:
    """Runs one :class:`TuneJob` on a worker's engine, stores and stores the outcome."""

    def __init__(
        self,
        *,
        engine: Engine,
        materializer: Materializer,
        prompts: PromptStore,
        metrics: Metrics,
        policy: TuningPolicy,
        served: Callable[[str], Mapping[str, ServedPrompt]],
    ) -> None:
        self.engine = engine
        self.materializer = materializer
        self.prompts = prompts
        self.metrics = metrics
        self.policy = policy
        self.served = served

    def run(self, job: TuneJob, records: Sequence[ExampleRecord]) -> TuneRun:
        """Tune, validate and maybe promote every label of ``job`` (see the module docstring)."""
        project = job.project
        run = TuneRun(
            id=self.prompts.new_run_id(project),
            project=project,
            engine_version=self.engine.model_version,
            trigger=job.trigger,
            started_at=time.time(),
            settings={
                "steps": self.policy.options.steps,
                "lr": self.policy.options.lr,
                "batch_size": self.policy.options.batch_size,
                "budget_s": self.policy.options.time_budget_s,
                "fg_balance": self.policy.options.fg_balance,
                "margin": self.policy.margin,
                "num_examples": self.policy.num_examples,
                "ensemble": self.policy.ensemble,
            },
        )
        self.prompts.save_run(run)
        started = time.monotonic()
        try:
            labels = list(job.labels) or labels_of(records)
            budget = self.policy.options.time_budget_s
            for i, label in enumerate(labels):
                left = None if budget is None else max(1.0, budget - (time.monotonic() - started))
                share = None if left is None else left / (len(labels) - i)
                outcome = self._label(project, run.id, label, records, share)
                run.labels.append(outcome)
                self.metrics.inc("seggpt_tune_labels_total", decision=outcome.decision)
                if outcome.decision == "promoted":
                    self.metrics.inc("seggpt_prompt_promotions_total")
                    self.metrics.add("seggpt_tune_gain_sum", outcome.gain)
                self.prompts.save_run(run)
        except BaseException as exc:  # a timeout (BaseException) or a crash: recorded, then raised
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}"
            run.finished_at = time.time()
            self._save_quietly(run)
            self.metrics.inc("seggpt_tune_runs_total", status="failed")
            raise
        run.status, run.finished_at = "finished", time.time()
        self.prompts.save_run(run)
        self.metrics.inc("seggpt_tune_runs_total", status="promoted" if run.promoted else "not-promoted")
        self.metrics.observe("seggpt_tune_duration_seconds", time.monotonic() - started)
        log.info(
            "project %s: tuning run %s finished: %s",
            project,
            run.id,
            ", ".join(f"{r.label} {r.decision} ({r.reason})" for r in run.labels) or "no labels",
        )
        return run

    def _save_quietly(self, run: TuneRun) -> None:
        try:
            self.prompts.save_run(run)
        except Exception as exc:
            log.warning("project %s: cannot record failed run %s: %s", run.project, run.id, exc)

    # ------------------------------------------------------------------ one label
    def _items(self, project: str, label: str, records: Sequence[ExampleRecord], out: LabelRun) -> list[Item]:
        items = []
        for record, to_name in newest_per_task(records, label):
            try:
                mat = self.materializer.get(project, record, to_name)
            except ExampleError as exc:
                out.excluded[str(record.annotation_id)] = str(exc)
                continue
            example = mat.example(None, label)
            mask = example.masks[label]
            if not mask.any():
                out.excluded[str(record.annotation_id)] = f"the {label!r} mask is empty"
                continue
            items.append(Item(record.annotation_id, mat, example, mask))
        return items

    def _label(
        self,
        project: str,
        run_id: str,
        label: str,
        records: Sequence[ExampleRecord],
        budget_s: float | None,
    ) -> LabelRun:
        out = LabelRun(label=label, decision="skipped", reason="")
        engine = self.engine
        if not isinstance(engine, TunableEngine):
            out.reason = f"engine {engine.model_version} cannot tune prompts"
            return out
        items = self._items(project, label, records, out)
        parts = split(project, label, [it.annotation_id for it in items])
        if parts is None:
            out.reason = (
                f"{len(items)} usable accepted annotation(s) with {label!r}; tuning needs at least 3 "
                f"(>= 1 to tune on, >= {MIN_VALIDATION} and >= {VALIDATION_SHARE:.0%} to validate)"
            )
            return out
        by_id = {it.annotation_id: it for it in items}
        tuning = [by_id[a] for a in parts[0]]
        validation = [by_id[a] for a in parts[1]]
        out.tuning, out.validation = parts[0], parts[1]
        current = self.served(project).get(label)
        served = self._score(label, validation, tuning, current)
        out.miou["served"] = served.miou
        init = _medoid(tuning)
        out.init = init.annotation_id
        options = TuneOptions(
            steps=self.policy.options.steps,
            lr=self.policy.options.lr,
            batch_size=self.policy.options.batch_size,
            time_budget_s=budget_s,
            fg_balance=self.policy.options.fg_balance,
            seed=self.policy.options.seed,
        )
        tuned = engine.tune(
            init.example,
            label,
            [it.example for it in tuning],
            options=options,
            seg_type=self.policy.seg_type,  # type: ignore[arg-type]
        )
        out.steps, out.losses = len(tuned.losses), [round(v, 5) for v in tuned.losses]
        out.seconds = round(tuned.seconds, 2)
        candidate = LearnedPrompt(
            f"candidate:{project}:{label}:{run_id}", tuned.prompt.image, tuned.prompt.target
        )
        scores = {
            mode: self._score(label, validation, tuning, ServedPrompt(candidate, mode, "candidate"))
            for mode in ("alone", "ensemble")
        }
        for mode, score in scores.items():
            out.miou[mode] = score.miou
        out.miou = {k: round(v, 4) for k, v in out.miou.items()}
        bounds = {mode: score.gain_bound(served) for mode, score in scores.items()}
        mode = max(bounds, key=lambda m: (bounds[m], m == "ensemble"))
        best, before, bound = scores[mode].miou, served.miou, bounds[mode]
        out.gain_bound = round(bound, 4)
        margin = self.policy.margin
        if best <= before + margin or bound <= margin:
            out.decision = "rejected"
            out.reason = (
                f"tuned prompt ({mode}) scores {best:.3f} mIoU on {len(validation)} held-out annotations "
                f"vs {before:.3f} served; the gain ({best - before:+.3f}, per image at worst "
                f"{bound:+.3f} at {CONFIDENCE:.0%} confidence) does not clear the margin {margin:g}"
            )
            return out
        meta = self.prompts.promote(
            project,
            label=label,
            image=tuned.prompt.image,
            target=tuned.prompt.target,
            engine_version=engine.model_version,
            mode=mode,
            run=run_id,
            miou=out.miou,
        )
        out.decision, out.version, out.mode = "promoted", meta.version, mode
        out.reason = (
            f"{mode}: {best:.3f} mIoU vs {before:.3f} served ({best - before:+.3f}; per image at "
            f"worst {bound:+.3f} at {CONFIDENCE:.0%} confidence)"
        )
        return out

    # ------------------------------------------------------------------ validation
    def _score(
        self, label: str, validation: Sequence[Item], pool: Sequence[Item], prompt: ServedPrompt | None
    ) -> Score:
        """IoU of ``label`` on ``validation`` with retrieved examples from ``pool`` and/or
        ``prompt`` in its mode (``alone``: no examples)."""
        requests = []
        for it in validation:
            examples: list[Example] = []
            if prompt is None or prompt.mode != "alone":
                examples = _retrieve(it, pool, label, self.policy.num_examples)
            learned = {label: prompt.prompt} if prompt is not None else {}
            requests.append(SegmentRequest(query=it.mat.image, examples={label: examples}, learned=learned))
        results = self.engine.segment(
            requests,
            ensemble=self.policy.ensemble,  # type: ignore[arg-type]
            seg_type=self.policy.seg_type,  # type: ignore[arg-type]
            multilabel="per-label",
        )
        inter = union = 0
        per_image = []
        for it, res in zip(validation, results, strict=True):
            pred = res[label].mask if label in res else np.zeros_like(it.mask)
            i, u = int((pred & it.mask).sum()), int((pred | it.mask).sum())
            inter, union = inter + i, union + u
            per_image.append(i / u if u else 1.0)
        return Score(inter / union if union else 1.0, per_image)


@dataclass(frozen=True)
class Score:
    """Validation figures of one way of serving: ``miou`` accumulated over the images (the
    reported figure) and the IoU of each image (for the paired confidence bound)."""

    miou: float
    per_image: list[float]

    def gain_bound(self, baseline: Score) -> float:
        """One-sided lower confidence bound (:data:`CONFIDENCE`) of the mean per-image IoU gain
        over ``baseline`` on the same images: ``mean - t * sd / sqrt(m)`` of the m paired gains
        (Student's t with m - 1 degrees of freedom).
        With a handful of validation images a lucky draw is common; this keeps it from being
        promoted (a regression served to every user costs more than a gain delayed)."""
        gains = np.asarray(self.per_image) - np.asarray(baseline.per_image)
        if gains.size < 2:
            return float("-inf")
        return float(gains.mean() - t90(gains.size - 1) * gains.std(ddof=1) / np.sqrt(gains.size))


def _retrieve(query: Item, pool: Sequence[Item], label: str, k: int) -> list[Example]:
    """The ``k`` pool examples most like ``query`` under the retrieval descriptor (as served)."""
    cands = [Candidate(it.annotation_id, ("", it.annotation_id), it.mat.descriptor) for it in pool]
    by_id = {it.annotation_id: it for it in pool}
    chosen = select(cands, k, mode="retrieval", query_descriptor=query.mat.descriptor)
    return [by_id[c.key].example for c in chosen]


def _medoid(items: Sequence[Item]) -> Item:
    """The item whose descriptor is most similar to all others' (ties: lowest annotation id)."""
    if len(items) == 1 or any(it.mat.descriptor is None for it in items):
        return items[0]
    d = np.stack([it.mat.descriptor for it in items])  # type: ignore[misc]
    scores = (d @ d.T).sum(axis=1)
    return items[int(np.argmax(scores))]


def run_summary(run: TuneRun) -> dict[str, Any]:
    """A short JSON-ready summary of a run (for job results and the CLI)."""
    return {
        "run": run.id,
        "status": run.status,
        "labels": {
            r.label: {"decision": r.decision, "reason": r.reason, "miou": r.miou, "version": r.version}
            for r in run.labels
        },
    }
