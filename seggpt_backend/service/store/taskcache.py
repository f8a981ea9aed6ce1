"""Per-task cache for interactive refinement: what a task already cost, shared by every worker.

A smart-tool click must not pay for a download, a decode and a full SegGPT pass again when the
batch prediction (or the previous click) has computed them already. Keys, under the KV prefix,
all written with the TTL ``SEGGPT_REFINE_CACHE_TTL_S`` (0 turns the cache off):

- ``tc:P:img:T:U``   the task's decoded query image (RGB PNG) and its original ``(H, W)``;
  ``U`` is a hash of the image URL (a task may have several images);
- ``tc:P:V:T:L:soft`` the soft map of label ``L`` on that image from the prediction of model
  version ``V`` (examples and weights are in ``V``, so a new example invalidates it);
- ``tc:P:V:T:L:zoom:W`` the soft map of a zoomed re-segmentation of window ``W``
  (``r0,r1,c0,c1`` in original pixels), so a context sent again (Label Studio re-sends every
  smart region of the session with each click) needs no new forward pass.

Values are a small framed format, never pickle: ``b"TC1"``, a 4-byte big-endian header length,
a JSON header (``{"size": [H, W], ...}``) and a PNG. Soft maps (``(H, W) float32`` in [0, 1]) are
stored as 8-bit greyscale PNG (steps of 1/255) at most :data:`SOFT_MAX_SIDE` pixels on their long
side: they are bilinear upsamplings of the model's output (448 x 448 for ViT-L), so a 1024-pixel
copy loses nothing the model produced; they are resized back to ``(H, W)`` when read.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from typing import Any

import numpy as np

from seggpt_backend.service.store.kv import KV

MAGIC = b"TC1"
SOFT_MAX_SIDE = 1024

Window = tuple[int, int, int, int]  # r0, r1, c0, c1 in original pixels (end exclusive)


def _frame(header: dict[str, Any], png: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + png


def _unframe(raw: bytes) -> tuple[dict[str, Any], bytes]:
    if raw[:3] != MAGIC or len(raw) < 7:
        raise ValueError("not a task-cache value")
    (n,) = struct.unpack(">I", raw[3:7])
    return json.loads(raw[7 : 7 + n]), raw[7 + n :]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)  # speed over size
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im)


def encode_soft(soft: np.ndarray) -> bytes:
    """``(H, W)`` float map in [0, 1] -> framed 8-bit PNG, at most :data:`SOFT_MAX_SIDE` per side."""
    from PIL import Image

    if soft.ndim != 2:
        raise ValueError(f"a soft map is (H, W), got {soft.shape}")
    height, width = soft.shape
    q = np.clip(np.rint(np.asarray(soft, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    scale = SOFT_MAX_SIDE / max(height, width)
    if scale < 1:
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        q = np.asarray(Image.fromarray(q).resize(small, Image.Resampling.BILINEAR))
    return _frame({"size": [height, width]}, _png(q))


def decode_soft(raw: bytes) -> np.ndarray:
    """Inverse of :func:`encode_soft`: ``(H, W) float32`` in [0, 1] at the stored full size."""
    from PIL import Image

    header, png = _unframe(raw)
    height, width = (int(v) for v in header["size"])
    q = _unpng(png)
    if q.shape != (height, width):
        f = Image.fromarray(q.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
        return np.clip(np.asarray(f, dtype=np.float32) / 255.0, 0.0, 1.0)
    return q.astype(np.float32) / np.float32(255.0)


class TaskCache:
    """Soft maps and decoded images per task, with a TTL (see the module docstring).

    ``ttl_s <= 0`` disables it: every ``get_*`` answers ``None`` and ``put_*`` stores nothing.
    A value that cannot be decoded (another version's format) reads as a miss.
    """

    def __init__(self, kv: KV, ttl_s: float) -> None:
        self.kv = kv
        self.ttl_s = ttl_s

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    @staticmethod
    def _url(url: str) -> str:
        return hashlib.sha1(url.encode()).hexdigest()[:16]

    def _soft_key(self, project: str, version: str, task_id: int, label: str, suffix: str) -> str:
        lab = hashlib.sha1(label.encode()).hexdigest()[:12]  # labels may hold ':' or spaces
        return f"tc:{project}:{version}:{task_id}:{lab}:{suffix}"

    def _get(self, key: str) -> bytes | None:
        if not self.enabled:
            return None
        return self.kv.get(key)

    def _put(self, key: str, value: bytes) -> None:
        if self.enabled:
            self.kv.set(key, value, ex=self.ttl_s)

    # ------------------------------------------------------------------ images
    def put_image(
        self, project: str, task_id: int, url: str, pixels: np.ndarray, size: tuple[int, int]
    ) -> None:
        """Store a decoded query: ``pixels`` ``(h, w, 3) uint8`` and its original ``(H, W)``."""
        if not self.enabled:
            return
        value = _frame({"size": [int(size[0]), int(size[1])]}, _png(np.ascontiguousarray(pixels)))
        self._put(f"tc:{project}:img:{task_id}:{self._url(url)}", value)

    def get_image(self, project: str, task_id: int, url: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        raw = self._get(f"tc:{project}:img:{task_id}:{self._url(url)}")
        if raw is None:
            return None
        try:
            header, png = _unframe(raw)
            pixels = _unpng(png)
        except (ValueError, OSError):
            return None
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            return None
        return pixels, (int(header["size"][0]), int(header["size"][1]))

    # ------------------------------------------------------------------ soft maps
    def put_soft(self, project: str, version: str, task_id: int, label: str, soft: np.ndarray) -> None:
        if self.enabled:
            self._put(self._soft_key(project, version, task_id, label, "soft"), encode_soft(soft))

    def get_soft(self, project: str, version: str, task_id: int, label: str) -> np.ndarray | None:
        return self._read_soft(self._soft_key(project, version, task_id, label, "soft"))

    def zoom_key(self, project: str, version: str, task_id: int, label: str, window: Window) -> str:
        return self._soft_key(project, version, task_id, label, "zoom:" + ",".join(map(str, window)))

    def put_raw(self, key: str, value: bytes) -> None:
        """Store an already encoded value (:func:`encode_soft`) under ``key``."""
        self._put(key, value)

    def put_zoom(
        self, project: str, version: str, task_id: int, label: str, window: Window, soft: np.ndarray
    ) -> None:
        if self.enabled:
            self._put(self.zoom_key(project, version, task_id, label, window), encode_soft(soft))

    def get_zoom(
        self, project: str, version: str, task_id: int, label: str, window: Window
    ) -> np.ndarray | None:
        return self._read_soft(self.zoom_key(project, version, task_id, label, window))

    def put_soft_exact(
        self, project: str, version: str, task_id: int, label: str, soft: np.ndarray
    ) -> np.ndarray:
        """Store ``soft`` and return it as it will be read back (quantised), so the answer
        computed now equals every later one (same context, same mask)."""
        if not self.enabled:
            return soft
        raw = encode_soft(soft)
        self._put(self._soft_key(project, version, task_id, label, "soft"), raw)
        return decode_soft(raw)

    def _read_soft(self, key: str) -> np.ndarray | None:
        raw = self._get(key)
        if raw is None:
            return None
        try:
            return decode_soft(raw)
        except (ValueError, OSError, KeyError):
            return None
