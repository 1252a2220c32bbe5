"""Record codecs: an applied change encodes to the same JSON as before, without copying."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict, fields, replace

import pytest

from app.infra.records import (
    CHANGE_HEADER,
    SCHEMA_VERSION,
    AppliedChange,
    ChangeOp,
    change_from_meta,
    change_meta,
    change_meta_json,
    changelog_headers,
    dumps,
    loads,
    meta_length,
    read_binary_meta,
    routed_change,
)

DEFINITION = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [{"in": [{"var": "tier"}, ["pro", "premium"]]}, "on", "off"]},
}


def test_an_applied_change_encodes_its_definition_without_copying_it() -> None:
    """A replica encodes every change it applies twice: a deep copy of the definition was
    ~70% of the apply (`dataclasses.asdict`)."""
    change = AppliedChange("c1", "dev", "f", ChangeOp.PUT, 3, 2, DEFINITION, "me", 1.5, 2.5, 0, 7)
    encoded = change.to_json()
    assert encoded["definition"] is DEFINITION, "the definition is not copied"
    assert dumps(encoded) == dumps({"schema": SCHEMA_VERSION, **asdict(change), "op": "put"})
    assert AppliedChange.from_json(loads(dumps(encoded))) == change


def test_a_change_read_from_its_meta_header_is_the_change_its_definition_parsed_late() -> None:
    change = AppliedChange(
        "c1", "dev", "f", ChangeOp.PUT, 3, 2, DEFINITION, "me", 1.5, 2.5, 0, 7, "digest"
    )
    (name, meta), *_ = changelog_headers(change)
    routed = routed_change(meta, dumps(change.to_json()))
    assert name == CHANGE_HEADER and not routed.deleted
    assert routed == change and change == routed, "equal both ways, the definition parsed"
    assert routed.definition == DEFINITION and routed.to_json() == change.to_json()
    assert replace(routed, seq=4) == replace(change, seq=4)

    gone = replace(change, op=ChangeOp.DELETE, definition=None)
    assert routed_change(change_meta(gone), b"").deleted
    without = change_from_meta(meta)
    assert without.definition is None and without.seq == 3, "a change-id entry: no definition"


def test_a_meta_a_worker_cannot_read_is_refused_and_an_unreadable_value_is_no_flag() -> None:
    change = AppliedChange("c1", "dev", "f", ChangeOp.PUT, 3, 2, DEFINITION, "me", 1.5, 2.5)
    old = change_meta_json(change)
    meta = change_meta(change)
    fixed = len(meta) - len(b"devfc1me")
    for bad in (
        b"not json",
        b"{}",
        old.replace(b",3,", b',"3",'),  # a JSON meta with a wrong type
        b"[2" + old[2:],  # a JSON meta of an unknown format
        meta[:20],  # binary, cut short
        meta + b"x",  # binary, a byte more than its lengths say
        meta[:1] + b"\x07" + meta[2:],  # binary, an unknown op
        meta[:fixed] + b"\xff\xfe\xfd" + meta[fixed + 3 :],  # binary, an environment not UTF-8
    ):
        with pytest.raises(ValueError):
            routed_change(bad, b"{}")
    assert routed_change(meta, b"\xff not json").definition == {}
    assert routed_change(meta, b'{"definition": 5}').definition == {}


def test_the_decider_writes_a_binary_meta_whose_other_fields_are_decoded_when_first_read() -> None:
    """A catch-up reads tens of thousands of records before ready and needs only their place
    in the order: the binary meta (issue 11 item 3) gives those; the op, actor, update time
    and request are decoded from it when one is first read, and the change is then the
    one written. A JSON meta (format 1, older records) is still read."""
    change = AppliedChange(
        "c\u00e9", "dev", "f/\u00fc", ChangeOp.STATE, 9, 4, DEFINITION, "m\0e", 1.5, 2.5, 3, 7, "d"
    )
    (_, meta), *_ = changelog_headers(change)
    assert meta[:1] == b"\x02" and meta == change_meta(change)
    routed = routed_change(meta, dumps(change.to_json()))
    with pytest.raises(AttributeError):
        AppliedChange.__dict__["actor"].__get__(routed)  # its slot: not decoded yet
    assert (routed.environment, routed.flag, routed.change_id) == ("dev", "f/\u00fc", "c\u00e9")
    assert (routed.seq, routed.source_partition, routed.source_offset) == (9, 3, 7)
    assert routed.produced_at == 2.5 and not routed.deleted
    assert routed == change and routed.to_json() == change.to_json(), "the rest, when read"
    assert routed_change(change_meta_json(change), dumps(change.to_json())) == change
    stored = meta + b"\0" + b"the value"
    assert stored[meta_length(stored) + 1 :] == b"the value", "a table finds where it ends"
    without = change_from_meta(meta)
    assert without.definition is None and without.version == 4 and without.request == "d"


def test_a_change_read_from_a_binary_meta_is_as_frozen_as_the_one_written() -> None:
    """A replica builds the change of each record through three slot stores (its meta, its
    value, whether it deletes), then hands out a frozen change: no field, nor its class, can
    be set, before or after its fields are decoded, and a deleted flag's definition reads
    None."""
    change = AppliedChange("c1", "dev", "f", ChangeOp.PUT, 3, 2, DEFINITION, "me", 1.0, 2.0, 0, 5)
    routed = routed_change(change_meta(change), dumps(change.to_json()))
    for name, value in [("seq", 4), ("environment", "prod"), ("actor", "you")]:
        with pytest.raises(FrozenInstanceError):
            setattr(routed, name, value)  # undecoded yet
    assert routed == change and type(routed).__name__ == "_HeaderChange", "decoded in place"
    for name, value in [("seq", 4), ("environment", "prod"), ("actor", "you")]:
        with pytest.raises(FrozenInstanceError):
            setattr(routed, name, value)
    with pytest.raises(FrozenInstanceError):
        del routed.flag
    assert routed.seq == 3 and routed.environment == "dev"
    gone = replace(change, definition=None)
    deleted = routed_change(change_meta(gone), dumps(gone.to_json()))
    assert deleted.deleted and deleted.definition is None and deleted == gone


LAZY_CASES = [
    AppliedChange(
        "c\u00e9-1",
        "dev",
        "f/\u00fc",
        ChangeOp.STATE,
        9,
        4,
        DEFINITION,
        "m\0e",
        1.5,
        2.5,
        3,
        7,
        "d",
    ),
    AppliedChange("c2", "prod", "flag", ChangeOp.PUT, 1, 1, DEFINITION, "me", 3.0, 4.0),
    AppliedChange("c3", "prod", "flag", ChangeOp.DELETE, 2, 2, None, "you", 5.0, 6.0, 0, 9, "x"),
]


def undecoded(applied: AppliedChange) -> AppliedChange:
    """The change a catch-up's loop makes of `applied`'s record (meta header and value)."""
    read = read_binary_meta(change_meta(applied), dumps(applied.to_json()))
    assert read is not None
    fields = (
        applied.environment,
        applied.flag,
        applied.change_id,
        applied.seq,
        applied.version,
        applied.source_partition,
        applied.source_offset,
        applied.produced_at,
    )
    assert read[1:] == fields, "what the loop decides by, from the unpack"
    assert type(read[0]).__name__ == "_UndecodedChange"
    return read[0]


@pytest.mark.parametrize("applied", LAZY_CASES, ids=lambda c: str(c.op))
def test_an_undecoded_change_reads_field_by_field_as_the_change_written(
    applied: AppliedChange,
) -> None:
    """A catch-up's change holds its meta and value only: whichever field is read first
    decodes them all, in place (same object, the plain decoded class, later reads slot
    reads), and every field then equals the change written. Whether it deletes is read
    without decoding (a table's live flags are listed by it)."""
    names = [f.name for f in fields(AppliedChange)]
    for first in names:
        lazy = undecoded(applied)
        for name in names:
            with pytest.raises(AttributeError):
                AppliedChange.__dict__[name].__get__(lazy)  # its slot: nothing decoded
        assert lazy.deleted == applied.deleted
        assert type(lazy).__name__ == "_UndecodedChange", "`deleted` decodes nothing"
        before = id(lazy)
        assert getattr(lazy, first) == getattr(applied, first), f"{first}, read first"
        assert type(lazy).__name__ == "_HeaderChange" and id(lazy) == before
        for name in names:
            assert getattr(lazy, name) == getattr(applied, name), f"{name}, after {first}"
        assert lazy == applied and lazy.to_json() == applied.to_json()
    assert undecoded(applied) == applied and applied == undecoded(applied), "equal both ways"
    assert repr(undecoded(applied)).partition("(")[2] == repr(applied).partition("(")[2]
    assert replace(undecoded(applied), seq=99) == replace(applied, seq=99)


def test_a_meta_the_catch_up_cannot_read_is_left_to_decoding_the_value() -> None:
    """`read_binary_meta` (the catch-up's own read) refuses every meta `routed_change`
    refuses, a change id that is not UTF-8 and a record without a value too: the replica
    then decodes the record's value (tests/tables/test_replication_apply.py)."""
    change = AppliedChange("c1", "dev", "f", ChangeOp.PUT, 3, 2, DEFINITION, "me", 1.5, 2.5)
    meta = change_meta(change)
    ids_at = len(meta) - len(b"c1me")
    for bad in (
        change_meta_json(change),  # format 1: read by `routed_change`
        meta[:20],  # cut short
        meta + b"x",  # a byte more than its lengths say
        meta[:-1],  # a byte less
        meta[:1] + b"\x07" + meta[2:],  # an unknown op
        meta[:2] + b"\x02" + meta[3:],  # deleted neither 0 nor 1
        b"\x01" + meta[1:],  # another format
        meta[:ids_at] + b"\xff\xfe" + meta[ids_at + 2 :],  # a change id not UTF-8
    ):
        assert read_binary_meta(bad, b"{}") is None, bad
    assert read_binary_meta(meta, None) is None, "a record without a value"
    with pytest.raises(ValueError):
        routed_change(meta[:ids_at] + b"\xff\xfe" + meta[ids_at + 2 :], b"{}")
