"""An outcome the sink cannot keep is answered `not_recorded` and accounted for in a gap record."""

from __future__ import annotations

import httpx

from sidecar.decisions import new_call_id
from tests.eventlib import validate_event
from tests.outcomes.helpers import MODEL, TOKENS, WRITER, read_events, v2_model
from tests.servers import running_sidecar, wait_until


def test_a_failing_sink_answers_not_recorded_with_a_gap_record_and_a_retry_succeeds() -> None:
    with v2_model() as up, running_sidecar(up.url, model=MODEL, auth={"tokens": TOKENS}) as svc:
        events = svc.settings.sink.directory
        topics = svc.settings.kafka
        # The outcomes folder's name taken by a plain file: every write there fails.
        blocker = events / topics.topic_outcomes
        blocker.write_text("not a folder")
        did = f"{new_call_id()}/0"
        body = {
            "outcomes": [
                {"decision_id": did, "outcome": "repaid", "observed_at": "2027-01-01T00:00:00Z"}
            ]
        }
        auth = {"authorization": f"Bearer {WRITER}"}
        r = httpx.post(f"{svc.control_url}/outcomes", json=body, headers=auth)
        assert r.status_code == 200
        result = r.json()["results"][0]
        assert result["status"] == "not_recorded" and "post it again" in result["error"]

        def gap_records() -> list[dict[str, object]]:
            return read_events(events, topics.topic_gaps)

        wait_until(lambda: bool(gap_records()), 5, "a gap record")
        (gap,) = gap_records()
        validate_event(gap)
        assert gap["by_kind"] == {"outcome": 1} and gap["reason"] == "spool_error"

        blocker.unlink()
        r = httpx.post(f"{svc.control_url}/outcomes", json=body, headers=auth)
        assert r.json()["results"][0]["status"] == "unknown_decision"
        (event,) = read_events(events, topics.topic_outcomes)
        assert event["decision_id"] == did and event["event_id"] == result["event_id"]
