"""Brush RLE parity with label-studio-sdk: byte-identical encoding, exact decoding."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from seggpt_backend.labelstudio import rle
from tests.fixtures import LS_CAPTURED

CAPTURED = LS_CAPTURED
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _as_ls(mask: np.ndarray) -> np.ndarray:
    """The uint8 mask mask2rle must see for the same output (it rejects bool)."""
    return mask.astype(np.uint8) * 255 if mask.dtype == np.bool_ else mask


def _check(mask: np.ndarray) -> None:
    expected = mask2rle(_as_ls(mask))
    ours = rle.encode(mask)
    assert ours == expected
    h, w = mask.shape
    assert np.array_equal(rle.decode(expected, h, w), _as_ls(mask))
    # The SDK decoder reads our bytes back to the RGBA stream of the mask.
    assert np.array_equal(decode_rle(ours), np.repeat(_as_ls(mask).ravel(), 4))


# ----------------------------------------------------------------------------- strategies


@st.composite
def random_masks(draw: st.DrawFn) -> np.ndarray:
    h = draw(st.integers(1, 41))
    w = draw(st.integers(1, 41))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = np.random.default_rng(seed).random((h, w)) < density
    return mask if draw(st.booleans()) else mask.astype(np.uint8) * 255


@st.composite
def structured_masks(draw: st.DrawFn) -> np.ndarray:
    h = draw(st.integers(1, 97))
    w = draw(st.integers(1, 97))
    kind = draw(st.sampled_from(["blob", "hstripes", "vstripes", "checker", "pixel", "border", "rect"]))
    yy, xx = np.mgrid[:h, :w]
    if kind == "blob":
        cy, cx = draw(st.floats(0, h)), draw(st.floats(0, w))
        r = draw(st.floats(0.5, max(h, w)))
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    elif kind in ("hstripes", "vstripes"):
        period = draw(st.integers(1, 9))
        mask = ((yy if kind == "hstripes" else xx) // period) % 2 == 0
    elif kind == "checker":
        cell = draw(st.integers(1, 5))
        mask = ((yy // cell) + (xx // cell)) % 2 == 1
    elif kind == "pixel":
        mask = np.zeros((h, w), bool)
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    elif kind == "border":
        mask = np.zeros((h, w), bool)
        mask[[0, -1], :] = True
        mask[:, [0, -1]] = True
    else:
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        mask = np.zeros((h, w), bool)
        mask[y0 : draw(st.integers(y0 + 1, h)), x0 : draw(st.integers(x0 + 1, w))] = True
    if draw(st.booleans()):
        mask = ~mask
    return mask if draw(st.booleans()) else mask.astype(np.uint8) * 255


# ----------------------------------------------------------------------------- parity


@PROPERTY
@given(random_masks())
def test_random_masks_match_sdk(mask: np.ndarray) -> None:
    _check(mask)


@PROPERTY
@given(structured_masks())
def test_structured_masks_match_sdk(mask: np.ndarray) -> None:
    _check(mask)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 2), (2, 1), (1, 257), (257, 1), (3, 5), (7, 11), (1, 70_000), (300, 301)],
)
@pytest.mark.parametrize("fill", ["empty", "full", "half"])
def test_edge_shapes_match_sdk(shape: tuple[int, int], fill: str) -> None:
    mask = np.zeros(shape, np.uint8)
    if fill == "full":
        mask[:] = 255
    elif fill == "half":
        mask.reshape(-1)[: mask.size // 2] = 255
    _check(mask)


@pytest.mark.parametrize("pixels", [1, 2, 3, 4, 5, 63, 64, 65, 16383, 16384, 16385, 32768, 32769, 40000])
def test_run_length_class_boundaries(pixels: int) -> None:
    # A run of p pixels is a run of 4p stream values: this walks over the 3/4/8/16-bit count
    # boundaries (8, 16, 256 values) and the 65536-value chunking of long runs.
    mask = np.zeros((1, pixels + 6), np.uint8)
    mask[0, 3 : 3 + pixels] = 255
    _check(mask)


def test_uint8_values_other_than_255_and_other_int_dtypes() -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert rle.encode(values) == mask2rle(values)
    assert np.array_equal(rle.decode(rle.encode(values), 16, 16), values)
    as_int = values.astype(np.int64)
    assert rle.encode(as_int) == mask2rle(as_int)


def test_non_contiguous_views_encode_like_their_copies() -> None:
    mask = np.random.default_rng(3).random((33, 17)) < 0.4
    for view in (mask.T, mask[::2, ::3], np.asfortranarray(mask)):
        assert rle.encode(view) == mask2rle(np.ascontiguousarray(view).astype(np.uint8) * 255)


@PROPERTY
@given(
    st.lists(st.tuples(st.integers(0, 255), st.integers(1, 300)), min_size=1, max_size=40),
)
def test_stream_encoding_matches_encode_rle(runs: list[tuple[int, int]]) -> None:
    # Arbitrary flat streams reach run lengths the RGBA expansion never produces (1, 2, 3, ...).
    values = np.repeat([v for v, _ in runs], [n for _, n in runs])
    expected = encode_rle(values)
    assert rle.encode_stream(values) == expected
    assert np.array_equal(rle.decode_stream(expected), values)


# ----------------------------------------------------------------------------- general decoding


def _write(
    tokens: list[tuple[Any, ...]], word_size: int, sizes: tuple[int, ...], pad: int, short: int = 0
) -> list[int]:
    """A stream in the general format: ("rep", sel, count, value) and ("lit", sel, values).

    ``pad``: extra zero bytes at the end; ``short``: declare that many values fewer than the
    tokens hold (the last repeat token then overshoots ``num``, which decoders clamp).
    """
    num = sum(t[2] if t[0] == "rep" else len(t[2]) for t in tokens) - short
    bits = [f"{num:032b}", f"{word_size - 1:05b}", *(f"{s - 1:04b}" for s in sizes)]
    for token in tokens:
        if token[0] == "rep":
            _, sel, count, value = token
            bits += ["1", f"{sel:02b}", f"{count - 1:0{sizes[sel]}b}", f"{value:0{word_size}b}"]
        else:
            _, sel, values = token
            bits += ["0", f"{sel:02b}", f"{len(values) - 1:0{sizes[sel]}b}"]
            bits += [f"{v:0{word_size}b}" for v in values]
    text = "".join(bits)
    text += "0" * (-len(text) % 8 + pad * 8)
    return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]


@st.composite
def general_streams(draw: st.DrawFn) -> tuple[list[int], np.ndarray]:
    word_size = draw(st.integers(1, 8))
    sizes = tuple(draw(st.lists(st.integers(1, 16), min_size=4, max_size=4)))
    value = st.integers(0, 2**word_size - 1)
    tokens: list[tuple[Any, ...]] = []
    expected: list[int] = []
    for _ in range(draw(st.integers(1, 12))):
        sel = draw(st.integers(0, 3))
        most = min(2 ** sizes[sel], 50)
        count = draw(st.integers(1, most))
        if draw(st.booleans()):
            v = draw(value)
            tokens.append(("rep", sel, count, v))
            expected += [v] * count
        else:
            values = draw(st.lists(value, min_size=count, max_size=count))
            tokens.append(("lit", sel, values))
            expected += values
    short = 0
    if tokens[-1][0] == "rep" and tokens[-1][2] > 1 and draw(st.booleans()):
        short = draw(st.integers(1, tokens[-1][2] - 1))
        expected = expected[: len(expected) - short]
    data = _write(tokens, word_size, sizes, draw(st.integers(0, 2)), short)
    return data, np.array(expected, np.uint8)


@PROPERTY
@given(general_streams())
def test_general_streams_decode_like_sdk(stream: tuple[list[int], np.ndarray]) -> None:
    # Literal blocks, other word sizes and count widths: what other encoders (the LS frontend)
    # may write. Literal blocks longer than 255 bits take the decoder's slow path.
    data, expected = stream
    assert np.array_equal(decode_rle(data), expected)
    assert np.array_equal(rle.decode_stream(data), expected)


def test_long_literal_block_decodes() -> None:
    values = list(range(200))
    data = _write([("rep", 0, 3, 7), ("lit", 3, values), ("rep", 2, 100, 9)], 8, (2, 3, 8, 16), 0)
    expected = np.array([7] * 3 + values + [9] * 100, np.uint8)
    assert np.array_equal(decode_rle(data), expected)
    assert np.array_equal(rle.decode_stream(data), expected)


def test_final_literal_block_past_num_is_cut() -> None:
    # The SDK decoder raises IndexError here; the LS frontend (typed arrays) drops the extra
    # values, and so do we.
    data = _write([("rep", 1, 4, 1), ("lit", 0, [5, 6, 7, 8])], 8, (3, 4, 8, 16), 0, short=2)
    assert rle.decode_stream(data).tolist() == [1, 1, 1, 1, 5, 6]


# ----------------------------------------------------------------------------- captured from LS


def _brush_regions(obj: Any) -> list[dict[str, Any]]:
    if isinstance(obj, dict):
        found = [obj] if obj.get("type") == "brushlabels" else []
        return found + [r for v in obj.values() for r in _brush_regions(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _brush_regions(v)]
    return []


@pytest.mark.parametrize("name", ["webhook_annotation_created.json", "predict_interactive.json"])
def test_label_studio_captured_rles_decode(name: str) -> None:
    regions = _brush_regions(json.loads((CAPTURED / name).read_text()))
    assert regions, f"{name} holds no brush region"
    for region in regions:
        h, w = region["original_height"], region["original_width"]
        data = region["value"]["rle"]
        mask = rle.decode(data, h, w)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert 0.01 < np.count_nonzero(mask) / mask.size < 0.5
        assert np.array_equal(mask, decode_rle(data).reshape(h, w, 4)[:, :, 3])
        assert rle.encode(mask) == data


# ----------------------------------------------------------------------------- errors


def test_decode_rejects_a_size_that_does_not_match() -> None:
    data = rle.encode(np.ones((4, 6), bool))
    with pytest.raises(ValueError, match=r"4 x 5 RGBA mask needs 80"):
        rle.decode(data, 4, 5)


def test_decode_rejects_truncated_and_malformed_rles() -> None:
    data = rle.encode(np.random.default_rng(0).random((20, 20)) < 0.5)
    with pytest.raises(ValueError, match=r"truncated|only"):
        rle.decode(data[: len(data) // 2], 20, 20)
    with pytest.raises(ValueError, match="header"):
        rle.decode(data[:5], 20, 20)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        rle.decode([*data[:-1], 300], 20, 20)
    with pytest.raises(ValueError, match="positive"):
        rle.decode(data, 0, 20)


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (np.zeros((2, 2, 1), np.uint8), ValueError, "2-D"),
        (np.zeros((0, 3), np.uint8), ValueError, "empty"),
        (np.zeros((2, 2), np.float32), TypeError, "float32"),
        (np.full((2, 2), 256, np.int32), ValueError, r"0\.\.255"),
        ([[0, 255]], TypeError, "numpy array"),
    ],
)
def test_encode_rejects_bad_masks(mask: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        rle.encode(mask)
