"""Benchmark: do region scores predict IoU? Held-out synthetic tasks, demo model (or ``--weights``).

For every task of the quality benchmark's sets (``semantic``, ``instance``, ``part``, the two OOD
sets and the evaluation-only family) and k in {1, 2, 4} (feature ensemble), the engine predicts
the query mask; the region is scored the way the service scores it
(:func:`seggpt_backend.service.jobs.regions.calibrated_score`) and by the old rule (mean soft
value inside the mask). Reported: Spearman correlation of each score with the IoU against the
ground truth, and the mean |score - IoU| (calibration error). Empty predictions give no region
in Label Studio and are left out.

``--fit`` instead fits the calibration line (IoU ~ slope * mean soft + intercept) on tasks with
seeds disjoint from the evaluation's (offset :data:`FIT_OFFSET`) and prints the constants for
``regions.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch
from _common import cpu_name
from quality import FAMILY, build_set

from seggpt_backend.demo.synthetic import Task
from seggpt_backend.engine.engine import load_engine
from seggpt_backend.engine.interface import Example, SegmentRequest
from seggpt_backend.service.jobs.regions import calibrated_score

RESULTS = Path(__file__).with_name("results_calibration.md")
SETS = ("semantic", "instance", "part", "ood-semantic", "ood-instance", "family")
# Seed offsets: evaluation uses 610_000 + 10_000 * set index (disjoint from bench/quality.py's
# ranges, < 600_000), fitting 710_000 + ...; both below training's and tests' seeds.
EVAL_OFFSET, FIT_OFFSET = 610_000, 710_000
KS = (1, 2, 4)


def build(name: str, index: int, n: int, offset: int) -> list[Task]:
    """The ``index``-th set's tasks, at seed indices ``offset + 10_000 * index`` onwards."""
    return build_set(FAMILY if name == "family" else name, n, first=offset + 10_000 * index, shots=max(KS))


def measure(engine: object, n: int, offset: int) -> np.ndarray:
    """Rows ``(iou, raw mean soft, calibrated score, k)`` for every non-empty prediction."""
    rows: list[tuple[float, float, float, int]] = []
    for index, name in enumerate(SETS):
        tasks = build(name, index, n, offset)
        for k in KS:
            for seg_type in ("instance", "semantic"):
                ts = [t for t in tasks if t.seg_type == seg_type]
                if not ts:
                    continue
                requests = [
                    SegmentRequest(
                        t.query_image,
                        {
                            t.labels[0]: [
                                Example(
                                    f"{t.seed}:{j}", t.prompt_images[j], {t.labels[0]: t.prompt_masks[j][0]}
                                )
                                for j in range(k)
                            ]
                        },
                    )
                    for t in ts
                ]
                results = engine.segment(requests, ensemble="feature", seg_type=seg_type)  # type: ignore[attr-defined]
                for t, res in zip(ts, results, strict=True):
                    p = res[t.labels[0]]
                    if not p.mask.any():
                        continue
                    truth = t.query_mask[0]
                    iou = float((p.mask & truth).sum() / (p.mask | truth).sum())
                    raw = float(np.clip(p.soft[p.mask].mean(), 0, 1))
                    rows.append((iou, raw, calibrated_score(p.soft, p.mask), k))
    return np.array(rows)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = (np.argsort(np.argsort(x, kind="stable")).astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="score vs IoU on held-out synthetic tasks")
    p.add_argument("--weights", default="demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=14, help="tasks per set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fit", action="store_true", help="fit the calibration line instead")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine = load_engine(args.weights, device=args.device)
    started = time.perf_counter()
    rows = measure(engine, args.n, FIT_OFFSET if args.fit else EVAL_OFFSET)
    if args.fit:
        slope, intercept = np.polyfit(rows[:, 1], rows[:, 0], 1)
        print(f"SCORE_SLOPE = {slope:.4f}\nSCORE_INTERCEPT = {intercept:.4f}  ({len(rows)} regions)")
        return
    iou, raw, cal = rows[:, 0], rows[:, 1], rows[:, 2]
    lines = [
        "# Score calibration (`bench/calibration.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; weights `{args.weights}` "
        f"({engine.model_version}); device: {cpu_name()}, {args.threads} torch threads, no GPU; "
        f"{time.perf_counter() - started:.0f} s.",
        f"- {args.n} held-out tasks per set ({', '.join(SETS)}), k in {KS} (feature ensemble): "
        f"{len(rows)} non-empty predictions (empty ones make no region).",
        "- old: mean soft value inside the mask (the score before issue 10); new: the service's "
        "`calibrated_score` (the same mean mapped linearly onto IoU units, fitted with `--fit` on "
        "disjoint seeds).",
        "",
        "| score | Spearman vs IoU | mean abs(score - IoU) | score 5/50/95th pct | IoU 5/50/95th pct |",
        "|---|---:|---:|---|---|",
    ]
    pct = lambda a: "/".join(f"{v:.2f}" for v in np.percentile(a, [5, 50, 95]))  # noqa: E731
    for name, s in (("old (mean soft)", raw), ("new (calibrated)", cal)):
        lines.append(
            f"| {name} | {spearman(s, iou):.3f} | {np.abs(s - iou).mean():.3f} | {pct(s)} | {pct(iou)} |"
        )
    lines += ["", "Per k (Spearman old / new):", ""]
    for k in KS:
        sel = rows[:, 3] == k
        lines.append(
            f"- k = {k}: {spearman(raw[sel], iou[sel]):.3f} / {spearman(cal[sel], iou[sel]):.3f} ({sel.sum()} regions)"
        )
    lines += [
        "",
        "Candidates tried on the same kind of data before settling (exploration, not kept): a stability "
        "score (|soft > 0.5 + d| / |soft > 0.5 - d|, d = 0.1-0.4) ranked worse (0.41-0.48 vs 0.50), "
        "cycle consistency (predicting the example back from the query's mask) 0.42, a linear mix of "
        "mean soft, stability and outside leakage 0.49. The mean soft value inside the mask ranks best; "
        "what was wrong with it is its value (0.90-0.99 whatever the IoU), which the calibration fixes.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
