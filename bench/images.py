"""Benchmark: decoding a 6000 x 4000 JPEG for a 448 x 448 model input.

Compares, side by side in one run on one machine:
- ``load_image(target_size=448)`` (JPEG DCT-domain reduction, "draft") + bicubic resize to 448,
- Pillow full decode + bicubic resize to 448 (the naive path),
- full-resolution ``load_image(target_size=None)`` against plain Pillow decode + ``np.asarray``
  (the overhead of our mode/orientation handling and writable copy),
- ``image_size`` (header only).

Run: ``.venv/bin/python bench/images.py [--repeats N]``; writes ``bench/results_images.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
from _common import cpu_name
from PIL import Image, features

from seggpt_backend.engine.images import image_size, load_image

WIDTH, HEIGHT, TARGET = 6000, 4000, 448
RESULTS = Path(__file__).with_name("results_images.md")


def _photo_like(path: Path) -> None:
    """A 6000 x 4000 JPEG with smooth structure and sensor-like noise (quality 90)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
    noise = rng.integers(-6, 7, (HEIGHT, WIDTH, 1), dtype=np.int16)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def _to_model(array: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((TARGET, TARGET), Image.Resampling.BICUBIC))


def _pillow_full(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm the page cache and allocator
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        _photo_like(path)
        megabytes = path.stat().st_size / 1e6
        draft_shape = load_image(path, target_size=TARGET).shape
        rows = [
            ("draft: load_image(target_size=448) + resize 448", lambda: _to_model(load_image(path))),
            ("naive: Pillow full decode + resize 448", lambda: _to_model(_pillow_full(path))),
            ("load_image(target_size=448) only", lambda: load_image(path)),
            ("load_image(target_size=None), full res", lambda: load_image(path, target_size=None)),
            ("Pillow open + convert + np.asarray, full res", lambda: _pillow_full(path)),
            ("image_size (header only)", lambda: image_size(path)),
        ]
        timings = [(name, *_time(fn, args.repeats)) for name, fn in rows]
        difference = np.abs(
            _to_model(load_image(path)).astype(int) - _to_model(_pillow_full(path)).astype(int)
        )

    by_name = {name: median for name, median, _ in timings}
    speedup = by_name[rows[1][0]] / by_name[rows[0][0]]
    overhead = by_name[rows[3][0]] / by_name[rows[4][0]]
    lines = [
        "# Image loading benchmark (`bench/images.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Device: {cpu_name()} (shared with other jobs; single-threaded decode)",
        f"- Pillow {PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}, "
        f"numpy {np.__version__}, Python {sys.version.split()[0]}",
        f"- Input: {WIDTH} x {HEIGHT} RGB JPEG, quality 90, {megabytes:.1f} MB; draft decode gives "
        f"{draft_shape[1]} x {draft_shape[0]} (W x H)",
        f"- {args.repeats} timed repeats after one warm-up; median and best",
        "",
        "| path | median ms | best ms |",
        "|---|---:|---:|",
        *(f"| {name} | {median * 1e3:.2f} | {best * 1e3:.2f} |" for name, median, best in timings),
        "",
        f"- **Draft vs naive to a 448 x 448 model input: {speedup:.1f}x faster** (median ratio).",
        f"- Full-resolution `load_image` / plain Pillow open + convert + `np.asarray`: {overhead:.2f}x "
        "(load_image skips Pillow's same-mode convert copy but returns a writable array).",
        f"- Quality: the two 448 x 448 results differ by {difference.mean():.2f} levels on average "
        f"(99th percentile {np.percentile(difference, 99):.0f}, max {difference.max()}) out of 255.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
