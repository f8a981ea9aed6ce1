"""Learned prompts (in-context tuning) and the record of every tuning run, per project.

A learned prompt is two ``(3, h, w) float32`` arrays in the model's normalised input space (see
:class:`~seggpt_backend.engine.interface.LearnedPrompt`), stored as **safetensors bytes** (never
pickle) next to JSON metadata. Prompts are versioned per project (one counter per project, so
``3`` names one prompt of one label) and tied to the engine version they were tuned with: a
worker serves a prompt only when that version equals its loaded engine's (a prompt tuned on
``demo`` is never used with ViT-L); prompts of other weights stay listed for rollback.

Key layout (under the KV prefix), per project ``P``:

- ``pr:P:blob:V``  string  safetensors bytes of version ``V`` (tensors ``image`` and ``target``)
- ``pr:P:meta``    hash    version -> :class:`PromptMeta` JSON
- ``pr:P:active``  hash    label -> promoted version (the pointer the workers follow)
- ``pr:P:runs``    hash    run id -> :class:`TuneRun` JSON (at most :data:`MAX_RUNS`)
- ``pr:P:state``   hash    ``seq`` (version counter), ``runseq``, ``since`` (accepted
  annotations since the last automatic trigger)

A promotion is written blob first, then metadata, then the pointer: a reader that follows a
pointer always finds a complete prompt, and a worker killed part-way leaves at most an
unreferenced blob (dropped by :meth:`PromptStore.prune`), never a half-written promotion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from seggpt_backend.service.store.kv import KV

log = logging.getLogger(__name__)

MAX_RUNS = 50
"""Tuning runs kept per project (oldest dropped first)."""
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def encode_tensors(image: np.ndarray, target: np.ndarray) -> bytes:
    """safetensors bytes of a prompt's two ``(3, h, w) float32`` arrays."""
    from safetensors.numpy import save

    return save(
        {
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "target": np.ascontiguousarray(target, dtype=np.float32),
        }
    )


