"""Write the example report shown in the README (docs/report-example/) from a SIMULATED session.

The measurements are invented (not a benchmark): 3 labels, 120 submissions over 2 hours, four
model versions (new examples, then learned prompts), IoU drifting up as examples accumulate and
region scores that rank IoU only loosely (as the issue observed: scores 0.96-0.98 for IoUs
0.59-0.90). They go through the real store and the real report writer.

    .venv/bin/python scripts/example_report.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from seggpt_backend.report import write_report
from seggpt_backend.service.store.kv import MemoryKV
from seggpt_backend.service.store.quality import LabelQuality, Measurement, QualityStore

VERSIONS = [
    "seggpt-demo-4c1d.ex-3f2a1b9c0d",
    "seggpt-demo-4c1d.ex-81e0c2d4aa",
    "seggpt-demo-4c1d.ex-c93b7e1052",
    "seggpt-demo-4c1d.ex-c93b7e1052.pr-5d0e8a71f3",
]
BASE = {"Cat": 0.62, "Dog": 0.55, "Bird": 0.35}


def main(out: Path) -> None:
    rng = np.random.default_rng(7)
    store = QualityStore(MemoryKV())
    start = 1_796_000_000.0
    for i in range(120):
        version = VERSIONS[min(3, i // 30)]
        labels = []
        for label, base in BASE.items():
            if rng.random() < 0.3:
                continue  # not on this image
            iou = float(np.clip(base + 0.25 * i / 120 + rng.normal(0, 0.12), 0, 1))
            missed = rng.random() < 0.05
            score = (
                None if missed else round(float(np.clip(0.93 + 0.05 * iou + rng.normal(0, 0.015), 0, 1)), 4)
            )
            labels.append(
                LabelQuality(label, 0.0 if missed else round(iou, 4), score, 0 if missed else 900, 1000)
            )
        if labels:
            store.record(
                "3", Measurement(1000 + i, 2000 + i, 3000 + i, version, start + 60 * i, tuple(labels))
            )
    data = write_report("3", store.entries("3"), out)
    print(f"{out}: {data['measurements']} measurements, Spearman {data['score_vs_iou']['spearman']:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/report-example"))
