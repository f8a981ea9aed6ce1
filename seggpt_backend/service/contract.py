"""The contract between the HTTP server and the workers: typed, versioned job payloads.

Both sides import this module and nothing else to build or read a job, so a field can only be
added or renamed in one place. A payload travels as JSON (RQ's ``JSONSerializer``); it carries
ids, image URLs, label names and an optional interactive prompt, never pixels, pickles or
credentials. Every payload has ``"v": CONTRACT_VERSION``; a worker refuses any other version
with :class:`ContractError` (the job fails visibly instead of being half-understood), so serve
and workers of different releases cannot silently disagree.

Coordinates in :class:`Prompt` are Label Studio's: percent (0..100) of the displayed image
width and height, origin top-left.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from seggpt_backend.service.errors import ConfigUnsupported, ContractError, RequestError

CONTRACT_VERSION = 1

# Per-project options: Label Studio's "Extra params" of the model connection, typed.
#
# Label Studio 1.23 sends a connection's Extra params (a JSON object typed into the model's
# settings, or ``extra_params`` of ``POST /api/ml``) in every ``POST /setup`` as
# ``"extra_params": {...}`` (``null`` when empty); ``/predict`` does not carry them. The server
# validates them there (an unknown key or a bad value is a 422 naming the key, which Label Studio
# shows when the model is connected), keeps them per project (:class:`ProjectOptionsStore`) and
# puts the effective :class:`ProjectOptions` into every job, so workers apply them. The
# environment (:class:`~seggpt_backend.settings.Settings`) gives the defaults.
#
# Keys (``"k": 2, "split_components": true, ...``):
#
# ==================  ============  ===================================================
# key                 type          meaning (environment default)
# ==================  ============  ===================================================
# ``k``               int >= 1      examples per label (``SEGGPT_NUM_EXAMPLES``)
# ``ensemble``        str           feature / spatial / none (``SEGGPT_ENSEMBLE``)
# ``selection``       str           retrieval / recent (``SEGGPT_EXAMPLE_SELECTION``)
# ``split_components``  bool        one region per connected part (``SEGGPT_SPLIT_COMPONENTS``)
# ``threshold``       float (0, 1)  soft-map foreground threshold (``SEGGPT_MASK_THRESHOLD``)
# ``min_region_area`` int >= 0      drop smaller regions, pixels (``SEGGPT_MIN_REGION_AREA``)
# ``min_score``       float [0, 1]  drop regions scoring less (``SEGGPT_MIN_SCORE``)
# ``auto_prelabel``   bool          pre-label imported tasks (``SEGGPT_AUTO_PRELABEL``)
# ``tune_every``      int >= 0      tune after N accepted annotations, 0 never (``SEGGPT_TUNE_EVERY``)
# ``refresh_on_new_prompts``  bool  re-pre-label unlabelled tasks on a new prompt set (``SEGGPT_AUTO_REFRESH``)
# ==================  ============  ===================================================
#
# Options that change predictions are tagged into the model version (``.p-<digest>``) so a project
# with its own options gets its own version (and Label Studio recomputes its tasks when they change).

# Extra-params key -> ProjectOptions field (the field names are the keys except ``k``).
OPTION_KEYS: dict[str, str] = {
    "k": "num_examples",
    "ensemble": "ensemble",
    "selection": "selection",
    "split_components": "split_components",
    "threshold": "threshold",
    "min_region_area": "min_region_area",
    "min_score": "min_score",
    "auto_prelabel": "auto_prelabel",
    "tune_every": "tune_every",
    "refresh_on_new_prompts": "refresh_on_new_prompts",
}
OPTION_CHOICES: dict[str, tuple[str, ...]] = {
    "ensemble": ("feature", "spatial", "none"),
    "selection": ("retrieval", "recent"),
}
# Fields that change what a prediction contains (the model version's ``.p-`` tag covers them).
PREDICTIVE_OPTIONS = (
    "num_examples", "ensemble", "selection", "split_components", "threshold", "min_region_area",
    "min_score",
)  # fmt: skip


class OptionsError(RequestError):
    """Extra params Label Studio sent cannot be used; the message names the project and the key."""


@dataclass(frozen=True)
class ProjectOptions:
    """The effective per-project knobs (see the module docstring for each).

    ``overridden``: the fields the project's Extra params set (sorted); the others are the
    environment's. ``threshold`` applies to the soft map in [0, 1]; ``min_region_area`` counts
    pixels of the original image.
    """

    num_examples: int = 4
    ensemble: str = "feature"
    selection: str = "retrieval"
    split_components: bool = False
    threshold: float = 0.5
    min_region_area: int = 0
    min_score: float = 0.0
    auto_prelabel: bool = False
    tune_every: int = 0
    refresh_on_new_prompts: bool = False
    overridden: tuple[str, ...] = ()

    @classmethod
    def defaults(cls, settings: Any) -> ProjectOptions:
        """The options of a project without Extra params: the environment's
        (:class:`~seggpt_backend.settings.Settings`)."""
        return cls(
            num_examples=settings.num_examples,
            ensemble=settings.ensemble,
            selection=settings.example_selection,
            split_components=settings.split_components,
            threshold=settings.mask_threshold,
            min_region_area=settings.min_region_area,
            min_score=settings.min_score,
            auto_prelabel=settings.auto_prelabel,
            tune_every=settings.tune_every,
            refresh_on_new_prompts=settings.auto_refresh,
        )

    @classmethod
    def from_extra_params(
        cls, extra: Mapping[str, Any] | None, *, defaults: ProjectOptions, project: str = "?"
    ) -> ProjectOptions:
        """``defaults`` with ``extra`` (Label Studio's ``extra_params``) applied.

        Raises :class:`OptionsError` naming the project and the key for an unknown key or a bad
        value. Numbers and booleans may also come as strings (``"2"``, ``"true"``).
        """
        if extra is None:
            return defaults
        if not isinstance(extra, Mapping):
            raise OptionsError(
                f"project {project}: Extra params must be a JSON object, not {type(extra).__name__}"
            )
        values: dict[str, Any] = {}
        for key, raw in extra.items():
            name = OPTION_KEYS.get(str(key))
            if name is None:
                raise OptionsError(
                    f"project {project}: Extra params: unknown key {key!r} (known keys: {', '.join(OPTION_KEYS)})"
                )
            values[name] = _parse(name, raw, key=str(key), project=project)
        overridden = tuple(sorted(set(defaults.overridden) | set(values)))
        return replace(defaults, **values, overridden=overridden)

    def version_tag(self) -> str | None:
        """10 hex digits over the overridden options that change predictions, or None."""
        keys = [n for n in PREDICTIVE_OPTIONS if n in self.overridden]
        if not keys:
            return None
        body = json.dumps({n: getattr(self, n) for n in keys}, sort_keys=True)
        return hashlib.sha1(body.encode()).hexdigest()[:10]

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: list(self.overridden) if f.name == "overridden" else getattr(self, f.name)
            for f in fields(self)
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProjectOptions:
        """Read back :meth:`to_json` (validated again: a payload is input like any other)."""
        base = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "overridden" or f.name not in d:
                continue
            values[f.name] = _parse(f.name, d[f.name], key=f.name, project=str(d.get("project", "?")))
        overridden = tuple(sorted(str(x) for x in d.get("overridden") or ()))
        return replace(base, **values, overridden=overridden)


def _parse(name: str, raw: Any, *, key: str, project: str) -> Any:
    """One option's value, typed and range-checked, or :class:`OptionsError` naming ``key``."""

    def bad(expected: str) -> OptionsError:
        return OptionsError(f"project {project}: Extra params: {key}={raw!r}: {expected}")

    if name in OPTION_CHOICES:
        if not isinstance(raw, str) or raw not in OPTION_CHOICES[name]:
            raise bad(f"use one of {', '.join(OPTION_CHOICES[name])}")
        return raw
    if name in ("split_components", "auto_prelabel", "refresh_on_new_prompts"):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in (
            "true",
            "false",
            "1",
            "0",
            "yes",
            "no",
            "on",
            "off",
        ):
            return raw.strip().lower() in ("true", "1", "yes", "on")
        raise bad("use true or false")
    if name in ("num_examples", "min_region_area", "tune_every"):
        low = 1 if name == "num_examples" else 0
        value: Any = raw
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            value = int(raw.strip())
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(f"use a whole number >= {low}")
        return value
    # threshold, min_score: floats
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = float(raw)
    except (TypeError, ValueError):
        raise bad("use a number") from None
    if name == "threshold" and not 0 < number < 1:
        raise bad("use a number in (0, 1)")
    if name == "min_score" and not 0 <= number <= 1:
        raise bad("use a number in [0, 1]")
    return number


Writeback = Literal["requested", "always"]
"""``requested``: deliver through the HTTP response while one waits for the task, else write
back through the Label Studio API; ``always``: write back (background pre-labelling)."""


@dataclass(frozen=True)
class Target:
    """A BrushLabels or PolygonLabels control: its name, the Image it paints on, that Image's
    task-data key, labels, and ``kind``: ``"brush"`` (brush RLE regions) or ``"polygon"``
    (``polygonlabels`` regions, see :mod:`seggpt_backend.labelstudio.polygon`)."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    kind: str = "brush"

    def to_json(self) -> dict[str, Any]:
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "data_key": self.data_key,
            "labels": list(self.labels),
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Target:
        kind = str(d.get("kind") or "brush")
        if kind not in ("brush", "polygon"):
            raise ContractError(f"unknown target kind {kind!r}")
        return cls(
            str(d["from_name"]),
            str(d["to_name"]),
            str(d["data_key"]),
            tuple(str(x) for x in d["labels"]),
            kind,
        )


def parse_targets(label_config: str) -> list[Target]:
    """The BrushLabels and PolygonLabels controls of a config, each with its Image's task-data key.

    Raises :class:`ConfigUnsupported` with a readable reason when the config cannot be served
    (not XML, no Image, no BrushLabels control with labels).
    """
    from seggpt_backend.labelstudio.label_config import LabelConfigError, parse_label_config

    try:
        config = parse_label_config(label_config)
    except LabelConfigError as exc:
        raise ConfigUnsupported(f"unsupported labelling config: {exc}") from exc
    targets = [
        Target(from_name=c.name, to_name=c.to_name, data_key=c.image_key, labels=tuple(c.labels), kind=c.kind)
        for c in config.segmentation_controls
    ]
    if not targets:
        found = config.describe()
        raise ConfigUnsupported(
            "unsupported labelling config: SegGPT predicts masks, so the config needs a "
            '<BrushLabels name="..." toName="<Image name>"> (or <PolygonLabels>) with at least one <Label>'
            + (f"; it has: {'; '.join(found.splitlines())}" if found else "")
        )
    return targets


@dataclass(frozen=True)
class Prompt:
    """An interactive request for one label.

    ``points``: ``(x, y, positive)`` with x, y in percent (0..100) of the displayed image width and
    height. ``boxes``: ``(x, y, width, height)`` in percent, top-left corner first.
    """

    label: str
    from_name: str
    to_name: str
    points: tuple[tuple[float, float, bool], ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "from_name": self.from_name,
            "to_name": self.to_name,
            "points": [list(p) for p in self.points],
            "boxes": [list(b) for b in self.boxes],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Prompt:
        return cls(
            label=str(d["label"]),
            from_name=str(d["from_name"]),
            to_name=str(d["to_name"]),
            points=tuple((float(x), float(y), bool(p)) for x, y, p in d.get("points", [])),
            boxes=tuple((float(x), float(y), float(w), float(h)) for x, y, w, h in d.get("boxes", [])),
        )

    def __str__(self) -> str:
        return json.dumps(self.to_json())


Superseded = tuple[tuple[int, str], ...]
"""``(prediction id, model version)`` of this backend's predictions a task held when asked."""


def superseded_ids(supersedes: Superseded, *, keep: str) -> list[int]:
    """Ids of the predictions in ``supersedes`` whose version is not ``keep`` (the delivered one)."""
    return [pid for pid, version in supersedes if version != keep]


@dataclass(frozen=True)
class JobTask:
    """One task of a job: its Label Studio id, ``{data key: image URL}`` for the targets, and
    this backend's predictions of other versions it held (replaced once the new one is delivered,
    with ``SEGGPT_REPLACE_SUPERSEDED``)."""

    id: int
    images: Mapping[str, str]
    supersedes: Superseded = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "images": dict(self.images), "supersedes": [list(p) for p in self.supersedes]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> JobTask:
        images = d.get("images") or {}
        supersedes = tuple((int(i), str(v)) for i, v in d.get("supersedes") or ())
        return cls(int(d["id"]), {str(k): str(v) for k, v in images.items()}, supersedes)


@dataclass(frozen=True)
class PredictJob:
    """Compute ``tasks`` of ``project`` (one task when ``prompt`` is set: an interactive request).

    ``model_version``: the version the server asked for; results are stored under it so the
    waiting request finds them. ``channel``: the request waiting for these tasks (a fresh hex id
    per request). ``queue``: the logical queue it was put on. ``enqueued_at``: Unix seconds.
    ``recovered``: enqueued again by the server after Redis lost the job; what Redis held for it
    (results, delivery claims) may be gone although predictions already reached Label Studio, so
    each write-back first asks Label Studio whether the task has one of this version.
    """

    project: str
    model_version: str
    targets: tuple[Target, ...]
    tasks: tuple[JobTask, ...]
    channel: str
    queue: str
    prompt: Prompt | None = None
    writeback: Writeback = "requested"
    enqueued_at: float = field(default_factory=time.time)
    recovered: bool = False
    # The project's effective options (Extra params over the environment); None: the worker's env.
    options: ProjectOptions | None = None

    kind = "predict"

    @property
    def task_ids(self) -> list[int]:
        return [t.id for t in self.tasks]

    def image_urls(self) -> list[tuple[str, int]]:
        """``(url, task id)`` for every image of the job, in task order."""
        return [(url, t.id) for t in self.tasks for url in t.images.values()]

    def only(self, task_ids: Sequence[int]) -> PredictJob:
        """The same job restricted to ``task_ids`` (order kept)."""
        keep = set(task_ids)
        return replace(self, tasks=tuple(t for t in self.tasks if t.id in keep))

    def to_json(self) -> dict[str, Any]:
        return {
            "v": CONTRACT_VERSION,
            "project": self.project,
            "model_version": self.model_version,
            "targets": [t.to_json() for t in self.targets],
            "tasks": [t.to_json() for t in self.tasks],
            "channel": self.channel,
            "queue": self.queue,
            "prompt": None if self.prompt is None else self.prompt.to_json(),
            "writeback": self.writeback,
            "enqueued_at": self.enqueued_at,
            "recovered": self.recovered,
            "options": None if self.options is None else self.options.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PredictJob:
        _check_version(d)
        try:
            writeback = d.get("writeback", "requested")
            if writeback not in ("requested", "always"):
                raise ContractError(f"unknown writeback {writeback!r}")
            prompt = d.get("prompt")
            raw_options = d.get("options")
            try:
                options = None if raw_options is None else ProjectOptions.from_json(raw_options)
            except RequestError as exc:
                raise ContractError(f"malformed predict job options: {exc}") from exc
            return cls(
                project=str(d["project"]),
                model_version=str(d["model_version"]),
                targets=tuple(Target.from_json(t) for t in d["targets"]),
                tasks=tuple(JobTask.from_json(t) for t in d["tasks"]),
                channel=str(d.get("channel") or ""),
                queue=str(d.get("queue") or "batch"),
                prompt=None if not prompt else Prompt.from_json(prompt),
                writeback=writeback,
                enqueued_at=float(d.get("enqueued_at") or time.time()),
                recovered=bool(d.get("recovered", False)),
                options=options,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(f"malformed predict job: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class SyncJob:
    """Fill ``project``'s examples from Label Studio (``force``: even if filled before)."""

    project: str
    force: bool = False

    kind = "sync"

    def to_json(self) -> dict[str, Any]:
        return {"v": CONTRACT_VERSION, "project": self.project, "force": self.force}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SyncJob:
        _check_version(d)
        try:
            return cls(project=str(d["project"]), force=bool(d.get("force", False)))
        except KeyError as exc:
            raise ContractError(f"malformed sync job: missing {exc}") from exc


@dataclass(frozen=True)
class PruneJob:
    """Delete this backend's superseded predictions (ids) of ``project`` from Label Studio."""

    project: str
    predictions: tuple[int, ...]

    kind = "prune"

    def to_json(self) -> dict[str, Any]:
        return {"v": CONTRACT_VERSION, "project": self.project, "predictions": list(self.predictions)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PruneJob:
        _check_version(d)
        try:
            return cls(project=str(d["project"]), predictions=tuple(int(i) for i in d["predictions"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed prune job: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class QualityJob:
    """Measure this backend's prediction of ``task_id`` against annotation ``annotation_id``
    (submitted or updated in ``project``), see :mod:`seggpt_backend.service.jobs.quality`."""

    project: str
    task_id: int
    annotation_id: int

    kind = "quality"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": CONTRACT_VERSION,
            "project": self.project,
            "task_id": self.task_id,
            "annotation_id": self.annotation_id,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> QualityJob:
        _check_version(d)
        try:
            return cls(
                project=str(d["project"]), task_id=int(d["task_id"]), annotation_id=int(d["annotation_id"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed quality job: {type(exc).__name__}: {exc}") from exc


TuneTrigger = Literal["start-training", "train", "auto", "cli"]
"""What asked for a tuning run: Label Studio's Start Training (``START_TRAINING`` webhook), the
legacy ``POST /train``, the automatic trigger after N accepted annotations, the command line."""


@dataclass(frozen=True)
class TuneJob:
    """Tune learned prompts for ``project`` from its accepted annotations (all its labels, or
    only ``labels``), validate them and promote those that beat what is served
    (:mod:`seggpt_backend.service.jobs.tuning`). ``requested_at``: Unix seconds."""

    project: str
    trigger: TuneTrigger
    labels: tuple[str, ...] = ()
    requested_at: float = field(default_factory=time.time)

    kind = "tune"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": CONTRACT_VERSION,
            "project": self.project,
            "trigger": self.trigger,
            "labels": list(self.labels),
            "requested_at": self.requested_at,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TuneJob:
        _check_version(d)
        try:
            trigger = d.get("trigger", "train")
            if trigger not in ("start-training", "train", "auto", "cli"):
                raise ContractError(f"unknown tuning trigger {trigger!r}")
            labels = d.get("labels") or []
            if not isinstance(labels, list):
                raise ContractError(f"tune job labels must be a list, not {type(labels).__name__}")
            return cls(
                project=str(d["project"]),
                trigger=trigger,
                labels=tuple(str(x) for x in labels),
                requested_at=float(d.get("requested_at") or time.time()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"malformed tune job: {type(exc).__name__}: {exc}") from exc


Job = PredictJob | SyncJob | PruneJob | TuneJob | QualityJob


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome, as a worker stores it and the server reads it: a prediction or a failure.

    A prediction: ``result`` (Label Studio regions, percent coordinates), ``score`` in [0, 1]
    and the ``model_version`` it was computed with (empty: the version it is stored under).
    A failure: ``error`` names the task and the problem (``"task 12: image ...: ..."``) and
    ``result`` is empty. ``messages``: notes for Label Studio's answer (skipped labels etc.).

    JSON: ``{"result": [...], "score": s, "model_version": D, "messages": [...]}`` or
    ``{"error": msg, "messages": [...]}``.
    """

    result: tuple[dict[str, Any], ...] = ()
    score: float = 0.0
    model_version: str = ""
    error: str | None = None
    messages: tuple[str, ...] = ()

    @classmethod
    def failure(cls, error: str) -> TaskResult:
        return cls(error=error)

    @property
    def ok(self) -> bool:
        return self.error is None

    def delivered_version(self, fallback: str) -> str:
        """The model version Label Studio stores for this prediction: the one it was computed with."""
        return self.model_version or fallback

    def prediction(self, fallback_version: str) -> dict[str, Any]:
        """The prediction as Label Studio's ``/predict`` answer and API carry it."""
        return {
            "result": list(self.result),
            "score": self.score,
            "model_version": self.delivered_version(fallback_version),
        }

    def with_messages(self, messages: Sequence[str]) -> TaskResult:
        return replace(self, messages=(*self.messages, *messages))

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "messages": list(self.messages)}
        return {
            "result": list(self.result),
            "score": self.score,
            "model_version": self.model_version,
            "messages": list(self.messages),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TaskResult:
        messages = tuple(str(m) for m in d.get("messages") or ())
        if d.get("error") is not None:
            return cls(error=str(d["error"]), messages=messages)
        return cls(
            result=tuple(dict(r) for r in d.get("result") or ()),
            score=float(d.get("score", 0.0)),
            model_version=str(d.get("model_version") or ""),
            messages=messages,
        )


def _check_version(d: Mapping[str, Any]) -> None:
    if not isinstance(d, Mapping):
        raise ContractError(f"a job payload is a JSON object, not {type(d).__name__}")
    if d.get("v") != CONTRACT_VERSION:
        raise ContractError(
            f"job payload version {d.get('v')!r} is not {CONTRACT_VERSION}: serve and workers run "
            "different releases; upgrade them together"
        )
