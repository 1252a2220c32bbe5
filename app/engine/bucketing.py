"""flagd's ``fractional`` bucketing, all three generations, as integer math on mmh3.

Pinned to flagd-testbed release 3.9.0 (commit 82ba89ec), whose vectors are in
tests/engine/test_conformance.py:

* ``v1`` (legacy float): ``abs(int32 murmur3(utf8)) / MaxInt32 * 100`` compared with
  cumulative percentages; the shorthand buckets by ``flagKey + targetingKey``.
* ``v2``: ``(uint32 murmur3(utf8) * totalWeight) >> 32`` compared with cumulative weights;
  what the flagd Go daemon does at the time of writing.
* ``v3`` (default): the same integer math over the canonical CBOR encoding (RFC 7049 §3.9,
  as ``cbor2.dumps(canonical=True)``) of the bucketing value, so ``1``, ``"1"`` and ``true``
  land in different buckets; the shorthand buckets by ``[flagKey, targetingKey]``. This is
  what ``openfeature-flagd-core`` 2.x does.

A bucket index ``i`` is chosen when ``(hash * total) >> 32 < cumulative[i]``, i.e. when
``hash < ceil(cumulative[i] << 32 / total)``; ``thresholds`` precomputes those bounds so
a static split is one ``bisect``.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from math import isinf, isnan
from typing import Any, Final

import mmh3

from app.engine.budget import STEP_COST, charge

__all__ = [
    "MAX_TOTAL_WEIGHT",
    "bucket_v1",
    "cbor",
    "hash_after",
    "hash_v1",
    "hash_v2",
    "hash_v3",
    "pick",
    "text_pair_prefix",
    "thresholds",
]

#: flagd rejects splits whose weights add up to more than MaxInt32.
MAX_TOTAL_WEIGHT: Final = 2_147_483_647
_INT32_MAX: Final = 2_147_483_647
_UINT64_LIMIT: Final = 2**64
#: Nesting beyond this is not bucketed (returns None) so hostile contexts cannot recurse.
_MAX_CBOR_DEPTH: Final = 64

_hash = mmh3.hash


def thresholds(weights: Sequence[int]) -> tuple[int, ...] | None:
    """Hash upper bounds per bucket for integer bucketing; None when weights are unusable."""
    total = sum(weights)
    if total <= 0 or total > MAX_TOTAL_WEIGHT:
        return None
    bounds = []
    cumulative = 0
    for weight in weights:
        cumulative += weight
        bounds.append(-(-(cumulative << 32) // total))
    return tuple(bounds)


def pick(bounds: tuple[int, ...], hashed: int) -> int | None:
    """Index of the bucket for an unsigned 32-bit hash (None past the last bucket)."""
    index = bisect_right(bounds, hashed)
    return index if index < len(bounds) else None


def hash_v1(text: str) -> int | None:
    """Signed 32-bit murmur3 of the UTF-8 text (v1), None for unencodable text."""
    try:
        return int(_hash(text.encode(), 0, True))
    except UnicodeEncodeError:
        return None


def hash_v2(text: str) -> int | None:
    """Unsigned 32-bit murmur3 of the UTF-8 text (v2), None for unencodable text."""
    try:
        return int(_hash(text.encode(), 0, False))
    except UnicodeEncodeError:
        return None


def hash_v3(value: Any) -> int | None:
    """Unsigned 32-bit murmur3 of the canonical CBOR of ``value`` (v3), None if unencodable."""
    if value.__class__ is str:
        return hash_after(b"", value)
    out = bytearray()
    if not _encode(value, out, 0):
        return None
    return int(_hash(bytes(out), 0, False))


def text_pair_prefix(first: str) -> bytes | None:
    """CBOR of a two-item array up to its second item, a text: `hash_v3([first, x])` is
    `hash_after(prefix, x)`. The shorthand `fractional` pairs a constant flag key with the
    targeting key, so the prefix is built once per compiled flag, not per evaluation."""
    out = bytearray(b"\x82")
    return bytes(out) if _encode(first, out, 0) else None


def hash_after(prefix: bytes, text: str) -> int | None:
    """`hash_v3` of the array whose CBOR starts with `prefix` and ends with the text `text`."""
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        return None
    size = len(encoded)
    head = _TEXT_HEADERS[size] if size < 256 else _header(3, size)
    hashed: int = _hash(prefix + head + encoded, 0, False)
    return hashed


def _text_headers() -> tuple[bytes, ...]:
    """CBOR text-string headers for lengths 0..255 (major type 3), precomputed."""
    return tuple(bytes((0x60 | n,)) if n < 24 else bytes((0x78, n)) for n in range(256))


_TEXT_HEADERS: Final = _text_headers()


def bucket_v1(hashed: int, weights: Sequence[int], total: int) -> int | None:
    """Legacy float bucketing: index of the bucket, None when the hash falls past 100%."""
    position = abs(hashed) / _INT32_MAX * 100
    end = 0.0
    for index, weight in enumerate(weights):
        end += 100 * weight / total
        if position < end:
            return index
    return None


def cbor(value: Any) -> bytes | None:
    """Canonical CBOR of a JSON value after flagd's number normalisation (for tests)."""
    out = bytearray()
    return bytes(out) if _encode(value, out, 0) else None


