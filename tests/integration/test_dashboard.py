"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
server under light predict load: it refuses access without a token, shows the models and
versions with no console errors, its charts move, a pin done in the page changes what a
predict answers, every action is reachable by keyboard, and a traffic rule renders from the
admin API's JSON.

With TFGATE_UPDATE_SCREENSHOTS=1 the tests also write the screenshots docs/operations.md
shows (docs/images/dashboard-*.png); without it they write nothing into the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_lifecycle import TOKEN, admin_headers, copy_version, write_admin_config
from tests.serverproc import ServerProcess

playwright_api = pytest.importorskip("playwright.sync_api")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("TFGATE_UPDATE_SCREENSHOTS") == "1"
WAIT_MS = 60_000


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_zoo) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """Model m: version 1 answers 0.5x + 2, version 2 answers 0.5x + 3 (the latest, served
    by the default policy); admin token TOKEN."""
    tmp = tmp_path_factory.mktemp("dashboard")
    base = tmp / "m"
    base.mkdir()
    copy_version(model_zoo.base_path("half_plus_two") / "1", base, 1)
    copy_version(model_zoo.base_path("half_plus_three") / "1", base, 2)
    toml, _ = write_admin_config(tmp, "load_wait_seconds = 60\n")
    process = ServerProcess(
        ["--model_name=m", f"--model_base_path={base}", f"--config={toml}",
         "--file_system_poll_wait_seconds=1", "--enable_batching=true"],
        tmp / "server.log",
    ).start()
    try:
        with process.client() as http:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if predict(http) == 4.0:
                    break
                time.sleep(0.2)
        yield process
    finally:
        process.stop()


def predict(http: httpx.Client, x: float = 2.0) -> float | None:
    answer = http.post("/v1/models/m:predict", json={"instances": [[x]]})
    return answer.json()["predictions"][0][0] if answer.status_code == 200 else None


