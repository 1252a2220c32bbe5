"""A changelog signature binds a record's topic, partition, key, value and meta header to a key
this worker holds; the settings read the keys (from files too) and refuse a short one."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.infra.changelog_signing import (
    MIN_KEY_BYTES,
    SIGNATURE_HEADER,
    ChangelogSigner,
    Verdict,
)
from app.infra.records import CHANGE_HEADER
from app.infra.settings import Settings, changelog_signer

KEY = "k" * MIN_KEY_BYTES
OLD_KEY = "o" * MIN_KEY_BYTES
TOPIC = "app.flags-changelog"
META = [(CHANGE_HEADER, b'[1,"meta"]')]


def signed(signer: ChangelogSigner, partition: int = 0) -> list[tuple[str, bytes]]:
    return signer.headers(TOPIC, partition, b"env", b'{"v":1}', META)


def test_a_signed_record_verifies_where_it_was_signed_and_nowhere_else() -> None:
    signer = ChangelogSigner.of(KEY)
    headers = signed(signer)
    assert headers[: len(META)] == META
    assert signer.verify(TOPIC, 0, b"env", b'{"v":1}', headers) is Verdict.SIGNED
    # Every signed part matters: another deployment's topic, another partition, key, value, meta.
    assert signer.verify("other.flags-changelog", 0, b"env", b'{"v":1}', headers) is Verdict.FORGED
    assert signer.verify(TOPIC, 1, b"env", b'{"v":1}', headers) is Verdict.FORGED
    assert signer.verify(TOPIC, 0, b"env2", b'{"v":1}', headers) is Verdict.FORGED
    assert signer.verify(TOPIC, 0, b"env", b'{"v":2}', headers) is Verdict.FORGED
    other_meta = [(CHANGE_HEADER, b'[1,"other"]'), headers[-1]]
    assert signer.verify(TOPIC, 0, b"env", b'{"v":1}', other_meta) is Verdict.FORGED
    assert signer.verify(TOPIC, 0, b"env", b'{"v":1}', META) is Verdict.UNSIGNED
    # A value moved into the key (length prefixes: no two splits sign the same bytes).
    assert signer.verify(TOPIC, 0, b"env{", b'"v":1}', headers) is Verdict.FORGED


def test_bad_signature_headers_are_forged_not_errors() -> None:
    signer = ChangelogSigner.of(KEY)
    for bad in (b"", b"\x01", b"\x02" + signed(signer)[-1][1][1:], signed(signer)[-1][1] + b"x"):
        assert signer.verify(TOPIC, 0, b"env", b'{"v":1}', [(SIGNATURE_HEADER, bad)]) is (
            Verdict.FORGED
        )


def test_old_keys_verify_but_never_sign_and_a_stranger_key_is_forged() -> None:
    old = ChangelogSigner.of(OLD_KEY)
    rotated = ChangelogSigner.of(KEY, [OLD_KEY])
    assert rotated.verify(TOPIC, 0, b"env", b'{"v":1}', signed(old)) is Verdict.SIGNED
    assert ChangelogSigner.of(KEY).verify(TOPIC, 0, b"env", b'{"v":1}', signed(old)) is (
        Verdict.FORGED
    )
    # It signs with the new key: a worker holding only that one verifies it.
    assert ChangelogSigner.of(KEY).verify(TOPIC, 0, b"env", b'{"v":1}', signed(rotated)) is (
        Verdict.SIGNED
    )


def test_what_each_signer_applies() -> None:
    strict = ChangelogSigner.of(KEY)
    migrating = ChangelogSigner.of(KEY, accept_unsigned=True)
    off = ChangelogSigner.of("")
    assert [strict.trusts(v) for v in Verdict] == [True, False, False]
    assert [migrating.trusts(v) for v in Verdict] == [True, True, False]
    assert [off.trusts(v) for v in Verdict] == [True, True, True]
    assert not off.enabled
    assert off.headers(TOPIC, 0, b"env", b"{}", META) == META


def test_keys_too_short_or_old_keys_alone_are_refused_without_naming_the_key() -> None:
    short = "s" * (MIN_KEY_BYTES - 1)
    for key, olds in ((short, ()), (KEY, (short,)), ("", (OLD_KEY,))):
        with pytest.raises(ValueError) as raised:
            ChangelogSigner.of(key, olds)
        assert short not in str(raised.value)
        assert OLD_KEY not in str(raised.value)
    assert KEY not in repr(ChangelogSigner.of(KEY, [OLD_KEY]))


def test_settings_read_the_keys_from_files_and_fail_at_start_on_a_short_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    monkeypatch.setenv("FLAGSTREAM_CHANGELOG_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("FLAGSTREAM_CHANGELOG_OLD_KEYS", f"{OLD_KEY},{'p' * MIN_KEY_BYTES}")
    settings = Settings.from_env()
    assert KEY not in repr(settings) and OLD_KEY not in repr(settings)
    signer = changelog_signer(settings)
    assert signer.enabled and not signer.accept_unsigned
    assert signer.verify(TOPIC, 0, b"env", b'{"v":1}', signed(ChangelogSigner.of(OLD_KEY))) is (
        Verdict.SIGNED
    )
    monkeypatch.setenv("FLAGSTREAM_CHANGELOG_OLD_KEYS", "short")
    with pytest.raises(ValueError, match="FLAGSTREAM_CHANGELOG_OLD_KEYS"):
        Settings.from_env()


@pytest.mark.parametrize("key", [KEY, "x" * 200])  # over a block: hashed first, as RFC 2104 says
def test_the_signature_is_hmac_sha256_of_the_record(key: str) -> None:
    import hashlib
    import hmac

    signature = signed(ChangelogSigner.of(key))[-1][1]
    message = b"".join(
        (
            b"flagstream-changelog-v1\x00",
            len(TOPIC).to_bytes(4, "big") + TOPIC.encode(),
            (0).to_bytes(4, "big"),  # the partition
            (3).to_bytes(4, "big") + (7).to_bytes(4, "big") + len(META[0][1]).to_bytes(4, "big"),
            b"env",
            b'{"v":1}',
            META[0][1],
        )
    )
    key_id = hashlib.sha256(b"flagstream-changelog-key-id\x00" + key.encode()).digest()[:4]
    assert signature == b"\x01" + key_id + hmac.digest(key.encode(), message, "sha256")
