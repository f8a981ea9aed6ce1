"""Tests of seggpt_backend.engine.images on real files written by tests.fixtures."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from seggpt_backend.engine.images import (
    ImageError,
    image_size,
    load_image,
    load_image_and_size,
    load_label_map,
    load_mask,
)
from tests.fixtures import (
    QUADRANT_COLOURS,
    cmyk_jpeg,
    grayscale_png,
    jpeg_with_exif_orientation,
    non_image_file,
    palette_png,
    palette_png_with_transparency,
    png_16bit_gray,
    png_header_only,
    ppm_gray,
    rgba_png,
    scene,
    tiff_gray,
    truncated_file,
    write_jpeg,
    write_png,
)


def _assert_rgb(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.shape == (*shape, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous and image.flags.writeable


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.rint(rgb.astype(np.float64) * alpha[..., None] / 255.0)


# --------------------------------------------------------------------------- modes


def test_mode_1_bilevel(tmp_path: Path) -> None:
    bits = np.zeros((20, 30), bool)
    bits[5:15, 10:20] = True
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    image = load_image(path)
    _assert_rgb(image, (20, 30))
    assert np.array_equal(image, np.repeat(bits[..., None] * np.uint8(255), 3, axis=2))


def test_mode_l_grey_is_replicated(tmp_path: Path) -> None:
    values = grayscale_png(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    _assert_rgb(image, values.shape)
    for channel in range(3):
        assert np.array_equal(image[..., channel], values)


def test_mode_la_composited_over_black(tmp_path: Path) -> None:
    grey = np.full((10, 16), 200, np.uint8)
    alpha = np.repeat(np.linspace(0, 255, 16).astype(np.uint8)[None, :], 10, axis=0)
    write_png(tmp_path / "la.png", np.stack([grey, alpha], axis=2))
    assert Image.open(tmp_path / "la.png").mode == "LA"
    image = load_image(tmp_path / "la.png").astype(int)
    expected = _over_black(np.repeat(grey[..., None], 3, axis=2), alpha)
    assert np.abs(image - expected).max() <= 1
    assert (image[:, 0] == 0).all() and (image[:, -1] == 200).all()


def test_mode_p_without_transparency_uses_palette(tmp_path: Path) -> None:
    indices, palette, _ = palette_png(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(load_image(tmp_path / "p.png"), palette[indices])


def test_mode_p_with_transparent_index_is_black(tmp_path: Path) -> None:
    indices, palette, _ = palette_png(tmp_path / "p.png", transparency=2)  # green band
    image = load_image(tmp_path / "p.png")
    expected = palette[indices]
    expected[indices == 2] = 0
    assert np.array_equal(image, expected)


def test_mode_p_with_alpha_per_index_composited(tmp_path: Path) -> None:
    indices, palette, alpha = palette_png_with_transparency(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png").astype(int)
    expected = _over_black(palette[indices], alpha[indices])
    assert np.abs(image - expected).max() <= 1
    assert (image[indices == 2] == (0, 128, 0)).all()  # half-transparent green


def test_mode_rgb_png_exact_and_jpeg_close(tmp_path: Path) -> None:
    pixels, _ = scene(48, 64, seed=3)
    write_png(tmp_path / "rgb.png", pixels)
    assert np.array_equal(load_image(tmp_path / "rgb.png"), pixels)
    write_jpeg(tmp_path / "rgb.jpg", pixels, quality=95)
    with Image.open(tmp_path / "rgb.jpg") as raw:
        assert np.array_equal(load_image(tmp_path / "rgb.jpg"), np.asarray(raw.convert("RGB")))


def test_mode_rgba_composited_over_black_hiding_colour_under_zero_alpha(tmp_path: Path) -> None:
    rgba = rgba_png(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png").astype(int)
    expected = _over_black(rgba[..., :3], rgba[..., 3])
    assert np.abs(image - expected).max() <= 1
    transparent = rgba[..., 3] == 0
    assert transparent.any() and rgba[transparent][:, :3].any()
    assert (image[transparent] == 0).all()


def _viewer_rgb(inks: np.ndarray) -> np.ndarray:
    c, m, y, k = (inks[..., i].astype(np.float64) for i in range(4))
    return np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)], axis=2) / 255


@pytest.mark.parametrize("adobe", [True, False], ids=["adobe-inverted", "plain"])
def test_mode_cmyk_jpeg_matches_viewer(tmp_path: Path, adobe: bool) -> None:
    path = tmp_path / "cmyk.jpg"
    inks = cmyk_jpeg(path, adobe=adobe)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
        assert ("adobe" in raw.info) is adobe
    image = load_image(path).astype(int)
    assert np.abs(image - _viewer_rgb(inks)).max() <= 3
    # The patches are what a viewer shows: cyan, magenta, yellow, black, paper white, red.
    centre = image[image.shape[0] // 2]
    step = image.shape[1] // 8
    named = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0), (255, 255, 255), (255, 0, 0)]
    for patch, colour in enumerate(named):
        assert np.abs(centre[patch * step + step // 2] - colour).max() <= 3


def test_mode_cmyk_tiff_is_not_inverted(tmp_path: Path) -> None:
    inks = cmyk_jpeg(tmp_path / "unused.jpg")
    Image.fromarray(inks, "CMYK").save(tmp_path / "cmyk.tif")
    image = load_image(tmp_path / "cmyk.tif").astype(int)
    assert np.abs(image - _viewer_rgb(inks)).max() <= 1


def _scaled16(values: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) * 255 / 65535)


def test_mode_i16_png_scaled_by_bit_depth_not_clipped(tmp_path: Path) -> None:
    values = png_16bit_gray(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    image = load_image(tmp_path / "g16.png")
    _assert_rgb(image, values.shape)
    assert np.abs(image[..., 0].astype(int) - _scaled16(values)).max() <= 1
    assert image[0, 0, 0] == 0 and image[0, -1, 0] == 255
    assert 120 <= image[0, values.shape[1] // 2, 0] <= 135  # clipping would give 255


@pytest.mark.parametrize("dtype", [">u2", "<u2"], ids=["I;16B", "I;16"])
def test_mode_i16_tiff_both_byte_orders(tmp_path: Path, dtype: str) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=dtype).repeat(4, axis=0)
    tiff_gray(tmp_path / "g16.tif", values)
    assert Image.open(tmp_path / "g16.tif").mode == ("I;16B" if dtype == ">u2" else "I;16")
    assert load_image(tmp_path / "g16.tif")[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize(("maxval", "values", "expected"), [
    (65535, [0, 257, 32768, 65535], [0, 1, 128, 255]),
    (4095, [0, 16, 2048, 4095], [0, 1, 128, 255]),  # 12-bit: white is 4095, not 65535
])  # fmt: skip
def test_mode_i_from_ppm_scaled_by_maxval(
    tmp_path: Path, maxval: int, values: list[int], expected: list[int]
) -> None:
    ppm_gray(tmp_path / "g.pgm", np.array([values] * 3), maxval)
    assert Image.open(tmp_path / "g.pgm").mode == "I"
    assert load_image(tmp_path / "g.pgm")[1, :, 1].tolist() == expected


def test_mode_i_32bit_stretched_min_max(tmp_path: Path) -> None:
    values = np.array([[-1000, 0, 1_000_000, 3_999_000]], np.int32).repeat(2, axis=0)
    tiff_gray(tmp_path / "i32.tif", values)
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    row = load_image(tmp_path / "i32.tif")[0, :, 2].tolist()
    assert row == [0, 0, 64, 255]


def test_mode_f_unit_range_scaled_and_other_ranges_stretched(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32).repeat(2, axis=0)
    tiff_gray(tmp_path / "unit.tif", unit)
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    assert load_image(tmp_path / "unit.tif")[0, :, 0].tolist() == [0, 64, 128, 255]
    wide = np.array([[-5.0, 7.5, 20.0, np.nan]], np.float32).repeat(2, axis=0)
    tiff_gray(tmp_path / "wide.tif", wide)
    assert load_image(tmp_path / "wide.tif")[0, :, 0].tolist() == [0, 128, 255, 0]


def test_mode_ycbcr_converted_to_rgb(tmp_path: Path) -> None:
    pixels, _ = scene(32, 48, seed=4)
    Image.fromarray(pixels).convert("YCbCr").save(tmp_path / "ycc.tif")
    assert Image.open(tmp_path / "ycc.tif").mode == "YCbCr"
    assert np.abs(load_image(tmp_path / "ycc.tif").astype(int) - pixels).max() <= 3


def test_webp_and_gif_open(tmp_path: Path) -> None:
    pixels, _ = scene(32, 48, seed=5)
    Image.fromarray(pixels).save(tmp_path / "x.webp", lossless=True)
    assert np.array_equal(load_image(tmp_path / "x.webp"), pixels)
    indices, palette, _ = palette_png(tmp_path / "p.png")
    Image.open(tmp_path / "p.png").save(tmp_path / "p.gif")
    assert np.array_equal(load_image(tmp_path / "p.gif"), palette[indices])


# --------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_places_pixels_as_displayed(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    displayed = jpeg_with_exif_orientation(path, orientation, size=(64, 48))
    image = load_image(path, target_size=None)
    _assert_rgb(image, (48, 64))
    assert image_size(path) == (48, 64)
    for (y, x), colour in zip([(12, 16), (12, 48), (36, 16), (36, 48)], QUADRANT_COLOURS, strict=True):
        assert np.abs(image[y, x].astype(int) - colour).max() <= 8, (y, x)
    assert np.abs(image.astype(int) - displayed).mean() < 4
    with Image.open(path) as raw:  # Pillow's own EXIF handling as an independent reference
        assert np.array_equal(image, np.asarray(ImageOps.exif_transpose(raw).convert("RGB")))


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_invalid_orientation_is_ignored(tmp_path: Path, orientation: int) -> None:
    write_jpeg(tmp_path / "bad.jpg", np.zeros((16, 32, 3), np.uint8), orientation=orientation)
    assert load_image(tmp_path / "bad.jpg").shape == (16, 32, 3)
    assert image_size(tmp_path / "bad.jpg") == (16, 32)


def test_orientation_applies_to_masks_and_label_maps(tmp_path: Path) -> None:
    stored = np.zeros((20, 40), np.uint8)
    stored[:5, :10] = 255  # stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "mask.png", exif=exif.tobytes())
    mask = load_mask(tmp_path / "mask.png")
    assert mask.shape == (40, 20) and image_size(tmp_path / "mask.png") == (40, 20)
    assert mask[:10, -5:].all() and mask.sum() == 50  # now the top-right corner
    assert np.array_equal(load_label_map(tmp_path / "mask.png") > 0, mask)


# --------------------------------------------------------------------------- limits and bad input


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", 12_000, 10_000)  # 120 M pixels declared
    assert image_size(bomb) == (10_000, 12_000)
    with pytest.raises(ImageError, match=r"12000 x 10000 .* over the limit of 100000000"):
        load_image(bomb)
    # A truncated file says "over the limit", not "truncated": no pixel was decoded.
    truncated = truncated_file(tmp_path / "t.jpg", size=(200, 100))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(truncated, max_pixels=200 * 100 - 1)
    with pytest.raises(ImageError, match="over the limit"):
        load_mask(bomb)


def test_pixel_limit_is_inclusive(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", np.zeros((10, 20), np.uint8))
    assert load_image(tmp_path / "x.png", max_pixels=200).shape == (10, 20, 3)


def test_pillow_bomb_check_is_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrink Pillow's own threshold (a setting, not a fake) to hit both of its branches cheaply.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    write_png(tmp_path / "warn.png", np.zeros((40, 40), np.uint8))  # > 1000: Pillow warns
    write_png(tmp_path / "error.png", np.zeros((50, 50), np.uint8))  # > 2000: Pillow raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "warn.png").shape == (40, 40, 3)
    with pytest.raises(ImageError, match="hard pixel limit"):
        load_image(tmp_path / "error.png", max_pixels=10**9)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_truncated_file_raises_image_error(tmp_path: Path, image_format: str) -> None:
    path = truncated_file(tmp_path / "t.bin", image_format=image_format)
    for loader in (load_image, load_mask, load_label_map):
        with pytest.raises(ImageError, match="truncated or corrupt"):
            loader(path)


def test_broken_png_crc_raises_image_error(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8))
    data = bytearray((tmp_path / "x.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(ImageError):
        load_image(bytes(data))


@pytest.mark.parametrize(
    "loader", [load_image, load_mask, load_label_map, image_size], ids=lambda f: f.__name__
)
def test_non_image_inputs_raise_image_error(tmp_path: Path, loader: Callable[..., object]) -> None:
    with pytest.raises(ImageError, match="not an image in a supported format"):
        loader(non_image_file(tmp_path / "notes.txt"))
    with pytest.raises(ImageError, match="empty"):
        loader(b"")
    with pytest.raises(ImageError, match="does not exist"):
        loader(tmp_path / "missing.png")
    assert issubclass(ImageError, ValueError)


def test_formats_outside_allow_list_are_refused(tmp_path: Path) -> None:
    # Pillow would open this EPS and hand it to Ghostscript on load.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    with Image.open(io.BytesIO(eps)) as raw:
        assert raw.format == "EPS"
    with pytest.raises(ImageError, match="not an image in a supported format"):
        load_image(eps)


def _valid_files() -> list[bytes]:
    pixels, _ = scene(24, 32, seed=9)
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


_VALID = _valid_files()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(_VALID) - 1),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    cut=st.floats(0.05, 1.0),
)
def test_mutated_files_decode_or_raise_image_error(
    index: int, edits: list[tuple[float, int]], cut: float
) -> None:
    data = bytearray(_VALID[index])
    for where, value in edits:
        data[int(where * len(data))] = value
    data = data[: max(1, int(len(data) * cut))]
    try:
        image = load_image(bytes(data), max_pixels=10_000_000)
    except ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# --------------------------------------------------------------------------- draft mode and sizes


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    pixels, _ = scene(1800, 2400, seed=11)
    path = tmp_path_factory.mktemp("draft") / "large.jpg"
    write_jpeg(path, pixels, quality=92)
    return path, pixels


def test_draft_decode_is_reduced_but_not_below_target(large_jpeg: tuple[Path, np.ndarray]) -> None:
    path, _ = large_jpeg
    reduced, size = load_image_and_size(path, target_size=448)
    assert size == (1800, 2400) == image_size(path)
    assert reduced.shape == (450, 600, 3)  # 1/4: 1/8 would give 225 rows < 448
    _assert_rgb(reduced, (450, 600))
    assert load_image(path, target_size=None).shape == (1800, 2400, 3)
    assert load_image(path, target_size=1000).shape == (1800, 2400, 3)  # 1800 < 2 * 1000


def test_draft_decode_close_to_full_decode_then_resize(large_jpeg: tuple[Path, np.ndarray]) -> None:
    path, _ = large_jpeg
    reduced = load_image(path, target_size=448)
    full = load_image(path, target_size=None)

    def to_model(array: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(array).resize((448, 448), Image.Resampling.BICUBIC)).astype(int)

    difference = np.abs(to_model(reduced) - to_model(full))
    assert difference.mean() < 2.0
    assert np.percentile(difference, 99) < 16


def test_draft_keeps_orientation(tmp_path: Path) -> None:
    path = tmp_path / "tall.jpg"
    displayed = jpeg_with_exif_orientation(path, 6, size=(1024, 2048))
    image, size = load_image_and_size(path, target_size=256)
    assert size == (2048, 1024)
    assert image.shape == (512, 256, 3)  # 1/4 of the displayed size
    for (y, x), colour in zip([(128, 64), (128, 192), (384, 64), (384, 192)], QUADRANT_COLOURS, strict=True):
        assert np.abs(image[y, x].astype(int) - colour).max() <= 8
    assert displayed.shape == (2048, 1024, 3)


def test_target_size_ignored_for_non_jpeg(tmp_path: Path) -> None:
    write_png(tmp_path / "big.png", np.zeros((1000, 1200), np.uint8))
    assert load_image(tmp_path / "big.png", target_size=100).shape == (1000, 1200, 3)


def test_sources_bytes_paths_and_file_objects_agree(tmp_path: Path) -> None:
    pixels, _ = scene(40, 56, seed=6)
    path = write_png(tmp_path / "s.png", pixels)
    data = path.read_bytes()
    with path.open("rb") as handle:
        handle.seek(10)  # read from the start whatever the position
        from_handle = load_image(handle)
        assert not handle.closed
    for source in (str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.array_equal(load_image(source), pixels)
    assert np.array_equal(from_handle, pixels)


@pytest.mark.parametrize(
    "build",
    [
        lambda p: grayscale_png(p),
        lambda p: png_16bit_gray(p),
        lambda p: rgba_png(p),
        lambda p: palette_png_with_transparency(p),
        lambda p: cmyk_jpeg(p),
        lambda p: jpeg_with_exif_orientation(p, 8, size=(48, 32)),
        lambda p: jpeg_with_exif_orientation(p, 3, size=(48, 32)),
    ],
    ids=["L", "I;16", "RGBA", "P+alpha", "CMYK", "exif8", "exif3"],
)
def test_image_size_agrees_with_full_decode(tmp_path: Path, build: Callable[[Path], object]) -> None:
    path = tmp_path / "file"
    build(path)
    assert image_size(path) == load_image(path, target_size=None).shape[:2]


# --------------------------------------------------------------------------- masks and label maps


def test_mask_grey_threshold_and_binary_labels(tmp_path: Path) -> None:
    grey = np.array([[0, 100, 127, 128, 255]], np.uint8)
    write_png(tmp_path / "grey.png", grey)
    assert load_mask(tmp_path / "grey.png").tolist() == [[False, False, False, True, True]]
    write_png(tmp_path / "ids.png", np.array([[0, 1, 0, 1]], np.uint8))
    assert load_mask(tmp_path / "ids.png").tolist() == [[False, True, False, True]]
    bits = np.array([[True, False]])
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert load_mask(tmp_path / "bits.png").tolist() == [[True, False]]


def test_mask_from_noisy_jpeg(tmp_path: Path) -> None:
    _, masks = scene(96, 128, seed=7)
    truth = masks["Cat"] | masks["Dog"]
    write_jpeg(tmp_path / "mask.jpg", np.repeat(truth[..., None] * np.uint8(255), 3, axis=2), quality=60)
    assert (load_mask(tmp_path / "mask.jpg") != truth).mean() < 0.01


def test_mask_any_channel_counts(tmp_path: Path) -> None:
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, 1] = (200, 0, 0)
    rgb[0, 2] = (0, 0, 130)
    rgb[0, 3] = (60, 60, 60)
    write_png(tmp_path / "rgb.png", rgb)
    assert load_mask(tmp_path / "rgb.png").tolist() == [[False, True, True, False]]


def test_mask_palette_any_non_black_colour(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2]], np.uint8)
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette(bytes([0, 0, 0, 64, 0, 0, 0, 128, 0]))  # VOC background, cat, aeroplane
    image.save(tmp_path / "voc.png")
    assert load_mask(tmp_path / "voc.png").tolist() == [[False, True, True]]


def test_mask_rgba_uses_alpha_when_colour_is_black(tmp_path: Path) -> None:
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, 3] = (0, 255, 100)
    write_png(tmp_path / "alpha.png", rgba)
    assert load_mask(tmp_path / "alpha.png").tolist() == [[False, True, False]]


def test_mask_rgba_colour_under_transparent_pixels_is_background(tmp_path: Path) -> None:
    rgba = np.array([[(255, 255, 255, 0), (255, 0, 0, 255), (0, 0, 0, 255)]], np.uint8)
    write_png(tmp_path / "overlay.png", rgba)
    assert load_mask(tmp_path / "overlay.png").tolist() == [[False, True, False]]


def test_mask_16bit_and_float(tmp_path: Path) -> None:
    png_16bit_gray(tmp_path / "m16.png", np.array([[0, 1000, 40000, 65535]], np.uint16))
    assert load_mask(tmp_path / "m16.png").tolist() == [[False, False, True, True]]
    png_16bit_gray(tmp_path / "ids16.png", np.array([[0, 1, 1, 0]], np.uint16))
    assert load_mask(tmp_path / "ids16.png").tolist() == [[False, True, True, False]]
    tiff_gray(tmp_path / "soft.tif", np.array([[0.0, 0.4, 0.6, np.nan]], np.float32))
    assert load_mask(tmp_path / "soft.tif").tolist() == [[False, False, True, False]]


def test_label_map_palette_grey_and_colour(tmp_path: Path) -> None:
    indices, _, _ = palette_png(tmp_path / "p.png", size=(8, 2))
    ids = load_label_map(tmp_path / "p.png")
    assert ids.dtype == np.int32 and np.array_equal(ids, indices)
    grey = np.array([[0, 3, 7]], np.uint8)
    write_png(tmp_path / "l.png", grey)
    assert load_label_map(tmp_path / "l.png").tolist() == [[0, 3, 7]]
    rgb = np.array([[(0, 0, 0), (128, 0, 0), (0, 128, 64)]], np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    assert load_label_map(tmp_path / "rgb.png").tolist() == [[0, 128 << 16, (128 << 8) | 64]]
    rgba = np.array([[(9, 9, 9, 0), (0, 0, 255, 255)]], np.uint8)
    write_png(tmp_path / "rgba.png", rgba)
    assert load_label_map(tmp_path / "rgba.png").tolist() == [[0, 255]]


def test_label_map_rejects_float(tmp_path: Path) -> None:
    tiff_gray(tmp_path / "f.tif", np.zeros((2, 2), np.float32))
    with pytest.raises(ImageError, match="float image"):
        load_label_map(tmp_path / "f.tif")


# --------------------------------------------------------------------------- fixture self-checks


def test_scene_is_deterministic_with_disjoint_masks_matching_pixels() -> None:
    first, masks = scene(120, 160, seed=2, shapes={"Cat": 2, "Dog": 1, "Bird": 1})
    again, masks_again = scene(120, 160, seed=2, shapes={"Cat": 2, "Dog": 1, "Bird": 1})
    other, _ = scene(120, 160, seed=3, shapes={"Cat": 2, "Dog": 1, "Bird": 1})
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert set(masks) == {"Cat", "Dog", "Bird"}
    assert all(np.array_equal(masks[k], masks_again[k]) for k in masks)
    stacked = np.stack(list(masks.values()))
    assert stacked.sum(axis=0).max() == 1  # disjoint
    assert all(mask.any() for mask in masks.values())
    # Cat pixels are orange-ish (red > blue), Dog pixels blue-ish: masks follow the pixels.
    cat, dog = first[masks["Cat"]].astype(int), first[masks["Dog"]].astype(int)
    assert (cat[:, 0] > cat[:, 2]).mean() > 0.95 and (dog[:, 2] > dog[:, 0]).mean() > 0.95
