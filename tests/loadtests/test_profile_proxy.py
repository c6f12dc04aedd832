"""The profile breakdown: py-spy's raw stacks put in buckets by their innermost known frame."""

from __future__ import annotations

from loadtests.profile_proxy import WRITES, breakdown, classify, report

_LOOP = "<module> (sidecar:6);main (sidecar/cli.py:37);run (sidecar/commands/serve.py:41)"
_STAGE = "Thread.run (threading.py:982);Pipeline._run (sidecar/pipeline/queue.py:209)"


def test_the_innermost_known_frame_decides_the_bucket() -> None:
    parse = f"{_LOOP};DataPlane._inference (sidecar/dataplane/http.py:129);Decider.decide (sidecar/dataplane/decide.py:221);parse (sidecar/dataplane/protocols/v2.py:178)"
    assert classify(parse).startswith("parse (protocols/")
    decide = f"{_LOOP};DataPlane._inference (sidecar/dataplane/http.py:129);Decider.decide (sidecar/dataplane/decide.py:215)"
    assert classify(decide).startswith("decide (answer's JSON")
    read = f"{_LOOP};DataPlane._inference (sidecar/dataplane/http.py:112);Decider.read_request (sidecar/dataplane/decide.py:147)"
    assert classify(read).startswith("read request")
    # The sink's write is the sink's, though the publish stage called it.
    sink = f"{_STAGE};Stages.publish (sidecar/pipeline/stages.py:71);FileSink.publish_many (sidecar/sinks/files.py:150)"
    assert classify(sink) == "sinks (events written)"
    event = f"{_STAGE};Stages.publish (sidecar/pipeline/stages.py:71);decision_event (sidecar/sinks/events.py:157)"
    assert classify(event) == "event bodies"
    assert classify(_LOOP) == "event loop (asyncio, uvloop)"
    assert classify("Thread.run (threading.py:982);mystery (elsewhere.py:1)") == "other"


def test_breakdown_sums_counts_and_report_scales_to_the_measured_cpu() -> None:
    raw = "\n".join(
        [
            f"{_LOOP};HttpConnection.data_received (sidecar/dataplane/server.py:115) 30",
            f"{_LOOP} 10",
            f"{_STAGE};DecisionStore.add (sidecar/control/store.py:122) 50",
            f"{_LOOP};Exchange.respond (sidecar/dataplane/exchange.py:177);HttpConnection.write (sidecar/dataplane/server.py:413) 10",
            "not a stack line",
        ]
    )
    counts = breakdown(raw)
    assert counts == {
        "http server (parse head, body)": 40,
        "event loop (asyncio, uvloop)": 10,
        "lookup store": 50,
        WRITES: 10,
    }
    text = report(counts, 200.0)
    # Half of 200 µs; the writes are a tenth, counted within the buckets, not beside them.
    assert "lookup store" in text and "100.0" in text
    assert next(line for line in text.splitlines() if line.startswith(WRITES)).endswith("20.0")
    assert "200.0" in text.splitlines()[-1]
