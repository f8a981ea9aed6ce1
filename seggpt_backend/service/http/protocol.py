"""The Label Studio ML-backend protocol: request bodies, validation and config interpretation.

Bodies are validated with pydantic (FastAPI turns violations into 422 answers naming the field).
Unknown extra fields are accepted (Label Studio adds fields between versions), but the fields the
backend relies on are typed. Secrets that Label Studio sends (``access_token``, ``params.login``/
``password``, credentials in ``params.context``) are never logged or queued.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from seggpt_backend.service.contract import Target
from seggpt_backend.service.errors import RequestError
from seggpt_backend.service.store.prelabel import own_predictions

log = logging.getLogger(__name__)

__all__ = ["own_predictions"]  # shared with the workers (store/prelabel.py); imported from here too


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_Open):
    """``POST /setup``: sent before every prediction round (Label Studio waits 3 s)."""

    project: str | int = Field(description='"<project id>.<created timestamp>", e.g. "1.1795307990"')
    schema_: str = Field(alias="schema", description="The project's labelling config (XML)")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: dict[str, Any] | None = None


class Task(_Open):
    """One Label Studio task as sent in ``/predict`` (only the used fields are typed)."""

    id: int
    data: dict[str, Any]
    predictions: list[dict[str, Any]] = Field(default_factory=list)
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    project: int | None = None


class PredictParams(_Open):
    login: str | None = Field(default=None, repr=False)
    password: str | None = Field(default=None, repr=False)
    context: dict[str, Any] | None = Field(default=None, repr=False)


class PredictRequest(_Open):
    """``POST /predict``: one result per task is expected back, in order."""

    tasks: list[Task]
    project: str | int | None = None
    label_config: str
    params: PredictParams = Field(default_factory=PredictParams)


class WebhookEvent(_Open):
    """``POST /webhook``: Label Studio's webhook body (``send_payload=true``)."""

    action: str
    project: dict[str, Any] | None = None
    annotation: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] | None = None
    task: dict[str, Any] | None = None
    tasks: list[dict[str, Any]] | None = None


def project_key(project: str | int | None, tasks: list[Task] | None = None) -> str:
    """The project id as a string key: ``"1.1795307990"`` -> ``"1"``; falls back to the tasks' ``project``."""
    if project is not None and str(project).strip():
        from seggpt_backend.labelstudio.client import parse_project_id

        try:
            return str(parse_project_id(str(project)))
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
    for task in tasks or []:
        if task.project is not None:
            return str(task.project)
    raise RequestError("the request names no project (field 'project')")


def task_images(task: Task, targets: list[Target]) -> dict[str, str]:
    """``{data key: image URL}`` for the data keys the targets read (missing keys are left out)."""
    out: dict[str, str] = {}
    for t in targets:
        value = task.data.get(t.data_key)
        if isinstance(value, str) and value:
            out[t.data_key] = value
    return out


def existing_prediction(task: Task, model_version: str) -> dict[str, Any] | None:
    """The task's prediction from ``model_version`` if Label Studio already holds one."""
    for p in task.predictions:
        if (
            isinstance(p, dict)
            and p.get("model_version") == model_version
            and isinstance(p.get("result"), list)
        ):
            return {"result": p["result"], "score": p.get("score") or 0.0, "model_version": model_version}
    return None
