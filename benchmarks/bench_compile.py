"""Flag compile cost: µs per flag, validation and compile apart, beside the old validator.

Issue 11 item 2: ``compile_flag`` spent ~97% of its time in JSON Schema validation
(Python ``jsonschema`` walking the anyOf/$ref of ``schemas/flag.json``). Validation now runs
one compiled ``jsonschema-rs`` ``is_valid`` for a valid definition. The reference in the same
run is the old path: a ``jsonschema.Draft202012Validator`` over the same schema, built here
(the app no longer uses it).

Corpora: (a) the example flags (``examples/flags.json``), (b) generated flags with nested
realistic rules (``benchmarks/flag_corpus.py``). For each: µs per flag for validation
(``flag_problems``, what the decide path runs), the old validator (``iter_errors``, what
``flag_problems`` ran before), compile without validation (the rest of ``compile_flag``) and
the total (``compile_flag``), best of interleaved rounds. Goal: total ≤ 250 µs per flag on
(b). Pure CPU, one process.

    python benchmarks/bench_compile.py [--quick] [--flags 2000] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jsonschema import Draft202012Validator  # noqa: E402  (dev dependency: the reference)
from referencing import Registry, Resource  # noqa: E402
from referencing.jsonschema import DRAFT202012  # noqa: E402

from app.engine import compile as compile_module  # noqa: E402
from app.engine import compile_flag  # noqa: E402
from app.engine.schema import _SCHEMA, _SCHEMA_ID, flag_problems  # noqa: E402
from benchmarks.flag_corpus import generated_flags  # noqa: E402

GOAL_US = 250.0

Flags = list[tuple[str, dict[str, Any]]]


def old_validator() -> Draft202012Validator:
    """The validator ``app.engine.schema`` used before: Python jsonschema, same schema."""
    registry = Registry().with_resource(
        _SCHEMA_ID, Resource.from_contents(_SCHEMA, default_specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": f"{_SCHEMA_ID}#/$defs/flag"}, registry=registry)


def example_flags() -> Flags:
    document = json.loads((REPO / "examples" / "flags.json").read_text())
    return list(document["flags"].items())


def cells(old: Draft202012Validator) -> dict[str, Callable[[Flags], None]]:
    """What is timed, each over a whole corpus."""

    def validate(flags: Flags) -> None:
        for _, definition in flags:
            flag_problems(definition)

    def validate_replica(flags: Flags) -> None:
        for _, definition in flags:
            flag_problems(definition, compiled_next=True)

    def validate_old(flags: Flags) -> None:
        for _, definition in flags:
            list(old.iter_errors(definition))

    def compile_only(flags: Flags) -> None:
        # compile_flag with validation stubbed out: what the rest of compile costs.
        real = compile_module.flag_problems
        compile_module.flag_problems = lambda definition, **_: []  # type: ignore[assignment]
        try:
            for key, definition in flags:
                compile_flag(key, definition)
        finally:
            compile_module.flag_problems = real

    def total(flags: Flags) -> None:
        for key, definition in flags:
            compile_flag(key, definition)

    return {
        "validation (jsonschema-rs)": validate,
        "validation before a compile (compiled_next)": validate_replica,
        "validation (old: jsonschema)": validate_old,
        "compile without validation": compile_only,
        "compile_flag total": total,
    }


def timed(run: Callable[[Flags], None], flags: Flags, repeat: int) -> float:
    """µs per flag of one timed run."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(repeat):
        run(flags)
    return (time.perf_counter() - started) / (repeat * len(flags)) * 1e6


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", type=int, default=2000, help="generated flags in (b)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="300 flags, 2 rounds")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.flags, args.rounds = 300, 2
    corpora = {
        "(a) examples/flags.json": example_flags(),
        f"(b) generated, {args.flags} flags": list(generated_flags(args.flags, args.seed).items()),
    }
    runs = cells(old_validator())
    # Examples are 5 flags: repeat them so a timed run is not a few µs of timer noise.
    repeats = {name: max(1, 500 // len(flags)) for name, flags in corpora.items()}
    for flags in corpora.values():  # warm-up: imports, caches, the validators' first use
        for run in runs.values():
            run(flags)
    best: dict[str, dict[str, float]] = {name: {} for name in corpora}
    for _ in range(args.rounds):  # interleaved: a burst of load hits one round of everyone
        for name, flags in corpora.items():
            for cell, run in runs.items():
                us = timed(run, flags, repeats[name])
                best[name][cell] = min(best[name].get(cell, float("inf")), us)
    _report(best, args)


def _report(best: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load:.2f}; best of {args.rounds} interleaved rounds"
    )
    cells_ = list(next(iter(best.values())))
    print("| corpus | " + " | ".join(f"{c} µs/flag" for c in cells_) + " | new/old validation |")
    print("|---|" + "---:|" * (len(cells_) + 1))
    for name, row in best.items():
        ratio = row["validation (jsonschema-rs)"] / row["validation (old: jsonschema)"]
        print(f"| {name} | " + " | ".join(f"{row[c]:,.1f}" for c in cells_) + f" | {ratio:.3f} |")
    generated = best[next(name for name in best if name.startswith("(b)"))]
    total = generated["compile_flag total"]
    old_total = generated["validation (old: jsonschema)"] + generated["compile without validation"]
    verdict = "met" if total <= GOAL_US else "NOT met"
    print(
        f"\n(b) compile_flag {total:,.1f} µs/flag (goal <= {GOAL_US:.0f}: {verdict}); "
        f"with the old validator it would be ~{old_total:,.0f} µs/flag "
        f"(new/old total {total / old_total:.3f})"
    )
    if args.json is not None:
        summary = {"load_average": load, "rounds": args.rounds, "us_per_flag": best}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
