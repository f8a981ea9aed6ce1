"""The per-project store of in-context examples, shared by the HTTP server and every worker.

An *example* is one accepted Label Studio annotation with brush or polygon regions: the task's
image URL and, per region, the label and its Label Studio brush RLE (a polygon is rasterised to
a mask and stored as brush RLE, see :func:`_polygon_rle`). Records are plain JSON in the
:class:`~seggpt_backend.service.store.kv.KV` (Redis in production), so a webhook that lands on the
server is visible to the very next job on any worker. Pixels (decoded images, masks, descriptors)
are derived lazily by :mod:`seggpt_backend.service.jobs.materialize` and cached separately.

Key layout (under the KV prefix), per project ``P``:

- ``ex:P:records``  hash  annotation id -> record JSON
- ``ex:P:revs``     hash  annotation id -> record revision (small; the digest is computed from it)
- ``ex:P:state``    hash  ``populated`` = unix time of the last full fill from the Label Studio API
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from seggpt_backend.service.store.kv import KV

log = logging.getLogger(__name__)

EMPTY_DIGEST = "none"


@dataclass(frozen=True)
class BrushRegion:
    """One brush region of an annotation.

    ``rle`` is Label Studio's brush RLE of an ``(height, width)`` mask; ``width``/``height`` are the
    region's ``original_width``/``original_height`` (the displayed, EXIF-corrected image size).
    """

    from_name: str
    to_name: str
    label: str
    rle: tuple[int, ...]
    width: int
    height: int


@dataclass(frozen=True)
class ExampleRecord:
    """An accepted annotation usable as an example.

    ``images`` maps the Image object name (``to_name``) to the task's image URL or path, exactly
    as it appears in the task data (e.g. ``/data/upload/1/abc-img.png``). ``updated_at`` is Label
    Studio's ISO-8601 timestamp (used for "most recent" ordering). ``stored_at`` is the unix time
    this backend stored the record (used to reconcile a full re-fill with concurrent webhooks).
    """

    annotation_id: int
    task_id: int
    updated_at: str
    images: Mapping[str, str]
    regions: tuple[BrushRegion, ...]
    stored_at: float = 0.0

    @property
    def rev(self) -> str:
        """Content hash (12 hex chars): changes whenever the annotation's regions or image change."""
        body = json.dumps(
            [self.task_id, sorted(self.images.items()), [_region_json(r) for r in self.regions]],
            separators=(",", ":"),
        )
        return hashlib.sha1(body.encode()).hexdigest()[:12]

    def labels(self, from_name: str | None = None) -> set[str]:
        """Labels present in this record (optionally only those of one BrushLabels control)."""
        return {r.label for r in self.regions if from_name is None or r.from_name == from_name}

    def to_json(self) -> str:
        return json.dumps(
            {
                "annotation_id": self.annotation_id,
                "task_id": self.task_id,
                "updated_at": self.updated_at,
                "images": dict(self.images),
                "regions": [_region_json(r) for r in self.regions],
                "stored_at": self.stored_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> ExampleRecord:
        d = json.loads(raw)
        return cls(
            annotation_id=int(d["annotation_id"]),
            task_id=int(d["task_id"]),
            updated_at=str(d["updated_at"]),
            images=dict(d["images"]),
            regions=tuple(
                BrushRegion(
                    from_name=r["from_name"],
                    to_name=r["to_name"],
                    label=r["label"],
                    rle=tuple(r["rle"]),
                    width=int(r["width"]),
                    height=int(r["height"]),
                )
                for r in d["regions"]
            ),
            stored_at=float(d.get("stored_at", 0.0)),
        )


def _region_json(r: BrushRegion) -> dict[str, Any]:
    return {
        "from_name": r.from_name,
        "to_name": r.to_name,
        "label": r.label,
        "rle": list(r.rle),
        "width": r.width,
        "height": r.height,
    }


def record_from_annotation(
    annotation: Mapping[str, Any], task: Mapping[str, Any], image_fields: Mapping[str, str]
) -> ExampleRecord | None:
    """Turn a Label Studio annotation (as in webhooks and the tasks API) into a record.

    ``image_fields`` maps each Image object name to its task-data key (``$image`` -> ``image``).
    Returns ``None`` for annotations that cannot serve as examples: cancelled (skipped) ones,
    ones without a usable brush or polygon region, or whose image is missing from the task data.
    """
    if annotation.get("was_cancelled"):
        return None
    data = task.get("data") or {}
    regions: list[BrushRegion] = []
    images: dict[str, str] = {}
    for item in annotation.get("result") or []:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind not in ("brushlabels", "polygonlabels"):
            continue
        value = item.get("value") or {}
        labels = value.get(kind) or []
        to_name = item.get("to_name")
        width, height = item.get("original_width"), item.get("original_height")
        if not labels or not isinstance(to_name, str) or to_name not in image_fields:
            continue
        if (
            not isinstance(width, int | float)
            or not isinstance(height, int | float)
            or width < 1
            or height < 1
        ):
            continue
        if kind == "brushlabels":
            rle = value.get("rle")
            if value.get("format", "rle") != "rle" or not rle:
                continue
            runs = tuple(int(v) for v in rle)
        else:
            if not value.get("points"):
                continue
            runs = _polygon_rle(value["points"], int(width), int(height))
        url = data.get(image_fields[to_name])
        if not isinstance(url, str) or not url:
            continue
        images[to_name] = url
        for label in labels:
            regions.append(
                BrushRegion(
                    from_name=str(item.get("from_name", "")),
                    to_name=str(to_name),
                    label=str(label),
                    rle=runs,
                    width=int(width),
                    height=int(height),
                )
            )
    if not regions or annotation.get("id") is None or task.get("id") is None:
        return None
    return ExampleRecord(
        annotation_id=int(annotation["id"]),
        task_id=int(task["id"]),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        images=images,
        regions=tuple(regions),
        stored_at=time.time(),
    )


def _polygon_rle(points: Any, width: int, height: int) -> tuple[int, ...]:
    """A polygon region (points in percent) as the brush RLE of its rasterised mask.

    Done when the record is made (a webhook, a fill) so examples keep one pixel format and the
    materializer needs no second path; rasterising and encoding take milliseconds.
    Malformed points raise :class:`ValueError` (the webhook answers 422 naming the annotation).
    """
    from seggpt_backend.labelstudio import polygon, rle

    return tuple(rle.encode(polygon.rasterize(points, width, height)))


def digest_of(revs: Mapping[str, str]) -> str:
    """Order-independent digest (10 hex chars) of a project's examples, or ``"none"`` if empty."""
    if not revs:
        return EMPTY_DIGEST
    body = ",".join(f"{k}={revs[k]}" for k in sorted(revs, key=lambda x: (len(x), x)))
    return hashlib.sha1(body.encode()).hexdigest()[:10]


def compose_model_version(
    engine_version: str, digest: str, *, prompts: str | None = None, options: str | None = None
) -> str:
    """The model version Label Studio sees: ``<engine version>.ex-<examples digest>``, plus
    ``.pr-<digest of the served learned prompts>`` once a tuned prompt is promoted, plus
    ``.p-<digest of the project's own options>`` when its Extra params change predictions."""
    base = f"{engine_version}.ex-{digest}"
    if prompts is not None:
        base += f".pr-{prompts}"
    return base if options is None else f"{base}.p-{options}"


OWN_VERSION = re.compile(
    r"^seggpt-[A-Za-z0-9._-]+\.ex-(none|[0-9a-f]{10})(\.pr-[0-9a-f]{10})?(\.p-[0-9a-f]{10})?$"
)


def is_own_version(model_version: str) -> bool:
    """True for a model version this backend composes (:func:`compose_model_version`)."""
    return bool(OWN_VERSION.match(model_version))


def pixels_key(project: str, annotation_id: int, rev: str) -> str:
    """Key of one annotation revision's decoded pixels, cached by workers
    (:mod:`seggpt_backend.service.jobs.materialize`)."""
    return f"exm:{project}:{annotation_id}:{rev}"


class ExampleStore:
    """Per-project example records on a :class:`KV` (see the module docstring for keys)."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def forget_pixels(self, project: str, removed: Mapping[int, str]) -> None:
        """Drop the cached pixels of removed or replaced revisions (``{annotation id: rev}``)."""
        if removed:
            self.kv.delete(*(pixels_key(project, a, rev) for a, rev in removed.items()))

    @staticmethod
    def _keys(project: str) -> tuple[str, str, str]:
        return f"ex:{project}:records", f"ex:{project}:revs", f"ex:{project}:state"

    def upsert(self, project: str, record: ExampleRecord) -> str | None:
        """Store ``record`` (replacing the same annotation); returns the previous revision, if any."""
        records, revs, _ = self._keys(project)
        old = self.kv.hget(revs, str(record.annotation_id))
        self.kv.hset(records, {str(record.annotation_id): record.to_json()})
        self.kv.hset(revs, {str(record.annotation_id): record.rev})
        return None if old is None else old.decode()

    def delete(self, project: str, annotation_ids: Iterable[int]) -> dict[int, str]:
        """Remove annotations; returns ``{annotation id: revision}`` of those that existed."""
        records, revs, _ = self._keys(project)
        ids = [str(a) for a in annotation_ids]
        old = {int(a): v.decode() for a in ids if (v := self.kv.hget(revs, a)) is not None}
        if ids:
            self.kv.hdel(revs, *ids)
            self.kv.hdel(records, *ids)
        return old

    def records(self, project: str) -> list[ExampleRecord]:
        """All records, most recently updated first (ties: higher annotation id first)."""
        records, _, _ = self._keys(project)
        out: list[ExampleRecord] = []
        for key, raw in self.kv.hgetall(records).items():
            try:
                out.append(ExampleRecord.from_json(raw))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("project %s: dropping unreadable example record %s: %s", project, key, exc)
        out.sort(key=lambda r: (r.updated_at, r.annotation_id), reverse=True)
        return out

    def revisions(self, project: str) -> dict[str, str]:
        """``{annotation id: revision}`` for every stored record."""
        return {k: v.decode() for k, v in self.kv.hgetall(self._keys(project)[1]).items()}

    def digest(self, project: str) -> str:
        """Digest of the project's examples (part of the model version); cheap (small hash)."""
        return digest_of(self.revisions(project))

    def count(self, project: str) -> int:
        return len(self.revisions(project))

    def is_populated(self, project: str) -> bool:
        """True once a full fill from the Label Studio API has completed for ``project``."""
        return self.kv.hget(self._keys(project)[2], "populated") is not None

    def populated_at(self, project: str) -> float | None:
        """Unix seconds of the last completed full fill, ``None`` before the first."""
        raw = self.kv.hget(self._keys(project)[2], "populated")
        return None if raw is None else float(raw)

    def reconcile(self, project: str, fetched: Sequence[ExampleRecord], started_at: float) -> dict[int, str]:
        """Make the store equal to a full listing ``fetched`` from the Label Studio API.

        Records the listing lacks are deleted unless a webhook stored them after the listing
        started (``stored_at >= started_at``), so an annotation created during a slow fill survives.
        Returns ``{annotation id: revision}`` of the removed records.
        """
        keep = {r.annotation_id for r in fetched}
        # A webhook newer than the listing wins over the listing's copy of the same annotation.
        fresh = {r.annotation_id for r in self.records(project) if r.stored_at >= started_at}
        for record in fetched:
            if record.annotation_id not in fresh:
                self.upsert(project, record)
        stale = [
            r.annotation_id
            for r in self.records(project)
            if r.annotation_id not in keep and r.stored_at < started_at
        ]
        removed = self.delete(project, stale)
        self.kv.hset(self._keys(project)[2], {"populated": repr(time.time())})
        return removed
