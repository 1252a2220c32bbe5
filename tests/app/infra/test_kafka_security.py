"""Kafka security settings: the options each protocol and mechanism gives every client, the
checks at start, secrets from files and never in a repr, and a guard that no client in app/,
agents/ or tables/ is built without them. The TLS path end to end: test_kafka_security_tls.py.
"""

from __future__ import annotations

import ast
import asyncio
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials

from app.infra.kafka_security import KafkaSecurity, KafkaSecurityError, kafka_client_options
from app.infra.settings import SECRETS, Settings
from tests.conftest import REPO, run_flagstream

PASSWORD = "s3cr3t-sasl-password"
KEY_PASSWORD = "s3cr3t-key-password"


@dataclass(frozen=True)
class TlsFiles:
    """A CA made for one test, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD
    other_ca: Path  # a CA that signed none of them


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _self_signed_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> Path:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext_file,
    )  # fmt: skip
    return cert


def make_tls_files(directory: Path) -> TlsFiles:
    """Certificates made with the openssl CLI, valid two days, for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _self_signed_ca(directory, "test-ca")
    other_ca, _ = _self_signed_ca(directory, "other-ca")
    server = _signed(
        directory, "broker", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    client = _signed(directory, "worker", ca, "extendedKeyUsage=clientAuth")
    encrypted = directory / "worker.enc.key"
    _openssl(
        "pkey", "-in", directory / "worker.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
        "-out", encrypted,
    )  # fmt: skip
    return TlsFiles(ca[0], server, directory / "broker.key", client, encrypted, other_ca)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in [n for n in os.environ if n.startswith("FLAGSTREAM_KAFKA_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(f"FLAGSTREAM_KAFKA_{name}", value)
    return Settings.from_env()


# -- the options each protocol and mechanism gives -------------------------------------------


def test_plaintext_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with(monkeypatch)
    assert kafka_client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity.from_settings(settings).faust_credentials() is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_sends_the_user_and_password(
    monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SASL_MECHANISM=mechanism.lower(),  # case does not matter
        SASL_USERNAME="svc-flagstream",
        SASL_PASSWORD=PASSWORD,
    )
    assert kafka_client_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc-flagstream",
        "sasl_plain_password": PASSWORD,
    }
    credentials = KafkaSecurity.from_settings(settings).faust_credentials()
    assert isinstance(credentials, SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == (
        "SASL_PLAINTEXT",
        mechanism,
    )
    assert (credentials.username, credentials.password) == ("svc-flagstream", PASSWORD)


def test_sasl_ssl_checks_the_broker_against_the_ca(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SASL_SSL",
        SASL_MECHANISM="SCRAM-SHA-512",
        SASL_USERNAME="svc-flagstream",
        SASL_PASSWORD=PASSWORD,
        SSL_CAFILE=str(tls.ca),
    )
    options = kafka_client_options(settings)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    credentials = KafkaSecurity.from_settings(settings).faust_credentials()
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is context


def test_ssl_with_a_client_certificate_and_an_encrypted_key(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SSL",
        SSL_CAFILE=str(tls.ca),
        SSL_CERTFILE=str(tls.client_cert),
        SSL_KEYFILE=str(tls.client_key),
        SSL_KEY_PASSWORD=KEY_PASSWORD,
        SSL_CHECK_HOSTNAME="false",
    )
    options = kafka_client_options(settings)
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    assert not options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still checks the chain
    credentials = KafkaSecurity.from_settings(settings).faust_credentials()
    assert isinstance(credentials, SSLCredentials) and credentials.context is options["ssl_context"]


def test_oauthbearer_hands_aiokafka_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SASL_MECHANISM="OAUTHBEARER",
        SASL_PASSWORD=PASSWORD,
    )
    options = kafka_client_options(settings)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    assert asyncio.run(options["sasl_oauth_token_provider"].token()) == PASSWORD
    assert PASSWORD not in repr(options)
    credentials = KafkaSecurity.from_settings(settings).faust_credentials()
    assert isinstance(credentials, OAuthCredentials)


def test_each_aiokafka_client_takes_the_options(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    """The options are keyword arguments every aiokafka client accepts and keeps."""
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SASL_SSL",
        SASL_MECHANISM="SCRAM-SHA-256",
        SASL_USERNAME="svc-flagstream",
        SASL_PASSWORD=PASSWORD,
        SSL_CAFILE=str(tls.ca),
    )
    options = kafka_client_options(settings)

    async def clients() -> list[Any]:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **options)
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **options)
        await producer.stop()  # never started: nothing to close but the warning
        await consumer.stop()
        await admin.close()
        return [producer.client, consumer._client, admin._client]

    for client in asyncio.run(clients()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert client._sasl_plain_username == "svc-flagstream"
        assert client._ssl_context is options["ssl_context"]


# -- checked at start, never echoing a secret ------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECURITY_PROTOCOL": "TLS"}, "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"SECURITY_PROTOCOL": "SASL_SSL"}, "needs FLAGSTREAM_KAFKA_SASL_MECHANISM"),
        (
            {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "GSSAPI"},
            "needs FLAGSTREAM_KAFKA_SASL_MECHANISM, one of PLAIN",
        ),
        (
            {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "PLAIN", "SASL_PASSWORD": PASSWORD},
            "PLAIN needs FLAGSTREAM_KAFKA_SASL_USERNAME",
        ),
        (
            {"SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SASL_MECHANISM": "SCRAM-SHA-256"},
            "needs FLAGSTREAM_KAFKA_SASL_USERNAME and FLAGSTREAM_KAFKA_SASL_PASSWORD",
        ),
        (
            {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "OAUTHBEARER"},
            "OAUTHBEARER needs the token",
        ),
        ({"SASL_USERNAME": "u", "SASL_PASSWORD": PASSWORD}, "SECURITY_PROTOCOL is PLAINTEXT"),
        ({"SSL_CAFILE": "/etc/ssl/ca.pem"}, "use SSL or SASL_SSL for TLS"),
        ({"SECURITY_PROTOCOL": "SSL", "SSL_CAFILE": "/nonexistent/ca.pem"}, "cannot read"),
        ({"SECURITY_PROTOCOL": "SSL", "SSL_KEYFILE": "/k.pem"}, "KEYFILE is set without"),
        (
            {"SECURITY_PROTOCOL": "SSL", "SSL_KEY_PASSWORD": KEY_PASSWORD},
            "KEY_PASSWORD is set without",
        ),
    ],
)
def test_a_bad_combination_fails_at_start_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    with pytest.raises(KafkaSecurityError, match=message) as failure:
        settings_with(monkeypatch, **env)
    assert PASSWORD not in str(failure.value) and KEY_PASSWORD not in str(failure.value)


