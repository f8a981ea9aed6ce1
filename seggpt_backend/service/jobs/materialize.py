"""Pixels for example records: download, decode, shrink, cache.

A record (:class:`~seggpt_backend.service.store.examples.ExampleRecord`) holds URLs and RLE; the engine
needs an :class:`~seggpt_backend.engine.interface.Example` (image + per-label masks). Building one
costs a download and an RLE decode, so results are cached twice:

- in the KV (shared by all workers), as PNG bytes plus a JSON meta field, under
  ``exm:<project>:<annotation id>:<rev>`` (one hash; fields prefixed by the Image name), expiring
  after :data:`CACHE_TTL_S`; the revision in the key means an edited annotation never reads stale
  pixels, and the webhook handler deletes the old key;
- in a small per-process LRU of decoded arrays.

Stored example images are shrunk so their longer side is at most ``max_side`` pixels (SegGPT sees
448 x 448 anyway); masks are decoded at the region's ``original_height x original_width`` and
resized to the stored image with area averaging (threshold 0.5).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from seggpt_backend.engine.interface import Example
from seggpt_backend.service.errors import ExampleError
from seggpt_backend.service.jobs.selection import describe
from seggpt_backend.service.store.examples import ExampleRecord, pixels_key
from seggpt_backend.service.store.kv import KV

log = logging.getLogger(__name__)

CACHE_TTL_S = 30 * 24 * 3600
Fetch = Callable[[str, int | None], bytes]


@dataclass(frozen=True, eq=False)
class Materialized:
    """Decoded example for one Image object of one annotation.

    ``image``: ``(h, w, 3) uint8``; ``masks``: ``{(from_name, label): (h, w) bool}`` (union of that
    label's regions); ``descriptor``: :func:`~seggpt_backend.service.jobs.selection.describe` of image.
    """

    annotation_id: int
    rev: str
    to_name: str
    image: np.ndarray
    masks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    descriptor: np.ndarray | None = None

    def example(self, from_name: str | None, label: str) -> Example:
        """Engine example for one label; ``from_name=None`` merges that label across controls."""
        masks = [
            m for (f, lab), m in self.masks.items() if lab == label and (from_name is None or f == from_name)
        ]
        mask = np.logical_or.reduce(masks) if masks else np.zeros(self.image.shape[:2], bool)
        return Example(
            id=f"ann{self.annotation_id}-{self.rev}-{self.to_name}", image=self.image, masks={label: mask}
        )


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    from PIL import Image

    pil = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(pil.resize((width, height), Image.Resampling.BOX)) >= 128


class Materializer:
    """Builds and caches :class:`Materialized` examples; thread-safe."""

    def __init__(
        self, kv: KV, fetch: Fetch, *, max_pixels: int, max_side: int = 512, lru_size: int = 256
    ) -> None:
        self.kv = kv
        self.fetch = fetch
        self.max_pixels = max_pixels
        self.max_side = max_side
        self._lru: OrderedDict[tuple[str, int, str, str], Materialized] = OrderedDict()
        self._lru_size = lru_size
        self._lock = threading.Lock()

    key = staticmethod(pixels_key)

    def forget(self, project: str, annotation_id: int, rev: str) -> None:
        """Drop the cached pixels of one annotation revision (after an update or delete)."""
        self.kv.delete(self.key(project, annotation_id, rev))

    def get(self, project: str, record: ExampleRecord, to_name: str) -> Materialized:
        """The decoded example for ``record`` on Image ``to_name``; raises :class:`ExampleError`."""
        lru_key = (project, record.annotation_id, record.rev, to_name)
        with self._lock:
            hit = self._lru.get(lru_key)
            if hit is not None:
                self._lru.move_to_end(lru_key)
                return hit
        mat = self._from_kv(project, record, to_name) or self._build(project, record, to_name)
        with self._lock:
            self._lru[lru_key] = mat
            while len(self._lru) > self._lru_size:
                self._lru.popitem(last=False)
        return mat

    def _from_kv(self, project: str, record: ExampleRecord, to_name: str) -> Materialized | None:
        key = self.key(project, record.annotation_id, record.rev)
        fields = self.kv.hgetall(key)
        meta_raw = fields.get(f"{to_name}|meta")
        if meta_raw is None:
            return None
        try:
            meta = json.loads(meta_raw)
            image = _unpng(fields[f"{to_name}|image"])
            masks = {
                (f, lab): _unpng(fields[f"{to_name}|mask:{i}"]).astype(bool)
                for i, (f, lab) in enumerate(meta["masks"])
            }
            desc = np.asarray(meta["descriptor"], dtype=np.float32)
        except (KeyError, ValueError, OSError) as exc:
            log.warning("example cache %s for %s is unreadable (%s); rebuilding", key, to_name, exc)
            return None
        return Materialized(record.annotation_id, record.rev, to_name, image, masks, desc)

    def _build(self, project: str, record: ExampleRecord, to_name: str) -> Materialized:
        from seggpt_backend.engine.images import ImageError, load_image_and_size
        from seggpt_backend.labelstudio import rle

        url = record.images.get(to_name)
        if not url:
            raise ExampleError(f"annotation {record.annotation_id} has no image for {to_name!r}")
        try:
            data = self.fetch(url, record.task_id)
        except Exception as exc:
            raise ExampleError(
                f"example image of task {record.task_id} (annotation {record.annotation_id}) could not be fetched: {exc}"
            ) from exc
        try:
            pixels, (height, width) = load_image_and_size(
                data, max_pixels=self.max_pixels, target_size=self.max_side
            )
        except ImageError as exc:
            raise ExampleError(f"example image of task {record.task_id} is unreadable: {exc}") from exc
        image = _shrink(pixels, self.max_side)
        h, w = image.shape[:2]
        masks: dict[tuple[str, str], np.ndarray] = {}
        for region in record.regions:
            if region.to_name != to_name:
                continue
            if (region.height, region.width) != (height, width):
                log.warning(
                    "annotation %s: region is %dx%d but the image is %dx%d; resizing the mask",
                    record.annotation_id,
                    region.width,
                    region.height,
                    width,
                    height,
                )
            try:
                full = rle.decode(list(region.rle), region.height, region.width) >= 128
            except ValueError as exc:
                raise ExampleError(
                    f"annotation {record.annotation_id}: brush RLE for {region.label!r} is invalid: {exc}"
                ) from exc
            small = _resize_mask(full, h, w)
            key = (region.from_name, region.label)
            masks[key] = masks[key] | small if key in masks else small
        desc = np.round(describe(image), 5).astype(np.float32)  # same values as a cache read
        mat = Materialized(record.annotation_id, record.rev, to_name, image, masks, desc)
        self._store(project, mat)
        return mat

    def _store(self, project: str, mat: Materialized) -> None:
        order = list(mat.masks)
        descriptor = [] if mat.descriptor is None else [round(float(v), 5) for v in mat.descriptor]
        meta = {"masks": [list(k) for k in order], "descriptor": descriptor}
        mapping: dict[str, bytes | str] = {
            f"{mat.to_name}|meta": json.dumps(meta),
            f"{mat.to_name}|image": _png(mat.image),
        }
        for i, k in enumerate(order):
            mapping[f"{mat.to_name}|mask:{i}"] = _png(mat.masks[k].astype(np.uint8) * 255)
        key = self.key(project, mat.annotation_id, mat.rev)
        try:
            self.kv.hset(key, mapping)
            self.kv.expire(key, CACHE_TTL_S)
        except Exception as exc:  # caching is an optimisation: a full Redis must not fail the job
            log.warning("cannot cache example %s: %s", key, exc)