@pytest.fixture(scope="module")
def light_load(server: ServerProcess) -> Iterator[None]:
    """About 20 predicts a second in the background while the module's tests run."""
    stop = threading.Event()

    def send() -> None:
        with server.client() as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    http.post("/v1/models/m:predict", json={"instances": [[1.0], [2.0]]})
                stop.wait(0.05)

    thread = threading.Thread(target=send, name="dashboard-light-load", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium on PATH (scripts/setup.sh installs Debian's chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def wait_js(page: Page, function: str, arg: object = None, timeout_seconds: float = 60) -> None:
    """Poll `function` (JS source of a function of `arg`) in the page until it is truthy.
    Evaluated over the DevTools protocol: the page's own CSP forbids eval, which Playwright's
    wait_for_function would need for it."""
    deadline = time.monotonic() + timeout_seconds
    while not page.page.evaluate(function, arg):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {function}")
        time.sleep(0.1)


class Page:
    """One fresh browser context (its own sessionStorage) on the dashboard, recording every
    console error and uncaught page error."""

    def __init__(self, browser, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
        self.context = browser.new_context(viewport={"width": 1366, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.url = server.rest_url + "/dashboard"

    def open(self) -> Page:
        self.page.goto(self.url)
        return self

    def sign_in(self, token: str = TOKEN) -> Page:
        self.page.fill("#token", token)
        self.page.keyboard.press("Enter")
        return self

    def signed_in(self) -> Page:
        self.open().sign_in()
        self.page.wait_for_selector('[data-model="m"] table')
        return self

    def screenshot(self, name: str, selector: str | None = None) -> None:
        if not UPDATE_SCREENSHOTS:
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = self.page.locator(selector) if selector else self.page
        kwargs = {} if selector else {"full_page": True}
        target.screenshot(path=str(SCREENSHOTS / name), **kwargs)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, server: ServerProcess) -> Iterator[Page]:  # type: ignore[no-untyped-def]
    opened = Page(browser, server)
    try:
        yield opened
    finally:
        opened.close()


def test_page_refuses_access_without_a_token(page: Page, server: ServerProcess) -> None:
    page.open()
    assert page.page.is_visible("#login")
    assert page.page.is_hidden("#app")
    assert page.page.is_hidden("#reload-config")  # no action is offered before sign-in
    assert page.page.is_hidden("#logout")
    assert page.page.evaluate("sessionStorage.length") == 0
    # The data behind the page answers as the admin API does.
    with server.client() as http:
        missing = http.get("/v1/admin/dashboard/stats")
        assert missing.status_code == 401
        assert http.get("/v1/admin/models").status_code == 401
        wrong = http.get("/v1/admin/dashboard/stats", headers=admin_headers("wrong"))
        assert wrong.status_code == 403
    page.sign_in("wrong")
    wait_js(page, "() => document.getElementById('login-error').textContent"
                  ".includes('Invalid admin token')")
    assert page.page.is_hidden("#app")
    assert page.page.evaluate("sessionStorage.length") == 0  # a refused token is not kept
    page.screenshot("dashboard-login.png")


def test_models_and_versions_show_without_console_errors(
    page: Page, server: ServerProcess, light_load: None
) -> None:
    requests: list[tuple[str, str]] = []
    page.page.on("request", lambda r: requests.append((r.method, r.url)))
    with server.client() as http:
        before = http.get("/v1/admin/models", headers=admin_headers()).json()
    page.signed_in()
    # The token lives in this tab's session storage only.
    assert page.page.evaluate("sessionStorage.getItem('tfgate.adminToken')") == TOKEN
    assert page.page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    model = page.page.locator('[data-model="m"]')
    text = model.inner_text()
    assert "serving version" in text
    rows = model.locator("tbody tr")
    versions = {rows.nth(i).locator("td").nth(0).inner_text(): rows.nth(i).locator("td").nth(1)
                .inner_text() for i in range(rows.count())}
    assert versions["2"] == "AVAILABLE"
    assert versions["1"] in ("on disk", "END", "AVAILABLE")  # the policy serves only the latest
    assert page.page.locator('[data-serving="m"]').inner_text() == "2"
    workers = page.page.locator("#workers").inner_text()
    assert "alive" in workers
    assert "no traffic rule" in model.inner_text()
    wait_js(page, "() => Number(document.getElementById('chart-requests_per_second')"
                  ".dataset.points) >= 3")
    page.page.wait_for_timeout(4500)  # at least one more poll of every kind
    assert page.errors == []
    # Viewing only reads: every request the page made was a GET, and the models' pins,
    # labels and versions are as they were.
    assert {method for method, _ in requests} == {"GET"}, requests
    assert any(url.endswith("/v1/admin/dashboard/stats") for _, url in requests)
    # after the first poll, only the points the page does not hold yet
    assert any("/v1/admin/dashboard/stats?since=" in url for _, url in requests)
    with server.client() as http:
        after = http.get("/v1/admin/models", headers=admin_headers()).json()

    def shape(listing: dict) -> list:  # type: ignore[type-arg]
        return [(m["name"], m["pinned_version"], m["labels"], m["serving_version"],
                 [(v["version"], v["state"]) for v in m["versions"]]) for m in listing["models"]]

    assert shape(after) == shape(before)


def chart_state(page: Page) -> tuple[str, str, str]:
    return page.page.evaluate(
        """() => { const c = document.getElementById('chart-requests_per_second');
                   return [c.toDataURL(), c.dataset.last, c.getAttribute('aria-label')]; }""")


def test_charts_move_under_load(page: Page, light_load: None) -> None:
    page.signed_in()
    wait_js(page, "() => Number(document.getElementById('chart-requests_per_second')"
                  ".dataset.points) >= 2")
    first_image, first_last, label = chart_state(page)
    assert label.startswith("Requests / s, latest: m ")
    wait_js(page, "(last) => document.getElementById('chart-requests_per_second')"
                  ".dataset.last !== last", first_last, timeout_seconds=15)
    second_image, second_last, label = chart_state(page)
    assert float(second_last) > float(first_last)
    assert second_image != first_image  # the drawn pixels changed, not only the data
    # Under load the requests chart shows a positive latest rate for m.
    latest = float(label.rsplit("m ", 1)[1])
    assert latest > 0, label
    # The page fetched only new points (since=) and holds one consistent window.
    held = page.page.evaluate("() => window.tfgateDashboard.state.load")
    assert held["t"] == sorted(set(held["t"])) and len(held["t"]) >= 3
    assert all(len(values) == len(held["t"]) for values in held["models"]["m"].values())
    if UPDATE_SCREENSHOTS:  # a few more seconds of load first, for a readable picture
        wait_js(page, "() => Number(document.getElementById('chart-requests_per_second')"
                      ".dataset.points) >= 20", timeout_seconds=40)
        page.screenshot("dashboard-overview.png")
    assert page.errors == []


MERGE = """() => {
  const merge = window.tfgateDashboard.mergeLoad;
  const cols = (v) => ({requests_per_second: v, errors_per_second: v});
  const held = {interval_seconds: 1, window_seconds: 3, t: [10, 11, 12],
                models: {a: cols([1, 2, 3]), gone: cols([5, null, null])}};
  const delta = {interval_seconds: 1, window_seconds: 3, t: [13, 14],
                 models: {a: cols([4, 5]), b: cols([7, 8])}};
  return merge(held, delta);
}"""


def test_the_held_load_window_merges_new_points_and_trims(page: Page) -> None:
    page.signed_in()
    merged = page.page.evaluate(MERGE)
    assert merged["t"] == [12, 13, 14]  # 3 s window: points after 14 - 3
    assert merged["models"]["a"]["requests_per_second"] == [3, 4, 5]
    assert merged["models"]["b"]["requests_per_second"] == [None, 7, 8]
    assert "gone" not in merged["models"]  # nothing left of it in the window


def confirm(page: Page, button_label: str) -> str:
    """Click the button named `button_label`, confirm in the dialog, return the action's
    verbatim answer once it arrived."""
    before = page.page.locator("#action-result").inner_text()
    page.page.get_by_role("button", name=button_label).click()
    dialog = page.page.locator("#confirm")
    dialog.wait_for(state="visible")
    page.page.click("#confirm-ok")
    wait_js(page, "(before) => { const t = document.getElementById('action-result').textContent;"
                  " return t !== before && t.includes('HTTP '); }", before)
    return page.page.locator("#action-result").inner_text()


def test_pin_in_the_page_changes_what_predict_answers(
    page: Page, server: ServerProcess, light_load: None
) -> None:
    page.signed_in()
    with server.client() as http:
        assert predict(http) == 4.0  # version 2: 0.5 * 2 + 3
        # Cancel changes nothing.
        page.page.get_by_role("button", name="Pin m version 1").click()
        page.page.locator("#confirm").wait_for(state="visible")
        assert page.page.evaluate("document.activeElement.id") == "confirm-cancel"
        page.page.click("#confirm-cancel")
        assert page.page.locator("#action-result").inner_text() == "No action yet."
        assert predict(http) == 4.0

        answer = confirm(page, "Pin m version 1")
        assert answer.startswith("POST /v1/admin/models/m/pin\nHTTP 200"), answer
        body = json.loads(answer.split("\n", 2)[2])
        assert body["pinned_version"] == 1 and body["serving_version"] == 1
        assert predict(http) == 3.0  # version 1: 0.5 * 2 + 2
        wait_js(page, "() => document.querySelector('[data-serving=\"m\"]').textContent === '1'")
        page.screenshot("dashboard-model.png", '[data-model="m"]')

        answer = confirm(page, "Unpin")
        assert answer.startswith("DELETE /v1/admin/models/m/pin\nHTTP 200"), answer
        assert json.loads(answer.split("\n", 2)[2])["pinned_version"] is None
        assert predict(http) == 4.0  # the policy's version again (it stayed loaded)
    assert page.errors == []


def version_state(answer: str, version: int) -> str:
    body = json.loads(answer.split("\n", 2)[2])
    return next(v["state"] for v in body["versions"] if v["version"] == version)


def test_load_and_unload_a_version_from_the_page(page: Page, light_load: None) -> None:
    page.signed_in()
    load = page.page.get_by_role("button", name="Load m version 1")
    load.wait_for()  # once the unpinned version 1 left (the policy serves only version 2)
    answer = confirm(page, "Load m version 1")
    assert answer.startswith("POST /v1/admin/models/m/versions/1/load\nHTTP 200"), answer
    assert version_state(answer, 1) == "AVAILABLE"
    answer = confirm(page, "Unload m version 1")
    assert answer.startswith("POST /v1/admin/models/m/versions/1/unload\nHTTP 200"), answer
    assert version_state(answer, 1) == "END"
    assert page.errors == []


def test_actions_are_reachable_by_keyboard_and_labelled(page: Page) -> None:
    page.signed_in()
    reached: list[str] = []
    for _ in range(60):
        page.page.keyboard.press("Tab")
        name = page.page.evaluate(
            """() => { const e = document.activeElement;
                       return e.tagName + ':' + (e.getAttribute('aria-label') || e.textContent.trim()); }""")
        reached.append(name)
    assert "BUTTON:Reload config" in reached
    assert "BUTTON:Log out" in reached
    assert any(r.startswith("BUTTON:Pin m version") for r in reached), reached
    # Every control has a name a screen reader can say; every input has a label.
    unnamed = page.page.evaluate(
        """() => [...document.querySelectorAll('button, input, canvas')].filter(e =>
             !(e.getAttribute('aria-label') || e.textContent.trim() || e.labels?.length ||
               e.getAttribute('aria-labelledby'))).map(e => e.outerHTML)""")
    assert unnamed == []
    # The dialog opens from the keyboard, holds the focus, and gives it back on Escape.
    pin = page.page.get_by_role("button", name="Pin m version 1")
    pin.focus()
    page.page.keyboard.press("Enter")
    page.page.locator("#confirm").wait_for(state="visible")
    assert page.page.evaluate("document.activeElement.id") == "confirm-cancel"
    page.page.keyboard.press("Escape")
    page.page.locator("#confirm").wait_for(state="hidden")
    assert page.page.evaluate("document.activeElement.getAttribute('aria-label')") == \
        "Pin m version 1"
    assert page.page.locator("#action-result").inner_text() == "No action yet."


TRAFFIC = {
    "model": "m",
    "rule": {"kind": "experiment", "metric": "conversion"},
    "state": {"ramp_step": 2, "rolled_back": False, "rollback_reason": None},
    "arms": [
        {"name": "control", "version": 2, "label": None, "weight": 0.9,
         "stats": {"requests": 900, "errors": 1, "latency_p50_ms": 1.5, "latency_p99_ms": 9.0,
                   "outcomes": 850, "conversion_rate": 0.1, "mean_reward": None,
                   "ci_low": 0.08, "ci_high": 0.12, "p_value": None}},
        {"name": "treatment", "version": None, "label": "canary", "weight": 0.1,
         "stats": {"requests": 100, "errors": 0, "latency_p50_ms": 1.6, "latency_p99_ms": 8.0,
                   "outcomes": 95, "conversion_rate": 0.15, "mean_reward": None,
                   "ci_low": 0.09, "ci_high": 0.21, "p_value": 0.031}},
    ],
    "shadow": {"version": 1, "sampled": 0.05},
}


def test_traffic_rule_renders_from_the_admin_json(page: Page) -> None:
    """The traffic API comes from another branch: its answers are served here by the
    browser's request interception, in the shape that API documents."""

    def listing(route) -> None:  # type: ignore[no-untyped-def]
        response = route.fetch()
        body = response.json()
        for model in body["models"]:
            model["traffic"] = {"arms": 2} if model["name"] == "m" else None
        route.fulfill(response=response, json=body)

    page.page.route("**/v1/admin/models", listing)
    page.page.route("**/v1/admin/models/m/traffic",
                    lambda route: route.fulfill(status=200, json=TRAFFIC))
    page.signed_in()
    panel = page.page.locator('[data-traffic-for="m"]')
    panel.locator("table").wait_for()
    text = panel.inner_text()
    for expected in ("control", "treatment", "version 2", "label canary", "10.00 %",
                     "15.00 %", "[0.090, 0.210]", "0.0310", "Rule kind", "experiment",
                     "Ramp step", "Shadow sampled"):
        assert expected in text, (expected, text)
    assert page.errors == []


def test_a_real_traffic_rule_shows_its_arms_and_counts(page: Page, server: ServerProcess) -> None:
    """The real traffic API (no interception): a 50/50 rule over versions 1 and 2 set through
    the admin API, a few keyed predicts, and the page shows both arms with their counts."""
    headers = admin_headers(TOKEN)
    rule = {"id": "dash", "arms": [{"name": "control", "version": 2},
                                   {"name": "candidate", "version": 1}]}
    with server.client() as http:
        loaded = http.post("/v1/admin/models/m/versions/1/load", headers=headers)
        assert loaded.status_code == 200, loaded.text
        try:
            put = http.put("/v1/admin/models/m/traffic", json=rule, headers=headers)
            assert put.status_code == 200, put.text
            served = []
            for i in range(40):
                reply = http.post("/v1/models/m:predict", json={"instances": [2.0]},
                                  headers={"X-Tfgate-Routing-Key": f"user-{i}"})
                assert reply.status_code == 200, reply.text
                served.append(int(reply.headers["X-Tfgate-Model-Version"]))
            assert {1, 2} <= set(served)
            # Conversions reported by routing key: the candidate (version 1) converts more.
            for i, version in enumerate(served):
                converted = i % 2 == 0 if version == 1 else i % 5 == 0
                outcome = http.post("/v1/admin/models/m/traffic/outcomes", headers=headers,
                                    json={"routing_key": f"user-{i}", "conversion": converted})
                assert outcome.status_code == 200, outcome.text
            page.signed_in()
            panel = page.page.locator('[data-traffic-for="m"]')
            panel.locator("table").wait_for()
            text = panel.inner_text()
            assert "control" in text and "candidate" in text, text
            assert "version 1" in text and "version 2" in text, text
            rows = {
                row[0]: row
                for row in page.page.evaluate(
                    """() => [...document.querySelectorAll('[data-traffic-for="m"] tbody tr')]
                        .map(tr => [...tr.cells].map(td => td.textContent.trim()))"""
                )
            }
            # The module's light background load (no routing key) is counted on the arms too.
            assert int(rows["control"][3]) >= served.count(2), rows
            assert int(rows["candidate"][3]) >= served.count(1), rows
            assert int(rows["control"][7]) == served.count(2), rows  # outcomes
            assert int(rows["candidate"][7]) == served.count(1), rows
            assert rows["candidate"][11] not in ("", "—"), rows  # a p-value against control
            page.screenshot("dashboard-traffic.png", '[data-model="m"]')
            assert page.errors == []
        finally:
            http.delete("/v1/admin/models/m/traffic", headers=headers)
            http.post("/v1/admin/models/m/versions/1/unload", headers=headers)


SYNC = {
    "source": "s3://models/m", "poll_seconds": 30, "last_attempt": "2026-01-02T03:04:05+00:00",
    "last_success": None,
    "last_error": {"version": 3, "message": "md5 mismatch for variables/variables.index",
                   "at": "2026-01-02T03:04:05+00:00"},
    "consecutive_failures": 4, "versions_synced": [1, 2], "remote_missing": False,
}
CACHE = {"enabled": True, "ttl_seconds": 60, "max_entry_bytes": 1024, "hits": 30,
         "misses": 10, "coalesced": 0, "hit_ratio": 0.75, "breaker": "open"}


def test_sync_and_cache_status_and_a_refused_action_verbatim(page: Page) -> None:
    """A synced, cached model as the admin listing describes one (the fields of sync/loop.py's
    and cache's describe, injected by request interception); Sync now on this server's model,
    which has no sync source, shows the admin API's refusal verbatim."""

    def listing(route) -> None:  # type: ignore[no-untyped-def]
        response = route.fetch()
        body = response.json()
        for model in body["models"]:
            model.update(sync=SYNC, cache=CACHE)
        route.fulfill(response=response, json=body)

    page.page.route("**/v1/admin/models", listing)
    page.signed_in()
    text = page.page.locator('[data-model="m"]').inner_text()
    assert ("s3://models/m — failed: md5 mismatch for variables/variables.index "
            "(4 failures in a row)") in text
    assert "hit rate 75.0 % (30 hits, 10 misses), breaker open" in text
    answer = confirm(page, "Sync now")
    assert answer.startswith("POST /v1/admin/models/m/sync\nHTTP 400"), answer
    with httpx.Client(base_url=page.url.rsplit("/dashboard", 1)[0]) as http:
        direct = http.post("/v1/admin/models/m/sync", headers=admin_headers())
    assert answer.split("\n", 2)[2] == direct.text  # the admin API's answer, verbatim
    assert page.page.locator("#action-result").get_attribute("class") == "result bad"


def test_a_server_without_admin_tokens_shows_why_and_no_data(page: Page) -> None:
    """Such a server answers every admin route 503 with this text (unit-tested on the routes:
    tests/unit/dashboard/test_routes.py); the page shows it on the sign-in form."""
    disabled = {"error": "The admin API is disabled: no admin tokens are configured "
                         "([admin] tokens_file or TFGATE_ADMIN_TOKENS)"}
    page.page.route("**/v1/admin/**", lambda route: route.fulfill(status=503, json=disabled))
    page.open().sign_in()
    wait_js(page, "() => document.getElementById('login-error').textContent"
                  ".startsWith('The admin API is disabled')")
    assert page.page.is_hidden("#app")
    assert page.page.evaluate("sessionStorage.length") == 0
