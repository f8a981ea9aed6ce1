"""Per-project options: Label Studio's "Extra params" of the model connection, typed.

Label Studio 1.23 sends a connection's Extra params (a JSON object typed into the model's
settings, or ``extra_params`` of ``POST /api/ml``) in every ``POST /setup`` as
``"extra_params": {...}`` (``null`` when empty); ``/predict`` does not carry them. The server
validates them there (an unknown key or a bad value is a 422 naming the key, which Label Studio
shows when the model is connected), keeps them per project (:class:`ProjectOptionsStore`) and
puts the effective :class:`ProjectOptions` into every job, so workers apply them. The
environment (:class:`~seggpt_backend.settings.Settings`) gives the defaults.

Keys (``"k": 2, "split_components": true, ...``):

==================  ============  ===================================================
key                 type          meaning (environment default)
==================  ============  ===================================================
``k``               int >= 1      examples per label (``SEGGPT_NUM_EXAMPLES``)
``ensemble``        str           feature / spatial / none (``SEGGPT_ENSEMBLE``)
``selection``       str           retrieval / recent (``SEGGPT_EXAMPLE_SELECTION``)
``split_components``  bool        one region per connected part (``SEGGPT_SPLIT_COMPONENTS``)
``threshold``       float (0, 1)  soft-map foreground threshold (``SEGGPT_MASK_THRESHOLD``)
``min_region_area`` int >= 0      drop smaller regions, pixels (``SEGGPT_MIN_REGION_AREA``)
``min_score``       float [0, 1]  drop regions scoring less (``SEGGPT_MIN_SCORE``)
``output_type``     str           auto / brush / polygon (``SEGGPT_OUTPUT_TYPE``)
``auto_prelabel``   bool          pre-label imported tasks (``SEGGPT_AUTO_PRELABEL``)
``tune_every``      int >= 0      tune after N accepted annotations, 0 never (``SEGGPT_TUNE_EVERY``)
==================  ============  ===================================================

Options that change predictions are tagged into the model version (``.p-<digest>``) so a project
with its own options gets its own version (and Label Studio recomputes its tasks when they change).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from seggpt_backend.service.errors import RequestError

log = logging.getLogger(__name__)

# Extra-params key -> ProjectOptions field (the field names are the keys except ``k``).
KEYS: dict[str, str] = {
    "k": "num_examples",
    "ensemble": "ensemble",
    "selection": "selection",
    "split_components": "split_components",
    "threshold": "threshold",
    "min_region_area": "min_region_area",
    "min_score": "min_score",
    "output_type": "output_type",
    "auto_prelabel": "auto_prelabel",
    "tune_every": "tune_every",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "ensemble": ("feature", "spatial", "none"),
    "selection": ("retrieval", "recent"),
    "output_type": ("auto", "brush", "polygon"),
}
# Fields that change what a prediction contains (the model version's ``.p-`` tag covers them).
PREDICTIVE = (
    "num_examples", "ensemble", "selection", "split_components", "threshold", "min_region_area",
    "min_score", "output_type",
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
    output_type: str = "auto"
    auto_prelabel: bool = False
    tune_every: int = 0
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
            output_type=settings.output_type,
            auto_prelabel=settings.auto_prelabel,
            tune_every=settings.tune_every,
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
            name = KEYS.get(str(key))
            if name is None:
                raise OptionsError(
                    f"project {project}: Extra params: unknown key {key!r} (known keys: {', '.join(KEYS)})"
                )
            values[name] = _parse(name, raw, key=str(key), project=project)
        overridden = tuple(sorted(set(defaults.overridden) | set(values)))
        return replace(defaults, **values, overridden=overridden)

    def version_tag(self) -> str | None:
        """10 hex digits over the overridden options that change predictions, or None."""
        keys = [n for n in PREDICTIVE if n in self.overridden]
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

    if name in CHOICES:
        if not isinstance(raw, str) or raw not in CHOICES[name]:
            raise bad(f"use one of {', '.join(CHOICES[name])}")
        return raw
    if name in ("split_components", "auto_prelabel"):
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
