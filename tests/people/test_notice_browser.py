"""The notice in headless Chromium: readable with script off, nothing loaded from elsewhere,
contrast, printable; and the console showing a contest and the server-drawn waterfall.
Screenshots go to var/screenshots/ (notice.png, notice.pdf, console-contested.png)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, expect

from tests.people.people_helpers import CASE, REVIEWER, Made
from tests.review.test_console_browser import SCREENSHOTS, browser, sign_in

__all__ = ["browser"]


def _luminance(rgb: str) -> float:
    parts = [int(p) / 255 for p in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3]]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in parts]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(fg: str, bg: str) -> float:
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


@pytest.fixture
def watched(browser: Browser) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A script-less context with the case handler's token; requests and console errors kept."""
    context = browser.new_context(
        java_script_enabled=False,
        extra_http_headers={"Authorization": f"Bearer {CASE}"},
        viewport={"width": 900, "height": 1200},
    )
    requests: list[str] = []
    errors: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page, requests, errors
    context.close()


def test_the_notice_renders_without_script_or_external_assets(
    made: Made, watched: tuple[Page, list[str], list[str]]
) -> None:
    page, requests, errors = watched
    did = made.id(made.denied[0])
    url = f"{made.service.control_url}/decisions/{did}/notice"
    response = page.goto(url)
    assert response is not None and response.status == 200
    assert "script-src" not in response.headers["content-security-policy"]
    expect(page.locator("h1")).to_have_text("Your credit decision")
    expect(page.locator("h2")).to_have_text(
        ["Why", "What you can do", "How to contest this decision"]
    )
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#why ~ ol li, section ol li")).to_have_count(3)
    expect(page.locator("body")).to_contain_text(did)
    expect(page.locator("body")).to_contain_text("not a promise of approval")
    assert requests == [url], requests  # the page and nothing else
    assert errors == []  # the inline style is allowed by its hash: no CSP complaint
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "notice.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"notice screenshot: {shot}")
    page.emulate_media(media="print")
    pdf = page.pdf(format="A4")
    assert pdf.startswith(b"%PDF")
    (SCREENSHOTS / "notice.pdf").write_bytes(pdf)


def test_the_notice_text_has_enough_contrast(made: Made, browser: Browser) -> None:
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {CASE}"})
    page = context.new_page()
    page.goto(f"{made.service.control_url}/decisions/{made.id(made.denied[0])}/notice")
    for selector in ("body", "h2", ".small"):
        fg, bg = page.evaluate(
            "(s) => { const e = document.querySelector(s); const c = getComputedStyle(e);"
            " return [c.color, getComputedStyle(document.body).backgroundColor]; }",
            selector,
        )
        assert _contrast(fg, bg) >= 7.0, (selector, fg, bg)  # WCAG AAA for body text
    context.close()


def test_the_notice_as_json(made: Made) -> None:
    did = made.id(made.denied[0])
    status, doc, _ = made.get(f"/decisions/{did}/notice?format=json", CASE)
    assert status == 200
    assert doc["reference"] == did and doc["outcome"] == "default" and not doc["favourable"]
    assert len(doc["reasons"]) == 3 and doc["recourse"]["options"]
    assert doc["contest"]["reference"] == did
    assert made.get(f"/decisions/{did}/notice?format=pdf", CASE)[0] == 422
    status, good, _ = made.get(f"/decisions/{made.id(made.approved[0])}/notice?format=json", CASE)
    assert good["favourable"] and good["reasons"] == [] and good["recourse"] is None


def test_the_console_shows_the_contest_and_the_waterfall(made: Made, browser: Browser) -> None:
    did = made.id(made.denied[4])
    statement = "The loan amount was entered wrongly: I asked for 5, not 50."
    status, _, _ = made.post(
        f"/decisions/{did}/contest",
        CASE,
        {"statement": statement, "corrected_values": {"loan_amount": 5.0}},
    )
    assert status == 201
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def on_console(m: ConsoleMessage) -> None:
        if m.type == "error" and "401" not in m.text:
            problems.append(m.text)

    page.on("console", on_console)
    plots: list[Request] = []
    page.on("request", lambda r: plots.append(r) if r.url.endswith("/plot") else None)

    class Served:
        url = made.service.control_url

    sign_in(page, Served, REVIEWER)  # type: ignore[arg-type]
    page.goto(f"{made.service.control_url}/#{did}")
    expect(page.locator("#contest-box")).to_be_visible()
    expect(page.locator("#contest")).to_contain_text(statement)
    expect(page.locator("#contest")).to_contain_text("loan_amount")
    assert plots == []  # drawn only when opened
    page.click("#waterfall-box summary")
    img = page.locator("#waterfall")
    expect(img).to_have_attribute("src", re.compile(r"^data:image/svg\+xml;base64,"))
    page.wait_for_function("document.getElementById('waterfall').naturalWidth > 0")
    shot = SCREENSHOTS / "console-contested.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"console screenshot: {shot}")
    assert len(plots) == 1 and problems == []
    context.close()
