"""Decode image and mask files into numpy arrays, as a browser (Label Studio) displays them.

Returned shapes and sizes
-------------------------
- :func:`load_image` -> ``(H, W, 3) uint8`` RGB, values 0..255, row-major, **displayed**
  orientation (EXIF ``Orientation`` applied). With ``target_size`` a large JPEG may come back
  reduced by 2, 4 or 8 (JPEG DCT scaling, "draft" mode) but never below ``target_size`` on
  either side; every other image comes back at its original size. Pass ``target_size=None``
  for the full resolution.
- :func:`image_size` -> the original ``(H, W)`` in displayed orientation, read from the header
  only. :func:`load_image_and_size` returns both in one pass over the file.
- :func:`load_mask` -> ``(H, W) bool`` at the original size; :func:`load_label_map` ->
  ``(H, W) int32`` ids at the original size.

Pixel conversion policy (one place, applied everywhere)
-------------------------------------------------------
- Transparency (RGBA, LA, PA, palette or grey/RGB images with a ``transparency`` key) is
  composited over **black**: ``rgb * alpha / 255``. Transparent regions are usually
  "nothing there", and black keeps them consistent whatever colour the hidden pixels hold.
- Grey (1, L) is replicated to three channels; palette (P) is looked up; YCbCr/RGBX/HSV go
  through Pillow's conversion.
- CMYK (JPEG): Pillow assumes Adobe-inverted data; a CMYK JPEG *without* an Adobe APP14 marker
  stores plain CMYK (what libjpeg-based viewers assume), so it is inverted back. The result is
  ``R = (255 - C) * (255 - K) / 255`` etc., what a viewer without colour management shows.
  Embedded ICC profiles are ignored for every mode (colour-managed viewers differ by a few
  levels on wide-gamut RGB and more on press CMYK profiles; shapes are unaffected).
- 16-bit grey (``I;16``, ``I;16B``, ``I`` decoded from 16-bit PNG/TIFF/PPM) is scaled by its
  bit depth: ``v * 255 / 65535`` rounded (PPM with another maxval is first rescaled to 16 bits
  by Pillow). ``I`` holding genuine 32-bit data has no white level and is stretched
  min..max to 0..255.
- ``F`` (float): values within [0, 1] are scaled by 255; anything else is stretched min..max.
  NaN/inf become 0.

Safety
------
- Only the formats in :data:`ALLOWED_FORMATS` are opened (no EPS/PDF: those run Ghostscript).
- ``max_pixels`` is checked on the header size before any pixel is decoded. Pillow's own hard
  limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 M pixels) still applies on top of it.
- Every failure to read the input (missing file, unknown format, truncated or corrupt data,
  over the limit) raises :class:`ImageError`; ``MemoryError`` is left alone because it says
  something about the machine, not the file.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Final

import numpy as np
from PIL import Image

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

#: Pillow format names that are opened: what browsers show, plus TIFF and PPM from datasets.
ALLOWED_FORMATS: Final[tuple[str, ...]] = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "TIFF",
    "AVIF",
    "ICO",
    "PPM",
    "TGA",
)
DEFAULT_MAX_PIXELS: Final = 100_000_000
_ORIENTATION_TAG: Final = 0x0112
# EXIF orientation -> the transpose that turns stored pixels into displayed pixels.
_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageError(ValueError):
    """The input cannot be used as an image or mask; the message names the problem."""


@dataclass(frozen=True)
class _Decoded:
    image: Image.Image  # loaded, displayed orientation, possibly draft-reduced
    size: tuple[int, int]  # original (H, W), displayed orientation
    bits: int | None  # white level of integer grey modes, None when unknown
    invert_cmyk: bool  # plain (non-Adobe) CMYK JPEG that Pillow decoded as inverted


@functools.cache
def _formats() -> tuple[str, ...]:
    Image.init()  # plugins register lazily; ask only for formats this Pillow build has
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return f"file {os.fspath(source)!r}"
    return "image data"


@contextmanager
def _image_errors(what: str) -> Iterator[None]:
    """Re-raise anything a Pillow plugin or conversion throws as ``ImageError(what: ...)``.

    ``MemoryError`` passes through: it says something about the machine, not the file.
    """
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # plugins raise OSError, SyntaxError, struct.error, IndexError, ...
        raise ImageError(f"{what}: {exc}") from exc


@contextmanager
def _open(source: ImageSource) -> Iterator[Image.Image]:
    """Open ``source`` lazily (header only); map every failure to :class:`ImageError`."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("image data is empty (0 bytes)")
        fp: str | BinaryIO = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        fp = os.fspath(source)
    else:
        fp = source
    try:
        # We enforce our own max_pixels; Pillow's softer warning (> MAX_IMAGE_PIXELS) would only
        # be noise, or an exception under ``-W error``. catch_warnings is process-wide in 3.11;
        # a concurrent thread at worst loses one warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{_describe(source)} is over Pillow's hard pixel limit: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{_describe(source)} does not exist") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            f"{_describe(source)} is not an image in a supported format ({', '.join(_formats())})"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, struct.error, ...
        raise ImageError(f"cannot read the header of {_describe(source)}: {exc}") from exc
    with image:
        yield image


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 from the header; 1 when absent, invalid or unreadable.

    Only EXIF counts (XMP orientation is ignored, as browsers do). A PNG ``eXIf`` chunk placed
    after the pixel data is not seen, because finding it would mean decoding the pixels.
    """
    try:
        if image.format == "TIFF":
            value = image.tag_v2.get(_ORIENTATION_TAG, 1)  # type: ignore[attr-defined]
        else:
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(_ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block does not stop viewers from showing the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented_size(image: Image.Image, orientation: int) -> tuple[int, int]:
    width, height = image.size
    return (width, height) if orientation >= 5 else (height, width)


def _grey_bits(image: Image.Image) -> int | None:
    """Bit depth of an integer grey image, read from the decoder's raw mode (before loading)."""
    if image.mode.startswith("I;16"):
        return 16
    if image.mode != "I":
        return None
    if image.format == "PPM":
        return 16  # Pillow rescales any maxval > 255 to the full 16-bit range
    tile = getattr(image, "tile", None)  # ImageFile only; typeshed's Image lacks it
    if tile:
        args = tile[0].args
        rawmode = args[0] if isinstance(args, tuple) else args
        if isinstance(rawmode, str) and rawmode.startswith("I;16"):
            return 16
    return None


