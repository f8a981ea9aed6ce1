"""Label Studio brush RLE: vectorised encoder and decoder, byte-identical to label-studio-sdk.

The format
----------
Label Studio stores a brush mask as a list of byte values (ints 0..255). Those bytes are a
big-endian bit stream (most significant bit of byte 0 first) describing a flat array of
``num`` values:

* a 53-bit header: ``num`` as 32 bits, ``word_size - 1`` as 5 bits, then four 4-bit fields
  ``size_k - 1`` (k = 0..3) giving the widths of the four possible run-count fields;
* tokens until ``num`` values have been produced. A token starts with a flag bit and a 2-bit
  selector ``k``, followed by a ``size_k``-bit count ``c``:

  - flag 1 (repeat): one ``word_size``-bit value repeated ``c + 1`` times;
  - flag 0 (literal): ``c + 1`` values follow, each ``word_size`` bits;

* zero bits up to the next byte boundary. The SDK encoder always appends between 1 and 8
  zero bits, so a stream whose bit length is already a multiple of 8 gets a whole zero byte.

The array described is the mask expanded to RGBA: ``num = H * W * 4``, pixels in row-major
(C) order, and every pixel value is written to all four channels (R = G = B = A = mask
value). Label Studio reads the mask from the alpha channel, i.e. ``values[3::4]``.

The SDK encoder (``label_studio_sdk.converter.brush.mask2rle``) always uses ``word_size`` 8
and sizes ``(3, 4, 8, 16)``, emits only repeat tokens except for runs of length 1 (written
as a literal token with ``c = 0``) and picks the smallest selector whose count field fits
the run; a run longer than 256 always uses the 16-bit selector and is split into chunks
of 65536 followed by the remainder. :func:`encode` reproduces that choice bit for bit.
:func:`decode` accepts any word size (values must fit in 8 bits), any sizes and literal
blocks of any length, as the Label Studio frontend may write them.

Speed comes from working with pixel runs rather than expanded values: runs of the RGBA
stream are exactly the pixel runs with lengths multiplied by 4, so the 4x expanded array is
never built. Encoding computes every token (at most 27 bits) and its bit offset with array
operations, then sums the tokens falling into each 64-bit output word with ``np.add.reduceat``
(tokens never share bits, so the sum is their bitwise OR).
Decoding tabulates the width a token would have at every bit position, walks the chain of
token starts (one cheap step per token, not per pixel) and then reads all fields at once.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["decode", "decode_stream", "encode", "encode_stream"]

_HEADER_BITS = 53
_SDK_WORD_SIZE = 8
_SDK_SIZES = (3, 4, 8, 16)
# The SDK encoder picks a token class from the run length: 1 (literal) | 2..8 | 9..16 |
# 17..256 | > 256 (16-bit count, chunked). Tables indexed by min(run_length, 257) give the
# token width in bits and its flag + selector bits already shifted above count and value.
_TOKEN_WIDTH = np.array([0, 14] + [14] * 7 + [15] * 8 + [19] * 240 + [27], dtype=np.int64)
_TOKEN_PREFIX = np.array(
    [0, 0] + [0b100 << 11] * 7 + [0b101 << 12] * 8 + [0b110 << 16] * 240 + [0b111 << 24], dtype=np.int64
)
_CHUNK = 65536
_PACK_CHUNK = 1 << 14
_MAX_NUM = 2**32 - 1


# --------------------------------------------------------------------------- encoding


def _as_value_array(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Validate a 2-D mask; return its flat uint8 view and the scale for its values (255 for bool)."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H x W), got shape {mask.shape}")
    if mask.size == 0:
        raise ValueError(f"mask must not be empty, got shape {mask.shape}")
    if mask.size * 4 > _MAX_NUM:
        raise ValueError(f"mask of shape {mask.shape} is too large for brush RLE (H*W*4 must fit 32 bits)")
    if mask.dtype == np.bool_:
        return np.ascontiguousarray(mask).reshape(-1).view(np.uint8), 255
    if mask.dtype == np.uint8:
        return np.ascontiguousarray(mask).reshape(-1), 1
    if np.issubdtype(mask.dtype, np.integer):
        lo, hi = int(mask.min()), int(mask.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer mask values must lie in 0..255, got range {lo}..{hi}")
        return np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1), 1
    raise TypeError(f"mask dtype must be bool or an integer type with values 0..255, got {mask.dtype}")


def _change_points(flat: np.ndarray) -> np.ndarray:
    """Indices i (int64, ascending) where ``flat[i] != flat[i + 1]`` for a 1-D uint8 array."""
    diff = flat[1:] != flat[:-1]
    # Smooth masks change rarely: then find the 8-byte words of `diff` holding a change
    # first, so the element-wise scan only touches those. When more than ~1 % of the words
    # hold a change (speckle) the detour costs more than it saves (measured): scan directly.
    whole = diff.size - diff.size % 8
    changed_words = diff[:whole].view(np.uint64) != 0
    if np.count_nonzero(changed_words) * 100 > changed_words.size:
        return np.flatnonzero(diff)
    hit = np.flatnonzero(changed_words)
    inner = np.flatnonzero(diff[:whole].reshape(-1, 8)[hit])
    head = hit[inner >> 3] * 8 + (inner & 7)
    tail = np.flatnonzero(diff[whole:]) + whole
    return np.concatenate([head, tail])


def _pack_runs(lengths: np.ndarray, values: np.ndarray, num: int) -> list[int]:
    """Serialise runs exactly as the SDK's ``encode_rle`` does.

    ``lengths``: int64 (n,) >= 1, summing to ``num``; ``values``: (n,) ints 0..255.
    Returns the RLE as a list of ints 0..255.
    """
    values = values.astype(np.int64, copy=False)
    if int(lengths.max()) > _CHUNK:
        # Runs longer than 65536 become several 16-bit tokens: full chunks, then the rest.
        extra = np.where(lengths > 256, (lengths - 1) // _CHUNK, 0)
        per_run = extra + 1
        last = np.cumsum(per_run) - 1
        tok_len = np.full(int(last[-1]) + 1, _CHUNK, dtype=np.int64)
        tok_len[last] = lengths - _CHUNK * extra
        tok_val = np.repeat(values, per_run)
        key = np.repeat(np.minimum(lengths, 257), per_run)
    else:
        tok_len, tok_val, key = lengths, values, np.minimum(lengths, 257)
    width = _TOKEN_WIDTH[key]
    end = np.cumsum(width)
    end += _HEADER_BITS
    total_bits = int(end[-1])
    nbytes = total_bits // 8 + 1  # the SDK pads with 1..8 zero bits
    out = np.zeros(nbytes // 8 + 2, dtype=np.uint64)
    header = (num << 21) | ((_SDK_WORD_SIZE - 1) << 16)
    for i, size in enumerate(_SDK_SIZES):
        header |= (size - 1) << (12 - 4 * i)
    out[0] = np.uint64(header << (64 - _HEADER_BITS))
    # Cache-sized chunks of tokens: about 3x faster than whole-array passes on big inputs.
    for lo in range(0, end.size, _PACK_CHUNK):
        hi = lo + _PACK_CHUNK
        _pack_chunk(out, tok_len[lo:hi], tok_val[lo:hi], key[lo:hi], width[lo:hi], end[lo:hi])
    # list(bytes) reuses Python's cached small ints: about twice as fast as ndarray.tolist().
    return list(out.astype(">u8").tobytes()[:nbytes])


def _pack_chunk(
    out: np.ndarray,
    length: np.ndarray,
    value: np.ndarray,
    key: np.ndarray,
    width: np.ndarray,
    end: np.ndarray,
) -> None:
    """OR tokens into ``out`` (uint64 big-endian-order words); ``end``: bit after each token."""
    # A run of 1 is a literal token with count 0: (length - 1) << 8 is then 0 as needed.
    code = _TOKEN_PREFIX[key]
    code |= (length - 1) << 8
    code |= value
    code = code.view(np.uint64)
    word = (end - width) >> 6
    # Place each token (<= 27 bits) in the 64-bit word holding its first bit; `over` > 0 bits
    # spill into the next word. Tokens never share bits, so summing the tokens of a word
    # equals OR-ing them, and as tokens are sorted a word's tokens form one reduceat group.
    end_in_word = end - (word << 6)
    over = end_in_word - 64
    placed = (code << np.maximum(-over, 0).view(np.uint64)) >> np.maximum(over, 0).view(np.uint64)
    group = np.flatnonzero(word[1:] != word[:-1]) + 1
    group = np.concatenate([np.zeros(1, dtype=np.int64), group])
    # |= because the first word of a chunk may already hold the previous chunk's last tokens.
    out[word[group]] |= np.add.reduceat(placed, group)
    spill = np.flatnonzero(over > 0)
    out[word[spill] + 1] |= code[spill] << (128 - end_in_word[spill]).view(np.uint64)


def encode(mask: np.ndarray) -> list[int]:
    """Encode a 2-D mask as Label Studio brush RLE.

    ``mask``: H x W, bool (True -> 255) or an integer dtype with values 0..255 (written
    as is, so pass 0/255 for a visible mask). Returns a list of ints 0..255, byte-identical
    to ``label_studio_sdk.converter.brush.mask2rle(mask)`` (for bool: of ``mask * 255`` as uint8).
    Raises TypeError/ValueError naming the problem for other dtypes, shapes or value ranges.
    """
    flat, scale = _as_value_array(mask)
    n = flat.size
    ends = np.append(_change_points(flat), n - 1)
    lengths = np.diff(ends, prepend=-1) * 4
    values = flat[ends].astype(np.int64)
    if scale != 1:
        values *= scale
    return _pack_runs(lengths, values, 4 * n)


def encode_stream(values: np.ndarray) -> list[int]:
    """Encode a flat array of values 0..255 exactly as the SDK's ``encode_rle(values)``.

    ``values``: 1-D, 1 to 2**30 values, integer dtype. Lower-level than :func:`encode` (no RGBA
    expansion); useful for tests and for callers that build their own channel layout.
    """
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    flat, _ = _as_value_array(values.reshape(1, -1))
    ends = np.append(_change_points(flat), flat.size - 1)
    return _pack_runs(np.diff(ends, prepend=-1), flat[ends], flat.size)


# --------------------------------------------------------------------------- decoding


def _as_bytes(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1 or not np.issubdtype(rle.dtype, np.integer):
            raise ValueError(f"RLE must be a 1-D integer array, got {rle.dtype} with shape {rle.shape}")
        if rle.size and (int(rle.min()) < 0 or int(rle.max()) > 255):
            raise ValueError("RLE values must be ints in 0..255")
        data = rle.astype(np.uint8)
    else:
        try:
            data = np.frombuffer(bytes(rle), dtype=np.uint8)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"RLE must be a sequence of ints in 0..255 ({exc})") from None
    if data.size < 7:
        raise ValueError(f"RLE too short for its 53-bit header: {data.size} bytes")
    return data


@lru_cache(maxsize=8)
def _width_table(word_size: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Token width in bits for every value of a token's first ``top = 3 + max(sizes)`` bits.

    Returns (widths uint32, the same as uint8 with 0 where the width exceeds 255, top).
    """
    top = 3 + max(sizes)
    x = np.arange(1 << top, dtype=np.int64)
    flag = x >> (top - 1)
    sel = (x >> (top - 3)) & 3
    size = np.asarray(sizes, dtype=np.int64)[sel]
    count = (x >> (top - 3 - size)) & ((1 << size) - 1)
    width = 3 + size + np.where(flag == 1, word_size, (count + 1) * word_size)
    return width.astype(np.uint32), np.where(width > 255, 0, width).astype(np.uint8), top


