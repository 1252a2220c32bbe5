"""deploy/alerts.yml: valid for promtool, unit-tested, and reading only metrics that exist.

The rules read app/infra/metrics.py's metrics (and the collectors registered beside them), so
they are tested here: `promtool check rules` and `promtool test rules` (Debian package
`prometheus`), every alert with its severity, summary and runbook entry, a firing and a quiet
case for each, and every metric name in a rule exported by a live worker's /metrics.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Worker

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
RUNBOOK = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}
# Series Prometheus makes itself, not a worker.
PROMETHEUS_SERIES = {"up"}


def promtool() -> str:
    """The promtool binary; skipped without it locally, a failure under CI."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: apt-get install prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_prometheus_loads_the_rules(tmp_path: Path) -> None:
    """deploy/prometheus.yml names the rules where docker-compose.yml mounts them."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    compose = (REPO / "docker-compose.yml").read_text()
    (mounted,) = config["rule_files"]
    assert f"./deploy/alerts.yml:{mounted}:ro" in compose
    # promtool reads the rule files the config names: point it at the repository's copy.
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=DEPLOY,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {alert["alert"] for alert in alerts()}
    assert (names - fired, names - quiet) == (set(), set())


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_severity_a_summary_and_a_runbook_entry() -> None:
    entries = anchors(RUNBOOK.read_text())
    for alert in alerts():
        annotations = alert["annotations"]
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        assert annotations["summary"], alert["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md" and anchor in entries, alert["alert"]


def metric_names(expression: str) -> set[str]:
    """Series names an expression reads (not functions, labels, keywords or recorded rules)."""
    without_strings = re.sub(r'"[^"]*"', "", expression)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_matchers)
    names = set(re.findall(r"\b[a-z_][a-z0-9_:]*\b(?!\s*\()", without_ranges))
    grouping = set(re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_ranges))
    labels = {label.strip() for group in grouping for label in group.split(",")}
    keywords = {"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool"}
    return {n for n in names - labels - keywords if "_" in n or ":" in n or n in PROMETHEUS_SERIES}


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a scrape of this text can hold, from its `# TYPE` lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_metric_names_of_the_parser_exclude_functions_labels_and_keywords() -> None:
    expression = (
        'sum by (job, le) (rate(flagstream_a_bucket{le="1.0"}[5m])) / on(job) '
        "flagstream:recorded:ratio and up == 0"
    )
    assert metric_names(expression) == {"flagstream_a_bucket", "flagstream:recorded:ratio", "up"}


def test_every_metric_in_a_rule_is_exported_by_a_live_worker(worker: Worker) -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    exported = exported_names(worker.metrics()) | recorded | PROMETHEUS_SERIES
    read = {name for rule in rules() for name in metric_names(rule["expr"])}
    assert read, "no metric found in the rules"
    assert sorted(read - exported) == []
