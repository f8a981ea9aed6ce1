"""Download-and-decode of query images in a thread pool, overlapping I/O with GPU compute.

A job asks :meth:`ImagePrefetcher.load` for each of its images and gets a future at once; the
pool fetches and decodes them while the job materialises examples. The worker additionally calls
:meth:`ImagePrefetcher.warm` with the image URLs of the *next* queued job, so its downloads run
while the current job is on the GPU. Finished futures are kept in a small LRU keyed by URL
(bounded by ``keep``), so a warmed image is not downloaded twice.

Decoding uses :func:`seggpt_backend.engine.images.load_image_and_size` with ``target_size``: big
JPEGs decode at reduced scale (never below ``target_size`` per side) and the original size is
returned alongside, which is the size masks are produced at.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)

Fetch = Callable[[str, int | None], bytes]
LoadedImage = tuple[np.ndarray, tuple[int, int]]


class ImagePrefetcher:
    """Thread-pool image loader with a bounded cache of futures (see module docstring)."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        max_pixels: int,
        target_size: int | None = 448,
        workers: int = 4,
        keep: int = 64,
    ) -> None:
        self.fetch = fetch
        self.max_pixels = max_pixels
        self.target_size = target_size
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seggpt-prefetch")
        self._futures: OrderedDict[str, Future[LoadedImage]] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def _load_now(self, url: str, task_id: int | None) -> LoadedImage:
        from seggpt_backend.engine.images import load_image_and_size

        data = self.fetch(url, task_id)
        return load_image_and_size(data, max_pixels=self.max_pixels, target_size=self.target_size)

    def load(self, url: str, task_id: int | None = None) -> Future[LoadedImage]:
        """Future of ``(pixels (h, w, 3) uint8, original (H, W))`` for ``url``.

        A failed earlier attempt is not reused: the image is fetched again.
        """
        with self._lock:
            fut = self._futures.get(url)
            if fut is not None and not (fut.done() and fut.exception() is not None):
                self._futures.move_to_end(url)
                return fut
            # The caller's context travels along: it names the project whose client fetches.
            fut = self.pool.submit(contextvars.copy_context().run, self._load_now, url, task_id)
            self._futures[url] = fut
            while len(self._futures) > self._keep:
                self._futures.popitem(last=False)
            return fut

    def warm(self, items: Iterable[tuple[str, int | None]]) -> int:
        """Start loading ``(url, task_id)`` pairs not already cached; returns how many started."""
        started = 0
        for url, task_id in items:
            with self._lock:
                if url in self._futures:
                    continue
            self.load(url, task_id)
            started += 1
        return started

    def release(self, urls: Iterable[str]) -> None:
        """Forget images a job has consumed (frees memory; a repeat request fetches again)."""
        with self._lock:
            for url in urls:
                self._futures.pop(url, None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
