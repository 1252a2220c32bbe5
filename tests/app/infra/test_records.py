"""Record codecs: an applied change encodes to the same JSON as before, without copying."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict, replace

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
    """A replica builds the change of each record through plain slot stores (a builder
    class, cheaper than the frozen dataclass's), then hands out a frozen change: no field,
    nor its class, can be set afterwards, and a deleted flag's definition reads None."""
    change = AppliedChange("c1", "dev", "f", ChangeOp.PUT, 3, 2, DEFINITION, "me", 1.0, 2.0, 0, 5)
    routed = routed_change(change_meta(change), dumps(change.to_json()))
    assert type(routed).__name__ == "_HeaderChange" and routed == change
    for name, value in [("seq", 4), ("environment", "prod"), ("actor", "you")]:
        with pytest.raises(FrozenInstanceError):
            setattr(routed, name, value)
    with pytest.raises(FrozenInstanceError):
        del routed.flag
    assert routed.seq == 3 and routed.environment == "dev"
    gone = replace(change, definition=None)
    deleted = routed_change(change_meta(gone), dumps(gone.to_json()))
    assert deleted.deleted and deleted.definition is None and deleted == gone
