"""The Extra params each project's connection sent (see :class:`~seggpt_backend.service.contract.ProjectOptions`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from seggpt_backend.service.contract import OptionsError, ProjectOptions

log = logging.getLogger(__name__)


class ProjectOptionsStore:
    """The Extra params each project's connection sent, as given (validated), on a KV.

    Key ``popt:<project>``: the JSON object (absent: none). Read by the server for every
    ``/predict`` (one GET) and combined with the environment defaults then.
    """

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    def put(self, project: str, extra: Mapping[str, Any] | None) -> None:
        if not extra:
            self.kv.delete(f"popt:{project}")
        else:
            self.kv.set(f"popt:{project}", json.dumps(dict(extra), sort_keys=True).encode())

    def get(self, project: str, defaults: ProjectOptions) -> ProjectOptions:
        """The project's options; stored params that no longer validate (a new release tightened
        a rule) are logged and the defaults used, so predictions go on."""
        raw = self.kv.get(f"popt:{project}")
        if not raw:
            return defaults
        try:
            return ProjectOptions.from_extra_params(json.loads(raw), defaults=defaults, project=project)
        except (ValueError, OptionsError) as exc:
            log.warning("project %s: stored Extra params ignored: %s", project, exc)
            return defaults