def test_a_wrong_key_password_fails_at_start_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    with pytest.raises(KafkaSecurityError, match="wrong FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD") as e:
        settings_with(
            monkeypatch,
            SECURITY_PROTOCOL="SSL",
            SSL_CERTFILE=str(tls.client_cert),
            SSL_KEYFILE=str(tls.client_key),
            SSL_KEY_PASSWORD="not-" + KEY_PASSWORD,
        )
    assert KEY_PASSWORD not in str(e.value)


def test_a_ca_file_that_is_no_certificate_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(KafkaSecurityError, match="holds no usable CA certificate"):
        settings_with(monkeypatch, SECURITY_PROTOCOL="SSL", SSL_CAFILE=str(junk))


def test_the_cli_says_what_is_wrong_and_exits() -> None:
    result = run_flagstream(
        "worker",
        FLAGSTREAM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        FLAGSTREAM_KAFKA_SASL_MECHANISM="PLAIN",
        FLAGSTREAM_KAFKA_SASL_PASSWORD=PASSWORD,
    )
    assert result.returncode == 2, result.stderr
    assert "PLAIN needs FLAGSTREAM_KAFKA_SASL_USERNAME" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


# -- secrets from files, never in a repr -----------------------------------------------------


def test_secrets_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")  # as `echo` or a Kubernetes secret
    (tmp_path / "token").write_text("admin-from-file")
    monkeypatch.delenv("FLAGSTREAM_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("FLAGSTREAM_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SASL_PLAINTEXT",
        SASL_MECHANISM="PLAIN",
        SASL_USERNAME="svc",
        SASL_PASSWORD_FILE=str(tmp_path / "password"),
    )
    assert settings.kafka_sasl_password == PASSWORD
    assert settings.admin_token == "admin-from-file"


