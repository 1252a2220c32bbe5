"""Engine throughput beside every Python peer, one process, same flags and contexts.

Scenarios (issue 3):
  (a) static   a boolean flag with no targeting
  (b) split    one ``ends_with`` rule on email, else a 50/50 ``fractional`` split
  (c) rules    ten rules (string, set, number, boolean and semver tests), else default

Contenders: our engine, called as an SDK user calls a flag (by key, typed: a dict lookup
of the compiled flag and ``evaluate_typed(..., bool, default=False)``, the same shape of call
every peer gets, which the goal is measured on), the same with the clock read per call (an
SDK on our engine must pass ``now``), and as the worker's hot paths call it (``evaluate`` on
a compiled flag already in hand, a fixed ``now``); ``openfeature-flagd-core`` (flagd's
Python evaluator) called directly and through ``openfeature-sdk`` +
``openfeature-provider-flagd`` in-process (file resolver); GrowthBook; LaunchDarkly
(TestData source); Unleash (bootstrapped, offline); and a hand-written Python function of
the same logic as the floor. Each contender gets the same 1,024 contexts, converted once
into its own native context type outside the timed loop, and is called the way its users
call it. Evaluations/second on one core; each cell is the median of ``--rounds`` (3) timed
runs, the rounds interleaving every contender so a burst of load elsewhere hits one round of
everyone rather than every run of one contender.

    python benchmarks/bench_engine.py [--seconds 0.5] [--rounds 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import mmh3

from app.engine import CompiledFlag, compile_flag, evaluate, evaluate_typed

CONTEXTS = 1024
NOW = int(time.time())
EMAIL_SUFFIX = "@example.com"

# --- the flags, in flagd's dialect ------------------------------------------------------

STATIC = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
SPLIT = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {
        "if": [
            {"ends_with": [{"var": "email"}, EMAIL_SUFFIX]},
            "on",
            {"fractional": [{"var": "targetingKey"}, ["on", 50], ["off", 50]]},
        ]
    },
}
#: (attribute, flagd rule) for the ten rules; every peer below encodes the same tests.
TEN = [
    ("email", {"ends_with": [{"var": "email"}, "@corp.example"]}),
    ("country", {"in": [{"var": "country"}, ["de", "fr", "it"]]}),
    ("age", {">=": [{"var": "age"}, 65]}),
    ("tier", {"==": [{"var": "tier"}, "enterprise"]}),
    ("email", {"starts_with": [{"var": "email"}, "admin@"]}),
    ("plan", {"in": [{"var": "plan"}, ["gold", "platinum"]]}),
    ("age", {"<": [{"var": "age"}, 13]}),
    ("beta", {"==": [{"var": "beta"}, True]}),
    ("region", {"in": [{"var": "region"}, ["apac", "latam"]]}),
    ("version", {"sem_ver": [{"var": "version"}, ">", "5.0.0"]}),
]
RULES = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [*[part for _, rule in TEN for part in (rule, "on")], "off"]},
}
FLAGS = {"static": STATIC, "split": SPLIT, "rules": RULES}


def make_contexts(seed: int = 3) -> list[dict[str, Any]]:
    """Mostly ordinary users (no rule matches, so (c) runs all ten), some that match."""
    rng = random.Random(seed)
    contexts = []
    for i in range(CONTEXTS):
        domain = rng.choice(["example.com", "mail.test", "corp.example", "example.org"])
        contexts.append(
            {
                "targetingKey": f"user-{i}-{rng.randrange(10**6)}",
                "email": f"{rng.choice(['ann', 'bo', 'admin', 'cy'])}{i}@{domain}",
                "country": rng.choice(["us", "us", "br", "jp", "de"]),
                "age": rng.randint(14, 70),
                "tier": rng.choice(["free", "pro", "pro", "enterprise"] + ["free"] * 6),
                "plan": rng.choice(["basic", "basic", "gold"]),
                "beta": rng.random() < 0.05,
                "region": rng.choice(["na", "emea", "apac"]),
                "version": rng.choice(["4.2.0", "4.9.1", "5.1.0", "3.0.0"]),
            }
        )
    return contexts


# --- contenders: each returns {scenario: run(contexts)} ---------------------------------

Runner = Callable[[list[Any]], None]
#: (timed loop over a batch, the batch in native form, one decision for one native context)
Entry = tuple[Runner, list[Any], Callable[[Any], Any]]


def ours(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    """The worker's hot-path call: `evaluate` on the compiled flag in hand, `now` given."""
    compiled = {name: compile_flag(name, flag) for name, flag in FLAGS.items()}
    runners: dict[str, Entry] = {}
    for name, flag in compiled.items():
        assert isinstance(flag, CompiledFlag), flag

        def run(batch: list[Any], flag: CompiledFlag = flag) -> None:
            for context in batch:
                evaluate(flag, context, NOW)

        runners[name] = (run, contexts, lambda c, flag=flag: evaluate(flag, c, NOW).value)
    return runners


