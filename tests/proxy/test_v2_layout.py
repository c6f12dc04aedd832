"""The V2 answer's layout (which output is the probabilities, which the label), found once per set of names."""

from __future__ import annotations

from typing import Any

from sidecar.dataplane.protocols import v2


def _out(name: str, data: list[Any], shape: list[int]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "FP32", "data": data}


def _answer(*outputs: dict[str, Any]) -> dict[str, Any]:
    return {"outputs": list(outputs)}


def test_layout_is_the_named_search_whatever_the_order() -> None:
    probs = _out("predict_proba", [0.2, 0.8], [1, 2])
    label = _out("label", [1], [1])
    other = _out("embedding", [0.5], [1])
    for outputs in ([probs, label], [label, probs], [other, probs, label], [probs, other]):
        # Twice: the second call is answered from the cache, and must agree with the first.
        for _ in range(2):
            [row] = v2.predictions_of(_answer(*outputs), 1, ["no", "yes"])
            assert row.probabilities == [0.2, 0.8] and row.confidence == 0.8
            # The label output when there is one, else the first output that is not the
            # probabilities (as before the cache).
            assert row.prediction == (1 if label in outputs else 0.5)
    # Without a probabilities output the label is found alone.
    [row] = v2.predictions_of(_answer(other, label), 1, [])
    assert (row.prediction, row.probabilities) == (1, None)
    [row] = v2.predictions_of(_answer(_out("scores", [0.9, 0.1], [1, 2])), 1, ["a", "b"])
    assert (row.prediction, row.confidence) == ("a", 0.9)


def test_a_stream_of_new_output_names_does_not_grow_the_cache() -> None:
    for i in range(10 * v2._LAYOUT_CACHE):
        v2.predictions_of(_answer(_out(f"label{i}", [1], [1])), 1, [])
        assert len(v2._LAYOUTS) <= v2._LAYOUT_CACHE
    # An answer with more outputs than a cached key may name is searched, never kept.
    many = [_out(f"o{i}", [i], [1]) for i in range(v2._LAYOUT_NAMES + 1)]
    v2._LAYOUTS.clear()
    [row] = v2.predictions_of(_answer(*many), 1, [])
    assert row.prediction == 0 and not v2._LAYOUTS
