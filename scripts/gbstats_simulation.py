"""Write gbstats' answers for the simulated experiment of tests/experiments (issue 10 item 8).

gbstats is an oracle kept out of the project's environment (see scripts/gbstats_vectors.py),
and the simulation needs the project's (the engine assigns the variants), so the offline
sufficient statistics go from one environment to the other through a pipe:

    python3.11 -m venv /tmp/gbvenv && /tmp/gbvenv/bin/pip install gbstats==0.8.0
    .venv/bin/python -m tests.experiments.offline \
        | /tmp/gbvenv/bin/python scripts/gbstats_simulation.py \
        > tests/experiments/simulation_gbstats.json

The output repeats its input, so the test knows when the simulation changed and this file must
be made again; the same seed gives the same file.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import warnings

from gbstats.utils import check_srm
from gbstats_vectors import case  # scripts/ is the script's directory: on sys.path


def main() -> None:
    statistics = json.load(sys.stdin)
    alpha, tuning = statistics["alpha"], statistics["sequential_tuning"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comparisons = {
            metric: case(
                f"simulation seed {statistics['seed']}: {metric}",
                spec["kind"],
                spec["arms"],
                alpha=alpha,
                tuning=tuning,
            )
            for metric, spec in sorted(statistics["metrics"].items())
        }
        ratio = statistics["sample_ratio"]
        p_value = float(check_srm(ratio["subjects"], ratio["weights"]))
    document = {
        "generator": "scripts/gbstats_simulation.py",
        "oracle": {
            package: importlib.metadata.version(package)
            for package in ("gbstats", "scipy", "numpy", "pandas")
        },
        "input": statistics,
        "comparisons": comparisons,
        "sample_ratio_p_value": p_value,
    }
    json.dump(document, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
