"""The dashboard in a real browser: Playwright for Python driving Debian's ``chromium`` (its own
browser download is not reachable here) against a real uvicorn on a real store.

Every page opens at 1280 px and at a phone's width; a backtest started from the Backtests page
shows its progress and its equity chart and is compared with a baseline run side by side; the
Live page follows a paper session against the project's Alpaca test server as it trades.
Screenshots of each page go to ``docs/screenshots`` (the README shows them).
"""

# ruff: noqa: F811 (the paper session's fixtures, imported, are named as parameters)
from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.test_alpaca_paper_session import market, model, servers  # noqa: F401 (its fixtures)
from tests.webapp_util import TOKEN, live_server, make_store

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PAGES = ("Dashboard", "Data", "Training", "Backtests", "Live", "Settings")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("browser-store"))


def open_page(browser: Browser, url: str, width: int = 1280) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{url}/?token={TOKEN}")
    expect(page.get_by_role("link", name="Dashboard")).to_be_visible()
    assert "token" not in page.url  # the token left the address bar for a cookie
    return page, errors


def test_every_page_opens_and_a_missing_token_asks_for_it(browser: Browser, root: Path) -> None:
    with live_server(root) as (url, _):
        anon = browser.new_page()
        anon.goto(f"{url}/data")
        expect(anon.get_by_role("region", name="sign in")).to_be_visible()
        anon.fill("input[name=token]", "wrong-token-wrong-token")
        anon.get_by_role("button", name="Sign in").click()
        expect(anon.get_by_role("alert")).to_contain_text("not this dashboard's")
        anon.fill("input[name=token]", TOKEN)
        anon.get_by_role("button", name="Sign in").click()
        expect(anon.get_by_role("region", name="Stored series")).to_contain_text("AAPL")
        anon.close()

        page, errors = open_page(browser, url)
        expect(page.get_by_role("region", name="Health")).to_contain_text("run database ok")
        for name in PAGES:
            page.get_by_role("link", name=name).click()
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(SHOTS / f"{name.lower()}.png"))
        page.get_by_role("link", name="Data").click()
        page.get_by_role("cell", name="IBM").first.click()
        expect(page.get_by_test_id("price-chart").locator("canvas").first).to_be_visible()
        page.get_by_role("link", name="Training").click()
        registry = page.get_by_role("region", name="Model registry")
        expect(registry).to_contain_text("m:1")
        expect(registry.get_by_role("row", name="m:1").get_by_test_id("champion")).to_be_visible()
        page.screenshot(path=str(SHOTS / "training.png"))  # again, now the registry is loaded
        phone, phone_errors = open_page(browser, url, width=390)
        phone.get_by_role("link", name="Backtests").click()
        expect(phone.get_by_role("button", name="Start backtest")).to_be_visible()
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        phone.screenshot(path=str(SHOTS / "phone-backtests.png"))
    assert errors == [] and phone_errors == []


def test_a_backtest_started_from_the_page_is_charted_and_compared(
    browser: Browser, root: Path
) -> None:
    with live_server(root) as (url, _):
        page, errors = open_page(browser, url)
        page.get_by_role("link", name="Backtests").click()
        form = page.get_by_role("region", name="Run a backtest")
        form.locator("input[name=symbols]").fill("NOPE")
        form.get_by_role("button", name="Start backtest").click()
        expect(form.get_by_role("alert")).to_contain_text(
            "NOPE (1Day) is not in the store", timeout=60_000
        )  # the workflow checks the request in a job process first

        form.locator("input[name=symbols]").fill("AAPL,IBM")
        form.locator("select[name=strategy]").select_option("model:m:1")
        form.get_by_role("button", name="Start backtest").click()
        job = form.get_by_test_id("job").first
        expect(job).to_have_attribute("data-state", re.compile("queued|running|ok"), timeout=60_000)
        expect(job).to_have_attribute("data-state", "ok", timeout=180_000)
        chart = page.get_by_role("region", name="Equity", exact=False)
        expect(chart.get_by_test_id("equity-chart").locator("canvas").first).to_be_visible()
        expect(chart).to_contain_text("buy-and-hold")

        form.locator("input[name=symbols]").fill("AAPL,IBM")
        form.locator("select[name=strategy]").select_option("baseline:sma")
        form.get_by_role("button", name="Start backtest").click()
        ok = form.locator("[data-testid=job][data-state=ok]")
        expect(ok).to_have_count(2, timeout=180_000)
        table = page.get_by_role("region", name="Side by side")
        expect(table).to_contain_text("sharpe")
        assert table.locator("thead th").count() == 3  # metric + the two runs
        page.screenshot(path=str(SHOTS / "backtests-compare.png"), full_page=True)
    assert [e for e in errors if "status of 422" not in e] == []  # the refused NOPE


def test_the_live_page_shows_alerts_as_sessions_raise_them(browser: Browser, root: Path) -> None:
    from monitoring.alerts import AlertEvent
    from monitoring.outputs import AlertFile, alerts_path

    out = AlertFile(alerts_path(root), "run-7")
    out(
        AlertEvent(
            "drift", "warning", "firing", "prediction_drift", 0.31, "prediction_drift > 0.2", 1.8e9
        )
    )
    with live_server(root) as (url, _):
        page, errors = open_page(browser, url)
        page.get_by_role("link", name="Live").click()
        alerts = page.get_by_role("region", name="Alerts")
        expect(alerts).to_contain_text("prediction_drift > 0.2")  # the snapshot
        out(
            AlertEvent(
                "breaker-open",
                "critical",
                "firing",
                "breaker_open",
                1.0,
                "breaker_open > 0",
                1.8e9 + 60,
            )
        )
        expect(alerts).to_contain_text("breaker-open", timeout=15_000)  # pushed live
        expect(alerts.get_by_test_id("alert-severity").first).to_have_text("critical")
        page.screenshot(path=str(SHOTS / "live-alerts.png"), full_page=True)
    assert errors == []


@pytest.mark.slow
def test_the_live_page_follows_a_paper_session(
    browser: Browser, market: Any, model: Any, servers: Any
) -> None:
    from tests.test_alpaca_paper_session import _session

    store, _card = model
    journal = store / "live" / "journal-paper.sqlite"
    journal.parent.mkdir(exist_ok=True)
    with live_server(store) as (url, _):
        page, errors = open_page(browser, url)
        page.get_by_role("link", name="Live").click()
        signals = page.get_by_role("region", name="Signals (live)")
        expect(signals).to_contain_text("no signals yet")
        result: dict[str, Any] = {}
        session = threading.Thread(
            target=lambda: result.update(out=_session(market, model, servers, journal)), daemon=True
        )
        session.start()
        expect(signals.locator("tbody tr").first).to_be_visible(timeout=240_000)
        assert session.is_alive(), "the signals arrived only after the session ended"
        session.join(300)
        assert "out" in result
        page.reload()
        expect(page.get_by_role("region", name="Orders")).to_contain_text("filled")
        expect(page.get_by_role("region", name="Risk")).to_contain_text("VaR")
        page.get_by_role("button", name="Kill switch…").click()
        expect(page.get_by_role("button", name="Confirm")).to_be_disabled()
        page.screenshot(path=str(SHOTS / "live.png"), full_page=True)
    assert errors == []
