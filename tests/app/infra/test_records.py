"""Record codecs: an applied change encodes to the same JSON as before, without copying."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from app.infra.records import (
    CHANGE_HEADER,
    SCHEMA_VERSION,
    AppliedChange,
    ChangeOp,
    change_from_meta,
    change_meta,
    changelog_headers,
    dumps,
    loads,
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
    meta = change_meta(change)
    for bad in (b"not json", b"{}", meta.replace(b",3,", b',"3",'), b"[2" + meta[2:]):
        with pytest.raises(ValueError):
            routed_change(bad, b"{}")
    assert routed_change(meta, b"\xff not json").definition == {}
    assert routed_change(meta, b'{"definition": 5}').definition == {}
