"""Filling a project's example store from the Label Studio API.

Used on first use of a project (no full fill recorded yet) and on ``START_TRAINING`` (the "Start
Training" button re-syncs; SegGPT itself needs no training). Webhooks keep the store current in
between. A KV lock makes concurrent fills (several workers, several requests) run once.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from seggpt_backend.service.store.examples import ExampleRecord, ExampleStore, record_from_annotation
from seggpt_backend.service.store.kv import KV

log = logging.getLogger(__name__)

LOCK_TTL_S = 600


class TaskSource(Protocol):
    """The part of ``LabelStudioClient`` a fill needs."""

    def get_project(self, project_id: int) -> dict[str, Any]: ...
    def iter_tasks(self, project_id: int, only_labeled: bool = False) -> Any: ...


def image_fields_of(label_config: str) -> dict[str, str]:
    """``{Image name: task data key}`` of a label config (``<Image name="image" value="$image"/>``)."""
    from seggpt_backend.service.contract import parse_targets

    return {t.to_name: t.data_key for t in parse_targets(label_config)}


def fill(
    source: TaskSource,
    store: ExampleStore,
    kv: KV,
    project: str,
    *,
    wait_s: float = 60.0,
    on_removed: Any = None,
) -> int | None:
    """Fetch every labelled task of ``project`` and reconcile the store with its annotations.

    Returns the number of examples stored, or ``None`` when another process held the lock and
    did not finish within ``wait_s`` (the caller proceeds with what the store has).
    ``on_removed(annotation_id, rev)`` is called for records the listing no longer has.
    """
    lock = f"ex:{project}:filling"
    if not kv.set(lock, b"1", ex=LOCK_TTL_S, nx=True):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and kv.exists(lock):
            time.sleep(0.2)
        return store.count(project) if store.is_populated(project) else None
    try:
        started = time.time()
        project_id = int(project)
        config = source.get_project(project_id).get("label_config") or ""
        fields = image_fields_of(config)
        fetched: list[ExampleRecord] = []
        for task in source.iter_tasks(project_id, only_labeled=True):
            for annotation in task.get("annotations") or []:
                try:
                    record = record_from_annotation(annotation, task, fields)
                except (TypeError, ValueError) as exc:  # one bad region must not stop the fill
                    log.warning(
                        "project %s: task %s annotation %s skipped: malformed region (%s)",
                        project,
                        task.get("id"),
                        annotation.get("id"),
                        exc,
                    )
                    continue
                if record is not None:
                    fetched.append(record)
        removed = store.reconcile(project, fetched, started)
        if on_removed is not None:
            for annotation_id, rev in removed.items():
                on_removed(annotation_id, rev)
        log.info(
            "project %s: %d examples from Label Studio (%d removed) in %.1f s",
            project,
            len(fetched),
            len(removed),
            time.time() - started,
        )
        return len(fetched)
    finally:
        kv.delete(lock)