def _decode(source: ImageSource, *, max_pixels: int, target_size: int | None) -> _Decoded:
    """Open, check the pixel limit, decode (draft-reduced when allowed) and orient."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be positive or None, got {target_size}")
    with _open(source) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"{_describe(source)} is {width} x {height} (W x H) = {width * height} pixels, "
                f"over the limit of {max_pixels}"
            )
        orientation = _orientation(image)
        size = _oriented_size(image, orientation)
        bits = _grey_bits(image)
        invert_cmyk = image.format in ("JPEG", "MPO") and image.mode == "CMYK" and "adobe" not in image.info
        if (
            target_size is not None
            and image.format in ("JPEG", "MPO")
            and min(width, height) >= 2 * target_size
        ):
            # libjpeg picks the largest 1/2, 1/4, 1/8 scale keeping both sides >= target_size.
            image.draft(image.mode, (target_size, target_size))
        with _image_errors(f"{_describe(source)} ({image.format}) is truncated or corrupt"):
            image.load()
        loaded: Image.Image = image
        if orientation != 1:
            loaded = image.transpose(_TRANSPOSE[orientation])
    return _Decoded(loaded, size, bits, invert_cmyk)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Float/int32 grey -> uint8: [0, 1] floats scale by 255, anything else min..max."""
    data = values.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.uint8)
    lo, hi = float(data[finite].min()), float(data[finite].max())
    if values.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        scaled = data * 255.0
    elif hi > lo:
        scaled = (data - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(data)
    scaled = np.where(finite, scaled, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _grey_to_uint8(image: Image.Image, bits: int | None) -> np.ndarray:
    """(H, W) uint8 from an I;16*, I or F image, following the module policy."""
    values = np.asarray(image)
    if bits is None:
        return _stretch(values)
    white = (1 << bits) - 1
    wide = np.clip(values, 0, white).astype(np.uint32)
    return ((wide * 255 + white // 2) // white).astype(np.uint8)


def _to_rgb(decoded: _Decoded) -> np.ndarray:
    image = decoded.image
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # before transparency: Pillow would clip to 8 bits
        grey = _grey_to_uint8(image, decoded.bits)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        out = Image.new("RGB", rgba.size, (0, 0, 0))
        out.paste(rgba, (0, 0), rgba)  # blends with the alpha band: rgb * a / 255 over black
        return np.array(out)
    if mode == "RGB":
        return np.array(image)  # a writable copy; np.asarray would be a read-only view of bytes
    if mode == "CMYK":
        if decoded.invert_cmyk:
            image = image.point(lambda v: 255 - v)
        return np.array(image.convert("RGB"))
    try:
        return np.array(image.convert("RGB"))
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {mode!r}") from exc


def image_size(source: ImageSource) -> tuple[int, int]:
    """Original ``(H, W)`` in displayed orientation (EXIF applied), from the header only.

    Equals ``load_image(source, target_size=None).shape[:2]``. A file object is read from its
    start. Raises :class:`ImageError` when the header cannot be read.
    """
    with _open(source) as image:
        return _oriented_size(image, _orientation(image))


def load_image_and_size(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int | None = 448,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode once; return ``(pixels, original (H, W))``.

    ``pixels`` is what :func:`load_image` returns (maybe draft-reduced); the size is the
    original one in displayed orientation, i.e. the grid output masks must be drawn on.
    """
    decoded = _decode(source, max_pixels=max_pixels, target_size=target_size)
    with _image_errors(f"cannot convert {_describe(source)} to RGB"):
        return _to_rgb(decoded), decoded.size


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int | None = 448,
) -> np.ndarray:
    """Decode ``source`` to ``(H, W, 3) uint8`` RGB in displayed orientation.

    ``source``: bytes, a path, or a binary file object (read from its start, not closed).
    ``max_pixels``: images with more than this many pixels (W x H from the header) raise
    :class:`ImageError` before decoding. ``target_size``: the side the caller will resize to;
    a JPEG at least twice as large on both sides is decoded at 1/2, 1/4 or 1/8 scale, keeping
    both sides >= ``target_size``, so ``H, W`` may then be smaller than :func:`image_size`.
    ``None`` always returns the original size. See the module docstring for mode handling.
    """
    return load_image_and_size(source, max_pixels=max_pixels, target_size=target_size)[0]


def _foreground(channels: np.ndarray, white: float, *, exact: bool = False) -> np.ndarray:
    """(H, W) bool from (H, W, C) colour values, following :func:`load_mask`'s rule."""
    if exact or (channels.dtype.kind != "f" and channels.size and channels.max() <= 1):
        return np.asarray(channels.any(axis=2))
    return np.asarray((channels > white / 2).any(axis=2))


def load_mask(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a mask file to ``(H, W) bool`` at original size, displayed orientation.

    Foreground rule, per pixel:
    - any colour channel above half its range (> 127 for 8-bit, > 32767 for 16-bit,
      > 0.5 for float), so JPEG noise and faint anti-aliased edges do not count;
    - images whose values are only 0 and 1 (label PNGs) mark 1 as foreground;
    - palette images: any palette colour other than black (palette colours are exact, and
      class colours such as VOC's (64, 0, 0) sit below half);
    - with an alpha channel: alpha <= 127 is background; if the colour channels are zero
      everywhere (black + alpha masks) alpha alone decides (alpha > 127).
    """
    decoded = _decode(source, max_pixels=max_pixels, target_size=None)
    image = decoded.image
    mode = image.mode
    with _image_errors(f"cannot read {_describe(source)} as a mask"):
        if mode == "1":
            return np.array(image, dtype=bool)
        if mode == "F":
            return np.nan_to_num(np.asarray(image)) > 0.5
        if mode.startswith("I"):
            values = np.asarray(image)
            white = (1 << decoded.bits) - 1 if decoded.bits else float(values.max(initial=0))
            return _foreground(values[:, :, None], white)
        exact = mode in ("P", "PA")
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = np.asarray(image if mode == "RGBA" else image.convert("RGBA"))
            colour, alpha = rgba[:, :, :3], rgba[:, :, 3]
            if not colour.any():
                return alpha > 127
            return _foreground(colour, 255, exact=exact) & (alpha > 127)
        values = np.asarray(image) if mode in ("L", "RGB") else _to_rgb(decoded)
        return _foreground(values.reshape(*values.shape[:2], -1), 255, exact=exact)


def load_label_map(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a multi-class mask to ``(H, W) int32`` ids at original size, displayed orientation.

    Ids: the palette index for palette images, the grey value for grey images (1, L, I;16,
    I), and ``R << 16 | G << 8 | B`` for colour images, so black is 0 and the caller can
    recover each class colour. Pixels with alpha == 0 get id 0. Float images raise
    :class:`ImageError` (no ids to read).
    """
    decoded = _decode(source, max_pixels=max_pixels, target_size=None)
    image = decoded.image
    mode = image.mode
    with _image_errors(f"cannot read {_describe(source)} as a label map"):
        if mode == "F":
            raise ImageError(f"{_describe(source)} is a float image, not a label map")
        if mode in ("P", "PA"):
            ids = np.asarray(image.getchannel(0) if mode == "PA" else image).astype(np.int32)
            if mode == "PA":
                ids[np.asarray(image.getchannel("A")) == 0] = 0
            return ids
        if mode in ("1", "L") or mode.startswith("I"):
            return np.asarray(image.convert("L") if mode == "1" else image).astype(np.int32)
        if mode == "LA":
            grey, alpha = (np.asarray(image.getchannel(band)) for band in ("L", "A"))
            return np.where(alpha == 0, 0, grey).astype(np.int32)
        has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
        rgba = np.asarray(image.convert("RGBA" if has_alpha else "RGB")).astype(np.int32)
        ids = (rgba[:, :, 0] << 16) | (rgba[:, :, 1] << 8) | rgba[:, :, 2]
        if has_alpha:
            ids[rgba[:, :, 3] == 0] = 0
        return ids
