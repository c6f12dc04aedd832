"""The people routes at the hub, with a real broker, a real PostgreSQL and the demo credit model.

One sidecar (review.store = "hub", the demo's reasons and recourse) in front of
the demo model server streams to Kafka; two hubs in one consumer group write
to one database. Hub A scores contests' corrected values through the sidecar's
proxy (`hub.models.credit.proxy_url`); hub B has no proxy configured, so its
contests are recorded without a re-score. Nothing is sampled on the sidecar:
the hubs explain on demand, from the same artifact.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar.config import load_settings
from sidecar.demo.model import model_settings, people_settings
from sidecar.hub.service import Hub
from sidecar.service import Service
from tests.kafka_broker import KafkaBroker
from tests.people.people_helpers import (
    ADMIN,
    AUDITOR,
    CASE,
    CASE2,
    FEATURES,
    REVIEWER,
    TOKENS,
    demo_rows,
    model_server,
    request,
    sections,
    send_rows,
)
from tests.postgres_server import PostgresServer
from tests.servers import running_sidecar, wait_until

__all__ = ["model_server"]

HUB_URL = "https://hub.example.test"
N_ROWS = 60


@dataclass
class Fleet:
    sidecar: Service
    hub_a: str
    hub_b: str
    database: str
    call_id: str
    labels: list[int]
    rows: list[list[float | None]]

    def id(self, i: int) -> str:
        return f"{self.call_id}/{i}"

    @property
    def denied(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label == 1]

    @property
    def approved(self) -> list[int]:
        return [i for i, label in enumerate(self.labels) if label == 0]


def _hub(database: str, bootstrap: str, topics: dict[str, str], proxy_url: str | None) -> Hub:
    m = model_settings()
    model: dict[str, Any] = {
        "artifact": m["artifact"],
        "background": m["background"],
        "feature_names": m["feature_names"],
        "class_labels": m["class_labels"],
        "favourable_label": m["favourable_label"],
    }
    if proxy_url is not None:
        model["proxy_url"] = proxy_url
    s = sections()
    settings = load_settings(
        environ={},
        overrides={
            # The hub file's own [reasons], [recourse] and [groups], as the sidecar's.
            **people_settings(),
            "groups": s["groups"],
            "auth": {"tokens": TOKENS},
            "kafka": {"bootstrap_servers": bootstrap, **topics},
            "hub": {
                "database_url": database,
                "port": 0,
                "group_id": "people-hubs",
                "poll_timeout_ms": 50,
                "models": {"credit": model},
            },
        },
    )
    return Hub(settings)


def _ready(base: str) -> bool:
    try:
        return request(base, "GET", "/readyz", None)[0] == 200
    except OSError:
        return False


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def fleet(
    kafka_broker: KafkaBroker,
    postgres_server: PostgresServer,
    model_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:10]
    topics = {
        "topic_decisions": f"p{tag}.decisions",
        "topic_explanations": f"p{tag}.explanations",
        "topic_reviews": f"p{tag}.reviews",
        "topic_gaps": f"p{tag}.gaps",
    }
    kafka_broker.create_topics(*topics.values())
    database = postgres_server.create_database()
    spool: Path = tmp_path_factory.mktemp("people-spool")
    with ExitStack() as stack:
        sidecar = stack.enter_context(
            running_sidecar(
                model_server,
                **sections(
                    sink={"kind": "kafka"},
                    kafka={"bootstrap_servers": kafka_broker.bootstrap, "linger_ms": 5, **topics},
                    spool={"directory": str(spool), "fsync": "never"},
                    review={"store": "hub", "hub_url": HUB_URL},
                ),
            )
        )
        hubs = []
        for proxy in (sidecar.proxy_url, None):
            hub = _hub(database, kafka_broker.bootstrap, topics, proxy)
            hub.start()
            stack.callback(hub.stop)
            hubs.append(hub)
        for hub in hubs:
            wait_until(lambda h=hub: _ready(h.url), timeout_s=60, what="a hub to be ready")
        rows = demo_rows(N_ROWS, seed=23)
        call_id, labels = send_rows(sidecar, rows)
        wait_until(
            lambda: _count(database, "SELECT count(*) FROM decisions") >= N_ROWS,
            timeout_s=30,
            what="every decision at the hubs",
        )
        f = Fleet(sidecar, hubs[0].url, hubs[1].url, database, call_id, labels, rows)
        assert len(f.denied) >= 4 and f.approved, "the sample must hold both outcomes"
        yield f
    postgres_server.drop_database(database)


def _without_source(doc: dict[str, Any]) -> dict[str, Any]:
    # Where the explanation came from differs (the sidecar's cache, the hub's database);
    # the numbers must not.
    return {k: v for k, v in doc.items() if k != "explanation_source"}


def test_reasons_notice_recourse_and_plot_at_either_hub_equal_the_sidecars(fleet: Fleet) -> None:
    side = fleet.sidecar.control_url
    for i in [*fleet.denied[:3], fleet.approved[0]]:
        did = fleet.id(i)
        s_code, s_reasons, _ = request(side, "GET", f"/decisions/{did}/reasons", CASE)
        assert s_code == 200, s_reasons
        s_notice = request(side, "GET", f"/decisions/{did}/notice?format=json", CASE)[1]
        s_html = request(side, "GET", f"/decisions/{did}/notice", CASE)[1]
        s_recourse = request(side, "GET", f"/decisions/{did}/recourse", CASE)[1]
        s_plot = request(side, "GET", f"/decisions/{did}/plot", REVIEWER)[1]
        for hub in (fleet.hub_a, fleet.hub_b):
            code, reasons, _ = request(hub, "GET", f"/decisions/{did}/reasons", CASE)
            assert code == 200, reasons
            assert _without_source(reasons) == _without_source(s_reasons)
            assert reasons["explanation_source"] in ("on_demand", "cached")
            assert request(hub, "GET", f"/decisions/{did}/notice?format=json", CASE)[1] == s_notice
            code, html, headers = request(hub, "GET", f"/decisions/{did}/notice", CASE)
            assert code == 200 and html == s_html
            assert headers["content-security-policy"].startswith("default-src 'none'")
            recourse = request(hub, "GET", f"/decisions/{did}/recourse", CASE)[1]
            assert {**recourse, "search": None} == {**s_recourse, "search": None}
            assert request(hub, "GET", f"/decisions/{did}/plot", REVIEWER)[1] == s_plot
            # The hub's lookup carries the same reasons.
            lookup = request(hub, "GET", f"/decisions/{did}", REVIEWER)[1]
            assert _without_source(lookup["reasons"]) == _without_source(s_reasons)
        if i in fleet.denied:
            assert s_reasons["reasons"], "a denied decision has reasons"
            assert "age" not in {r["feature"] for r in s_reasons["reasons"]}
            assert s_recourse["options"], "the demo's denied decisions have recourse"
        else:
            assert s_reasons["favourable"] and s_reasons["reasons"] == []


def test_a_contest_at_one_hub_is_the_contest_at_the_other_and_goes_through_review(
    fleet: Fleet,
) -> None:
    i = fleet.denied[0]
    did = fleet.id(i)
    # The sidecar in fleet mode points the case handler to the hub, filing nothing.
    code, body, _ = request(
        fleet.sidecar.control_url, "POST", f"/decisions/{did}/contest", CASE, {"statement": "x"}
    )
    assert code == 409
    assert f"{HUB_URL}/decisions/{did}/contest" in body["detail"]

    income = FEATURES.index("income")
    raised = float(fleet.rows[i][income] or 0.0) + 400.0
    contest = {"statement": "My income is higher", "corrected_values": {"income": raised}}
    code, filed, _ = request(fleet.hub_a, "POST", f"/decisions/{did}/contest", CASE, contest)
    assert code == 201, filed
    assert filed["filed_by"] == "cara" and filed["status"] == "pending"
    rescore = filed["rescore"]
    assert rescore["error"] is None and rescore["request_id"] == f"contest:{did}"
    assert rescore["decision_id"] and rescore["decision_id"] != did
    assert filed["reasons"]["reasons"], "the reasons at filing are kept for the reviewer"

    # Idempotent at the other hub: the same contest, 200, nothing re-scored or re-filed.
    code, again, _ = request(fleet.hub_b, "POST", f"/decisions/{did}/contest", CASE, contest)
    assert code == 200
    assert again["filed_at"] == filed["filed_at"] and again["rescore"] == rescore

    # The re-scored decision went through the sidecar like any other, to both hubs.
    wait_until(
        lambda: request(fleet.hub_b, "GET", f"/decisions?request_id=contest:{did}", REVIEWER)[
            1
        ].get("decisions"),
        timeout_s=30,
        what="the re-scored decision at the hub",
    )
    page = request(fleet.hub_b, "GET", f"/decisions?request_id=contest:{did}", REVIEWER)[1]
    assert [d["decision_id"] for d in page["decisions"]] == [rescore["decision_id"]]

    # At the front of the one queue, seen at B; claimed at B, decided at A.
    items = request(fleet.hub_b, "GET", "/review/items", REVIEWER)[1]["items"]
    assert items[0]["item_id"] == did and items[0]["reason"] == "contested"
    item = request(fleet.hub_b, "GET", f"/review/items/{did}", REVIEWER)[1]
    assert item["contest"]["statement"] == "My income is higher"
    assert request(fleet.hub_b, "POST", f"/review/items/{did}/claim", REVIEWER)[0] == 200
    code, decided, _ = request(
        fleet.hub_a,
        "POST",
        f"/review/items/{did}/decision",
        REVIEWER,
        {"action": "override", "outcome": "repaid", "reason": "income verified"},
    )
    assert code == 200, decided
    state = request(fleet.hub_b, "GET", f"/decisions/{did}/contest", CASE)[1]
    assert state["status"] == "decided" and state["outcome"] == "repaid"
    assert state["decided_by"] == "rita" and state["time_to_resolution_s"] >= 0

    # The contest made the item (nothing routed it before): its records, in the one chain.
    history = request(fleet.hub_a, "GET", f"/review/items/{did}/history", REVIEWER)[1]
    assert [r["action"] for r in history["records"]] == ["contested", "claimed", "overridden"]
    verdict = request(fleet.hub_b, "GET", "/review/audit/verify", AUDITOR)[1]
    assert verdict["ok"], verdict

    # Its review events: the contest, and the steps the hubs relayed onto the reviews topic
    # and read back (one hub relays; either ingests).
    def events() -> list[tuple[str, str]]:
        with psycopg.connect(fleet.database) as conn:
            rows = conn.execute(
                "SELECT body FROM review_events WHERE decision_id = %s ORDER BY time", (did,)
            ).fetchall()
        return [(r[0]["action"], r[0]["reason"]) for r in rows]

    wait_until(lambda: len(events()) == 3, what="the relayed review steps")
    assert sorted(events()) == sorted(
        [
            ("requested", "contested"),
            ("claimed", "claimed"),
            ("decided", "override: income verified"),
        ]
    )
    metrics = request(fleet.hub_a, "GET", "/metrics", None)[1].decode()
    assert "sidecar_contest_resolution_seconds_count 1.0" in metrics


def test_two_hubs_filing_one_contest_at_once_file_it_once(fleet: Fleet) -> None:
    did = fleet.id(fleet.denied[1])
    answers: list[tuple[int, Any]] = []
    barrier = threading.Barrier(2)

    def file(base: str) -> None:
        barrier.wait()
        code, body, _ = request(
            base, "POST", f"/decisions/{did}/contest", ADMIN, {"statement": "Not me"}
        )
        answers.append((code, body))

    threads = [threading.Thread(target=file, args=(b,)) for b in (fleet.hub_a, fleet.hub_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(code for code, _ in answers) == [200, 201]
    assert answers[0][1]["filed_at"] == answers[1][1]["filed_at"]
    assert _count(fleet.database, f"SELECT count(*) FROM contests WHERE item_id = '{did}'") == 1
    assert (
        _count(
            fleet.database,
            f"SELECT count(*) FROM audit WHERE item_id = '{did}' AND action = 'contested'",
        )
        == 1
    )


def test_without_a_proxy_the_contest_is_recorded_unscored_and_says_so(fleet: Fleet) -> None:
    did = fleet.id(fleet.denied[2])
    body = {"statement": "Wrong debt", "corrected_values": {"debt_to_income": 0.1}}
    code, filed, _ = request(fleet.hub_b, "POST", f"/decisions/{did}/contest", CASE2, body)
    assert code == 201, filed
    assert filed["rescore"]["decision_id"] is None
    assert "hub.models.credit.proxy_url" in filed["rescore"]["error"]
    assert filed["corrected_values"] == {"debt_to_income": 0.1}
    metrics = request(fleet.hub_b, "GET", "/metrics", None)[1].decode()
    assert "sidecar_contest_rescore_failures_total 0.0" in metrics


def test_case_handlers_at_the_hub_read_what_their_role_allows(fleet: Fleet) -> None:
    hub = fleet.hub_a
    mine = fleet.id(fleet.denied[3])
    assert request(hub, "POST", f"/decisions/{mine}/contest", CASE, {"statement": "Mine"})[0] in (
        200,
        201,
    )
    # Not the lookup (group attributes live there), not the plot, not the queue or the chain.
    for path in (f"/decisions/{mine}", f"/decisions/{mine}/plot", "/review/items", "/review/audit"):
        assert request(hub, "GET", path, CASE)[0] == 403, path
    # Another case handler's contest: neither its state nor, in the notice, that it was filed.
    assert request(hub, "GET", f"/decisions/{mine}/contest", CASE2)[0] == 403
    notice = request(hub, "GET", f"/decisions/{mine}/notice?format=json", CASE2)[1]
    assert notice["contest"]["filed"] is None
    own = request(hub, "GET", f"/decisions/{mine}/notice?format=json", CASE)[1]
    assert own["contest"]["filed"]["status"] == "pending"
    # Reviewers read contests, but filing is the front office's (and an admin's).
    assert request(hub, "GET", f"/decisions/{mine}/contest", REVIEWER)[0] == 200
    other = fleet.id(fleet.approved[0])
    assert (
        request(hub, "POST", f"/decisions/{other}/contest", REVIEWER, {"statement": "x"})[0] == 403
    )
    assert request(hub, "GET", f"/decisions/{mine}/reasons", None)[0] == 401
    unknown = f"{uuid.uuid4().hex}/0"
    assert request(hub, "GET", f"/decisions/{unknown}/reasons", CASE)[0] == 404
    assert request(hub, "POST", f"/decisions/{unknown}/contest", CASE, {"statement": "x"})[0] == 404
