"""Metrics recorded in the shared KV and rendered as Prometheus text."""

from __future__ import annotations

from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.metrics import Metrics


def _series(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_counters_histograms_and_gauges_render() -> None:
    m = Metrics(MemoryKV())
    m.inc("seggpt_jobs_total", queue="batch", status="finished")
    m.inc("seggpt_jobs_total", 2, queue="batch", status="finished")
    for seconds in (0.03, 0.3, 0.3, 500.0):
        m.observe("seggpt_job_duration_seconds", seconds, queue="batch")
    text = m.render({'seggpt_queue_depth{queue="batch"}': 4})
    s = _series(text)
    assert s['seggpt_jobs_total{queue="batch",status="finished"}'] == 3
    assert s['seggpt_job_duration_seconds_bucket{queue="batch",le="0.05"}'] == 1
    assert s['seggpt_job_duration_seconds_bucket{queue="batch",le="0.25"}'] == 1
    assert s['seggpt_job_duration_seconds_bucket{queue="batch",le="0.5"}'] == 3
    assert s['seggpt_job_duration_seconds_bucket{queue="batch",le="300"}'] == 3
    assert s['seggpt_job_duration_seconds_bucket{queue="batch",le="+Inf"}'] == 4
    assert s['seggpt_job_duration_seconds_count{queue="batch"}'] == 4
    assert abs(s['seggpt_job_duration_seconds_sum{queue="batch"}'] - 500.63) < 1e-6
    assert s['seggpt_queue_depth{queue="batch"}'] == 4
    assert "# TYPE seggpt_job_duration_seconds histogram" in text
    assert "# TYPE seggpt_jobs_total counter" in text
    assert text.endswith("\n")


def test_label_values_are_escaped() -> None:
    m = Metrics(MemoryKV())
    m.inc("seggpt_webhooks_total", action='we"ird\\')
    assert 'seggpt_webhooks_total{action="we\\"ird\\\\"} 1' in m.render()
