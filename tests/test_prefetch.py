"""Thread-pool image prefetch: futures are shared, failures are not cached, sizes are original."""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

from seggpt_backend.service.jobs.prefetch import ImagePrefetcher
from tests.fixtures import scene


def _jpeg(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene(h, w, seed=2)[0]).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_warm_then_load_downloads_once_and_keeps_the_original_size() -> None:
    calls: list[str] = []
    lock = threading.Lock()
    files = {"/big.jpg": _jpeg(2000, 1800)}

    def fetch(url: str, task_id: int | None) -> bytes:
        with lock:
            calls.append(url)
        return files[url]

    p = ImagePrefetcher(fetch, max_pixels=10**8, target_size=448)
    try:
        assert p.warm([("/big.jpg", 1)]) == 1
        assert p.warm([("/big.jpg", 1)]) == 0
        pixels, size = p.load("/big.jpg", 1).result(10)
        assert size == (2000, 1800)
        assert (
            pixels.dtype == np.uint8 and min(pixels.shape[:2]) >= 448 and pixels.shape[0] < 2000
        )  # draft decode
        assert calls == ["/big.jpg"]
        p.release(["/big.jpg"])
        p.load("/big.jpg", 1).result(10)
        assert calls == ["/big.jpg", "/big.jpg"]
    finally:
        p.close()


def test_a_failed_download_is_retried_on_the_next_load() -> None:
    attempts = {"n": 0}

    def flaky(url: str, task_id: int | None) -> bytes:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise OSError("connection reset")
        return _jpeg(60, 80)

    p = ImagePrefetcher(flaky, max_pixels=10**8)
    try:
        first = p.load("/x.jpg", 3)
        assert isinstance(first.exception(10), OSError)
        pixels, size = p.load("/x.jpg", 3).result(10)
        assert size == (60, 80) and pixels.shape == (60, 80, 3)
    finally:
        p.close()
