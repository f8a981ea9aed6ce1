"""``seggpt-backend report``: how good the suggestions were, from the measurements of a project.

Input: the :class:`~seggpt_backend.service.store.quality.Measurement` entries recorded when
annotators submitted tasks that carried a prediction (IoU per label, model version, score).
Output, in ``DIR``:

- ``figures.json``: every figure's numbers (see :func:`figures`);
- ``iou_over_time.png``: IoU per label against the time of the submission, with the rolling mean;
- ``iou_by_version.png``: mean IoU per model version (in order of first use) and label;
- ``score_vs_iou.png``: the prediction's region score against the IoU it turned out to have,
  with Spearman's rank correlation (how well the score sorts suggestions);
- ``index.html``: the three plots and a per-label summary table.

Plots are drawn with matplotlib's non-interactive ``Agg`` backend (no display needed).
"""

from __future__ import annotations

import html
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seggpt_backend.service.store.quality import ROLLING_WINDOW, Measurement, rolling_means


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def short_version(version: str) -> str:
    """``seggpt-demo-1a2b.ex-0123456789.pr-abcdef0123`` -> ``ex-012345+pr-abcdef`` (plot labels)."""
    parts = version.split(".")
    ex = next((p[:9] for p in parts if p.startswith("ex-")), version[-12:])
    pr = next((p[:9] for p in parts if p.startswith("pr-")), None)
    return ex if pr is None else f"{ex}+{pr}"


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation in [-1, 1], or ``None`` with fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def figures(project: str, entries: Sequence[Measurement], *, window: int = ROLLING_WINDOW) -> dict[str, Any]:
    """The numbers behind every plot, as written to ``figures.json``.

    ``labels``: per label ``n``, ``mean_iou``, ``rolling_mean_iou`` (last ``window``), ``missed``
    (accepted but not predicted) and ``invented`` (predicted but not accepted).
    ``iou_over_time``: per label, points ``{t (unix s), time (ISO), iou, model_version, source,
    task_id, annotation_id}`` oldest first. ``iou_by_version``: per (version, label) ``n`` and
    ``mean_iou``, versions in order of first use. ``score_vs_iou``: ``points`` ``{label, score,
    iou}`` (labels the prediction had) and ``spearman`` (``None`` below 3 points).
    """
    entries = sorted(entries, key=lambda e: (e.measured_at, e.annotation_id))
    over_time: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_version: dict[tuple[str, str], list[float]] = defaultdict(list)
    first_seen: dict[str, float] = {}
    points: list[dict[str, Any]] = []
    for e in entries:
        first_seen.setdefault(e.model_version, e.measured_at)
        for x in e.labels:
            over_time[x.label].append(
                {
                    "t": e.measured_at,
                    "time": _iso(e.measured_at),
                    "iou": x.iou,
                    "model_version": e.model_version,
                    "source": e.source,
                    "task_id": e.task_id,
                    "annotation_id": e.annotation_id,
                }
            )
            by_version[(e.model_version, x.label)].append(x.iou)
            if x.score is not None:
                points.append({"label": x.label, "score": x.score, "iou": x.iou})
    rolling = rolling_means(entries, window)
    labels = {
        label: {
            "n": len(rows),
            "mean_iou": round(float(np.mean([r["iou"] for r in rows])), 4),
            "rolling_mean_iou": round(rolling[label][0], 4),
            "missed": sum(
                1 for e in entries for x in e.labels if x.label == label and x.predicted_pixels == 0
            ),
            "invented": sum(
                1 for e in entries for x in e.labels if x.label == label and x.accepted_pixels == 0
            ),
        }
        for label, rows in sorted(over_time.items())
    }
    versions = sorted(first_seen, key=lambda v: first_seen[v])
    return {
        "project": project,
        "generated_at": _iso(time.time()),
        "measurements": len(entries),
        "rolling_window": window,
        "labels": labels,
        "iou_over_time": dict(sorted(over_time.items())),
        "iou_by_version": [
            {
                "model_version": v,
                "short": short_version(v),
                "source": "tuned" if ".pr-" in v else "examples",
                "first_seen": _iso(first_seen[v]),
                "label": label,
                "n": len(by_version[(v, label)]),
                "mean_iou": round(float(np.mean(by_version[(v, label)])), 4),
            }
            for v in versions
            for label in sorted(over_time)
            if (v, label) in by_version
        ],
        "score_vs_iou": {
            "points": points,
            "spearman": spearman([p["score"] for p in points], [p["iou"] for p in points]),
        },
    }


