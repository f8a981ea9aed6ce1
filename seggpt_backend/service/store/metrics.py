"""Counters and latency histograms shared by server and workers, rendered as Prometheus text.

Everything lives in one KV hash (``metrics``) so the numbers a worker records are visible on the
server's ``GET /metrics``. Field names are the Prometheus series, e.g.
``seggpt_jobs_total{queue="batch",status="finished"}``; histograms keep cumulative buckets plus
``_sum`` and ``_count`` as the exposition format (version 0.0.4) expects.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping

from seggpt_backend.service.store.kv import KV

log = logging.getLogger(__name__)

KEY = "metrics"
LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

HELP: dict[str, tuple[str, str]] = {
    "seggpt_jobs_total": ("counter", "Queue jobs finished, by queue and status (finished, failed)."),
    "seggpt_job_duration_seconds": ("histogram", "Wall time of one job on a worker, by queue."),
    "seggpt_job_wait_seconds": ("histogram", "Time a job waited in its queue before a worker took it."),
    "seggpt_tasks_total": ("counter", "Tasks processed by jobs, by outcome (predicted, failed, cached)."),
    "seggpt_predictions_served_total": (
        "counter",
        "Predictions delivered to Label Studio, by channel (response, writeback).",
    ),
    "seggpt_writeback_failures_total": ("counter", "Predictions that could not be written back."),
    "seggpt_predict_requests_total": ("counter", "POST /predict requests, by kind (batch, interactive)."),
    "seggpt_predict_request_seconds": ("histogram", "Wall time of POST /predict, by kind."),
    "seggpt_webhooks_total": ("counter", "Webhook events received, by action."),
    "seggpt_tune_runs_total": ("counter", "Tuning runs, by status (promoted, not-promoted, failed)."),
    "seggpt_tune_labels_total": (
        "counter",
        "Labels of tuning runs, by decision (promoted, rejected, skipped).",
    ),
    "seggpt_tune_duration_seconds": ("histogram", "Wall time of one tuning run."),
    "seggpt_prompt_promotions_total": ("counter", "Learned prompts promoted."),
    "seggpt_tune_gain_sum": ("counter", "Validation mIoU gained by promoted prompts, summed."),
    "seggpt_tune_requests_total": ("counter", "Tuning requests, by trigger and outcome (queued, joined)."),
    "seggpt_suggestions_measured_total": (
        "counter",
        "Predicted labels measured against a submitted annotation, by label and source (examples, tuned).",
    ),
    "seggpt_suggestion_iou_rolling": (
        "gauge",
        "Mean IoU of suggestions with the accepted annotation over the label's last 50 measurements.",
    ),
    "seggpt_suggestion_iou_samples": ("gauge", "Measurements behind seggpt_suggestion_iou_rolling."),
    "seggpt_queue_depth": ("gauge", "Jobs waiting in each queue."),
    "seggpt_queue_jobs": ("gauge", "Jobs currently in each queue's registries, by state."),
    "seggpt_workers": ("gauge", "Live workers registered in Redis (1 in embedded mode once ready)."),
    "seggpt_redis_up": ("gauge", "1 if the server can reach Redis (1 in embedded mode)."),
}


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""

    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metrics:
    """Records into the shared KV hash; failures to record are logged, never raised."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        try:
            self.kv.hincrby(KEY, name + _labels(labels), amount)
        except Exception as exc:  # metrics must never break serving
            log.debug("metrics: cannot record %s: %s", name, exc)

    def add(self, name: str, amount: float, **labels: str) -> None:
        """Add a float to counter ``name`` (e.g. a sum of gains)."""
        try:
            self.kv.hincrbyfloat(KEY, name + _labels(labels), float(amount))
        except Exception as exc:
            log.debug("metrics: cannot record %s: %s", name, exc)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Add one observation to histogram ``name``.

        Only the one bucket the value falls in is incremented (3 KV writes per observation);
        :meth:`render` turns the stored per-bucket counts into Prometheus' cumulative buckets.
        """
        le = next((b for b in LATENCY_BUCKETS if seconds <= b), None)
        try:
            self.kv.hincrby(
                KEY, f"{name}:hist" + _labels({**labels, "le": "+Inf" if le is None else _fmt(le)}), 1
            )
            self.kv.hincrbyfloat(KEY, f"{name}_sum" + _labels(labels), float(seconds))
            self.kv.hincrby(KEY, f"{name}_count" + _labels(labels), 1)
        except Exception as exc:
            log.debug("metrics: cannot record %s: %s", name, exc)

    def snapshot(self) -> dict[str, float]:
        """All series ``{series: value}``, histogram buckets already cumulative."""
        raw = {k: float(v) for k, v in self.kv.hgetall(KEY).items()}
        out = {k: v for k, v in raw.items() if ":hist" not in k}
        groups: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for key, value in raw.items():
            if ":hist" not in key:
                continue
            name, rest = key.split(":hist", 1)
            le = rest.split('le="', 1)[1].split('"', 1)[0]
            others = rest.replace(f',le="{le}"', "").replace(f'le="{le}",', "").replace(f'le="{le}"', "")
            groups[(name, "" if others == "{}" else others)][le] = value
        for (name, others), counts in groups.items():
            total = 0.0
            inner = others[1:-1] + "," if others else ""
            for le in [*(_fmt(b) for b in LATENCY_BUCKETS), "+Inf"]:
                total += counts.get(le, 0.0)
                out[f'{name}_bucket{{{inner}le="{le}"}}'] = total
        return out

    def render(self, gauges: Mapping[str, float] | None = None) -> str:
        """Prometheus text exposition of the recorded series plus live ``gauges`` (series -> value)."""
        series: dict[str, float] = {}
        try:
            series.update(self.snapshot())
        except Exception as exc:
            log.warning("metrics: cannot read recorded series: %s", exc)
        series.update(gauges or {})
        by_family: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for key, value in series.items():
            name = key.split("{", 1)[0]
            family = name
            for suffix in ("_bucket", "_sum", "_count"):
                base = name[: -len(suffix)]
                if name.endswith(suffix) and HELP.get(base, ("",))[0] == "histogram":
                    family = base
            by_family[family].append((key, value))
        lines: list[str] = []
        for family in sorted(set(HELP) | set(by_family)):
            kind, text = HELP.get(family, ("untyped", family))
            lines.append(f"# HELP {family} {text}")
            lines.append(f"# TYPE {family} {kind}")
            for key, value in sorted(by_family.get(family, []), key=_sort_key):
                lines.append(f"{key} {_fmt(value)}")
        return "\n".join(lines) + "\n"


def _sort_key(item: tuple[str, float]) -> tuple[str, float, str]:
    key = item[0]
    # Buckets in numeric order of "le" so the output reads naturally (Prometheus does not care).
    if 'le="' in key:
        le = key.split('le="', 1)[1].split('"', 1)[0]
        base = key.replace(f'le="{le}"', "")
        return base, float("inf") if le == "+Inf" else float(le), key
    return key, 0.0, key
