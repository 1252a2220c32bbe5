"""Every setting is documented once and read once."""

from __future__ import annotations

from dataclasses import fields

import pytest

from app.infra.settings import SETTINGS, Settings


def test_every_setting_has_a_field_and_every_field_a_setting() -> None:
    assert {s.env.removeprefix("FLAGSTREAM_").lower() for s in SETTINGS} == {
        f.name for f in fields(Settings)
    }


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAGSTREAM_BROKERS", "k1:9092, k2:9092")
    monkeypatch.setenv("FLAGSTREAM_SDK_KEYS", "a=prod,b=dev")
    monkeypatch.setenv("FLAGSTREAM_WEB_PORT", "7000")
    settings = Settings.from_env()
    assert settings.bootstrap == "k1:9092,k2:9092"
    assert settings.sdk_keys == {"a": "prod", "b": "dev"}
    assert settings.worker_id == "127.0.0.1:7000"


def test_the_readme_documents_every_setting() -> None:
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_docker_compose_passes_every_setting() -> None:
    from tests.conftest import REPO

    compose = (REPO / "docker-compose.yml").read_text()
    example = (REPO / ".env.example").read_text()
    fixed = {"FLAGSTREAM_WORKER_ID", "FLAGSTREAM_WEB_HOST", "FLAGSTREAM_DATA_DIR"}  # per container
    assert not [s.env for s in SETTINGS if f"{s.env}:" not in compose]
    assert not [s.env for s in SETTINGS if s.env not in fixed and f"{s.env}=" not in example]