def _plots(fig_data: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    names: list[str] = []
    labels = list(fig_data["labels"])
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    window = int(fig_data["rolling_window"])

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    t0 = min(p["t"] for rows in fig_data["iou_over_time"].values() for p in rows)
    for label, rows in fig_data["iou_over_time"].items():
        t = np.array([(p["t"] - t0) / 60.0 for p in rows])
        iou = np.array([p["iou"] for p in rows])
        tuned = np.array([p["source"] == "tuned" for p in rows])
        ax.scatter(t[~tuned], iou[~tuned], s=14, color=colours[label], alpha=0.55)
        ax.scatter(t[tuned], iou[tuned], s=22, marker="^", color=colours[label], alpha=0.75)
        rolling = [float(np.mean(iou[max(0, i - window + 1) : i + 1])) for i in range(len(iou))]
        ax.plot(t, rolling, color=colours[label], lw=2, label=f"{label} (rolling mean of {window})")
    ax.set_xlabel("minutes since the first measured submission (triangles: tuned prompts)")
    ax.set_ylabel("IoU with the accepted annotation")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Project {fig_data['project']}: suggestion IoU per label over time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "iou_over_time.png")
    plt.close(fig)
    names.append("iou_over_time.png")

    rows = fig_data["iou_by_version"]
    versions = list(dict.fromkeys(r["model_version"] for r in rows))
    short = {r["model_version"]: r["short"] for r in rows}
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, ns = [], [], []
        for i, v in enumerate(versions):
            hit = next((r for r in rows if r["model_version"] == v and r["label"] == label), None)
            if hit is not None:
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                ys.append(hit["mean_iou"])
                ns.append(hit["n"])
        bars = ax.bar(xs, ys, width=width, color=colours[label], label=label)
        for bar, n in zip(bars, ns, strict=True):
            ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)  # fmt: skip
    ax.set_xticks(range(len(versions)), [short[v] for v in versions], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1.05)
    ax.set_title("Mean suggestion IoU per model version (in order of first use)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "iou_by_version.png")
    plt.close(fig)
    names.append("iou_by_version.png")

    sv = fig_data["score_vs_iou"]
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    for label in labels:
        pts = [p for p in sv["points"] if p["label"] == label]
        ax.scatter([p["score"] for p in pts], [p["iou"] for p in pts], s=16, alpha=0.6, color=colours[label],
                   label=label)  # fmt: skip
    rho = sv["spearman"]
    ax.set_title(f"Score vs IoU (Spearman {'n/a' if rho is None else f'{rho:.2f}'}, n={len(sv['points'])})")
    ax.set_xlabel("prediction score of the label")
    ax.set_ylabel("IoU with the accepted annotation")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "score_vs_iou.png")
    plt.close(fig)
    names.append("score_vs_iou.png")
    return names


def _html(fig_data: dict[str, Any], pngs: Sequence[str]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{s['n']}</td><td>{s['mean_iou']:.3f}</td>"
        f"<td>{s['rolling_mean_iou']:.3f}</td><td>{s['missed']}</td><td>{s['invented']}</td></tr>"
        for label, s in fig_data["labels"].items()
    )
    versions = "".join(
        f"<tr><td><code>{e(r['model_version'])}</code></td><td>{e(r['short'])}</td><td>{e(r['source'])}</td>"
        f"<td>{e(r['label'])}</td><td>{r['n']}</td><td>{r['mean_iou']:.3f}</td></tr>"
        for r in fig_data["iou_by_version"]
    )
    images = "".join(f'<p><img src="{e(name)}" alt="{e(name)}"></p>' for name in pngs)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>SegGPT suggestion quality: project {e(fig_data["project"])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>Suggestion quality, project {e(fig_data["project"])}</h1>
<p>{fig_data["measurements"]} submitted annotations compared with the prediction they were made on
(IoU per label; generated {e(fig_data["generated_at"])}; numbers in <a href="figures.json">figures.json</a>).</p>
<table><tr><th>label</th><th>n</th><th>mean IoU</th><th>rolling mean IoU (last {fig_data["rolling_window"]})</th>
<th>missed</th><th>invented</th></tr>{rows}</table>
{images}
<h2>Model versions</h2>
<table><tr><th>model version</th><th>short</th><th>source</th><th>label</th><th>n</th><th>mean IoU</th></tr>
{versions}</table>
</body></html>
"""


def write_report(project: str, entries: Sequence[Measurement], out: Path) -> dict[str, Any]:
    """Write ``figures.json``, the PNG plots and ``index.html`` into ``out`` (created); returns
    the figures. ``entries`` must not be empty."""
    if not entries:
        raise ValueError(f"project {project}: no measurements to report")
    out.mkdir(parents=True, exist_ok=True)
    data = figures(project, entries)
    (out / "figures.json").write_text(json.dumps(data, indent=1))
    pngs = _plots(data, out)
    (out / "index.html").write_text(_html(data, pngs))
    return data
