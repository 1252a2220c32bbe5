"""How fast the dashboard's pages load with many flags, beside the API calls the list makes.

One embedded broker, one worker (a subprocess, as in production), `--flags` flags and one
experiment (with figures) in one environment, and a real headless Chromium (the Debian
`chromium` and `chromium-driver`):

1. reference: the two API answers the list page needs (`GET …/flags?view=summary` and
   `GET …/flags`), fetched in parallel by a plain HTTP client: the floor the page cannot beat;
2. each page (flag list, one flag, experiments, one experiment's results): `--loads` cold
   navigations to `/ui/?n=<i>#<page>` (a new document each time, signed in), each timed from
   the navigation's start to the first frame painted with the whole page (`performance.now()`
   after that frame: the page's `data-painted-at-ms`; `data-ready-at-ms`, the page built but
   not yet laid out, is printed beside it).

Issue 12 asks for < 300 ms on loopback with 1,000 flags. Prints the median and p95 of each,
the list's ratio to the API floor, and the load average beside them (a loaded machine's
figures are for sanity only).

    .venv/bin/python benchmarks/bench_ui.py [--flags 1000] [--loads 20] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from app.infra.broker import free_port, start_broker, stop  # noqa: E402
from tests.app.experiments.test_report import experiment_flag, two_partitions  # noqa: E402
from tests.conftest import ADMIN_TOKEN, Worker, flag, wait_until  # noqa: E402
from tests.web.test_experiments_api import moved, publish, subjects_are  # noqa: E402
from tests.worker_topics import SHARED_WORKER_TOPICS  # noqa: E402

ENV = "bench-ui"
EXPERIMENT = "checkout-button"
PAGES = {  # name: the page's route, after `#`
    "flag list": f"/e/{ENV}",
    "flag page": f"/e/{ENV}/f/flag-00000",
    "experiments": f"/e/{ENV}/x",
    "experiment results": f"/e/{ENV}/x/{EXPERIMENT}",
}


def chromium() -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        raise SystemExit("needs the Debian packages: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def api_ms(worker: Worker) -> float:
    """The two answers the list page needs, in parallel, as milliseconds of wall clock."""
    base = f"{worker.url}/api/v1/environments/{ENV}/flags"

    def fetch(url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read()
        return body

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fetch, (base + "?view=summary", base)))
    return (time.perf_counter() - started) * 1000


def page_ms(driver: webdriver.Chrome, worker: Worker, load: int, route: str) -> tuple[float, float]:
    """One cold load of a page: (built, painted) in ms since the navigation's start."""
    driver.get(f"{worker.url}/ui/?n={load}#{route}")
    script = "return document.getElementById('page').dataset.paintedAtMs || null"
    painted = WebDriverWait(driver, 60).until(lambda d: d.execute_script(script))
    ready = driver.execute_script("return document.getElementById('page').dataset.readyAtMs")
    return float(ready), float(painted)


def whole_list_ms(driver: webdriver.Chrome) -> float:
    """After `page_ms` on the list: when every row was in and painted (the first screen of
    rows is painted first, the rest in the next task)."""
    script = "return document.getElementById('page').dataset.wholeAtMs || null"
    return float(WebDriverWait(driver, 60).until(lambda d: d.execute_script(script)))


def seed_experiment(worker: Worker, broker: str) -> None:
    """One experiment with figures (two source partitions' partials), readable on the worker."""
    worker.admin().put(ENV, EXPERIMENT, experiment_flag())
    partials = moved(two_partitions(), ENV, EXPERIMENT)
    publish(broker, *partials)
    subjects = sum(v.subjects for p in partials for v in p.totals.variants.values())
    wait_until(lambda: subjects_are(worker, ENV, EXPERIMENT, subjects), timeout_s=60)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
    }


def run(flags: int, loads: int) -> dict[str, Any]:
    port = free_port()
    broker = start_broker("127.0.0.1", port)
    worker: Worker | None = None
    driver: webdriver.Chrome | None = None
    pages: dict[str, dict[str, Any]] = {}
    try:
        data = Path(tempfile.mkdtemp(prefix="bench-ui-")) / "data"
        # The topics `publish` (tests/web/test_experiments_api.py) writes the experiment to.
        prefix = SHARED_WORKER_TOPICS.prefix
        worker = Worker(f"127.0.0.1:{port}", data, "bench-ui", FLAGSTREAM_TOPIC_PREFIX=prefix)
        worker.start()
        admin = worker.admin()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: admin.put(ENV, f"flag-{i:05d}", flag()), range(flags)))
        seed_experiment(worker, f"127.0.0.1:{port}")
        driver = chromium()
        driver.get(f"{worker.url}/ui/")  # sign in once: the token stays in this tab
        field = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "token"))
        field.send_keys(ADMIN_TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "sign-out").is_displayed())
        reference = summary([api_ms(worker) for _ in range(loads)])
        for name, route in PAGES.items():
            page_ms(driver, worker, -1, route)  # warm the browser's caches once
            each, whole = [], []
            for i in range(loads):
                each.append(page_ms(driver, worker, i, route))
                if name == "flag list":
                    whole.append(whole_list_ms(driver))
            print(f"{name}, painted ms:", " ".join(f"{p:.0f}" for _, p in each), flush=True)
            pages[name] = {
                "ready_ms": summary([r for r, _ in each]),
                "painted_ms": summary([p for _, p in each]),
            }
            if whole:
                pages[name]["whole_ms"] = summary(whole)
    finally:
        if driver is not None:
            driver.quit()
        if worker is not None:
            worker.stop()
        stop(broker)
    return {
        "flags": flags,
        "loads": loads,
        "api_ms": reference,
        "pages": pages,
        "ratio_median": pages["flag list"]["painted_ms"]["median"] / reference["median"],
        "target_ms": 300,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 loads")
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()
    result = run(args.flags, 5 if args.quick else args.loads)
    api = result["api_ms"]
    print(f"| {result['flags']} flags, cold load | median ms | p95 ms | built (median ms) |")
    print("|---|---|---|---|")
    print(f"| list's API answers (reference) | {api['median']:.0f} | {api['p95']:.0f} | |")
    for name, page in result["pages"].items():
        painted, ready = page["painted_ms"], page["ready_ms"]
        line = f"| {name}, painted | {painted['median']:.0f} | {painted['p95']:.0f} |"
        print(f"{line} {ready['median']:.0f} |")
        if "whole_ms" in page:
            whole = page["whole_ms"]
            print(f"| {name}, every row painted | {whole['median']:.0f} | {whole['p95']:.0f} | |")
    print(f"list page / API (median): {result['ratio_median']:.1f}x; target < 300 ms")
    print("load average: " + ", ".join(f"{x:.2f}" for x in result["load_average"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
