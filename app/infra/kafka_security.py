"""How every Kafka client of a worker and the CLI authenticates and encrypts: one place.

Managed Kafka (Confluent Cloud, MSK, Aiven, Strimzi) wants TLS, SASL or both. The nine
`FLAGSTREAM_KAFKA_*` settings are checked once, at start (`KafkaSecurity.from_settings`
raises `KafkaSecurityError`, a ValueError, naming the setting but never a secret), and turned
into the keyword arguments every aiokafka client takes (`kafka_client_options(settings)`, spread
with `**` into each `AIOKafkaProducer`/`AIOKafkaConsumer`/`AIOKafkaAdminClient`) and into
Faust's `broker_credentials` (`faust_credentials(settings)`). A test guards that no client is
built without them.
"""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context
from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

__all__ = [
    "MECHANISMS",
    "PROTOCOLS",
    "KafkaSecurity",
    "KafkaSecurityError",
    "SecuritySettings",
    "faust_credentials",
    "kafka_client_options",
]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


class KafkaSecurityError(ValueError):
    """A Kafka security setting is missing, unknown or unusable; the message names it."""


class SecuritySettings(Protocol):
    """The part of `app.infra.settings.Settings` read here (settings imports this module)."""

    @property
    def kafka_security_protocol(self) -> str: ...
    @property
    def kafka_sasl_mechanism(self) -> str: ...
    @property
    def kafka_sasl_username(self) -> str: ...
    @property
    def kafka_sasl_password(self) -> str: ...
    @property
    def kafka_ssl_cafile(self) -> str: ...
    @property
    def kafka_ssl_certfile(self) -> str: ...
    @property
    def kafka_ssl_keyfile(self) -> str: ...
    @property
    def kafka_ssl_key_password(self) -> str: ...
    @property
    def kafka_ssl_check_hostname(self) -> bool: ...


