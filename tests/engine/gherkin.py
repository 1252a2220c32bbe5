"""A small Gherkin reader for flagd-testbed's feature files: enough to run them as data.

Supports Feature/Background/Scenario/Scenario Outline, Examples tables (with their own
tags), data tables under steps, and tags at every level. An outline yields one
``Case`` per example row with ``<placeholders>`` substituted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_KEYWORDS = ("Given ", "When ", "Then ", "And ", "But ", "* ")


@dataclass(frozen=True)
class Step:
    """One step: its text (keyword dropped) and an optional data table."""

    text: str
    table: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Case:
    """One runnable scenario (an outline row or a plain scenario)."""

    feature: str
    name: str
    tags: frozenset[str]
    steps: tuple[Step, ...]
    line: int

    @property
    def id(self) -> str:
        return f"{self.feature}:{self.line}:{self.name}"


@dataclass
class _Scenario:
    name: str
    tags: set[str]
    line: int
    outline: bool
    steps: list[Step] = field(default_factory=list)
    examples: list[tuple[set[str], list[tuple[str, ...]], int]] = field(default_factory=list)


def _cells(line: str) -> tuple[str, ...]:
    """Cells of a ``| a | b |`` row, with Gherkin's ``\\|`` and ``\\\\`` escapes."""
    body = line.strip()[1:]
    if body.endswith("|"):
        body = body[:-1]
    cells = re.split(r"(?<!\\)\|", body)
    return tuple(cell.strip().replace("\\|", "|") for cell in cells)


def parse(path: Path, name: str | None = None) -> list[Case]:
    """All cases of a feature file, in file order; ``name`` labels them (default: file name)."""
    feature = name or path.name
    feature_tags: set[str] = set()
    background: list[Step] = []
    scenarios: list[_Scenario] = []
    pending_tags: set[str] = set()
    current_steps: list[Step] | None = None
    current_examples: list[tuple[str, ...]] | None = None
    current: _Scenario | None = None

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            pending_tags |= {tag for tag in line.split() if tag.startswith("@")}
            continue
        if line.startswith("Feature:"):
            feature_tags, pending_tags = pending_tags, set()
            continue
        if line.startswith("Background:"):
            current_steps, current_examples, current = background, None, None
            continue
        head = line.split(":", 1)[0]
        if head in ("Scenario", "Scenario Outline", "Scenario Template"):
            current = _Scenario(
                line.split(":", 1)[1].strip(),
                feature_tags | pending_tags,
                number,
                head != "Scenario",
            )
            scenarios.append(current)
            pending_tags, current_steps, current_examples = set(), current.steps, None
            continue
        if head in ("Examples", "Scenarios"):
            assert current is not None, f"{path}:{number}: Examples outside a scenario"
            current_examples = []
            current.examples.append((pending_tags, current_examples, number))
            pending_tags = set()
            continue
        if line.startswith("|"):
            if current_examples is not None:
                current_examples.append(_cells(line))
            elif current_steps:
                last = current_steps[-1]
                current_steps[-1] = Step(last.text, (*last.table, _cells(line)))
            continue
        keyword = next((k for k in _KEYWORDS if line.startswith(k)), None)
        if keyword is not None and current_steps is not None:
            current_steps.append(Step(line[len(keyword) :]))

    cases: list[Case] = []
    for scenario in scenarios:
        steps = (*background, *scenario.steps)
        if not scenario.outline:
            cases.append(
                Case(feature, scenario.name, frozenset(scenario.tags), steps, scenario.line)
            )
            continue
        for tags, rows, line_number in scenario.examples:
            if not rows:
                continue
            header, *body = rows
            for offset, row in enumerate(body, start=1):
                values = dict(zip(header, row, strict=False))
                cases.append(
                    Case(
                        feature,
                        f"{scenario.name} [{', '.join(row)}]",
                        frozenset(scenario.tags | tags),
                        tuple(_substitute(step, values) for step in steps),
                        line_number + offset,
                    )
                )
    return cases


def _substitute(step: Step, values: dict[str, str]) -> Step:
    def fill(text: str) -> str:
        return re.sub(r"<([^<>]+)>", lambda m: values.get(m.group(1), m.group(0)), text)

    return Step(fill(step.text), tuple(tuple(fill(cell) for cell in row) for row in step.table))