def _header(major: int, length: int) -> bytes:
    major <<= 5
    if length < 24:
        return bytes((major | length,))
    if length < 256:
        return bytes((major | 24, length))
    if length < 65536:
        return bytes((major | 25,)) + length.to_bytes(2, "big")
    if length < 4294967296:
        return bytes((major | 26,)) + length.to_bytes(4, "big")
    return bytes((major | 27,)) + length.to_bytes(8, "big")


def _encode(value: Any, out: bytearray, depth: int) -> bool:
    """Append canonical CBOR; False for values JSON cannot hold or nesting too deep."""
    if value is None:
        out += b"\xf6"
    elif value is True:
        out += b"\xf5"
    elif value is False:
        out += b"\xf4"
    elif isinstance(value, str):
        return _encode_text(value, out)
    elif isinstance(value, int):
        _encode_int(value, out)
    elif isinstance(value, float):
        _encode_float(value, out)
    elif depth >= _MAX_CBOR_DEPTH:
        return False
    elif isinstance(value, list | tuple):
        return _encode_array(value, out, depth)
    elif isinstance(value, Mapping):
        return _encode_map(value, out, depth)
    else:
        return False
    return True


def _encode_text(value: str, out: bytearray) -> bool:
    try:
        encoded = value.encode()
    except UnicodeEncodeError:
        return False
    out += _header(3, len(encoded))
    out += encoded
    return True


def _encode_float(value: float, out: bytearray) -> None:
    # flagd normalises integral floats to integers when they fit 64 bits.
    if value.is_integer() and -(2**63) <= value <= 2**64 - 1:
        _encode_int(int(value), out)
    else:
        out += _float(value)


def _encode_array(value: Sequence[Any], out: bytearray, depth: int) -> bool:
    # Charged per item: parts shared by reference are encoded once per path.
    charge(len(value) * STEP_COST, "bucketing by an array")
    out += _header(4, len(value))
    return all(_encode(item, out, depth + 1) for item in value)


def _encode_map(value: Mapping[Any, Any], out: bytearray, depth: int) -> bool:
    """Canonical order: keys sorted by the length, then the bytes, of their encoding."""
    charge(len(value) * STEP_COST, "bucketing by an object")
    entries = []
    for key, item in value.items():
        encoded_key = bytearray()
        if not _encode(key, encoded_key, depth + 1):
            return False
        entries.append((len(encoded_key), bytes(encoded_key), item))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    out += _header(5, len(entries))
    for _, encoded_key_bytes, item in entries:
        out += encoded_key_bytes
        if not _encode(item, out, depth + 1):
            return False
    return True


def _encode_int(value: int, out: bytearray) -> None:
    if value >= _UINT64_LIMIT or value < -_UINT64_LIMIT:
        tag = 0xC2 if value >= 0 else 0xC3
        magnitude = value if value >= 0 else -value - 1
        payload = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        out.append(tag)
        out += _header(2, len(payload))
        out += payload
    elif value >= 0:
        out += _header(0, value)
    else:
        out += _header(1, -(value + 1))


def _float(value: float) -> bytes:
    """Shortest IEEE 754 form that keeps the value (half, single, then double)."""
    if isnan(value):
        return b"\xf9\x7e\x00"
    if isinf(value):
        return b"\xf9\x7c\x00" if value > 0 else b"\xf9\xfc\x00"
    encoded = struct.pack(">Bd", 0xFB, value)
    for form, tag in ((">Bf", 0xFA), (">Be", 0xF9)):
        try:
            shorter = struct.pack(form, tag, value)
        except OverflowError:
            break
        if struct.unpack(form, shorter)[1] != value:
            break
        encoded = shorter
    return encoded