def _peek(words: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The 64 bits starting at each bit position ``pos`` (int64) of a big-endian stream.

    ``words``: the stream as uint64 words (first bit = MSB of word 0), zero-padded so that
    ``words[pos // 64 + 1]`` exists. Returns uint64, the bit at ``pos`` in the MSB.
    """
    i = pos >> 6
    q = (pos & 63).astype(np.uint64)
    # (w >> 1) >> (63 - q) is w >> (64 - q) without the undefined shift by 64 when q == 0.
    return (words[i] << q) | ((words[i + 1] >> np.uint64(1)) >> (np.uint64(63) - q))


def _token_starts(buf: np.ndarray, nbytes: int, word_size: int, sizes: tuple[int, ...]) -> np.ndarray:
    """Bit offsets (int64) of the token chain that starts right after the header.

    ``buf``: the RLE bytes (uint8) followed by at least 3 zero bytes, length a multiple of 4;
    ``nbytes``: RLE length.
    The chain is followed to the end of the bytes, padding included; the caller trims it.
    """
    table, table8, top = _width_table(word_size, sizes)
    keep = np.uint32((1 << top) - 1)
    # steps[p] = width of a token starting at bit p, tabulated for every p with vectorised
    # table look-ups: the big-endian 32-bit window at each byte (a strided view, no copy)
    # holds the first `top` (<= 19) bits of a token at any of the 8 bit offsets of that byte.
    # Cache-sized chunks keep this about 3x faster than whole-array passes (measured).
    windows = as_strided(buf.view(">u4"), shape=(nbytes,), strides=(1,))
    steps = np.empty((nbytes, 8), dtype=np.uint8)
    chunk = 1 << 15
    for lo in range(0, nbytes, chunk):
        hi = min(lo + chunk, nbytes)
        win = windows[lo:hi].astype(np.uint32)
        for r in range(8):
            steps[lo:hi, r] = np.take(table8, (win >> np.uint32(32 - top - r)) & keep)
    step = steps.tobytes()
    del steps

    def wide(p: int) -> int:  # a long literal block: width > 255 bits, stored as 0 in `step`
        chunk = int.from_bytes(buf[p >> 3 : (p >> 3) + 4].tobytes(), "big")
        return int(table[(chunk >> (32 - top - (p & 7))) & int(keep)])

    # The one sequential part: one cheap step per token (not per value).
    starts = array.array("q")
    push = starts.append
    p, end = _HEADER_BITS, nbytes * 8
    while p < end:
        push(p)
        p += step[p] or wide(p)
    return np.frombuffer(starts, dtype=np.int64)


def _runs(rle: Sequence[int] | bytes | np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse an RLE into runs: (lengths int64 (n,), values int64 (n,), num) with sum(lengths) == num."""
    data = _as_bytes(rle)
    nbytes, nbits = data.size, data.size * 8
    buf = np.zeros((nbytes // 8 + 3) * 8, dtype=np.uint8)
    buf[:nbytes] = data
    words = buf.view(">u8").astype(np.uint64)
    header = int(words[0])
    num = header >> 32
    word_size = ((header >> 27) & 31) + 1
    sizes = tuple(((header >> (23 - 4 * k)) & 15) + 1 for k in range(4))
    if num == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    starts = _token_starts(buf, nbytes, word_size, sizes)
    if starts.size == 0:
        raise ValueError(f"RLE declares {num} values but holds no tokens")

    # All of flag, selector, count and the first value lie in the 64 bits at the token start.
    peek = _peek(words, starts)
    head = (peek >> np.uint64(61)).astype(np.int64)
    size = np.asarray(sizes, dtype=np.int64)[head & 3]
    # Values per token: `count` copies (repeat) or `count` literal values (literal).
    count = ((peek << np.uint64(3)) >> (64 - size).astype(np.uint64)).astype(np.int64) + 1

    # The walk ran through the padding; keep the tokens that make up `num` values.
    total = np.cumsum(count)
    last = int(np.searchsorted(total, num))
    if last == total.size:
        raise ValueError(f"RLE declares {num} values but its tokens produce only {int(total[-1])}")
    keep = slice(0, last + 1)
    starts, peek, size, count = starts[keep], peek[keep], size[keep], count[keep]
    repeat = head[keep] >= 4
    first_value = starts + 3 + size
    need = int(first_value[-1]) + (word_size if repeat[-1] else int(count[-1]) * word_size)
    if need > nbits:
        raise ValueError(f"RLE is truncated: its tokens need {need} bits, it has {nbits}")
    overshoot = int(total[last]) - num
    value_shift = np.uint64(64 - word_size)
    if repeat.all():
        lengths = count
        lengths[-1] -= overshoot
        values = (peek << (3 + size).astype(np.uint64)) >> value_shift
    else:  # literal blocks: `count` values of `word_size` bits each, one run of 1 per value
        per_token = np.where(repeat, 1, count)
        token_of_run = np.repeat(np.arange(starts.size), per_token)
        within = np.arange(token_of_run.size) - (np.cumsum(per_token) - per_token)[token_of_run]
        lengths = np.where(repeat[token_of_run], count[token_of_run], 1)
        if repeat[-1]:
            lengths[-1] -= overshoot
        elif overshoot:  # a final literal block running past `num`: drop its extra values
            lengths, token_of_run, within = (
                lengths[:-overshoot],
                token_of_run[:-overshoot],
                within[:-overshoot],
            )
        values = _peek(words, first_value[token_of_run] + within * word_size) >> value_shift
    return lengths, values.astype(np.int64), num


def decode_stream(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    """Decode an RLE to its flat value array, like the SDK's ``decode_rle``: uint8, shape (num,)."""
    lengths, values, _ = _runs(rle)
    if values.size and int(values.max()) > 255:
        raise ValueError(f"RLE values exceed 8 bits (max {int(values.max())})")
    return np.repeat(values.astype(np.uint8), lengths)


def decode(rle: Sequence[int] | bytes | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode a Label Studio brush RLE into its mask.

    ``height``/``width``: the image size in pixels (``original_height``/``original_width``
    of the region). Returns the alpha channel, uint8 H x W (0..255; 255 where painted).
    Raises ValueError when the RLE is malformed or does not describe H*W*4 values.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    lengths, values, num = _runs(rle)
    if num != height * width * 4:
        raise ValueError(
            f"RLE holds {num} values but a {height} x {width} RGBA mask needs {height * width * 4}"
        )
    if int(values.max()) > 255:
        raise ValueError(f"RLE values exceed 8 bits (max {int(values.max())})")
    # Alpha of pixel k is stream value 4k + 3: a run ending (exclusive) at e covers the
    # alpha values of pixels below e // 4.
    pixel_ends = np.cumsum(lengths) // 4
    pixels = np.diff(pixel_ends, prepend=0)
    return np.repeat(values.astype(np.uint8), pixels).reshape(height, width)
