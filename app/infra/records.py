"""What flagstream writes to Kafka and keeps in its tables, with their JSON forms.

Every record carries `schema` (an integer) so consumers can refuse what they don't know;
docs/topics.md documents each form. Decoding of untrusted bytes lives in `app/control/changes.py`;
here are only the shapes and their lossless JSON round trip.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # the codec needs the alias for its annotations only, not the engine
    from app.engine import JsonObject

__all__ = [
    "CHANGE_HEADER",
    "JSON",
    "MAX_DEAD_LETTER_PAYLOAD",
    "MAX_DEAD_LETTER_PROBLEMS",
    "MAX_PROBLEM_CHARS",
    "SCHEMA_VERSION",
    "AppliedChange",
    "ChangeOp",
    "DeadLetter",
    "DeadLetterCode",
    "FlagChange",
    "MetaFields",
    "Rejection",
    "change_from_meta",
    "change_meta",
    "change_meta_json",
    "changelog_headers",
    "dumps",
    "loads",
    "meta_length",
    "read_binary_meta",
    "routed_change",
]

JSON = dict[str, Any]
SCHEMA_VERSION = 1

_log = logging.getLogger(__name__)


class ChangeOp(StrEnum):
    """What a flag change does; `state` is the kill switch (only `state` of the flag moves)."""

    PUT = "put"
    DELETE = "delete"
    STATE = "state"


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A command on `flag-changes`: a writer's wish, not yet a fact."""

    change_id: str
    environment: str
    flag: str
    op: ChangeOp
    actor: str
    produced_at: float
    definition: JsonObject | None = None
    state: str | None = None
    expected_version: int | None = None

    def to_json(self) -> JSON:
        return {"schema": SCHEMA_VERSION, **asdict(self), "op": self.op.value}

    def request_digest(self) -> str:
        """What the writer asked for, as a digest: a change id (an `Idempotency-Key`) names
        one request, and a second request under the same id is refused, not answered with
        the first one's outcome. Who asked and when are not part of the request."""
        asked = {
            "flag": self.flag,
            "op": self.op.value,
            "definition": self.definition,
            "state": self.state,
            "expected_version": self.expected_version,
        }
        return hashlib.sha256(orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """A fact on `flags-changelog`: the decided new version of one flag.

    `seq` numbers the changes of one environment without gaps (the change-stream event id);
    `version` numbers the versions of one flag (the HTTP ETag). A delete is a version with
    `definition` None, so versions never go backwards when a flag is re-created.
    `source_partition`/`source_offset` name the command on `flag-changes` it was decided from
    (-1 for records a foreign writer appended): the table remembers the highest decided offset
    of each partition, so a redelivered command is recognised however old it is. `request` is
    the command's `FlagChange.request_digest()`.
    """

    change_id: str
    environment: str
    flag: str
    op: ChangeOp
    seq: int
    version: int
    definition: JsonObject | None
    actor: str
    updated_at: float
    produced_at: float
    source_partition: int = -1
    source_offset: int = -1
    request: str = ""

    @property
    def deleted(self) -> bool:
        return self.definition is None

    def answers(self, change: FlagChange) -> bool:
        """Whether this is the outcome of `change`'s request, so a retry under the same change
        id gets it (a change recorded before request digests is taken to be)."""
        return self.request in ("", change.request_digest())

    def to_json(self) -> JSON:
        # Spelled out: `asdict` deep-copies the definition (a dict only ever encoded) and a
        # loop over the fields costs as much again; a replica encodes every change it applies.
        return {
            "schema": SCHEMA_VERSION,
            "change_id": self.change_id,
            "environment": self.environment,
            "flag": self.flag,
            "op": self.op.value,
            "seq": self.seq,
            "version": self.version,
            "definition": self.definition,
            "actor": self.actor,
            "updated_at": self.updated_at,
            "produced_at": self.produced_at,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "request": self.request,
        }

    @classmethod
    def from_json(cls, data: JSON) -> AppliedChange:
        """The change `to_json` wrote (raises KeyError, TypeError or ValueError otherwise)."""
        op = _OPS.get(data["op"])
        return cls(
            data["change_id"],
            data["environment"],
            data["flag"],
            ChangeOp(data["op"]) if op is None else op,  # ChangeOp(...) raises ValueError
            int(data["seq"]),
            int(data["version"]),
            data["definition"],
            data["actor"],
            float(data["updated_at"]),
            float(data["produced_at"]),
            int(data.get("source_partition", -1)),
            int(data.get("source_offset", -1)),
            str(data.get("request", "")),
        )


# By value, for decoding: calling the enum costs more than the rest of a change's decoding.
_OPS = {op.value: op for op in ChangeOp}

# -- a changelog record's routing header ----------------------------------------------------
#
# The decider writes each change's fields but its definition in a header of the record (its
# "meta"), so a replica applies a record without parsing its value: the table stores the value
# as read and the definition is parsed when first used (compiling, after ready). A record
# without the header (written before it, or by a foreign producer) is decoded whole, as before.
#
# Two forms are read. Format 2 (written since issue 11, item 3): binary, a fixed struct then the
# UTF-8 text fields (`META_FIXED`), so a replica reads the numbers with one `unpack_from`; its
# change holds the meta and decodes every field when one is first read (`_UndecodedChange`):
# a catch-up reads thousands of records and needs only their ordering fields before ready,
# which its loop unpacks itself. Format 1 (older records): a JSON array, decoded whole.

CHANGE_HEADER = "flagstream-change"
META_FORMAT = 1  # the JSON meta's first element: a replica reads only the forms it knows
META_BINARY = 2  # the binary meta's first byte
# format, op (index in `_OP_LIST`), deleted, seq, version, source partition, source offset,
# updated_at, produced_at, then the byte lengths of environment, flag, change id, actor, request
META_FIXED = struct.Struct("<BBBqqiqddIIIII")
META_TEXT_START = META_FIXED.size  # where the text fields start, in that order
_OP_LIST = tuple(ChangeOp)
OP_COUNT = len(_OP_LIST)  # a binary meta's op is an index below it
_OP_INDEX = {op: n for n, op in enumerate(_OP_LIST)}


def change_meta(change: AppliedChange) -> bytes:
    """The header value of `change` (format 2, binary): every field but the definition, and
    whether it is one."""
    texts = (
        change.environment.encode(),
        change.flag.encode(),
        change.change_id.encode(),
        change.actor.encode(),
        change.request.encode(),
    )
    fixed = META_FIXED.pack(
        META_BINARY,
        _OP_INDEX[change.op],
        change.deleted,
        change.seq,
        change.version,
        change.source_partition,
        change.source_offset,
        change.updated_at,
        change.produced_at,
        *map(len, texts),
    )
    return fixed + b"".join(texts)


def change_meta_json(change: AppliedChange) -> bytes:
    """The format 1 meta (a JSON array) older deciders wrote: still read, no longer written."""
    return orjson.dumps(
        [
            META_FORMAT,
            change.change_id,
            change.environment,
            change.flag,
            change.op.value,
            change.seq,
            change.version,
            change.actor,
            change.updated_at,
            change.produced_at,
            change.source_partition,
            change.source_offset,
            change.request,
            change.deleted,
        ]
    )


def changelog_headers(change: AppliedChange) -> list[tuple[str, bytes]]:
    """The headers the decider writes with `change` on `flags-changelog`."""
    return [(CHANGE_HEADER, change_meta(change))]


def meta_length(stored: bytes) -> int:
    """How many leading bytes of `stored` (a format 2 meta, then anything) are the meta:
    a table stores a meta, a NUL, then the record's value, and a binary meta may hold NULs."""
    fields = META_FIXED.unpack_from(stored)
    return META_TEXT_START + int(sum(fields[-5:]))


def routed_change(meta: bytes, raw: bytes) -> AppliedChange:
    """The change of a record from its meta header; its definition parsed from `raw` (the
    record's value) when first read. Raises ValueError for a meta it cannot read (the caller
    decodes the value instead)."""
    if meta[:1] == b"\x02":
        return _binary_change(meta, raw)
    fields = orjson.loads(meta)
    if (
        type(fields) is not list
        or list(map(type, fields)) != _META_TYPES
        or fields[0] != META_FORMAT
        or fields[4] not in _OPS
    ):
        raise ValueError("not a changelog meta this worker reads")
    change = _new(_LazyChange)
    _set_change_id(change, fields[1])
    _set_environment(change, fields[2])
    _set_flag(change, fields[3])
    _set_op(change, _OPS[fields[4]])
    _set_seq(change, fields[5])
    _set_version(change, fields[6])
    _set_definition(change, None)
    _set_actor(change, fields[7])
    _set_updated_at(change, fields[8])
    _set_produced_at(change, fields[9])
    _set_source_partition(change, fields[10])
    _set_source_offset(change, fields[11])
    _set_request(change, fields[12])
    _set_deleted(change, fields[13])
    _set_raw(change, None if fields[13] else raw)
    return change


def _binary_change(meta: bytes, raw: bytes) -> AppliedChange:
    """A format 2 meta's change, decoded when a field is first read; ValueError for a meta
    this worker cannot read (the caller decodes the value)."""
    read = read_binary_meta(meta, raw)
    if read is None:
        raise ValueError("not a changelog meta this worker reads")
    return read[0]


# What `read_binary_meta` reads of a record: its change (undecoded), then its environment,
# flag, change id, seq, version, source partition, source offset and produce time.
MetaFields = tuple[AppliedChange, str, str, str, int, int, int, int, float]


def read_binary_meta(meta: bytes, raw: bytes | None) -> MetaFields | None:
    """The undecoded change of a record (`raw`: its value) with a format 2 `meta`, and the
    fields a replica decides it by, from one `unpack_from`; None for anything else (a JSON
    meta, one cut short or of another length, an unknown op, environment, flag or change id
    not UTF-8, no value): the caller reads that record another way.

    Once per record of a catch-up (`tables.flags.ChangelogBatch.add_records`): the change id
    is checked with the environment and flag in one decode, and ASCII text (the usual) is
    cut from it rather than decoded again.
    """
    try:
        (
            form,
            op,
            deleted,
            seq,
            version,
            source,
            source_offset,
            _,
            produced,
            env_bytes,
            flag_bytes,
            id_bytes,
            actor_bytes,
            request_bytes,
        ) = META_FIXED.unpack_from(meta)  # a header without a value: TypeError
        flag_start = META_TEXT_START + env_bytes
        id_end = flag_start + flag_bytes + id_bytes
        if (
            form != META_BINARY
            or id_end + actor_bytes + request_bytes != len(meta)
            or op >= OP_COUNT
            or deleted > 1
            or raw is None
        ):
            return None
        text = meta[META_TEXT_START:id_end].decode()
        if text.isascii():
            environment, flag = text[:env_bytes], text[env_bytes : env_bytes + flag_bytes]
            change_id = text[env_bytes + flag_bytes :]
        else:
            environment = meta[META_TEXT_START:flag_start].decode()
            flag = meta[flag_start : flag_start + flag_bytes].decode()
            change_id = meta[flag_start + flag_bytes : id_end].decode()
    except (struct.error, ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    change = _new(_UndecodedChange)
    _set_meta(change, meta)
    _set_raw(change, None if deleted else raw)
    _set_deleted(change, deleted == 1)
    return change, environment, flag, change_id, seq, version, source, source_offset, produced


def change_from_meta(meta: bytes) -> AppliedChange:
    """The change a meta names, without its definition (a change-id entry: the definition is
    in the flag's history while it keeps that version): read as a deletion, as before."""
    change = routed_change(meta, b"")
    _set_deleted(change, True)
    _set_raw(change, None)
    return change


_META_TYPES = [int, str, str, str, str, int, int, str, float, float, int, int, str, bool]


class _LazyChange(AppliedChange):
    """An `AppliedChange` read from a record's meta header (its value not parsed), whose
    definition is parsed from the value when first read.

    Built field by field through the slots (a frozen dataclass's `__init__` costs several
    microseconds, a replica builds one per record). Equal to the `AppliedChange` with the same
    fields. A value that does not parse reads as an empty definition (from which no flag
    compiles: `app.evaluation.live_flags` then serves the flag's last valid version), logged,
    never an exception to whoever reads it.
    """

    __slots__ = ("_deleted", "_raw")

    _deleted: bool
    _raw: bytes | None

    @property
    def definition(self) -> JsonObject | None:
        raw = self._raw
        if raw is not None:
            _set_definition(self, _parsed_definition(self, raw))
            _set_raw(self, None)
        found: JsonObject | None = _get_definition(self)
        return found

    @definition.setter
    def definition(self, value: JsonObject | None) -> None:
        """For `dataclasses.replace` (the dataclass's `__init__`): a definition in hand."""
        _set_definition(self, value)
        _set_raw(self, None)
        _set_deleted(self, value is None)

    @property
    def deleted(self) -> bool:
        return self._deleted

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AppliedChange):
            return NotImplemented
        return _fields(self) == _fields(other)

    __hash__ = None  # type: ignore[assignment]  # as AppliedChange's: a definition is a dict


def _slot_setter(cls: type, name: str) -> Any:
    return cls.__dict__[name].__set__


_new = object.__new__
_set_change_id = _slot_setter(AppliedChange, "change_id")
_set_environment = _slot_setter(AppliedChange, "environment")
_set_flag = _slot_setter(AppliedChange, "flag")
_set_op = _slot_setter(AppliedChange, "op")
_set_seq = _slot_setter(AppliedChange, "seq")
_set_version = _slot_setter(AppliedChange, "version")
_set_definition = _slot_setter(AppliedChange, "definition")
_get_definition = AppliedChange.__dict__["definition"].__get__
_set_actor = _slot_setter(AppliedChange, "actor")
_set_updated_at = _slot_setter(AppliedChange, "updated_at")
_set_produced_at = _slot_setter(AppliedChange, "produced_at")
_set_source_partition = _slot_setter(AppliedChange, "source_partition")
_set_source_offset = _slot_setter(AppliedChange, "source_offset")
_set_request = _slot_setter(AppliedChange, "request")
_set_deleted = _slot_setter(_LazyChange, "_deleted")
_set_raw = _slot_setter(_LazyChange, "_raw")


def _decode_meta(change: _UndecodedChange) -> None:
    """Set every field of an undecoded change from its meta, then make it the decoded class
    (`_HeaderChange`: the same slots, so in place). Cannot fail: `read_binary_meta` builds one
    only from a meta whose numbers and environment, flag and change id it checked."""
    meta = change._meta
    (
        _,
        op,
        _,
        seq,
        version,
        partition,
        offset,
        updated,
        produced,
        env,
        flag,
        cid,
        actor,
        _,
    ) = META_FIXED.unpack_from(meta)
    env_end = META_TEXT_START + env
    flag_end = env_end + flag
    cid_end = flag_end + cid
    _set_environment(change, meta[META_TEXT_START:env_end].decode())
    _set_flag(change, meta[env_end:flag_end].decode())
    _set_change_id(change, meta[flag_end:cid_end].decode())
    _set_op(change, _OP_LIST[op])
    _set_seq(change, seq)
    _set_version(change, version)
    _set_updated_at(change, updated)
    _set_produced_at(change, produced)
    _set_source_partition(change, partition)
    _set_source_offset(change, offset)
    # Informational text: a foreign writer's bad UTF-8 reads as replacement characters.
    _set_actor(change, meta[cid_end : cid_end + actor].decode(errors="replace"))
    _set_request(change, meta[cid_end + actor :].decode(errors="replace"))
    if change._raw is None:  # deleted (or a change-id entry): no definition to parse
        _set_definition(change, None)
    object.__setattr__(change, "__class__", _HeaderChange)  # frozen: past its __setattr__


class _HeaderChange(_LazyChange):
    """A change read from a format 2 (binary) meta, decoded: every field but the definition
    in its slot (the definition parsed from the record's value when first read)."""

    __slots__ = ("_meta",)

    _meta: bytes


_set_meta = _slot_setter(_HeaderChange, "_meta")


def _decoded_field(name: str) -> Any:
    """A property over the field `name` of an undecoded change: the first read of any field
    decodes them all (`_decode_meta`), then the field is read from its slot. A property, not
    `__getattr__`: a class with one reads every attribute through Python."""

    def get(change: _UndecodedChange) -> Any:
        _decode_meta(change)
        return getattr(change, name)

    return property(get)


class _UndecodedChange(_HeaderChange):
    """A `_HeaderChange` whose fields are not decoded yet (`read_binary_meta` builds it): its
    meta, its record's value and whether it deletes only, three slot stores. Equal, field by
    field, to the change decoded from the same meta (it is that change once a field is read).

    A catch-up reads every record of the changelog before ready and decides each by the
    fields it unpacked itself (`tables.flags.ChangelogBatch.add_records`); nothing reads the
    change before ready. Its first field read (after ready: an API answer, a compile, a
    RocksDB write) decodes them all from the meta and makes it the plain decoded change in
    place (`_HeaderChange`: same slots, same identity), so later reads are slot reads.
    """

    __slots__ = ()


_NAMES = (
    "change_id",
    "environment",
    "flag",
    "op",
    "seq",
    "version",
    "definition",
    "actor",
    "updated_at",
    "produced_at",
    "source_partition",
    "source_offset",
    "request",
)


for _name in _NAMES:
    setattr(_UndecodedChange, _name, _decoded_field(_name))


def _fields(change: AppliedChange) -> tuple[Any, ...]:
    return tuple(getattr(change, name) for name in _NAMES)


def _parsed_definition(change: AppliedChange, raw: bytes) -> JsonObject:
    try:
        definition = orjson.loads(raw)["definition"]
        if isinstance(definition, dict):
            return definition
    except (ValueError, TypeError, KeyError):
        pass
    _log.error(
        "changelog record of %s/%s v%d has no readable definition: served as invalid",
        change.environment,
        change.flag,
        change.version,
    )
    return {}


class DeadLetterCode(StrEnum):
    """Why a record was refused; each code is a label of `flagstream_dead_letters_total`."""

    MALFORMED = "MALFORMED"
    INVALID_DEFINITION = "INVALID_DEFINITION"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"


@dataclass(frozen=True, slots=True)
class Rejection:
    """The decision not to apply a change, with every problem found (JSON paths)."""

    code: DeadLetterCode
    reason: str
    problems: tuple[tuple[str, str], ...] = ()
    current_version: int | None = None
    # The command's change id when it had a usable one, though the rest was malformed: its
    # writer is waiting for that id and must hear of the refusal, not wait out its timeout.
    change_id: str | None = None

    @classmethod
    def malformed(cls, reason: str, *problems: tuple[str, str]) -> Rejection:
        """A record that cannot be read as what its topic carries."""
        return cls(DeadLetterCode.MALFORMED, reason, problems)


# What a dead letter keeps of a refused record: the first bytes of its payload, the first
# problems, each path and message cut. Escaped as JSON text a character may take 6 bytes
# (`\\u0001`), so a dead letter stays under Kafka's 1 MiB record limit whatever was refused:
# a 1 MB record once made one of 1.8 MB, which the producer refused, and the flag-change agent
# crashed without writing it (a problem's path can be as long as a key of the record, too).
MAX_DEAD_LETTER_PAYLOAD = 98_304
MAX_DEAD_LETTER_PROBLEMS = 100
MAX_PROBLEM_CHARS = 200


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record on `dead-letters`: what was refused, why, and where it came from."""

    code: DeadLetterCode
    reason: str
    topic: str
    partition: int
    offset: int
    payload: bytes
    problems: tuple[tuple[str, str], ...] = ()
    change_id: str | None = None
    environment: str | None = None
    flag: str | None = None
    current_version: int | None = None
    at: float = 0.0

    def to_json(self) -> JSON:
        kept = self.payload[:MAX_DEAD_LETTER_PAYLOAD]
        try:
            self.payload.decode("utf-8")
            text: str | None = kept.decode("utf-8", "ignore")  # a character cut in two goes
        except UnicodeDecodeError:
            text = None
        return {
            "schema": SCHEMA_VERSION,
            "code": self.code.value,
            "reason": _clip(self.reason, 4 * MAX_PROBLEM_CHARS),
            "problems": [
                {"path": _clip(p, MAX_PROBLEM_CHARS), "message": _clip(m, MAX_PROBLEM_CHARS)}
                for p, m in self.problems[:MAX_DEAD_LETTER_PROBLEMS]
            ],
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "payload": text,
            "payload_base64": None if text is not None else base64.b64encode(kept).decode(),
            "payload_bytes": len(self.payload),  # more than were kept: the payload was cut
            "change_id": self.change_id,
            "environment": self.environment,
            "flag": self.flag,
            "current_version": self.current_version,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: JSON) -> DeadLetter:
        """A dead letter read back (its payload as kept: at most `MAX_DEAD_LETTER_PAYLOAD`)."""
        text, encoded = data.get("payload"), data.get("payload_base64")
        payload = text.encode() if isinstance(text, str) else base64.b64decode(encoded or "")
        current = data.get("current_version")
        return cls(
            code=DeadLetterCode(data["code"]),
            reason=str(data["reason"]),
            topic=str(data["topic"]),
            partition=int(data["partition"]),
            offset=int(data["offset"]),
            payload=payload,
            problems=tuple((str(p["path"]), str(p["message"])) for p in data.get("problems", ())),
            change_id=_optional_text(data.get("change_id")),
            environment=_optional_text(data.get("environment")),
            flag=_optional_text(data.get("flag")),
            current_version=None if current is None else int(current),
            at=float(data.get("at", 0.0)),
        )

    def rejection(self) -> Rejection:
        """The decision this dead letter records, as its writer hears it."""
        return Rejection(
            self.code, self.reason, self.problems, self.current_version, self.change_id
        )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _clip(text: str, limit: int) -> str:
    """`text`, or its start and end around "..." when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def _default(value: Any) -> Any:
    """Read-only mappings (engine metadata) are written as JSON objects."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON, the wire form of every record and response.

    orjson: on the evaluation paths encoding and parsing are a large share of a request,
    and orjson does both 3-5x faster than the standard library.
    """
    return orjson.dumps(data, default=_default)


def dumps_sorted(data: Any) -> bytes:
    """`dumps` with object keys sorted: one byte string per value, whatever the key order."""
    return orjson.dumps(data, default=_default, option=orjson.OPT_SORT_KEYS)


def loads(raw: bytes | str) -> Any:
    """Parse JSON; raises `orjson.JSONDecodeError` (a `ValueError`) on bad input."""
    return orjson.loads(raw)
