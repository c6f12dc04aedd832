"""The reviewer console in a real headless browser (Debian's chromium, driven by Playwright).

A reviewer signs in with a token, opens the queue, claims an item, sees the
contribution chart, overrides it with a reason; the outcome must then be in
the store, the audit chain and the event stream. The decision view is saved
as var/screenshots/decision.png.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.review.review_helpers import ALICE, AUDITOR, ReviewEnv, Served, make_decision

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: install Debian's browser (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    # A laptop screen.
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    pg.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and "401" not in msg.text
            else None
        ),
    )
    yield pg
    context.close()
    assert problems == []


def sign_in(page: Page, served: Served, token: str) -> None:
    page.goto(served.url + "/")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.click("#login-btn")
    expect(page.locator("#queue")).to_be_visible()


def test_a_reviewer_claims_and_overrides_an_item(
    env: ReviewEnv, served: Served, page: Page
) -> None:
    target = make_decision("loan-7f3a", confidence=0.52)
    env.decisions.add([target])
    env.store.enqueue(target)
    env.store.enqueue(make_decision("loan-8b21", confidence=0.58, reason="band"))
    env.store.enqueue(make_decision("loan-9c04", confidence=0.57, reason="audit_sample"))

    sign_in(page, served, ALICE)
    expect(page.locator("#who-name")).to_have_text("alice")
    rows = page.locator("#queue-table tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#counts")).to_have_text("3 pending · 0 claimed · 0 decided")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "queue.png"))

    # Filters narrow the queue.
    page.fill("#f-reason", "band")
    page.click("#refresh-btn")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-item", "loan-8b21/0")
    page.fill("#f-reason", "")
    page.click("#refresh-btn")
    expect(rows).to_have_count(3)

    page.click('#queue-table tbody tr[data-item="loan-7f3a/0"]')
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text("loan-7f3a/0")
    expect(page.locator("#detail-status")).to_have_text("pending")
    expect(page.locator("#features tbody tr")).to_have_count(10)
    expect(page.locator("#approve-btn")).to_be_disabled()

    # The chart: one bar per top contribution, computed on demand by real TreeSHAP.
    bars = page.locator("#chart svg rect.bar")
    expect(bars).to_have_count(5)
    explanation = env.store.get("loan-7f3a/0").explanation  # type: ignore[union-attr]
    assert explanation is not None
    top = sorted(explanation["top"], key=lambda t: -abs(t["contribution"]))
    assert [bars.nth(i).get_attribute("data-feature") for i in range(5)] == [
        t["feature"] for t in top
    ]
    widths = [float(bars.nth(i).get_attribute("width") or 0) for i in range(5)]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] > 0

    page.click("#claim-btn")
    expect(page.locator("#detail-status")).to_have_text("claimed")
    expect(page.locator("#claim-line")).to_contain_text("Claimed by alice")
    expect(page.locator("#override-btn")).to_be_enabled()

    shot = SCREENSHOTS / "decision.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # An override without a reason is stopped in the page; nothing is sent.
    page.fill("#outcome", "repaid")
    page.click("#override-btn")
    expect(page.locator("#message")).to_have_text("Give a reason.")
    assert env.store.get("loan-7f3a/0").status == "claimed"  # type: ignore[union-attr]

    page.fill("#reason", "Pay slips confirm the income; late payments were a bank error.")
    page.click("#override-btn")
    expect(page.locator("#detail-status")).to_have_text("decided")
    expect(page.locator("#message")).to_have_text("Overridden.")
    expect(page.locator("#outcome-box")).to_contain_text("repaid")
    expect(page.locator("#history li")).to_have_count(3)
    page.screenshot(path=str(SCREENSHOTS / "decision-decided.png"), full_page=True)

    item = env.store.get("loan-7f3a/0")
    assert item is not None and item.status == "decided"
    assert (item.action, item.outcome, item.decided_by) == ("override", "repaid", "alice")
    assert item.decided_reason is not None and item.decided_reason.startswith("Pay slips")
    records = env.store.history("loan-7f3a/0")
    assert [(r.action, r.actor) for r in records] == [
        ("requested", "system"),
        ("claimed", "alice"),
        ("overridden", "alice"),
    ]
    assert records[-1].data["outcome"] == "repaid"
    assert env.store.verify().ok
    decided = [e for e in env.events() if e["action"] == "decided"]
    assert len(decided) == 1
    assert decided[0]["decision_id"] == "loan-7f3a/0" and decided[0]["reviewer"] == "alice"
    assert decided[0]["outcome"] == "repaid" and decided[0]["audit_hash"] == records[-1].hash

    # Back to the queue: the item left the pending view.
    page.click("#back-btn")
    expect(rows).to_have_count(2)


def test_an_auditor_reads_but_cannot_act_and_a_bad_token_is_refused(
    env: ReviewEnv, served: Served, page: Page
) -> None:
    env.store.enqueue(make_decision("look-only", groups={"gender": "F", "age_band": "30-39"}))
    page.goto(served.url + "/")
    page.fill("#token", "wrong-token-0000000000")
    page.click("#login-btn")
    expect(page.locator("#login-error")).to_have_text("Your token was not accepted.")

    page.fill("#token", AUDITOR)
    page.click("#login-btn")
    page.click('#queue-table tbody tr[data-item="look-only/0"]')
    expect(page.locator("#detail-status")).to_have_text("pending")
    expect(page.locator("#claim-btn")).to_be_disabled()
    # Auditors are allowed to see group attributes (auth.group_attribute_roles).
    expect(page.locator("#groups")).to_contain_text("30-39")
    page.reload()  # the token survives a reload of the tab
    expect(page.locator("#detail-title")).to_have_text("look-only/0")
    page.click("#logout-btn")
    expect(page.locator("#login")).to_be_visible()


def test_a_mismatched_explanation_is_not_shown_as_the_reason(
    env: ReviewEnv, served: Served, page: Page
) -> None:
    explanation = {
        "explainer": "treeshap.path_dependent",
        "output_space": "margin",
        "base_values": [-1.2],
        "top": [{"feature": "age", "value": 34.0, "contribution": 0.8}],
        "fidelity": "mismatch",
        "fidelity_detail": {
            "compared": "probabilities",
            "explained": [0.027, 0.973],
            "served": [0.9555, 0.0445],
            "tolerance": 0.001,
            "max_diff": 0.9285,
        },
    }
    env.store.enqueue(make_decision("skewed"), explanation)
    sign_in(page, served, ALICE)
    page.click('#queue-table tbody tr[data-item="skewed/0"]')
    note = page.locator("#chart-note")
    expect(note).to_contain_text("Fidelity mismatch")
    expect(note).to_contain_text("0.9555")
    expect(note).to_contain_text("not the reason for the decision")