def decode_tensors(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The ``(image, target)`` arrays of :func:`encode_tensors` bytes; ``ValueError`` if unreadable."""
    from safetensors.numpy import load

    try:
        arrays = load(data)
        image, target = arrays["image"], arrays["target"]
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage bytes
        raise ValueError(f"unreadable prompt tensors: {type(exc).__name__}: {exc}") from exc
    if image.shape != target.shape or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"prompt tensors have shapes {image.shape} and {target.shape}, not (3, h, w)")
    return image.astype(np.float32, copy=False), target.astype(np.float32, copy=False)


def to_pixels(half: np.ndarray) -> np.ndarray:
    """A normalised ``(3, h, w)`` half as an ``(h, w, 3) uint8`` RGB picture (for PNG export)."""
    rgb = half.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PromptMeta:
    """One stored prompt version.

    ``engine_version``: the engine it was tuned with (``seggpt-demo-...``); ``mode``: how it is
    served, ``"alone"`` or ``"ensemble"`` (with the retrieved examples); ``size``: ``(h, w)``;
    ``miou``: the validation figures of its run (``served``, ``alone``, ``ensemble``).
    """

    version: str
    label: str
    engine_version: str
    mode: str
    size: tuple[int, int]
    run: str
    created_at: float
    miou: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "size": list(self.size), "miou": dict(self.miou)})

    @classmethod
    def from_json(cls, raw: str | bytes) -> PromptMeta:
        d = json.loads(raw)
        return cls(
            version=str(d["version"]),
            label=str(d["label"]),
            engine_version=str(d["engine_version"]),
            mode=str(d.get("mode", "ensemble")),
            size=(int(d["size"][0]), int(d["size"][1])),
            run=str(d.get("run", "")),
            created_at=float(d.get("created_at", 0.0)),
            miou={str(k): float(v) for k, v in (d.get("miou") or {}).items()},
        )


@dataclass
class LabelRun:
    """One label's part of a run: what was used, what was measured, what was decided.

    ``miou``: validation mean IoU of ``served`` (what was served before), ``alone`` (the tuned
    prompt alone) and ``ensemble`` (tuned prompt + retrieved examples); ``decision`` is
    ``promoted``, ``rejected`` or ``skipped`` with ``reason``; ``excluded``: annotations left out
    (unreadable image or mask) with why.
    """

    label: str
    decision: str
    reason: str
    tuning: list[int] = field(default_factory=list)
    validation: list[int] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    init: int | None = None
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    miou: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    version: str | None = None
    mode: str | None = None
    gain_bound: float | None = None  # 90 % lower bound of the per-image gain (jobs/tuning.py)

    @property
    def gain(self) -> float:
        """Best tuned mIoU minus the served one (0 when not measured)."""
        if "served" not in self.miou:
            return 0.0
        best = max(self.miou.get("alone", -1.0), self.miou.get("ensemble", -1.0))
        return best - self.miou["served"] if best >= 0 else 0.0


@dataclass
class TuneRun:
    """One tuning run of a project (promoted or not). ``status``: ``running``, ``finished`` or
    ``failed`` (``error`` says why); times are Unix seconds."""

    id: str
    project: str
    engine_version: str
    trigger: str
    started_at: float
    status: str = "running"
    finished_at: float | None = None
    labels: list[LabelRun] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def promoted(self) -> list[str]:
        return [r.label for r in self.labels if r.decision == "promoted"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> TuneRun:
        d = json.loads(raw)
        labels = [LabelRun(**lr) for lr in d.pop("labels", [])]
        return cls(**d, labels=labels)


class PromptStore:
    """Per-project learned prompts and tuning runs on a :class:`KV` (see the module docstring).

    ``keep``: prompt versions kept per label (the promoted one is never dropped).
    """

    def __init__(self, kv: KV, *, keep: int = 10) -> None:
        self.kv = kv
        self.keep = max(1, keep)

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _key(project: str, what: str) -> str:
        return f"pr:{project}:{what}"

    # ------------------------------------------------------------------ prompts
    def metas(self, project: str) -> dict[str, PromptMeta]:
        """Every stored version's metadata (unreadable entries are logged and left out)."""
        out: dict[str, PromptMeta] = {}
        for version, raw in self.kv.hgetall(self._key(project, "meta")).items():
            try:
                out[version] = PromptMeta.from_json(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("project %s: prompt %s has unreadable metadata: %s", project, version, exc)
        return out

    def active(self, project: str) -> dict[str, str]:
        """``{label: promoted version}``."""
        return {k: v.decode() for k, v in self.kv.hgetall(self._key(project, "active")).items()}

    def served(self, project: str, engine_version: str) -> dict[str, PromptMeta]:
        """``{label: metadata}`` of the promoted prompts tuned for ``engine_version`` (cheap: two
        small hashes, no tensors)."""
        active = self.active(project)
        if not active:
            return {}
        metas = self.metas(project)
        return {
            label: metas[v]
            for label, v in active.items()
            if v in metas and metas[v].engine_version == engine_version
        }

    def digest(self, project: str, engine_version: str) -> str | None:
        """10 hex chars naming the served prompts (part of the model version), ``None`` if none."""
        served = self.served(project, engine_version)
        if not served:
            return None
        body = ",".join(f"{label}={served[label].version}" for label in sorted(served))
        return hashlib.sha1(body.encode()).hexdigest()[:10]

    def load(self, project: str, version: str) -> tuple[np.ndarray, np.ndarray]:
        """The arrays of one version; ``KeyError`` if absent, ``ValueError`` if unreadable."""
        data = self.kv.get(self._key(project, f"blob:{version}"))
        if data is None:
            raise KeyError(f"project {project}: prompt version {version} has no tensors")
        return decode_tensors(data)

    def next_version(self, project: str) -> str:
        return str(self.kv.hincrby(self._key(project, "state"), "seq", 1))

    def promote(
        self,
        project: str,
        *,
        label: str,
        image: np.ndarray,
        target: np.ndarray,
        engine_version: str,
        mode: str,
        run: str,
        miou: Mapping[str, float],
    ) -> PromptMeta:
        """Store a new version of ``label``'s prompt and make it the promoted one (blob, then
        metadata, then pointer: see the module docstring). Returns its metadata."""
        version = self.next_version(project)
        meta = PromptMeta(
            version=version,
            label=label,
            engine_version=engine_version,
            mode=mode,
            size=(int(image.shape[1]), int(image.shape[2])),
            run=run,
            created_at=time.time(),
            miou={k: round(float(v), 4) for k, v in miou.items()},
        )
        self.kv.set(self._key(project, f"blob:{version}"), encode_tensors(image, target))
        self.kv.hset(self._key(project, "meta"), {version: meta.to_json()})
        self.kv.hset(self._key(project, "active"), {label: version})
        self.prune(project)
        return meta

    def rollback(self, project: str, label: str, version: str) -> PromptMeta:
        """Make stored ``version`` of ``label`` the promoted one; ``KeyError`` naming the problem."""
        meta = self.metas(project).get(version)
        if meta is None:
            raise KeyError(f"project {project} has no prompt version {version!r}")
        if meta.label != label:
            raise KeyError(
                f"prompt version {version} of project {project} is for {meta.label!r}, not {label!r}"
            )
        self.load(project, version)  # refuse a pointer to tensors that are gone or unreadable
        self.kv.hset(self._key(project, "active"), {label: version})
        return meta

    def withdraw(self, project: str, label: str) -> bool:
        """Serve no learned prompt for ``label`` (examples only); True if one was promoted."""
        return bool(self.kv.hdel(self._key(project, "active"), label))

    def prune(self, project: str) -> list[str]:
        """Keep the newest :attr:`keep` versions per label plus every promoted one; drop the rest.
        Returns the dropped versions."""
        active = set(self.active(project).values())
        by_label: dict[str, list[PromptMeta]] = {}
        for meta in self.metas(project).values():
            by_label.setdefault(meta.label, []).append(meta)
        dropped: list[str] = []
        for metas in by_label.values():
            metas.sort(key=lambda m: int(m.version) if m.version.isdigit() else 0, reverse=True)
            dropped += [m.version for m in metas[self.keep :] if m.version not in active]
        if dropped:
            self.kv.delete(*(self._key(project, f"blob:{v}") for v in dropped))
            self.kv.hdel(self._key(project, "meta"), *dropped)
        return dropped

    # ------------------------------------------------------------------ runs
    def new_run_id(self, project: str) -> str:
        return str(self.kv.hincrby(self._key(project, "state"), "runseq", 1))

    def save_run(self, run: TuneRun) -> None:
        key = self._key(run.project, "runs")
        self.kv.hset(key, {run.id: run.to_json()})
        ids = sorted((int(i) for i in self.kv.hgetall(key) if i.isdigit()), reverse=True)
        old = [str(i) for i in ids[MAX_RUNS:]]
        if old:
            self.kv.hdel(key, *old)

    def runs(self, project: str) -> list[TuneRun]:
        """Every kept run, newest first."""
        out: list[TuneRun] = []
        for rid, raw in self.kv.hgetall(self._key(project, "runs")).items():
            try:
                out.append(TuneRun.from_json(raw))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("project %s: run %s is unreadable: %s", project, rid, exc)
        out.sort(key=lambda r: int(r.id) if r.id.isdigit() else 0, reverse=True)
        return out

    def run(self, project: str, run_id: str) -> TuneRun | None:
        raw = self.kv.hget(self._key(project, "runs"), run_id)
        return None if raw is None else TuneRun.from_json(raw)

    # ------------------------------------------------------------------ automatic trigger
    def count_accepted(self, project: str, every: int) -> bool:
        """Count one new or changed accepted annotation; True (and the count restarts) when
        ``every`` have accumulated. ``every`` = 0: never."""
        if every <= 0:
            return False
        n = self.kv.hincrby(self._key(project, "state"), "since", 1)
        if n >= every:
            self.kv.hincrby(self._key(project, "state"), "since", -n)
            return True
        return False

    def summary(self, project: str) -> dict[str, Any]:
        """JSON-ready view for the CLI: promoted version per label and every stored version."""
        metas = self.metas(project)
        return {
            "project": project,
            "active": self.active(project),
            "versions": {v: json.loads(m.to_json()) for v, m in sorted(metas.items())},
        }
