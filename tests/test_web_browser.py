"""The web workspace in a real headless Chromium (Debian's ``chromium`` driven by playwright):
a scientist starts a run from the form, watches the survey and the measured points appear,
answers the gates on their cards, asks a question and opens the report.

``SCREENSHOTS_DIR=docs`` keeps the run page's and a gate card's screenshots for the README
(by default they go to the test's temporary folder).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from autoscope.tests.web_server import TOKENS, WebServer
from autoscope.tools.store import RunStore

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="playwright is not installed (.[dev])"
    ),
]
TIMEOUT_MS = 60_000


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _gate(page, gate: str, other_than: str | None = None):
    sel = f".gate[data-gate={gate}]" + (f":not([data-key='{other_than}'])" if other_than else "")
    page.wait_for_selector(sel, timeout=TIMEOUT_MS)
    return page.locator(sel)


def _spectra(card) -> int:
    return int(re.search(r"(\d+) spectra", card.locator(".dry-run").inner_text()).group(1))


def test_a_scientist_runs_a_campaign_in_the_browser(tmp_path: Path, browser):
    shots = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    server = WebServer(tmp_path / "runs", tmp_path / "web.log").start()
    token = next(iter(TOKENS))
    try:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/?token={token}")
        assert page.url == f"{server.url}/"  # the token went into a cookie, out of the address
        page.wait_for_selector("#instrument option[value=plasmonic]", state="attached")
        page.select_option("#instrument", "plasmonic")
        page.fill("input[name=budget]", "40")
        page.fill("input[name=rounds]", "1")
        page.select_option("select[name=autonomy]", "manual")
        page.select_option("select[name=llm]", "none")
        page.fill("textarea[name=goal]", "Find the rod-tip hot spots of the dipole plasmon")
        page.click("#start")
        page.wait_for_url(re.compile(r".*/runs/web-.*"), timeout=TIMEOUT_MS)
        name = page.url.rsplit("/", 1)[-1]

        # the survey image and its measured positions appear; a second tab sees the same run
        page.wait_for_function(
            "document.querySelector('#legend').textContent.includes('survey (')", timeout=TIMEOUT_MS
        )
        page.wait_for_function("AS.lastState && AS.lastState.points.length > 0")
        second = context.new_page()
        second.goto(f"{server.url}/runs/{name}")
        hyp = _gate(page, "hypothesis")
        _gate(second, "hypothesis")
        assert "rod_tip" in hyp.inner_text()  # the proposal rendered in words, not raw JSON
        stale_key = hyp.get_attribute("data-key")
        hyp.locator("button.approve").click()

        # the second tab follows, and its answer to the answered gate is refused, saying by whom
        plan = _gate(page, "plan")
        _gate(second, "plan")
        refused = second.evaluate(
            "async ([base, key]) => { try { await AS.api('POST', base + '/answer', {key, action: 'reject'});"
            " return 'accepted'; } catch (e) { return e.status + ' ' + e.message; } }",
            [f"/api/runs/{name}", stale_key],
        )
        assert refused.startswith("409") and "alice" in refused
        second.close()

        # edit a plan field: a bad value is shown at the field, a good one is dry-run again
        assert "Dry run" in plan.inner_text() and "within every limit" in plan.inner_text()
        first_key = plan.get_attribute("data-key")
        spectra_before = _spectra(plan)
        plan.locator("button", has_text="Edit").click()
        page.wait_for_selector(".schema-form")
        per_class = page.locator("[data-path$='.per_class']")
        path = per_class.get_attribute("data-path")
        per_class.fill("1")
        page.click(".schema-form button[type=submit]")
        err = page.locator(f"label[data-field='{path}'] .field-error")
        err.wait_for(timeout=TIMEOUT_MS)
        assert "greater than or equal to 2" in err.inner_text()
        page.locator(".gate").screenshot(path=str(shots / "web-gate-card.png"))
        per_class.fill("2")
        page.locator(f"[data-path='{path.rsplit('.', 1)[0]}.top_up']").uncheck()
        page.click(".schema-form button[type=submit]")
        plan = _gate(page, "plan", other_than=first_key)
        dry_runs = RunStore.open(tmp_path / "runs" / name, read_only=True).events("dry_run")
        assert len(dry_runs) == 2 and _spectra(plan) == dry_runs[-1]["spectra"] < spectra_before

        # reject with a reason: it reaches the next proposal
        key = plan.get_attribute("data-key")
        plan.locator("input[name=reason]").fill("keep the audit small and map the rod tips")
        plan.locator("button.reject").click()
        plan = _gate(page, "plan", other_than=key)
        assert "revised after: keep the audit small and map the rod tips" in plan.inner_text()
        plan.locator("button.approve").click()

        # the round runs: the measured points appear, a spectrum opens on a click
        analysis = _gate(page, "analysis")
        page.wait_for_function("AS.lastState.points.some(p => p.phase === 'audit')")
        assert "verdict" in analysis.inner_text()
        # the active scan's model: its prediction and uncertainty drawn over the survey
        page.wait_for_selector("#overlay option[value='H1:std']", state="attached")
        page.select_option("#overlay", "H1:mean")
        page.wait_for_function("document.querySelector('#overlay-scale').textContent.includes('prediction')")
        page.select_option("#overlay", "H1:std")
        page.wait_for_function("document.querySelector('#overlay-scale').textContent.includes('uncertainty')")
        page.wait_for_timeout(300)  # the survey image and overlays are drawn
        page.screenshot(path=str(shots / "web-run-page.png"), full_page=True)
        page.select_option("#overlay", "")
        point = page.evaluate(
            "(() => { const s = AS.lastState.survey, p = AS.lastState.points.find(q => q.phase === 'audit');"
            " return [(p.x_nm - s.center_x_nm + s.fov_nm / 2) / s.fov_nm, (p.y_nm - s.center_y_nm + s.fov_y_nm / 2) / s.fov_y_nm]; })()"
        )
        box = page.locator("#survey").bounding_box()
        page.mouse.click(box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"])
        page.wait_for_selector("#spectrum:not([hidden])")
        assert "audit" in page.inner_text("#spectrum-label") or "H1-" in page.inner_text("#spectrum-label")
        # the server killed and started again: the page reconnects, the gate is still there to answer
        server.kill()
        page.wait_for_function("document.querySelector('#conn').textContent.includes('reconnecting')")
        server.start()
        page.wait_for_function("document.querySelector('#conn').textContent === 'live'", timeout=TIMEOUT_MS)
        _gate(page, "analysis").locator("button.approve").click()
        page.wait_for_function("AS.lastState.status === 'done'", timeout=TIMEOUT_MS)

        # a question, answered from the store
        page.fill("#question", "which positions are strongest?")
        page.click("#ask button")
        page.wait_for_selector(".qa-item pre")
        assert "Strongest" in page.inner_text(".qa-item pre")

        # the report, with its decisions naming the person
        page.wait_for_selector("#open-report:not([disabled])")
        page.click("#open-report")
        page.wait_for_selector("#report-body h2")
        report = page.inner_text("#report-body")
        assert "autoscope run" in report and "Decisions" in report and "alice" in report
        assert page.locator("#decisions td.who", has_text="alice").count() >= 4
        assert not errors, errors
    finally:
        server.stop()
