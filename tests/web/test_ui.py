"""The dashboard at /ui/ in a real headless Chromium against a real worker.

Sign in, find a flag, edit it (a validation error, then a conflict, then success), flip the
kill switch in one tab and see it in another through the change stream, read-only tokens, and
the list's load time with 1,000 flags. Chromium and its driver are the Debian packages
(`apt-get install -y chromium chromium-driver`): no browser is downloaded at test time.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from app.control.client import AdminClient
from app.infra.broker import free_port, start_broker, stop
from tests.app.experiments.test_report import experiment_flag, two_partitions
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, Worker, flag, wait_until
from tests.web.test_experiments_api import moved, publish, subjects_are
from tests.web.test_experiments_stream import grown

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_CHROMIUM = "no chromium/chromedriver: apt-get install -y chromium chromium-driver"
# On a developer's machine without the packages the browser tests skip; CI (bin/test installs
# them) must run them, so there a missing browser fails instead of passing unseen.
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"), reason=NO_CHROMIUM
)
WAIT_S = 20.0  # a bound on each wait, for a loaded 2-core machine; conditions end it early


def get(
    worker: Worker, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_page_and_its_modules_are_served_and_nothing_else(worker: Worker) -> None:
    status, head, body = get(worker, "/ui/")
    assert (status, head["Content-Type"]) == (200, "text/html; charset=utf-8")
    found = re.search(rb'<script type="module" src="([0-9a-f]{16})/app.js">', body)
    assert found, body
    folder = found.group(1).decode()
    for name, expected in (("app.js", "text/javascript"), ("style.css", "text/css")):
        for path in (f"/ui/{folder}/{name}", f"/ui/{name}"):
            status, head, _ = get(worker, path)
            assert (status, head["Content-Type"]) == (200, f"{expected}; charset=utf-8")
    for missing in ("/ui/nope.js", "/ui/..%2Fui.py", "/ui/%2e%2e", f"/ui/{folder}/nope.js"):
        status, _, body = get(worker, missing)
        assert (status, json.loads(body)["error"]["code"]) == (404, "NOT_FOUND")


def test_a_cold_load_fetches_no_module_twice(worker: Worker) -> None:
    """The page names its files in a folder of their digest, kept by the browser for good
    (a cold load of the 1,000-flag list spent ~100 ms fetching its 8 files again); the page
    itself is revalidated with its ETag; another release's folder is a 404, not stale files."""
    _, head, body = get(worker, "/ui/")
    assert head["Cache-Control"] == "no-cache"
    assert get(worker, "/ui/", {"If-None-Match": head["ETag"]})[0] == 304
    found = re.search(rb'src="([0-9a-f]{16})/app.js"', body)
    assert found, body
    folder = found.group(1).decode()
    for name in ("app.js", "flags.js", "experiments.js", "style.css"):
        assert f'"{folder}/{name}"'.encode() in body, name  # loaded or preloaded by the page
        status, head, _ = get(worker, f"/ui/{folder}/{name}")
        assert (status, head["Cache-Control"]) == (200, "public, max-age=31536000, immutable")
        assert head["Content-Security-Policy"].startswith("default-src 'self'")
    status, _, body = get(worker, "/ui/0123456789abcdef/app.js")
    assert status == 404 and b"reload" in body


# -- in the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail(NO_CHROMIUM)
        pytest.skip(NO_CHROMIUM)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses its sandbox as root
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def tab(browser: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    """The browser with one tab, signed out (sessionStorage is per tab)."""
    yield browser
    for handle in browser.window_handles[1:]:
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])
    browser.execute_script("sessionStorage.clear()")


def until(driver: webdriver.Chrome, condition: Callable[[Any], Any]) -> Any:
    """`condition` once true; an element a page redrew between finding and reading it (the
    experiment list redraws while it waits for figures) is looked for again."""
    waiting = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition)


