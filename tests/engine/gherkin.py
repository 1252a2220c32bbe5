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
    reader = _Reader(str(path))
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        reader.line(number, raw.strip())
    return _expand(name or path.name, reader.background, reader.scenarios)


@dataclass
class _Reader:
    """The state of reading a feature file line by line."""

    path: str
    feature_tags: set[str] = field(default_factory=set)
    background: list[Step] = field(default_factory=list)
    scenarios: list[_Scenario] = field(default_factory=list)
    pending_tags: set[str] = field(default_factory=set)
    current_steps: list[Step] | None = None
    current_examples: list[tuple[str, ...]] | None = None
    current: _Scenario | None = None

    def line(self, number: int, line: str) -> None:
        if not line or line.startswith("#"):
            return
        if line.startswith("@"):
            self.pending_tags |= {tag for tag in line.split() if tag.startswith("@")}
        elif line.startswith("Feature:"):
            self.feature_tags, self.pending_tags = self.pending_tags, set()
        elif line.startswith("Background:"):
            self.current_steps, self.current_examples, self.current = self.background, None, None
        elif line.split(":", 1)[0] in ("Scenario", "Scenario Outline", "Scenario Template"):
            self.scenario(number, line)
        elif line.split(":", 1)[0] in ("Examples", "Scenarios"):
            self.examples(number)
        elif line.startswith("|"):
            self.row(line)
        else:
            keyword = next((k for k in _KEYWORDS if line.startswith(k)), None)
            if keyword is not None and self.current_steps is not None:
                self.current_steps.append(Step(line[len(keyword) :]))

    def scenario(self, number: int, line: str) -> None:
        head, title = line.split(":", 1)
        tags = self.feature_tags | self.pending_tags
        self.current = _Scenario(title.strip(), tags, number, head != "Scenario")
        self.scenarios.append(self.current)
        self.pending_tags, self.current_steps, self.current_examples = (
            set(),
            self.current.steps,
            None,
        )

    def examples(self, number: int) -> None:
        assert self.current is not None, f"{self.path}:{number}: Examples outside a scenario"
        self.current_examples = []
        self.current.examples.append((self.pending_tags, self.current_examples, number))
        self.pending_tags = set()

    def row(self, line: str) -> None:
        if self.current_examples is not None:
            self.current_examples.append(_cells(line))
        elif self.current_steps:
            last = self.current_steps[-1]
            self.current_steps[-1] = Step(last.text, (*last.table, _cells(line)))


def _expand(feature: str, background: list[Step], scenarios: list[_Scenario]) -> list[Case]:
    """One case per plain scenario and per example row of an outline."""
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
