"""Suggestion quality as measured on submitted annotations: per project, per label, bounded.

When an annotator submits (or updates) an annotation of a task that carried one of this backend's
predictions, a worker (:mod:`seggpt_backend.service.jobs.quality`) compares the two, label by
label, and records one :class:`Measurement`: the IoU of the predicted mask with the accepted
mask for every label either of them has, with the prediction's model version and score.

Data
----
Per project ``P`` (keys under the KV prefix):

- ``q:P:entries``  hash  annotation id -> :class:`Measurement` JSON. One entry per annotation:
  an updated annotation replaces its entry (the latest accepted mask counts), and a retried job
  writes the same entry again. At most :data:`MAX_ENTRIES` entries; the oldest (by ``measured_at``)
  are dropped first.
- ``q:P:rolling``  hash  label -> ``{"mean": m, "n": n}``: mean IoU of the label over its
  :data:`ROLLING_WINDOW` most recent entries (``n`` <= window), rewritten after every record; this
  is what ``GET /metrics`` shows (``seggpt_suggestion_iou_rolling``), so the route reads a few bytes.
- ``q:projects``   hash  project -> unix time of its latest measurement (which projects to show).

A :class:`Measurement`'s JSON: ``{"annotation_id", "task_id", "prediction_id", "model_version",
"source", "measured_at", "labels": [{"label", "iou", "score", "predicted_pixels",
"accepted_pixels"}]}``. ``iou`` is in [0, 1]: 0 for a label only one side has (a missed or an
invented object). ``score`` is the prediction's mean region score for the label in [0, 1], or
``null`` when the prediction had no region for it. ``source`` is ``"tuned"`` when the model
version carries learned prompts (``.pr-``), else ``"examples"``. ``measured_at``: unix seconds.

Two workers recording for one project at the same moment may each rewrite ``rolling`` from a
state missing the other's entry; the next record corrects it (the entries themselves are safe).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from seggpt_backend.service.store.kv import KV

log = logging.getLogger(__name__)

MAX_ENTRIES = 2000
ROLLING_WINDOW = 50
PROJECTS_KEY = "q:projects"


def source_of(model_version: str) -> str:
    """``"tuned"`` for a version serving learned prompts (``.pr-``), else ``"examples"``."""
    return "tuned" if ".pr-" in model_version else "examples"


@dataclass(frozen=True)
class LabelQuality:
    """One label of one measurement (see the module docstring for ranges)."""

    label: str
    iou: float
    score: float | None
    predicted_pixels: int
    accepted_pixels: int


@dataclass(frozen=True)
class Measurement:
    """Our prediction of a task against the annotation accepted for it."""

    annotation_id: int
    task_id: int
    prediction_id: int
    model_version: str
    measured_at: float
    labels: tuple[LabelQuality, ...] = field(default=())

    @property
    def source(self) -> str:
        return source_of(self.model_version)

    def to_json(self) -> str:
        body = asdict(self)
        body["source"] = self.source
        body["labels"] = [asdict(x) for x in self.labels]
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> Measurement:
        d = json.loads(raw) if isinstance(raw, str | bytes) else raw
        return cls(
            annotation_id=int(d["annotation_id"]),
            task_id=int(d["task_id"]),
            prediction_id=int(d["prediction_id"]),
            model_version=str(d["model_version"]),
            measured_at=float(d["measured_at"]),
            labels=tuple(
                LabelQuality(
                    label=str(x["label"]),
                    iou=float(x["iou"]),
                    score=None if x.get("score") is None else float(x["score"]),
                    predicted_pixels=int(x["predicted_pixels"]),
                    accepted_pixels=int(x["accepted_pixels"]),
                )
                for x in d["labels"]
            ),
        )


def rolling_means(
    entries: Sequence[Measurement], window: int = ROLLING_WINDOW
) -> dict[str, tuple[float, int]]:
    """``{label: (mean IoU, n)}`` over each label's ``window`` most recent measurements."""
    by_label: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for entry in entries:
        for x in entry.labels:
            by_label[x.label].append((entry.measured_at, x.iou))
    out: dict[str, tuple[float, int]] = {}
    for label, values in by_label.items():
        recent = sorted(values)[-window:]
        out[label] = (sum(v for _, v in recent) / len(recent), len(recent))
    return out


class QualityStore:
    """Per-project :class:`Measurement` entries on a :class:`KV` (keys in the module docstring)."""

    def __init__(self, kv: KV, *, max_entries: int = MAX_ENTRIES, window: int = ROLLING_WINDOW) -> None:
        self.kv = kv
        self.max_entries = max_entries
        self.window = window

    def record(self, project: str, measurement: Measurement) -> None:
        """Store (or replace) the annotation's entry, trim to the bound, refresh the rolling means."""
        entries_key = f"q:{project}:entries"
        self.kv.hset(entries_key, {str(measurement.annotation_id): measurement.to_json()})
        entries = self.entries(project)
        if len(entries) > self.max_entries:
            drop = entries[: len(entries) - self.max_entries]
            self.kv.hdel(entries_key, *(str(e.annotation_id) for e in drop))
            entries = entries[len(drop) :]
        rolling = rolling_means(entries, self.window)
        self.kv.delete(f"q:{project}:rolling")
        self.kv.hset(
            f"q:{project}:rolling",
            {label: json.dumps({"mean": round(m, 6), "n": n}) for label, (m, n) in rolling.items()},
        )
        self.kv.hset(PROJECTS_KEY, {project: repr(measurement.measured_at)})

    def entries(self, project: str) -> list[Measurement]:
        """Every entry of ``project``, oldest first (unreadable ones are logged and skipped)."""
        out: list[Measurement] = []
        for key, raw in self.kv.hgetall(f"q:{project}:entries").items():
            try:
                out.append(Measurement.from_json(raw))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("project %s: unreadable quality entry %s: %s", project, key, exc)
        out.sort(key=lambda e: (e.measured_at, e.annotation_id))
        return out

    def rolling(self, project: str) -> dict[str, tuple[float, int]]:
        """``{label: (rolling mean IoU, n)}`` as last recorded (cheap: one small hash)."""
        out: dict[str, tuple[float, int]] = {}
        for label, raw in self.kv.hgetall(f"q:{project}:rolling").items():
            try:
                d = json.loads(raw)
                out[label] = (float(d["mean"]), int(d["n"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def projects(self) -> list[str]:
        """Projects with at least one measurement."""
        return sorted(self.kv.hgetall(PROJECTS_KEY), key=lambda p: (len(p), p))
