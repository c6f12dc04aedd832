"""The demo model server over real HTTP: every protocol agrees with onnxruntime called directly."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from sidecar.demo.model import ModelMeta

Rows = npt.NDArray[np.float32]


def json_rows(x: Rows) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in x.tolist()]


def expected(reference: ort.InferenceSession, x: Rows) -> tuple[list[int], Rows]:
    label, proba = reference.run(None, {"input": x})
    return label.tolist(), proba


def post(url: str, body: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=10)


def check_predictions(resp: httpx.Response, meta: ModelMeta, label: list[int], proba: Rows) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    np.testing.assert_allclose(body["predictions"], proba[:, 1], rtol=0, atol=1e-7)
    np.testing.assert_allclose(body["probabilities"], proba, rtol=0, atol=1e-7)
    assert body["labels"] == [meta.class_labels[i] for i in label]


# --- V2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/credit/infer", "/v2/models/credit/versions/1/infer"])
def test_v2_matrix_tensor(
    model_server: str, reference: ort.InferenceSession, rows: Rows, path: str
) -> None:
    label, proba = expected(reference, rows)
    flat = [v for row in json_rows(rows) for v in row]
    resp = post(
        model_server + path,
        {
            "id": "req-7",
            "inputs": [
                {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": flat}
            ],
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == "credit"
    assert body["model_version"] == "1"
    assert body["id"] == "req-7"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == ["label", "probabilities"]
    assert outputs["label"] == {
        "name": "label",
        "shape": [len(rows)],
        "datatype": "INT64",
        "data": label,
    }
    assert outputs["probabilities"]["shape"] == [len(rows), 2]
    assert outputs["probabilities"]["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (-1, 2)), proba, rtol=0, atol=1e-7
    )


def test_v2_nested_fp64_data_and_requested_output(
    model_server: str, reference: ort.InferenceSession, rows: Rows
) -> None:
    _, proba = expected(reference, rows[:3])
    resp = post(
        model_server + "/v2/models/credit/infer",
        {
            "inputs": [
                {"name": "input", "shape": [3, 10], "datatype": "FP64", "data": json_rows(rows[:3])}
            ],
            "outputs": [{"name": "probabilities"}],
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [o["name"] for o in body["outputs"]] == ["probabilities"]
    assert isinstance(body["id"], str) and body["id"]
    np.testing.assert_allclose(np.reshape(body["outputs"][0]["data"], (3, 2)), proba, atol=1e-7)


@pytest.mark.parametrize("column_shape", ["flat", "column"])
def test_v2_one_tensor_per_feature(
    model_server: str,
    meta: ModelMeta,
    reference: ort.InferenceSession,
    rows: Rows,
    column_shape: str,
) -> None:
    label, proba = expected(reference, rows)
    cols = json_rows(rows.T.copy())
    n = len(rows)
    inputs = [
        {
            "name": name,
            "shape": [n] if column_shape == "flat" else [n, 1],
            "datatype": "FP32",
            "data": cols[i],
        }
        # Reversed: tensors are matched by name, not position.
        for i, name in reversed(list(enumerate(meta.feature_names)))
    ]
    resp = post(model_server + "/v2/models/credit/infer", {"inputs": inputs})
    assert resp.status_code == 200, resp.text
    outputs = {o["name"]: o["data"] for o in resp.json()["outputs"]}
    assert outputs["label"] == label
    np.testing.assert_allclose(np.reshape(outputs["probabilities"], (-1, 2)), proba, atol=1e-7)


def test_missing_value_is_not_zero(
    model_server: str, reference: ort.InferenceSession, rows: Rows
) -> None:
    # A null must reach the trees as NaN (their default direction), not as 0.
    row = rows[:1].copy()
    row[0, 6] = np.nan  # employment_years
    zero = row.copy()
    zero[0, 6] = 0.0
    _, p_nan = expected(reference, row)
    _, p_zero = expected(reference, zero)
    assert not np.allclose(p_nan, p_zero), "pick a row where missing and zero differ"
    resp = post(model_server + "/v1/models/credit:predict", {"instances": json_rows(row)})
    np.testing.assert_allclose(resp.json()["probabilities"], p_nan, atol=1e-7)


# --- KServe V1 and MLflow ------------------------------------------------------------------


def test_v1_instances_as_lists_and_records(
    model_server: str, meta: ModelMeta, reference: ort.InferenceSession, rows: Rows
) -> None:
    label, proba = expected(reference, rows)
    lists = json_rows(rows)
    check_predictions(
        post(model_server + "/v1/models/credit:predict", {"instances": lists}), meta, label, proba
    )
    records = [dict(zip(meta.feature_names, r, strict=True)) for r in lists]
    check_predictions(
        post(model_server + "/v1/models/credit:predict", {"instances": records}), meta, label, proba
    )
    check_predictions(
        post(model_server + "/v1/models/credit:predict", {"inputs": lists}), meta, label, proba
    )


def test_mlflow_formats(
    model_server: str, meta: ModelMeta, reference: ort.InferenceSession, rows: Rows
) -> None:
    label, proba = expected(reference, rows)
    lists = json_rows(rows)
    names = list(meta.feature_names)
    records = [dict(zip(names, r, strict=True)) for r in lists]
    shuffled = names[::-1]
    split = {"columns": shuffled, "data": [[rec[c] for c in shuffled] for rec in records]}
    columns = {n: [r[i] for r in lists] for i, n in enumerate(names)}
    for body in (
        {"dataframe_split": split},
        {"dataframe_split": {"data": lists}},
        {"dataframe_records": records},
        {"instances": lists},
        {"inputs": lists},
        {"inputs": columns},
    ):
        check_predictions(post(model_server + "/invocations", body), meta, label, proba)


def test_metadata_and_health(model_server: str, meta: ModelMeta) -> None:
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/credit/ready",
        "/ping",
        "/v1/models/credit",
    ):
        assert httpx.get(model_server + path).status_code == 200, path
    v2 = httpx.get(model_server + "/v2/models/credit").json()
    assert v2["name"] == "credit" and v2["versions"] == ["1"]
    assert v2["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 10]}]
    assert v2["parameters"]["feature_names"] == list(meta.feature_names)
    assert httpx.get(model_server + "/v2/models/credit/versions/1").json() == v2
    assert httpx.get(model_server + "/v1/models/credit").json() == {"name": "credit", "ready": True}


# --- client errors -------------------------------------------------------------------------

_ROW = [35, 55.0, 0.3, 120, 0, 20.0, None, 0.4, 5, 1]
_V2 = "/v2/models/credit/infer"


def _tensor(**over: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": _ROW, **over}]
    }


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        (_V2, {"inputs": []}, "non-empty list"),
        (_V2, {"nope": 1}, "'inputs'"),
        (_V2, [1, 2], "JSON object"),
        (_V2, _tensor(data=_ROW[:9]), "holds 10 values, data has 9"),
        (_V2, _tensor(shape=[10]), "shape must be [N, 10]"),
        (_V2, _tensor(datatype="BYTES"), "not numeric"),
        (_V2, _tensor(data=["a", *_ROW[1:]]), "'a' is not a number"),
        (_V2, _tensor(data=[True, *_ROW[1:]]), "not a number"),
        (_V2, _tensor(shape=[1, -10]), "non-negative"),
        (_V2, {**_tensor(), "outputs": [{"name": "margin"}]}, "unknown output 'margin'"),
        (_V2, {**_tensor(), "id": 5}, "'id' must be a string"),
        (
            _V2,
            {"inputs": [{"name": "age", "shape": [1], "datatype": "FP32", "data": [30]}]},
            "missing features",
        ),
        (
            _V2,
            {
                "inputs": [
                    {"name": "age", "shape": [1], "datatype": "FP32", "data": [30]},
                    {"name": "colour", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            "'colour' is not a feature",
        ),
        ("/v1/models/credit:predict", {"instances": [_ROW, _ROW[:5]]}, "different lengths"),
        ("/v1/models/credit:predict", {"instances": _ROW}, "one flat row"),
        ("/v1/models/credit:predict", {"instances": []}, "non-empty list"),
        ("/v1/models/credit:predict", {"rows": [_ROW]}, "'instances'"),
        ("/v1/models/credit:predict", {"instances": [{"age": 30}]}, "missing ["),
        ("/v1/models/credit:predict", {"instances": [[{"x": 1}] * 10]}, "not a number"),
        (
            "/invocations",
            {"dataframe_split": {"columns": ["a"], "data": [[1]]}},
            "exactly the features",
        ),
        ("/invocations", {"instances": [_ROW], "inputs": [_ROW]}, "exactly one of"),
        ("/invocations", {"dataframe_records": [_ROW]}, "list of objects"),
        ("/invocations", {"inputs": {"age": [1]}}, "missing columns"),
    ],
)
def test_bad_input_is_400_naming_the_problem(
    model_server: str, path: str, body: Any, fragment: str
) -> None:
    resp = post(model_server + path, body)
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]


def test_not_json_and_empty_body(model_server: str) -> None:
    resp = httpx.post(
        model_server + _V2, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    resp = httpx.post(model_server + _V2, content=b"")
    assert resp.status_code == 400 and "empty body" in resp.json()["error"]


def test_unknown_model_version_route_and_method(model_server: str) -> None:
    resp = post(model_server + "/v2/models/other/infer", _tensor())
    assert resp.status_code == 404 and "'other' not found" in resp.json()["error"]
    resp = post(model_server + "/v2/models/credit/versions/9/infer", _tensor())
    assert resp.status_code == 404 and "no such version" in resp.json()["error"]
    assert post(model_server + "/v1/models/other:predict", {"instances": [_ROW]}).status_code == 404
    assert httpx.get(model_server + "/nowhere").status_code == 404
    assert httpx.get(model_server + _V2).status_code == 405
    assert httpx.delete(model_server + "/v2/models/credit").status_code == 405


def test_body_over_the_limit_is_413(model_server: str) -> None:
    resp = httpx.post(model_server + _V2, content=b" " * (17 * 1024 * 1024), timeout=30)
    assert resp.status_code == 413


def test_command_line_port_zero_prints_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.demo.model_server", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("model server: http://127.0.0.1:"), line
        url = line.split()[2]
        from sidecar.demo.process import wait_ready

        wait_ready(url + "/v2/health/ready", 30, proc)
        assert post(url + "/v1/models/credit:predict", {"instances": [_ROW]}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_command_line_bad_model_exits_2(tmp_path: Any) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.demo.model_server", "--port", "0", "--model", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot load model" in done.stderr
