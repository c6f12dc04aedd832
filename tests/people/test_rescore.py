"""Scoring corrected values: the call each protocol gets, and a proxy that cannot answer."""

from __future__ import annotations

import orjson

from sidecar.people.contest import _request, corrected_row, rescore
from tests.servers import free_port

NAMES = ["income", "debt"]


def _decision(protocol: str) -> dict[str, object]:
    return {
        "decision_id": "abc/2",
        "protocol": protocol,
        "model_name": "credit",
        "model_version": "1",
    }


def test_each_protocol_gets_its_own_call() -> None:
    row = corrected_row([50.0, 0.4], NAMES, {"debt": 0.1})
    assert row == [50.0, 0.1]
    path, body = _request(_decision("v2"), NAMES, row, "input")
    assert path == "/v2/models/credit/versions/1/infer"
    assert orjson.loads(body)["inputs"][0] == {
        "name": "input",
        "shape": [1, 2],
        "datatype": "FP32",
        "data": [50.0, 0.1],
    }
    path, body = _request(_decision("kserve_v1"), NAMES, row, "input")
    assert (path, orjson.loads(body)) == ("/v1/models/credit:predict", {"instances": [[50.0, 0.1]]})
    path, body = _request(_decision("mlflow"), NAMES, row, "input")
    assert path == "/invocations"
    assert orjson.loads(body)["dataframe_split"] == {"columns": NAMES, "data": [[50.0, 0.1]]}


def test_a_proxy_that_cannot_answer_leaves_the_contest_without_an_answer() -> None:
    got = rescore(
        f"http://127.0.0.1:{free_port()}",
        _decision("v2"),
        [1.0, 2.0],
        names=NAMES,
        labels=["repaid", "default"],
        input_name="input",
        explain_header="x-explain",
        timeout_s=2.0,
    )
    assert got["decision_id"] is None and got["request_id"] == "contest:abc/2"
    assert got["error"].startswith("the proxy could not be reached")
