"""Benchmark: Label Studio brush RLE, ours against label-studio-sdk, on 4000 x 3000 masks.

Side by side in one run on one machine, for three masks (smooth blobs with holes; 1 % random
speckle; 50 % random, the worst case, for information):
- encode: ``seggpt_backend.labelstudio.rle.encode`` vs ``label_studio_sdk...brush.mask2rle``,
- decode: ``rle.decode`` vs ``decode_rle(rle).reshape(H, W, 4)[:, :, 3]`` (the SDK idiom).
Outputs are checked to be identical before any time is reported.

Run: ``.venv/bin/python bench/rle.py [--out bench/results_rle.md] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_name
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from seggpt_backend.labelstudio import rle

WIDTH, HEIGHT = 4000, 3000


def _blobs(rng: np.random.Generator) -> np.ndarray:
    """Twelve random ellipses, four of them with an elliptic hole: object-like masks."""
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for i in range(12):
        cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
        ry, rx = rng.uniform(80, 600, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        if i % 3 == 0:
            inside &= ((yy - cy) / (ry / 3)) ** 2 + ((xx - cx) / (rx / 3)) ** 2 >= 1
        mask |= inside
    return mask


def _time(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _row(name: str, ours: list[float], ls: list[float]) -> tuple[str, float, float]:
    med_ours, med_ls = statistics.median(ours), statistics.median(ls)
    best_ours, best_ls = min(ours), min(ls)
    line = (
        f"| {name} | {med_ls:.4f} | {med_ours:.4f} | **{med_ls / med_ours:.1f}x** "
        f"| {best_ls:.4f} | {best_ours:.4f} | {best_ls / best_ours:.1f}x | {len(ls)} / {len(ours)} |"
    )
    return line, med_ls / med_ours, best_ls / best_ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats of our code")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    masks = {
        "smooth blobs": (_blobs(rng).astype(np.uint8) * 255, 3, 3),
        "1 % speckle": ((rng.random((HEIGHT, WIDTH)) < 0.01).astype(np.uint8) * 255, 3, 2),
        "50 % random (info)": ((rng.random((HEIGHT, WIDTH)) < 0.5).astype(np.uint8) * 255, 1, 1),
    }
    rows, facts = [], []
    for name, (mask, ls_enc_repeats, ls_dec_repeats) in masks.items():
        rle.decode(rle.encode(mask), HEIGHT, WIDTH)  # warm-up: imports, table caches
        enc_ours, ours_rle = _time(lambda m=mask: rle.encode(m), args.repeats)
        enc_ls, ls_rle = _time(lambda m=mask: mask2rle(m), ls_enc_repeats)
        if ours_rle != ls_rle:
            print(f"{name}: encodings differ", file=sys.stderr)
            return 1
        dec_ours, ours_mask = _time(lambda r=ours_rle: rle.decode(r, HEIGHT, WIDTH), args.repeats)
        dec_ls, ls_mask = _time(
            lambda r=ls_rle: decode_rle(r).reshape(HEIGHT, WIDTH, 4)[:, :, 3], ls_dec_repeats
        )
        if not (np.array_equal(ours_mask, ls_mask) and np.array_equal(ours_mask, mask)):
            print(f"{name}: decodings differ", file=sys.stderr)
            return 1
        runs = int(np.count_nonzero(mask.ravel()[1:] != mask.ravel()[:-1])) + 1
        facts.append(
            f"{name}: {100 * np.count_nonzero(mask) / mask.size:.1f} % set, {runs} runs, RLE {len(ours_rle)} bytes"
        )
        for what, ours, ls in (("encode", enc_ours, enc_ls), ("decode", dec_ours, dec_ls)):
            line, ratio, _ = _row(f"{name}: {what}", ours, ls)
            rows.append(line)
            print(
                f"{name:20s} {what}: ours {statistics.median(ours):.4f} s, SDK {statistics.median(ls):.4f} s, {ratio:.1f}x"
            )

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            "# Brush RLE benchmark (`bench/rle.py`)",
            "",
            f"- Date: {now}",
            f"- Device: {cpu_name()} (shared with other jobs; single-threaded)",
            f"- label-studio-sdk {version('label-studio-sdk')}, numpy {np.__version__}, Python {platform.python_version()}",
            f"- Masks: {WIDTH} x {HEIGHT} uint8 0/255; " + "; ".join(facts),
            "- Ours and the SDK's outputs were checked identical (RLE bytes and decoded masks) in the same run.",
            "- SDK decode is `decode_rle(rle).reshape(H, W, 4)[:, :, 3]`; ratios are SDK time / our time.",
            "",
            "| mask: op | SDK median s | ours median s | ratio (median) | SDK best s | ours best s | ratio (best) | repeats SDK / ours |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    print(section)
    if args.out is not None:
        args.out.write_text(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