class StaticToken(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka ships no types
    """OAUTHBEARER with a token handed in (FLAGSTREAM_KAFKA_SASL_PASSWORD[_FILE]).

    aiokafka asks for a token at each connection; a rotated token needs a worker restart.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    async def token(self) -> str:
        return self._token


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The checked security settings, with the TLS context built once from its files."""

    protocol: str = "PLAINTEXT"
    mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> KafkaSecurity:
        """Check the settings together (raises KafkaSecurityError) and build the TLS context."""
        return _security(
            settings.kafka_security_protocol.strip().upper(),
            settings.kafka_sasl_mechanism.strip().upper(),
            settings.kafka_sasl_username,
            settings.kafka_sasl_password,
            _TlsFiles(
                settings.kafka_ssl_cafile,
                settings.kafka_ssl_certfile,
                settings.kafka_ssl_keyfile,
                settings.kafka_ssl_key_password,
                settings.kafka_ssl_check_hostname,
            ),
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.mechanism == "OAUTHBEARER":
            options["sasl_mechanism"] = self.mechanism
            options["sasl_oauth_token_provider"] = StaticToken(self.password)
        elif self.uses_sasl:
            options["sasl_mechanism"] = self.mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = self.password
        return options

    def faust_credentials(self) -> CredentialsT | None:
        """Faust's `broker_credentials` for the same connection (None: PLAINTEXT)."""
        if self.mechanism == "OAUTHBEARER":
            return OAuthCredentials(
                oauth_cb=StaticToken(self.password), ssl_context=self.ssl_context
            )
        if self.uses_sasl:
            return SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context,
                mechanism=self.mechanism,
            )
        if self.ssl_context is not None:
            return SSLCredentials(self.ssl_context)
        return None


def kafka_client_options(settings: SecuritySettings) -> dict[str, Any]:
    """The security keyword arguments every aiokafka client of flagstream is built with."""
    return KafkaSecurity.from_settings(settings).client_options()


def faust_credentials(settings: SecuritySettings) -> CredentialsT | None:
    """The Faust app's `broker_credentials` from the same settings."""
    return KafkaSecurity.from_settings(settings).faust_credentials()


@dataclass(frozen=True, slots=True)
class _TlsFiles:
    cafile: str
    certfile: str
    keyfile: str
    key_password: str = field(repr=False)
    check_hostname: bool

    @property
    def any_set(self) -> bool:
        return bool(self.cafile or self.certfile or self.keyfile or self.key_password)


# Cached: a worker builds about a dozen clients from the same settings, and each would
# otherwise read the CA and key files again. The arguments are hashable strings.
@functools.lru_cache(maxsize=8)
def _security(
    protocol: str, mechanism: str, username: str, password: str, tls: _TlsFiles
) -> KafkaSecurity:
    if protocol not in PROTOCOLS:
        raise KafkaSecurityError(
            f"FLAGSTREAM_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)},"
            f" not {protocol!r}"
        )
    if protocol.startswith("SASL_"):
        _check_sasl(protocol, mechanism, username, password)
    elif mechanism or username or password:
        raise KafkaSecurityError(
            "FLAGSTREAM_KAFKA_SASL_* is set but FLAGSTREAM_KAFKA_SECURITY_PROTOCOL is"
            f" {protocol}: use SASL_SSL (or SASL_PLAINTEXT) to send the credentials"
        )
    uses_tls = protocol.endswith("SSL")
    if tls.any_set and not uses_tls:
        raise KafkaSecurityError(
            "FLAGSTREAM_KAFKA_SSL_* is set but FLAGSTREAM_KAFKA_SECURITY_PROTOCOL is"
            f" {protocol}: use SSL or SASL_SSL for TLS"
        )
    context = _tls_context(tls) if uses_tls else None
    return KafkaSecurity(protocol, mechanism, username, password, context)


def _check_sasl(protocol: str, mechanism: str, username: str, password: str) -> None:
    if mechanism not in MECHANISMS:
        raise KafkaSecurityError(
            f"FLAGSTREAM_KAFKA_SECURITY_PROTOCOL={protocol} needs FLAGSTREAM_KAFKA_SASL_MECHANISM,"
            f" one of {', '.join(MECHANISMS)} (set: {mechanism!r})"
        )
    if mechanism == "OAUTHBEARER":
        if not password:
            raise KafkaSecurityError(
                "SASL mechanism OAUTHBEARER needs the token in FLAGSTREAM_KAFKA_SASL_PASSWORD"
                " (or FLAGSTREAM_KAFKA_SASL_PASSWORD_FILE)"
            )
        return
    missing = [
        name
        for name, value in (
            ("FLAGSTREAM_KAFKA_SASL_USERNAME", username),
            ("FLAGSTREAM_KAFKA_SASL_PASSWORD", password),
        )
        if not value
    ]
    if missing:
        raise KafkaSecurityError(f"SASL mechanism {mechanism} needs {' and '.join(missing)}")


def _tls_context(tls: _TlsFiles) -> ssl.SSLContext:
    """A client TLS context: the CA (or the system's), the client certificate if given."""
    if tls.keyfile and not tls.certfile:
        raise KafkaSecurityError(
            "FLAGSTREAM_KAFKA_SSL_KEYFILE is set without FLAGSTREAM_KAFKA_SSL_CERTFILE"
        )
    if tls.key_password and not tls.certfile:
        raise KafkaSecurityError(
            "FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD is set without FLAGSTREAM_KAFKA_SSL_CERTFILE"
        )
    for name, path in (
        ("FLAGSTREAM_KAFKA_SSL_CAFILE", tls.cafile),
        ("FLAGSTREAM_KAFKA_SSL_CERTFILE", tls.certfile),
        ("FLAGSTREAM_KAFKA_SSL_KEYFILE", tls.keyfile),
    ):
        if path and not os.access(path, os.R_OK):
            raise KafkaSecurityError(f"{name}: cannot read {path}")
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=tls.cafile or None)
    except ssl.SSLError as exc:
        raise KafkaSecurityError(
            f"FLAGSTREAM_KAFKA_SSL_CAFILE: {tls.cafile} holds no usable CA certificate ({exc})"
        ) from None
    if tls.certfile:
        try:
            context.load_cert_chain(
                tls.certfile, tls.keyfile or None, password=tls.key_password or None
            )
        except ssl.SSLError:
            # The exception text is OpenSSL's; it never holds the password, but say it plainly.
            raise KafkaSecurityError(
                f"FLAGSTREAM_KAFKA_SSL_CERTFILE/KEYFILE: cannot load the client certificate"
                f" {tls.certfile} and its key (not PEM, not a pair, or a wrong"
                " FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD)"
            ) from None
    context.check_hostname = tls.check_hostname
    return context
