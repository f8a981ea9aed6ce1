"""Builders of real image files and synthetic labelled scenes, shared by the test modules.

Import with ``from tests.fixtures import scene, write_png, ...``. Every file builder writes a
real file with Pillow to ``path`` (a ``str`` or ``Path``; the parent directory must exist,
e.g. pytest's ``tmp_path``) and returns the pixel data it encoded, so a test can compute its
own expectation. Sizes are passed as ``size=(W, H)`` (Pillow's order); returned arrays are
numpy ``(H, W, ...)``. Everything is deterministic.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

PathLike = str | os.PathLike[str]

#: Quadrant colours of :func:`quadrants`: top-left, top-right, bottom-left, bottom-right.
QUADRANT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255))

# EXIF orientation -> how a viewer turns the stored (H, W, ...) array into the displayed one,
# written from the EXIF 2.3 table ("row 0 is the visual ..., column 0 is the visual ...").
DISPLAY_FROM_STORED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.rot90(a, k=-1)[::-1],
    8: lambda a: np.rot90(a, k=1),
}
_STORED_FROM_DISPLAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    **{k: DISPLAY_FROM_STORED[k] for k in (1, 2, 3, 4, 5, 7)},  # reflections undo themselves
    6: lambda a: np.rot90(a, k=1),
    8: lambda a: np.rot90(a, k=-1),
}


def write_png(path: PathLike, array: np.ndarray) -> Path:
    """Write a lossless PNG of ``array``: (H, W) bool/uint8/uint16 or (H, W, 2|3|4) uint8."""
    data = np.ascontiguousarray(array)
    Image.fromarray(data).save(path, "PNG")
    return Path(path)


def write_jpeg(path: PathLike, rgb: np.ndarray, *, quality: int = 95, orientation: int | None = None) -> Path:
    """Write ``rgb`` ((H, W, 3) uint8, stored as given) as a JPEG, optionally with an EXIF
    Orientation tag (1..8) that viewers apply on display."""
    kwargs: dict[str, object] = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, "JPEG", **kwargs)
    return Path(path)


def quadrants(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 with four flat quadrants coloured by :data:`QUADRANT_COLOURS`.

    The eight EXIF orientations all permute the quadrants differently, so a loaded image
    identifies the orientation that was applied.
    """
    out = np.empty((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    tl, tr, bl, br = QUADRANT_COLOURS
    out[:h2, :w2], out[:h2, w2:], out[h2:, :w2], out[h2:, w2:] = tl, tr, bl, br
    return out


def jpeg_with_exif_orientation(
    path: PathLike, orientation: int, size: tuple[int, int] = (64, 48)
) -> np.ndarray:
    """Write a JPEG that *displays* as ``quadrants(H, W)`` once EXIF ``orientation`` is applied.

    ``size`` is the displayed ``(W, H)``; the stored pixels are the inverse transform (so for
    orientations 5..8 the file's own header says ``H x W``). Sides should be multiples of 16
    to keep quadrant edges on JPEG block boundaries. Returns the displayed (H, W, 3) uint8.
    """
    width, height = size
    displayed = quadrants(height, width)
    stored = _STORED_FROM_DISPLAY[orientation](displayed)
    assert np.array_equal(DISPLAY_FROM_STORED[orientation](stored), displayed)
    write_jpeg(path, stored, quality=95, orientation=orientation)
    return displayed


def _ramp(size: tuple[int, int], top: int, dtype: type[np.generic]) -> np.ndarray:
    width, height = size
    row = np.round(np.linspace(0, top, width)).astype(dtype)
    return np.repeat(row[None, :], height, axis=0)


def grayscale_png(
    path: PathLike, values: np.ndarray | None = None, *, size: tuple[int, int] = (64, 32)
) -> np.ndarray:
    """Write an 8-bit grey ("L") PNG; default a left-to-right ramp 0..255. Returns (H, W) uint8."""
    data = _ramp(size, 255, np.uint8) if values is None else np.asarray(values, np.uint8)
    write_png(path, data)
    return data


def png_16bit_gray(
    path: PathLike, values: np.ndarray | None = None, *, size: tuple[int, int] = (64, 32)
) -> np.ndarray:
    """Write a 16-bit grey PNG (opens as Pillow mode "I;16"); default a ramp 0..65535.

    Returns the (H, W) uint16 values written.
    """
    data = _ramp(size, 65535, np.uint16) if values is None else np.asarray(values, np.uint16)
    write_png(path, data)
    return data


def tiff_gray(path: PathLike, values: np.ndarray) -> np.ndarray:
    """Write a single-channel TIFF, keeping ``values``' dtype: ``>u2`` opens as mode "I;16B",
    ``<u2`` as "I;16", ``int32`` as "I" (32-bit), ``float32`` as "F". Returns ``values``."""
    Image.fromarray(np.ascontiguousarray(values)).save(path, "TIFF")
    return values


def ppm_gray(path: PathLike, values: np.ndarray, maxval: int) -> np.ndarray:
    """Write a binary PGM (P5) with the given ``maxval`` (256..65535 opens as mode "I").

    ``values``: (H, W) integers in 0..maxval, stored big-endian 16-bit. Returns ``values``.
    """
    height, width = values.shape
    header = f"P5\n{width} {height}\n{maxval}\n".encode()
    Path(path).write_bytes(header + np.asarray(values, ">u2").tobytes())
    return values


def _cmyk_patches(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    patches = np.array(
        [
            (255, 0, 0, 0),  # cyan
            (0, 255, 0, 0),  # magenta
            (0, 0, 255, 0),  # yellow
            (0, 0, 0, 255),  # black
            (0, 0, 0, 0),  # white (paper)
            (0, 255, 255, 0),  # red
            (0, 0, 0, 128),  # mid grey
            (64, 0, 128, 32),  # a mixed colour
        ],
        np.uint8,
    )
    columns = np.minimum(np.arange(width) * len(patches) // width, len(patches) - 1)
    return np.repeat(patches[columns][None, :, :], height, axis=0)


def _strip_app14(data: bytes) -> bytes:
    """Remove the Adobe APP14 segment from a JPEG byte string (headers end at SOS)."""
    out, pos = bytearray(data[:2]), 2
    while pos < len(data):
        marker = data[pos : pos + 2]
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == b"\xff\xda":  # start of scan: entropy-coded data follows
            out += data[pos:]
            break
        if marker != b"\xff\xee":
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    return bytes(out)


def cmyk_jpeg(
    path: PathLike,
    cmyk: np.ndarray | None = None,
    *,
    size: tuple[int, int] = (128, 32),
    adobe: bool = True,
) -> np.ndarray:
    """Write a CMYK JPEG (quality 95); default 8 flat vertical patches (C, M, Y, K, white,
    red, grey, mixed) in ink amounts 0..255 (0 = no ink).

    ``adobe=True``: Photoshop convention, Adobe APP14 marker and inverted samples (what Pillow
    writes). ``adobe=False``: no APP14 marker and plain samples. A viewer shows both alike:
    ``R = (255 - C)(255 - K) / 255`` etc. Returns the (H, W, 4) uint8 ink values.
    """
    inks = _cmyk_patches(size) if cmyk is None else np.asarray(cmyk, np.uint8)
    if adobe:
        Image.fromarray(inks, "CMYK").save(path, "JPEG", quality=95)
    else:
        # Pillow stores 255 - value; feeding it 255 - ink stores the plain ink values.
        Image.fromarray(255 - inks, "CMYK").save(path, "JPEG", quality=95)
        Path(path).write_bytes(_strip_app14(Path(path).read_bytes()))
    return inks


_PALETTE = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)


def palette_png(
    path: PathLike,
    *,
    size: tuple[int, int] = (64, 32),
    transparency: int | Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write a palette ("P") PNG of four vertical bands using indices 0..3 (black, red, green,
    blue). ``transparency``: None, one fully transparent index, or one alpha per index.

    Returns ``(indices (H, W) uint8, palette (4, 3) uint8, alpha (4,) uint8)``.
    """
    width, height = size
    indices = np.repeat((np.arange(width) * 4 // width).astype(np.uint8)[None, :], height, axis=0)
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette(_PALETTE.tobytes())
    alpha = np.full(4, 255, np.uint8)
    kwargs: dict[str, object] = {}
    if isinstance(transparency, int):
        alpha[transparency] = 0
        kwargs["transparency"] = transparency
    elif transparency is not None:
        alpha[:] = transparency
        kwargs["transparency"] = bytes(alpha)
    image.save(path, "PNG", **kwargs)
    return indices, _PALETTE.copy(), alpha


def palette_png_with_transparency(
    path: PathLike, *, size: tuple[int, int] = (64, 32), alpha: Sequence[int] = (0, 255, 128, 255)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`palette_png` with one alpha per index (default: black transparent, green half)."""
    return palette_png(path, size=size, transparency=alpha)


def rgba_png(
    path: PathLike, rgba: np.ndarray | None = None, *, size: tuple[int, int] = (64, 32)
) -> np.ndarray:
    """Write an RGBA PNG. Default: colour ramps with alpha rising 0..255 left to right and
    non-black colour under alpha 0 (what a careless exporter leaves). Returns (H, W, 4) uint8."""
    if rgba is None:
        width, height = size
        alpha = _ramp(size, 255, np.uint8)
        red = _ramp((height, width), 255, np.uint8).T
        rgba = np.stack([red, np.full_like(red, 200), 255 - red, alpha], axis=2)
    data = np.asarray(rgba, np.uint8)
    write_png(path, data)
    return data


def truncated_file(
    path: PathLike, *, image_format: str = "JPEG", keep: float = 0.5, size: tuple[int, int] = (96, 64)
) -> Path:
    """Write the first ``keep`` fraction of a valid noisy JPEG/PNG: header intact, data cut."""
    rng = np.random.default_rng(0)
    width, height = size
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    full = Path(path)
    Image.fromarray(noise).save(full, image_format)
    data = full.read_bytes()
    full.write_bytes(data[: int(len(data) * keep)])
    return full


def png_header_only(path: PathLike, width: int, height: int) -> Path:
    """Write a PNG whose header declares ``width x height`` (8-bit grey) but whose pixel data
    is one compressed row: a decompression-bomb stand-in that opens instantly and never decodes.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(bytes(1 + width))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def non_image_file(path: PathLike) -> Path:
    """Write a small text file that no image decoder accepts."""
    Path(path).write_bytes(b"this is not an image, just some text\n" * 4)
    return Path(path)


#: Shape drawn for a label in :func:`scene`; other labels get triangles.
SHAPE_KINDS: dict[str, str] = {"Cat": "ellipse", "Dog": "rectangle"}


def _label_colour(label: str) -> np.ndarray:
    preset = {"Cat": (230, 140, 40), "Dog": (40, 90, 220)}
    if label in preset:
        return np.array(preset[label], np.float32)
    code = zlib.crc32(label.encode())  # stable across processes, unlike hash()
    return np.array([(code >> s) & 0xFF for s in (0, 8, 16)], np.float32) * 0.7 + 40


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    cy, cx, ry, rx = box
    if kind == "ellipse":
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == "rectangle":
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle pointing up: inside when below the two slanted edges and above the base
    top = cy - ry
    half_width = rx * (yy - top) / (2 * ry)
    return (yy >= top) & (yy <= cy + ry) & (np.abs(xx - cx) <= half_width)


def scene(
    height: int,
    width: int,
    *,
    seed: int = 0,
    shapes: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A textured synthetic photo with labelled shapes, deterministic from ``seed``.

    ``shapes`` maps a label to its number of instances (default ``{"Cat": 1, "Dog": 1}``);
    the shape follows :data:`SHAPE_KINDS` ("Cat" ellipse, "Dog" rectangle, other labels
    triangles), each instance spans 15-35 % of each side, with its label's colour plus texture.
    Later shapes occlude earlier ones, so masks are disjoint and exactly match the pixels.

    Returns ``(image (H, W, 3) uint8, {label: mask (H, W) bool})`` with one key per label.
    """
    rng = np.random.default_rng(seed)
    spec = {"Cat": 1, "Dog": 1} if shapes is None else dict(shapes)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Background: a few smooth waves plus fine noise, in the mid range so shapes stand out.
    background = np.full((height, width, 3), 110.0, np.float32)
    for _ in range(4):
        fy, fx = rng.uniform(0.5, 4.0, 2) * 2 * np.pi / np.array([height, width])
        phase = rng.uniform(0, 2 * np.pi)
        background += rng.uniform(-25, 25, 3) * np.sin(fy * yy + fx * xx + phase)[:, :, None]
    background += rng.normal(0, 6, (height, width, 3))
    image = background
    owner = np.full((height, width), -1, np.int32)
    labels = list(spec)
    instances = [index for index, label in enumerate(labels) for _ in range(spec[label])]
    rng.shuffle(instances)
    for index in instances:
        label = labels[index]
        ry, rx = rng.uniform(0.075, 0.175) * height, rng.uniform(0.075, 0.175) * width
        cy, cx = rng.uniform(ry, height - ry), rng.uniform(rx, width - rx)
        inside = _shape_mask(SHAPE_KINDS.get(label, "triangle"), yy, xx, (cy, cx, ry, rx))
        stripes = 18.0 * np.sin((xx + yy) * rng.uniform(0.2, 0.6))[:, :, None]
        fill = _label_colour(label) + stripes + rng.normal(0, 4, (height, width, 3))
        image = np.where(inside[:, :, None], fill, image)
        owner[inside] = index
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    masks = {label: owner == index for index, label in enumerate(labels)}
    return pixels, masks


# Requests recorded from a real Label Studio 1.23 (secrets redacted), copied from
# ../shared/reference/ls-captured so that a plain clone has them.
LS_CAPTURED = Path(__file__).resolve().parent / "data" / "ls-captured"