def test_a_secret_set_twice_or_unreadable_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    monkeypatch.setenv("FLAGSTREAM_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("FLAGSTREAM_KAFKA_SASL_PASSWORD_FILE", str(secret))
    with pytest.raises(
        ValueError, match=r"set FLAGSTREAM_KAFKA_SASL_PASSWORD or .*_FILE, not both"
    ):
        Settings.from_env()
    monkeypatch.delenv("FLAGSTREAM_KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("FLAGSTREAM_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"_PASSWORD_FILE: cannot read .*missing"):
        Settings.from_env()


def test_no_secret_in_a_repr(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    monkeypatch.setenv("FLAGSTREAM_ADMIN_TOKEN", "admin-secret-token")
    monkeypatch.setenv("FLAGSTREAM_READ_TOKENS", "read-secret-token")
    monkeypatch.setenv("FLAGSTREAM_SDK_KEYS", "sdk-secret-key=production")
    settings = settings_with(
        monkeypatch,
        SECURITY_PROTOCOL="SASL_SSL",
        SASL_MECHANISM="PLAIN",
        SASL_USERNAME="svc",
        SASL_PASSWORD=PASSWORD,
        SSL_CERTFILE=str(tls.client_cert),
        SSL_KEYFILE=str(tls.client_key),
        SSL_KEY_PASSWORD=KEY_PASSWORD,
    )
    security = KafkaSecurity.from_settings(settings)
    shown = " ".join(
        [repr(settings), str(settings), repr(security), repr(security.faust_credentials())]
    )
    for secret in (PASSWORD, KEY_PASSWORD, "admin-secret-token", "read-secret", "sdk-secret"):
        assert secret not in shown
    assert "svc" in shown and "SASL_SSL" in shown  # what is not secret still shows


def test_every_secret_setting_reads_a_file() -> None:
    assert set(SECRETS) >= {"FLAGSTREAM_KAFKA_SASL_PASSWORD", "FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD"}


# -- no client without the options -----------------------------------------------------------

CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _spreads_security(call: ast.Call, function: ast.AST) -> bool:
    """The call has `**kafka_client_options(...)`, or `**name` where `name` is bound in the
    same function from something built by it (a dict holding it, the client's `security`)."""
    for keyword in call.keywords:
        if keyword.arg is not None:
            continue
        value = keyword.value
        if isinstance(value, ast.Call) and _name(value.func) == "kafka_client_options":
            return True
        if isinstance(value, ast.Name):
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Assign)
                    and any(_name(t) == value.id for t in node.targets)
                    and (
                        "kafka_client_options(" in ast.unparse(node.value)
                        or "security" in ast.unparse(node.value)
                    )
                ):
                    return True
    return False


def _client_calls() -> list[tuple[str, ast.Call, ast.AST]]:
    found = []
    for path in sorted(
        p for top in ("app", "agents", "tables") for p in (REPO / top).rglob("*.py")
    ):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and _name(node.func) in CLIENTS | {"App"}:
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    found.append((where, node, function))
    return found


def test_every_kafka_client_in_the_code_gets_the_security_options() -> None:
    calls = _client_calls()
    clients = [(where, call, fn) for where, call, fn in calls if _name(call.func) in CLIENTS]
    assert len(clients) >= 13, "the guard lost track of the clients"
    assert not [where for where, call, fn in clients if not _spreads_security(call, fn)]
    apps = [(where, call) for where, call, _ in calls if _name(call.func) == "App"]
    assert apps, "the guard lost track of the Faust app"
    assert not [
        where
        for where, call in apps
        if "broker_credentials" not in {keyword.arg for keyword in call.keywords}
    ]


def test_the_evaluation_client_from_settings_gets_them(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    from app.evaluation.client import EvaluationClient

    settings = settings_with(monkeypatch, SECURITY_PROTOCOL="SSL", SSL_CAFILE=str(tls.ca))

    async def built() -> list[Any]:
        client = EvaluationClient.from_settings(settings)
        await client.stop()
        return [client._producer.client, client._consumer._client]

    for client in asyncio.run(built()):
        assert client._security_protocol == "SSL"
        assert client._ssl_context is not None
