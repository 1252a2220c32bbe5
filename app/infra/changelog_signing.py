"""Authenticates the flag changelog: only a decider holding the changelog key writes a change
every worker applies.

Replicas validate each version they compile, but a valid version written straight to the
changelog by any producer with write access would be served as if decided. So the decider signs
every change it appends: HMAC-SHA256 under `FLAGSTREAM_CHANGELOG_KEY` over the topic, the
partition, the record's key, its value and its meta header (`app.infra.records.CHANGE_HEADER`),
in the `flagstream-sig` header. Binding the topic and partition means a signed record copied
into another partition, or into another deployment's changelog sharing the key, fails the
check. Replicas verify before applying; a record that fails keeps its flag at its last good
version and is counted (`unsigned` or `forged`).

The changelog is kept forever, so keys rotate by verification only: the old keys stay in
`FLAGSTREAM_CHANGELOG_OLD_KEYS` (verify, never sign) for as long as the log holds records they
signed. Each signature names its key by a key id (the first bytes of the key's SHA-256), so a
verifier tries one key, never all of them, and no key id reveals a key.

    header value = FORMAT (1 byte) | key id (4 bytes) | HMAC-SHA256 (32 bytes)
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from app.infra.records import CHANGE_HEADER

__all__ = [
    "MIN_KEY_BYTES",
    "SIGNATURE_HEADER",
    "ChangelogSigner",
    "Verdict",
]

SIGNATURE_HEADER = "flagstream-sig"
MIN_KEY_BYTES = 32  # a random token this long cannot be guessed from its signatures
_FORMAT = b"\x01"
_KEY_ID_BYTES = 4
_MAC_BYTES = 32
_SIGNATURE_BYTES = len(_FORMAT) + _KEY_ID_BYTES + _MAC_BYTES
_LENGTH = struct.Struct(">I")
# The lengths of the record's key, value and meta, signed before them: no two ways of splitting
# the same bytes into key, value and meta sign alike.
_LENGTHS = struct.Struct(">iii")


class Verdict(enum.Enum):
    """What the check of one record found; the values are metric labels."""

    SIGNED = "signed"  # a valid signature under a known key
    UNSIGNED = "unsigned"  # no signature header
    FORGED = "forged"  # a signature that does not verify, or under a key this worker lacks


class _Hmac:
    """HMAC-SHA256 under one key, its padded key blocks hashed once (RFC 2104, section 4).

    `hmac.digest` hashes them again for every record: 5.6 us a record of the changelog's
    typical 550 bytes against 2.9 us here (benchmarks/bench_apply.py --signed)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(
        self, place: bytes, key: bytes | None, value: bytes | None, meta: bytes | None
    ) -> bytes:
        """The MAC of a record at `place` (`_place`). One update of the joined parts: each
        call into OpenSSL costs as much as hashing a few hundred bytes."""
        inner = self._inner.copy()
        lengths = _LENGTHS.pack(_length(key), _length(value), _length(meta))
        inner.update(b"".join((place, lengths, key or b"", value or b"", meta or b"")))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_BLOCK = 64  # SHA-256's block size, in bytes


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"flagstream-changelog-key-id\x00" + key).digest()[:_KEY_ID_BYTES]


@functools.lru_cache(maxsize=1024)  # a worker reads a few changelog partitions, ever
def _place(topic: str, partition: int) -> bytes:
    """The signed bytes naming where a record is: the topic (so, the deployment) and partition."""
    name = topic.encode()
    return b"flagstream-changelog-v1\x00" + _LENGTH.pack(len(name)) + name + _LENGTH.pack(partition)


def _length(part: bytes | None) -> int:
    return -1 if part is None else len(part)  # None (no value, no header) is not b""


@dataclass(frozen=True, slots=True)
class ChangelogSigner:
    """Signs (with the current key) and verifies (with it and the old ones) changelog records.

    Without a key it signs nothing and verifies nothing (`enabled` False): the worker then
    applies every valid record, as before signing existed, and says so loudly at start.
    """

    key: bytes = field(repr=False, default=b"")
    old_keys: tuple[bytes, ...] = field(repr=False, default=())
    accept_unsigned: bool = False
    _by_id: dict[bytes, _Hmac] = field(repr=False, default_factory=dict, compare=False)

    @classmethod
    def of(
        cls, key: str, old_keys: Iterable[str] = (), *, accept_unsigned: bool = False
    ) -> ChangelogSigner:
        """The signer of these keys; ValueError (naming no key) for one too short to be safe."""
        current = key.encode()
        olds = tuple(k.encode() for k in old_keys if k)
        if current and len(current) < MIN_KEY_BYTES:
            raise ValueError(f"FLAGSTREAM_CHANGELOG_KEY: at least {MIN_KEY_BYTES} bytes, please")
        if any(len(old) < MIN_KEY_BYTES for old in olds):
            raise ValueError(f"FLAGSTREAM_CHANGELOG_OLD_KEYS: each at least {MIN_KEY_BYTES} bytes")
        if olds and not current:
            raise ValueError("FLAGSTREAM_CHANGELOG_OLD_KEYS needs FLAGSTREAM_CHANGELOG_KEY")
        by_id = {_key_id(k): _Hmac(k) for k in (*olds, current) if k}
        return cls(current, olds, accept_unsigned, by_id)

    @property
    def enabled(self) -> bool:
        return bool(self.key)

    def headers(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> list[tuple[str, bytes]]:
        """`headers` with the signature of the record they go with (unchanged when disabled)."""
        if not self.enabled:
            return list(headers)
        key_id = _key_id(self.key)
        mac = self._by_id[key_id].digest(_place(topic, partition), key, value, _meta(headers))
        return [*headers, (SIGNATURE_HEADER, _FORMAT + key_id + mac)]

    def verify(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> Verdict:
        """Whether the record was signed by a key this worker holds, for this very place."""
        signature = meta = None
        for name, header in headers:
            if name == SIGNATURE_HEADER:
                signature = header
            elif name == CHANGE_HEADER:
                meta = header
        if signature is None:
            return Verdict.UNSIGNED
        if len(signature) != _SIGNATURE_BYTES or signature[:1] != _FORMAT:
            return Verdict.FORGED
        mac = self._by_id.get(signature[1 : 1 + _KEY_ID_BYTES])
        if mac is None:
            return Verdict.FORGED
        expected = mac.digest(_place(topic, partition), key, value, meta)
        if hmac.compare_digest(expected, signature[1 + _KEY_ID_BYTES :]):
            return Verdict.SIGNED
        return Verdict.FORGED

    def trusts(self, verdict: Verdict) -> bool:
        """Whether a record with this verdict may be applied."""
        if not self.enabled:
            return True
        return verdict is Verdict.SIGNED or (verdict is Verdict.UNSIGNED and self.accept_unsigned)


def _meta(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == CHANGE_HEADER:
            return value
    return None