def by_key(read_clock: bool) -> Callable[[list[dict[str, Any]]], dict[str, Entry]]:
    """The call a peer's user makes, made of ours: flag by key, a typed answer with a default.

    Per evaluation: the dict lookup of the compiled flag by key and
    `evaluate_typed(..., bool, flag_key=key, default=False)`, which checks the variant's type
    as `resolve_boolean_value` / `is_on` / `variation` do. With `read_clock`, also
    `int(time.time())` for `now`, as an SDK on our engine must read it (the engine takes it as
    an argument); among the peers, flagd-core reads the clock per targeted evaluation
    (`$flagd.timestamp`), GrowthBook does not.
    """

    def build(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
        flags: dict[str, CompiledFlag] = {}
        for name, definition in FLAGS.items():
            flag = compile_flag(name, definition)
            assert isinstance(flag, CompiledFlag), flag
            flags[name] = flag
        clock = time.time if read_clock else (lambda: NOW)

        def boolean(key: str, context: dict[str, Any]) -> Any:
            now = int(clock())
            return evaluate_typed(flags.get(key), context, now, bool, flag_key=key, default=False)

        runners: dict[str, Entry] = {}
        for name in FLAGS:
            if read_clock:

                def run(batch: list[Any], name: str = name) -> None:
                    for context in batch:
                        evaluate_typed(
                            flags.get(name),
                            context,
                            int(time.time()),
                            bool,
                            flag_key=name,
                            default=False,
                        )

            else:

                def run(batch: list[Any], name: str = name) -> None:
                    for context in batch:
                        evaluate_typed(
                            flags.get(name), context, NOW, bool, flag_key=name, default=False
                        )

            runners[name] = (run, contexts, lambda c, name=name: boolean(name, c).value)
        return runners

    return build


def _cbor_text(text: str) -> bytes:
    encoded = text.encode()
    size = len(encoded)
    head = bytes((0x60 | size,)) if size < 24 else bytes((0x78, size))
    return head + encoded


def static_flag(context: dict[str, Any]) -> bool:
    """Hand-written (a): what the static flag means."""
    return True


def split_flag(context: dict[str, Any]) -> bool:
    """Hand-written (b): the email rule, then flagd's v3 50/50 bucketing, inlined."""
    email = context.get("email")
    if isinstance(email, str) and email.endswith(EMAIL_SUFFIX):
        return True
    key = context.get("targetingKey")
    if not isinstance(key, str) or not key:
        return False
    return bool((mmh3.hash(_cbor_text(key), 0, False) * 100) >> 32 < 50)


def rules_flag(context: dict[str, Any]) -> bool:
    """Hand-written (c): the ten rules as one boolean expression."""
    email, age, version = context.get("email", ""), context.get("age", 0), context.get("version")
    return (
        email.endswith("@corp.example")
        or context.get("country") in ("de", "fr", "it")
        or age >= 65
        or context.get("tier") == "enterprise"
        or email.startswith("admin@")
        or context.get("plan") in ("gold", "platinum")
        or age < 13
        or context.get("beta") is True
        or context.get("region") in ("apac", "latam")
        or (isinstance(version, str) and tuple(map(int, version.split("."))) > (5, 0, 0))
    )


def handwritten(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    """The same three flags as plain Python functions: the floor any engine pays on top of."""
    runners: dict[str, Entry] = {}
    for name, function in (("static", static_flag), ("split", split_flag), ("rules", rules_flag)):

        def run(batch: list[Any], function: Callable[[dict[str, Any]], bool] = function) -> None:
            for context in batch:
                function(context)

        runners[name] = (run, contexts, function)
    return runners


def flagd_core(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    from openfeature.contrib.tools.flagd.core import FlagdCore
    from openfeature.evaluation_context import EvaluationContext

    logging.getLogger("openfeature.contrib").disabled = True
    core = FlagdCore()
    core.set_flags({"flags": FLAGS})
    native = [_of_context(EvaluationContext, context) for context in contexts]
    runners: dict[str, Entry] = {}
    for name in FLAGS:

        def run(batch: list[Any], name: str = name) -> None:
            for context in batch:
                core.resolve_boolean_value(name, False, context)

        runners[name] = (
            run,
            native,
            lambda c, name=name: core.resolve_boolean_value(name, False, c).value,
        )
    return runners


def _of_context(kind: Any, context: dict[str, Any]) -> Any:
    attributes = {k: v for k, v in context.items() if k != "targetingKey"}
    return kind(targeting_key=context["targetingKey"], attributes=attributes)


def flagd_provider(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext

    logging.getLogger("openfeature").disabled = True
    path = Path(tempfile.mkdtemp()) / "flags.json"
    path.write_text(json.dumps({"flags": FLAGS}))
    api.set_provider(
        FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    )
    client = api.get_client()
    deadline = time.monotonic() + 5
    while client.get_boolean_details("static", False).reason == "ERROR":
        if time.monotonic() > deadline:
            raise RuntimeError("flagd provider did not load the flags")
        time.sleep(0.05)
    native = [_of_context(EvaluationContext, context) for context in contexts]
    runners: dict[str, Entry] = {}
    for name in FLAGS:

        def run(batch: list[Any], name: str = name) -> None:
            for context in batch:
                client.get_boolean_value(name, False, context)

        runners[name] = (
            run,
            native,
            lambda c, name=name: client.get_boolean_value(name, False, c),
        )
    return runners


def growthbook(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    from growthbook import GrowthBook

    ten = [
        {"email": {"$regex": r"@corp\.example$"}},
        {"country": {"$in": ["de", "fr", "it"]}},
        {"age": {"$gte": 65}},
        {"tier": "enterprise"},
        {"email": {"$regex": r"^admin@"}},
        {"plan": {"$in": ["gold", "platinum"]}},
        {"age": {"$lt": 13}},
        {"beta": True},
        {"region": {"$in": ["apac", "latam"]}},
        {"version": {"$vgt": "5.0.0"}},
    ]
    features = {
        "static": {"defaultValue": True},
        "split": {
            "defaultValue": False,
            "rules": [
                {"condition": {"email": {"$regex": r"@example\.com$"}}, "force": True},
                {"force": True, "coverage": 0.5, "hashAttribute": "id"},
            ],
        },
        "rules": {
            "defaultValue": False,
            "rules": [{"condition": condition, "force": True} for condition in ten],
        },
    }
    gb = GrowthBook(features=features)
    native = [{**c, "id": c["targetingKey"]} for c in contexts]
    runners: dict[str, Entry] = {}
    for name in FLAGS:

        def run(batch: list[Any], name: str = name) -> None:
            for attributes in batch:
                gb.set_attributes(attributes)
                gb.is_on(name)

        runners[name] = (run, native, lambda c, name=name: gb.set_attributes(c) or gb.is_on(name))
    return runners


def launchdarkly(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    import ldclient
    from ldclient import Context
    from ldclient.config import Config
    from ldclient.integrations.test_data import TestData

    logging.getLogger("ldclient").disabled = True

    def clause(attribute: str, op: str, *values: Any) -> dict[str, Any]:
        return {"attribute": attribute, "op": op, "values": list(values), "negate": False}

    def flag(key: str, rules: list[list[dict[str, Any]]], fallthrough: Any) -> dict[str, Any]:
        return {
            "key": key,
            "version": 1,
            "on": True,
            "variations": [True, False],
            "offVariation": 1,
            "fallthrough": fallthrough,
            "targets": [],
            "contextTargets": [],
            "prerequisites": [],
            "salt": key,
            "rules": [
                {"id": f"r{i}", "clauses": clauses, "variation": 0, "trackEvents": False}
                for i, clauses in enumerate(rules)
            ],
        }

    ten = [
        [clause("email", "endsWith", "@corp.example")],
        [clause("country", "in", "de", "fr", "it")],
        [clause("age", "greaterThanOrEqual", 65)],
        [clause("tier", "in", "enterprise")],
        [clause("email", "startsWith", "admin@")],
        [clause("plan", "in", "gold", "platinum")],
        [clause("age", "lessThan", 13)],
        [clause("beta", "in", True)],
        [clause("region", "in", "apac", "latam")],
        [clause("version", "semVerGreaterThan", "5.0.0")],
    ]
    fifty = {
        "rollout": {
            "variations": [{"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]
        }
    }
    data = TestData.data_source()
    # TestData's builder cannot express endsWith or rollouts; its store takes raw flags.
    data._current_flags.update(
        {
            "static": flag("static", [], {"variation": 0}),
            "split": flag("split", [[clause("email", "endsWith", EMAIL_SUFFIX)]], fifty),
            "rules": flag("rules", ten, {"variation": 1}),
        }
    )
    client = ldclient.LDClient(Config("sdk-key", update_processor_class=data, send_events=False))
    native = []
    for c in contexts:
        builder = Context.builder(c["targetingKey"])
        for key, value in c.items():
            if key != "targetingKey":
                builder.set(key, value)
        native.append(builder.build())
    assert client.variation("static", native[0], False) is True
    runners: dict[str, Entry] = {}
    for name in FLAGS:

        def run(batch: list[Any], name: str = name) -> None:
            for context in batch:
                client.variation(name, context, False)

        runners[name] = (run, native, lambda c, name=name: client.variation(name, c, False))
    return runners


def unleash_features() -> dict[str, Any]:
    """The three benchmark flags as Unleash features: static, a split, ten rules."""

    def constraint(name: str, operator: str, *values: str) -> dict[str, Any]:
        if len(values) == 1 and operator not in ("IN", "NOT_IN"):
            return {"contextName": name, "operator": operator, "value": values[0]}
        return {"contextName": name, "operator": operator, "values": list(values)}

    def strategy(*constraints: dict[str, Any], name: str = "default", **params: Any) -> Any:
        return {"name": name, "parameters": params, "constraints": list(constraints)}

    ten = [
        constraint("email", "STR_ENDS_WITH", "@corp.example"),
        constraint("country", "IN", "de", "fr", "it"),
        constraint("age", "NUM_GTE", "65"),
        constraint("tier", "IN", "enterprise"),
        constraint("email", "STR_STARTS_WITH", "admin@"),
        constraint("plan", "IN", "gold", "platinum"),
        constraint("age", "NUM_LT", "13"),
        constraint("beta", "IN", "true"),
        constraint("region", "IN", "apac", "latam"),
        constraint("version", "SEMVER_GT", "5.0.0"),
    ]
    for item in ten:
        if "value" in item:
            item["values"] = [item["value"]] if item["operator"].startswith("STR_") else []
    features = {
        "version": 1,
        "features": [
            {"name": "static", "enabled": True, "strategies": [strategy()]},
            {
                "name": "split",
                "enabled": True,
                "strategies": [
                    strategy(constraint("email", "STR_ENDS_WITH", EMAIL_SUFFIX)),
                    strategy(
                        name="flexibleRollout",
                        rollout="50",
                        stickiness="userId",
                        groupId="split",
                    ),
                ],
            },
            {"name": "rules", "enabled": True, "strategies": [strategy(c) for c in ten]},
        ],
    }
    for feature in features["features"]:
        for item in feature["strategies"]:
            for c in item["constraints"]:
                if c["operator"].startswith("STR_"):
                    c.pop("value", None)
    return features


def unleash(contexts: list[dict[str, Any]]) -> dict[str, Entry]:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    logging.getLogger("UnleashClient").disabled = True

    features = unleash_features()
    cache = FileCache("flagstream-bench", directory=tempfile.mkdtemp())
    cache.bootstrap_from_dict(features)
    client = UnleashClient(
        url="http://127.0.0.1:9",
        app_name="bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    native = [
        {
            "userId": c["targetingKey"],
            "properties": {
                k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in c.items()
            },
        }
        for c in contexts
    ]
    assert client.is_enabled("static", native[0])
    runners: dict[str, Entry] = {}
    for name in FLAGS:

        def run(batch: list[Any], name: str = name) -> None:
            for context in batch:
                client.is_enabled(name, context)

        runners[name] = (run, native, lambda c, name=name: client.is_enabled(name, c))
    return runners


OURS = "flagstream engine, typed by key"
OURS_CLOCK = "flagstream engine, typed by key, clock read"
OURS_COMPILED = "flagstream engine, compiled flag"
CONTENDERS: dict[str, Callable[[list[dict[str, Any]]], dict[str, Entry]]] = {
    OURS: by_key(read_clock=False),
    OURS_CLOCK: by_key(read_clock=True),
    OURS_COMPILED: ours,
    "hand-written Python": handwritten,
    "flagd-core (direct)": flagd_core,
    "flagd provider (in-process)": flagd_provider,
    "growthbook": growthbook,
    "launchdarkly (test data)": launchdarkly,
    "unleash (offline)": unleash,
}
SAME_BUCKETING = {
    OURS,
    OURS_CLOCK,
    OURS_COMPILED,
    "hand-written Python",
    "flagd-core (direct)",
    "flagd provider (in-process)",
}
OURS_ALL = (OURS, OURS_CLOCK, OURS_COMPILED)
PEERS = [name for name in CONTENDERS if name not in (*OURS_ALL, "hand-written Python")]


def calibrate(run: Runner, batch: list[Any], seconds: float) -> int:
    """How many passes over the batch take about ``seconds``."""
    loops = 1
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            run(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds / 4:
            return max(1, int(loops * seconds / elapsed))
        loops *= 2


def timed(run: Runner, batch: list[Any], loops: int) -> float:
    """Evaluations per second of one timed run."""
    gc.collect()
    started = time.perf_counter()
    for _ in range(loops):
        run(batch)
    return loops * len(batch) / (time.perf_counter() - started)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per cell (median)")
    parser.add_argument("--quick", action="store_true", help="a short run: 0.1 s per timed run")
    parser.add_argument("--only", nargs="*", default=None, help="contender names")
    parser.add_argument("--json", type=Path, help="also write the figures and ratios here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.seconds = 0.1
    warnings.simplefilter("ignore")
    built = build_contenders(make_contexts(), args.only)
    # Rounds interleave the contenders, so a burst of load elsewhere on the machine hits
    # one round of everyone rather than every run of one contender; the median counts.
    loops = {
        (name, scenario): calibrate(run, batch, args.seconds)
        for name, runners in built.items()
        for scenario, (run, batch, _) in runners.items()
    }
    rounds: dict[str, dict[str, list[float]]] = {
        name: {scenario: [] for scenario in runners} for name, runners in built.items()
    }
    for _ in range(args.rounds):
        for name, runners in built.items():
            for scenario, (run, batch, _) in runners.items():
                rounds[name][scenario].append(timed(run, batch, loops[name, scenario]))
    results = {
        name: {scenario: statistics.median(rates) for scenario, rates in row.items()}
        for name, row in rounds.items()
    }
    ratios = _report(results, args.rounds)
    clock_ns = clock_read_ns()
    print(f"\nint(time.time()), paid per call by the 'clock read' row: {clock_ns:.0f} ns")
    if args.json:
        summary = {
            "seconds": args.seconds,
            "rounds": rounds,
            "medians": results,
            "clock_read_ns": clock_ns,
            **ratios,
        }
        args.json.write_text(json.dumps(summary, indent=2))


def clock_read_ns(reads: int = 200_000) -> float:
    """What `int(time.time())` costs here: an SDK on our pure engine pays it per call (the
    engine takes `now`); flagd-core pays it on targeted flags, GrowthBook not at all."""
    clock = time.time
    started = time.perf_counter()
    for _ in range(reads):
        int(clock())
    return (time.perf_counter() - started) / reads * 1e9


def build_contenders(contexts: list[dict[str, Any]], only: list[str] | None) -> dict[str, Any]:
    """Every contender that starts, each checked to answer as the engine does."""
    built: dict[str, dict[str, Entry]] = {}
    reference: dict[str, list[Any]] = {}
    for name, build in CONTENDERS.items():
        if only and name not in only:
            continue
        try:
            runners = build(contexts)
        except Exception as error:  # a peer that cannot start is reported, not fatal
            print(f"{name}: skipped ({type(error).__name__}: {error})")
            continue
        # Same logic, same answers: (a) and (c) decide identically in every contender; (b)
        # too where the bucketing is flagd's (other SDKs hash differently by design).
        agreement = []
        for scenario in ("static", "split", "rules"):
            if scenario == "split" and name not in SAME_BUCKETING:
                continue
            _, batch, decide = runners[scenario]
            answers = [bool(decide(context)) for context in batch]
            reference.setdefault(scenario, answers)
            same = sum(a == b for a, b in zip(answers, reference[scenario], strict=True))
            agreement.append(f"{scenario} {same}/{len(batch)}")
        print(f"{name}: same answers as the engine: {', '.join(agreement)}")
        built[name] = runners
    return built


def _report(results: dict[str, dict[str, float]], rounds: int) -> dict[str, dict[str, float]]:
    """Print the table and the ratios (markdown); return the ratios by row, then scenario."""
    print()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.2f}; median of {rounds} interleaved rounds"
    )
    scenarios = ["static", "split", "rules"]
    print(f"| contender | {' | '.join(f'({chr(97 + i)}) {s}' for i, s in enumerate(scenarios))} |")
    print("|---|" + "---:|" * len(scenarios))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row.get(s, 0):,.0f}" for s in scenarios) + " |")
    peers = [results[p] for p in PEERS if p in results]
    against: dict[str, dict[str, float]] = {}
    if peers:
        against["fastest peer"] = {s: max(p[s] for p in peers) for s in scenarios}
    if "hand-written Python" in results:
        against["hand-written"] = results["hand-written Python"]
    rows: dict[str, dict[str, float]] = {}
    labels = {OURS: "typed, by key", OURS_CLOCK: "typed, by key, clock", OURS_COMPILED: "compiled"}
    for ours, label in labels.items():
        for reference, goal in (("fastest peer", ">= 10x"), ("hand-written", ">= 0.5")):
            if ours in results and reference in against:
                row = {s: results[ours][s] / against[reference][s] for s in scenarios}
                rows[f"engine ({label}) / {reference} (goal {goal})"] = row
    if OURS in results and OURS_COMPILED in results:
        rows["typed by key / compiled flag (the SDK shape's cost)"] = {
            s: results[OURS][s] / results[OURS_COMPILED][s] for s in scenarios
        }
    if OURS in results and OURS_CLOCK in results:
        rows["typed by key with / without the clock read"] = {
            s: results[OURS_CLOCK][s] / results[OURS][s] for s in scenarios
        }
    if rows:
        print()
        print("| ratio | " + " | ".join(scenarios) + " |")
        print("|---|" + "---:|" * len(scenarios))
        for label, row in rows.items():
            cells = (f"{row[s]:.1f}x" if "peer" in label else f"{row[s]:.2f}" for s in scenarios)
            print(f"| {label} | " + " | ".join(cells) + " |")
    return {"ratios": rows}


if __name__ == "__main__":
    main()
