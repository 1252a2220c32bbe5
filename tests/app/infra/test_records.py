"""Record codecs: an applied change encodes to the same JSON as before, without copying."""

from __future__ import annotations

from dataclasses import asdict

from app.infra.records import SCHEMA_VERSION, AppliedChange, ChangeOp, dumps, loads

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