def shown(driver: webdriver.Chrome, css: str) -> WebElement:
    """The element once it is displayed."""
    element: WebElement = until(
        driver,
        lambda d: next(
            (e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None
        ),
    )
    return element


def text_of(driver: webdriver.Chrome, css: str, wanted: str) -> str:
    """The element's text once it contains `wanted`."""
    return str(
        until(
            driver,
            lambda d: next(
                (e.text for e in d.find_elements(By.CSS_SELECTOR, css) if wanted in e.text), None
            ),
        )
    )


def sign_in(driver: webdriver.Chrome, worker: Worker, page: str, token: str) -> None:
    driver.get(f"{worker.url}/ui/#{page}")
    field = shown(driver, "#token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    shown(driver, "#sign-out")


def set_editor(driver: webdriver.Chrome, definition: Any) -> None:
    editor = shown(driver, "#editor")
    driver.execute_script(
        "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
        editor,
        json.dumps(definition, indent=2),
    )


@needs_chromium
def test_a_wrong_token_is_refused_and_the_right_one_signs_in(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    worker.admin().put(env, "a", flag())
    tab.get(f"{worker.url}/ui/#/e/{env}")
    shown(tab, "#token").send_keys("not-a-token")
    tab.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    text_of(tab, "#sign-in-error", "does not know that token")
    assert "not-a-token" not in tab.execute_script("return JSON.stringify(sessionStorage)")
    sign_in(tab, worker, f"/e/{env}", ADMIN_TOKEN)
    text_of(tab, "#count", "1 of 1 flags")
    assert "admin" in tab.find_element(By.ID, "who").text


@needs_chromium
def test_find_a_flag_then_edit_it_through_a_problem_and_a_conflict(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    admin = worker.admin()
    for key in ("checkout-new", "checkout-old", "search-v2"):
        admin.put(env, key, flag(metadata={"experiment": True} if key == "search-v2" else {}))
    sign_in(tab, worker, f"/e/{env}", ADMIN_TOKEN)
    text_of(tab, "#count", "3 of 3 flags")
    shown(tab, "#search").send_keys("checkout")
    text_of(tab, "#count", "2 of 3 flags")
    assert not tab.find_element(By.CSS_SELECTOR, 'tr[data-flag="search-v2"]').is_displayed()
    tab.find_element(By.LINK_TEXT, "checkout-new").click()
    text_of(tab, "#flag-meta", "Version 1")

    set_editor(tab, flag(default="nope"))
    tab.find_element(By.ID, "save").click()
    problem = text_of(tab, "#edit-result", "Not saved")
    assert "$.defaultVariant" in problem, problem

    admin.put(env, "checkout-new", flag(default="on"))  # someone else, meanwhile
    text_of(tab, "#edit-result", "Version 2 was saved by pytest while you edit")
    set_editor(tab, flag(default="off", targeting={"if": [True, "on", "off"]}))
    tab.find_element(By.ID, "save").click()
    conflict = text_of(tab, "#edit-result", "Not saved: conflict")
    assert "You edited version 1, but version 2 is current" in conflict, conflict
    assert admin.flag(env, "checkout-new").body["defaultVariant"] == "on", "nothing written"

    tab.find_element(By.ID, "rebase").click()
    tab.find_element(By.ID, "save").click()
    text_of(tab, "#edit-result", "Saved as version 3")
    assert admin.flag(env, "checkout-new").body["targeting"] == {"if": [True, "on", "off"]}
    text_of(tab, "#history", "pytest")
    assert len(tab.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 3


@needs_chromium
def test_the_kill_switch_in_one_tab_shows_in_another_and_a_cli_change_at_once(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    admin = worker.admin()
    admin.put(env, "payments", flag(default="on"))
    admin.put(env, "other", flag())
    sign_in(tab, worker, f"/e/{env}", ADMIN_TOKEN)
    text_of(tab, "#count", "2 of 2 flags")
    list_tab = tab.current_window_handle
    tab.switch_to.new_window("tab")
    sign_in(tab, worker, f"/e/{env}/f/payments", ADMIN_TOKEN)
    shown(tab, "#kill-switch").click()
    text_of(tab, "#kill-status", "Now disabled")

    tab.switch_to.window(list_tab)
    row = 'tr[data-flag="payments"]'
    text_of(tab, row, "disabled")
    text_of(tab, row, "2")  # its version

    started = time.monotonic()
    admin.set_state(env, "other", "DISABLED")  # as `flagstream` the CLI does, through the API
    text_of(tab, 'tr[data-flag="other"]', "disabled")
    print(f"an admin API change reached the open list in {time.monotonic() - started:.3f} s")


@needs_chromium
def test_a_read_token_sees_everything_and_may_change_nothing(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    worker.admin().put(env, "looked-at", flag())
    sign_in(tab, worker, f"/e/{env}/f/looked-at", READ_TOKEN)
    assert "read only" in tab.find_element(By.ID, "who").text
    assert not shown(tab, "#kill-switch").is_enabled()
    assert not tab.find_elements(By.ID, "editor")
    assert '"defaultVariant": "off"' in shown(tab, "#definition").text


@needs_chromium
def test_evaluate_for_a_context_now_and_before_a_change(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    admin = worker.admin()
    admin.put(env, "banner", flag(default="off"))
    admin.put(env, "banner", flag(default="on"))
    first, second = (version["updated_at"] for version in admin.history(env, "banner"))
    sign_in(tab, worker, f"/e/{env}/f/banner", ADMIN_TOKEN)
    shown(tab, "#eval-form button").click()
    text_of(tab, "#eval-result", "true")
    between = (first + second) / 2  # the browser's local time, to the millisecond
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(between))
    moment += f".{int(between * 1000) % 1000:03d}"
    tab.execute_script("document.getElementById('eval-at').value = arguments[0]", moment)
    tab.find_element(By.CSS_SELECTOR, "#eval-form button").click()
    result = text_of(tab, "#eval-result", "false")
    assert "1" in result.split("Flag version")[1]


@needs_chromium
def test_a_list_of_a_thousand_flags_renders_whole_and_searchable(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    """Every row, and the search over them. Issue 12's < 300 ms is measured by
    benchmarks/bench_ui.py on a quiet machine: on this shared one a cold load took 0.5-5.6 s
    under load averages of 20-60, so the bound here only catches the pathological (a render
    quadratic in the flags) and the figure is printed."""
    admin = worker.admin()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: admin.put(env, f"flag-{i:04d}", flag()), range(1000)))
    sign_in(tab, worker, "/", ADMIN_TOKEN)
    tab.get(f"{worker.url}/ui/?cold#/e/{env}")  # a new document, signed in
    text_of(tab, "#count", "1000 of 1000 flags")
    assert len(tab.find_elements(By.CSS_SELECTOR, "tbody tr[data-flag]")) == 1000
    script = "return Number(document.getElementById('page').dataset.readyAtMs)"
    ready_ms = tab.execute_script(script)
    print(f"1,000 flags: page ready {ready_ms:.0f} ms after navigation start")
    assert ready_ms < 15_000
    shown(tab, "#search").send_keys("flag-09")
    text_of(tab, "#count", "100 of 1000 flags")


@needs_chromium
def test_an_experiment_is_listed_and_read_as_a_forest_plot(
    tab: webdriver.Chrome, worker: Worker, broker: str, env: str
) -> None:
    key = "checkout-button"
    worker.admin().put(env, key, experiment_flag())
    rollback = AdminClient(worker.url, ADMIN_TOKEN, actor="guardrail: spend decrease in blue")
    rollback.put(env, key, experiment_flag(note="rolled back"))
    partials = moved(two_partitions(), env, key)
    publish(broker, *partials)
    subjects = sum(v.subjects for p in partials for v in p.totals.variants.values())
    results = wait_until(lambda: subjects_are(worker, env, key, subjects), timeout_s=30)

    sign_in(tab, worker, f"/e/{env}/x", READ_TOKEN)
    row = text_of(tab, f'tr[data-experiment="{key}"]', "running")
    assert str(subjects) in row
    tab.find_element(By.LINK_TEXT, key).click()
    srm = text_of(tab, "#srm", "p =")
    assert ("mismatch" in srm) == results["srm"]["mismatch"], srm
    for metric in results["metrics"]:
        plot = shown(tab, f'section[data-metric="{metric["metric"]}"] svg.forest')
        variants = {c["variant"] for c in metric["comparisons"] if c["relative"]}
        drawn = plot.find_elements(By.CSS_SELECTOR, "g.row")
        assert {g.get_attribute("data-variant") for g in drawn} == variants
        for group in drawn:  # an estimate, its fixed-horizon and its always-valid interval
            assert len(group.find_elements(By.CSS_SELECTOR, "circle.estimate")) == 1
            assert len(group.find_elements(By.CSS_SELECTOR, "line.fixed")) == 1
            assert len(group.find_elements(By.CSS_SELECTOR, "line.always-valid")) == 1
    text_of(tab, "#crossovers", "")
    text_of(tab, "#rollbacks", "guardrail: spend decrease in blue")
    assert tab.find_elements(By.CSS_SELECTOR, "svg.series polyline")


@needs_chromium
def test_the_experiment_list_shows_figures_that_come_after_it_was_opened(
    tab: webdriver.Chrome, worker: Worker, broker: str, env: str
) -> None:
    """Opened before any figure (as a newcomer does right after `up`): "no data", then
    "running" once figures come, without a reload (the CI failure of stop 20 waited on a list
    read once)."""
    key = "figures-come-later"
    worker.admin().put(env, key, experiment_flag())
    sign_in(tab, worker, f"/e/{env}/x", READ_TOKEN)
    text_of(tab, f'tr[data-experiment="{key}"]', "no data")
    partials = moved(two_partitions(), env, key)
    publish(broker, *partials)
    subjects = sum(v.subjects for p in partials for v in p.totals.variants.values())
    wait_until(lambda: subjects_are(worker, env, key, subjects), timeout_s=30)
    row = text_of(tab, f'tr[data-experiment="{key}"]', "running")
    assert str(subjects) in row


@needs_chromium
def test_a_banner_says_when_the_worker_serves_stale_flags(
    tab: webdriver.Chrome, tmp_path: Path
) -> None:
    """Its own broker, stopped under an open page: the banner comes, the page stays usable."""
    port = free_port()
    broker = start_broker("127.0.0.1", port, tmp_path / "broker.log")
    own = Worker(f"127.0.0.1:{port}", tmp_path / "data", "ui-stale")
    try:
        own.start()
        own.admin().put("stale", "kept", flag(default="on"))
        sign_in(tab, own, "/e/stale", READ_TOKEN)
        text_of(tab, "#count", "1 of 1 flags")
        assert not tab.find_element(By.ID, "stale").is_displayed()
        stop(broker)
        banner = text_of(tab, "#stale", "cannot reach its broker")
        assert "last known flags" in banner, banner
        assert tab.find_element(By.CSS_SELECTOR, 'tr[data-flag="kept"]').is_displayed()
    finally:
        own.stop()
        stop(broker)


# -- a phone's width, every page -----------------------------------------------------------

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}


def seed_experiment(worker: Worker, broker: str, env: str, key: str) -> dict[str, Any]:
    """An experiment flag with figures from two source partitions; its results once read."""
    worker.admin().put(env, key, experiment_flag())
    partials = moved(two_partitions(), env, key)
    publish(broker, *partials)
    subjects = sum(v.subjects for p in partials for v in p.totals.variants.values())
    results: dict[str, Any] = wait_until(
        lambda: subjects_are(worker, env, key, subjects), timeout_s=30
    )
    return results


def page_ready(driver: webdriver.Chrome) -> None:
    """Until the routed page is whole and painted (app.js marks `data-painted-at-ms`)."""
    script = "return document.getElementById('page').dataset.paintedAtMs || null"
    until(driver, lambda d: d.execute_script(script))


@needs_chromium
def test_at_a_phone_width_no_page_scrolls_sideways(
    tab: webdriver.Chrome, worker: Worker, broker: str, env: str
) -> None:
    key = "checkout-button-with-a-rather-long-experiment-name"
    worker.admin().put(env, "a-flag-with-a-long-key-that-does-not-fit-a-phone", flag())
    seed_experiment(worker, broker, env, key)
    pages = [
        "/",
        f"/e/{env}",
        f"/e/{env}/f/a-flag-with-a-long-key-that-does-not-fit-a-phone",
        f"/e/{env}/f/{key}",
        f"/e/{env}/x",
        f"/e/{env}/x/{key}",
    ]
    tab.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        sign_in(tab, worker, "/", ADMIN_TOKEN)
        widths = "return [document.documentElement.scrollWidth, window.innerWidth]"
        for page in pages:
            tab.get(f"{worker.url}/ui/?phone#{page}")
            page_ready(tab)
            scroll_width, inner_width = tab.execute_script(widths)
            assert inner_width == PHONE["width"], inner_width
            assert scroll_width <= inner_width, f"{page}: {scroll_width} px wide"
            if page == f"/e/{env}":  # and the list's key column is not squeezed to a letter
                key_cell = tab.find_element(By.CSS_SELECTOR, "tbody tr[data-flag] th")
                assert key_cell.size["width"] >= 80, key_cell.size  # a letter was 30 px
    finally:
        tab.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@needs_chromium
def test_an_admin_sees_the_definition_once_in_its_editor(
    tab: webdriver.Chrome, worker: Worker, env: str
) -> None:
    worker.admin().put(env, "shown-once", flag())
    sign_in(tab, worker, f"/e/{env}/f/shown-once", ADMIN_TOKEN)
    assert '"defaultVariant": "off"' in shown(tab, "#editor").get_attribute("value")
    page_ready(tab)
    assert not tab.find_elements(By.ID, "definition"), "the read-only copy beside the editor"


@needs_chromium
def test_new_exposures_update_an_open_results_page_without_a_reload(
    tab: webdriver.Chrome, worker: Worker, broker: str, env: str
) -> None:
    """The page follows the experiment's stream: no reload, and no 5 s poll to wait for."""
    key = "live-results"
    seed_experiment(worker, broker, env, key)
    partials = moved(two_partitions(), env, key)
    before = sum(v.subjects for p in partials for v in p.totals.variants.values())
    sign_in(tab, worker, f"/e/{env}/x/{key}", READ_TOKEN)
    text_of(tab, "#page", f"{before} subjects")
    tab.execute_script("window.sameDocument = true")
    publish(broker, grown(partials[0], 100))
    after = before + 100 * len(partials[0].totals.variants)
    started = time.monotonic()
    text_of(tab, "#page", f"{after} subjects")
    print(f"new figures reached the open results page in {time.monotonic() - started:.3f} s")
    assert tab.execute_script("return window.sameDocument === true"), "the page was reloaded"
    live = tab.execute_script("return document.body.dataset.live")
    assert live == "live", "the page does not follow the experiment's stream"


# -- a newcomer's path: from `./bin/up` to a flipped flag and an experiment ------------------


@pytest.fixture
def up(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`flagstream up` (what `./bin/up` runs) in a fresh data dir: the lines it printed, by name
    (`dashboard`, `admin token`, `experiment`, ...), once it said it is up."""
    command = [sys.executable, "-m", "app.cli", "up", "--data-dir", str(tmp_path / "up")]
    command += ["--processes", "1", "--log", str(tmp_path / "up.log")]
    for option in ("--port", "--kafka-port", "--metrics-port"):
        command += [option, str(free_port())]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    printed: dict[str, str] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:  # ends when `up` is up (below) or exits
            name, colon, value = line.strip().partition(":")
            if colon and value.startswith(" "):
                printed.setdefault(name, value.strip())
            if line.startswith("Ctrl-C stops everything"):
                break
        assert "admin token" in printed, (printed, (tmp_path / "up.log").read_text()[-2000:])
        yield printed
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@needs_chromium
def test_a_new_user_goes_from_up_to_a_flipped_flag_and_an_experiment(
    tab: webdriver.Chrome, up: dict[str, str]
) -> None:
    """Only what `up` printed and what the pages say: the URL, the token, links and buttons."""
    dashboard = up["dashboard"].split()[0]
    tab.get(dashboard)
    assert "admin token:" in shown(tab, "#token-help").text  # where the token comes from
    shown(tab, "#token").send_keys(up["admin token"])
    tab.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    text_of(tab, "#count", "5 of 5 flags")

    tab.find_element(By.LINK_TEXT, "new-checkout").click()
    kill = shown(tab, "#kill-switch")
    assert kill.get_attribute("data-state") == "ENABLED"
    kill.click()
    text_of(tab, "#kill-status", "Now disabled")
    assert shown(tab, "#kill-switch").get_attribute("data-state") == "DISABLED"

    tab.find_element(By.LINK_TEXT, "development").click()
    shown(tab, "#experiments-link").click()
    experiment = "button-color-2026q4"
    assert up["experiment"].startswith(f"{dashboard.split('#')[0]}#/e/development/x/{experiment}")
    text_of(tab, f'tr[data-experiment="{experiment}"]', "running")
    tab.find_element(By.LINK_TEXT, experiment).click()
    text_of(tab, "#srm", "p =")  # the simulated users' split, checked
    subjects = text_of(tab, "#page", "subjects")
    assert " 300 subjects" in subjects, subjects
    assert len(tab.find_elements(By.CSS_SELECTOR, "svg.series polyline")) == 3  # one a variant


# -- accessibility: axe-core (tests/web/js, `npm ci`) on every page ------------------------

AXE = REPO / "tests" / "web" / "js" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """
const done = arguments[arguments.length - 1];
const brief = (v) => ({ id: v.id, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target) });
axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] })
  .then((found) => done({ passed: found.passes.length, violations: found.violations.map(brief) }))
  .catch((failure) => done({ passed: 0, violations: [{ id: "axe", help: String(failure) }] }));
"""


def axe_violations(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """WCAG 2.1 A and AA violations axe-core finds on the page as it is now."""
    if not driver.execute_script("return typeof axe !== 'undefined'"):
        driver.execute_script(AXE.read_text())
    found = driver.execute_async_script(AXE_RUN)
    assert found["passed"] > 0, found  # axe ran its rules on this page
    violations: list[dict[str, Any]] = found["violations"]
    return violations


@needs_chromium
def test_every_page_passes_axe_for_wcag_2_1_aa(
    tab: webdriver.Chrome, worker: Worker, broker: str, env: str
) -> None:
    """Labels, roles, names and contrast, as axe-core checks them (keyboard order: by hand)."""
    if not AXE.exists():
        pytest.skip("no axe-core: npm ci --prefix tests/web/js")
    key = "axe-checked"
    worker.admin().put(env, "plain-flag", flag())
    seed_experiment(worker, broker, env, key)
    tab.get(f"{worker.url}/ui/#/e/{env}")
    shown(tab, "#token")
    found = {"sign in": axe_violations(tab)}
    sign_in(tab, worker, "/", ADMIN_TOKEN)
    pages = {
        "environments": "/",
        "flag list": f"/e/{env}",
        "flag page": f"/e/{env}/f/{key}",
        "experiments": f"/e/{env}/x",
        "experiment results": f"/e/{env}/x/{key}",
    }
    for name, page in pages.items():
        tab.get(f"{worker.url}/ui/?axe#{page}")
        page_ready(tab)
        found[name] = axe_violations(tab)
    assert not any(found.values()), json.dumps(found, indent=1)
