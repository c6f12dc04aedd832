"""Recourse on the demo credit model: options flip the decision on the model's own runtime,
within directions and bounds; the one-feature search is exact against a brute-force scan."""

from __future__ import annotations

import math

import numpy as np

from explainers.fidelity import margins
from explainers.loader import load_model
from explainers.recourse import Actionable, Favourable, candidates, search
from sidecar.demo.data import generate
from sidecar.demo.model import MODEL_PATH, people_settings
from tests.people.people_helpers import CASE, FEATURES, Made, Runtime

ACTIONABLE = people_settings()["recourse"]["features"]


def test_options_flip_the_decision_and_respect_directions_and_bounds(made: Made) -> None:
    runtime = Runtime()
    offered = 0
    for i in made.denied:
        status, body, _ = made.get(f"/decisions/{made.id(i)}/recourse", CASE)
        assert status == 200, body
        assert body["confirmed_by"] == "onnxruntime"
        assert "not a promise" in body["what_it_is"]
        assert len(body["options"]) <= 3
        for option in body["options"]:
            row = list(made.rows[i])
            for change in option["changes"]:
                name = change["feature"]
                rule = ACTIONABLE[name]  # only actionable features change
                j = FEATURES.index(name)
                assert change["from"] == float(str(np.float32(row[j])))
                to = change["to"]
                if rule["direction"] == "up":
                    assert to > change["from"]
                else:
                    assert to < change["from"]
                assert rule.get("min", -math.inf) <= to <= rule.get("max", math.inf)
                assert abs(to / rule["step"] - round(to / rule["step"])) < 1e-6
                row[j] = to
            label, proba = runtime.run([row])
            assert int(label[0]) == 0, (i, option)  # repaid: favourable
            assert abs(float(proba[0, 0]) - option["favourable_probability"]) < 1e-3
            offered += 1
    assert offered >= 5


def test_a_favourable_decision_needs_no_recourse(made: Made) -> None:
    status, body, _ = made.get(f"/decisions/{made.id(made.approved[0])}/recourse", CASE)
    assert status == 200 and body["options"] == [] and "favourable" in body["note"]


def test_one_feature_search_is_exact_against_a_fine_scan() -> None:
    loaded = load_model(MODEL_PATH)
    ens = loaded.ensemble
    fav = Favourable.of(ens.n_outputs, ["repaid", "default"], "repaid")
    X = ens.prepare(generate(300, seed=21).features)
    denied = np.where(~fav.holds(ens, margins(ens, X)))[0]
    j = FEATURES.index("debt_to_income")
    compared = 0
    for r in denied:
        x = X[r]
        if math.isnan(x[j]):
            continue
        found = search(
            ens,
            fav,
            x,
            [Actionable(j, "down", low=0.0)],
            max_options=1,
            max_pair_candidates=16,
            reference=loaded.reference,
        )
        # A fine scan from 0 to the person's value, blind to the thresholds: no value on it
        # that flips the decision may lie nearer the person's value than the option found.
        values = np.linspace(0.0, float(x[j]), 20_001)[:-1]
        rows = np.repeat(x[None, :], values.size, axis=0)
        rows[:, j] = values
        flips = fav.holds(ens, margins(ens, ens.prepare(rows)))
        if not flips.any():
            assert found.options == []
            continue
        (option,) = found.options
        assert option.changes[j] >= float(values[flips].max())
        assert option.changes[j] < x[j]
        assert option.confirmed
        compared += 1
    assert compared >= 3


def test_pairs_are_searched_when_no_feature_flips_alone_and_capped() -> None:
    loaded = load_model(MODEL_PATH)
    ens = loaded.ensemble
    fav = Favourable.of(ens.n_outputs, ["repaid", "default"], "repaid")
    X = ens.prepare(generate(300, seed=21).features)
    denied = np.where(~fav.holds(ens, margins(ens, X)))[0]
    income, debt = FEATURES.index("income"), FEATURES.index("debt_to_income")
    acts = [Actionable(income, "up"), Actionable(debt, "down", low=0.0)]
    for r in denied:
        wide = search(
            ens,
            fav,
            X[r],
            acts,
            max_options=3,
            max_pair_candidates=10**6,
            reference=loaded.reference,
        )
        if any(len(o.changes) == 2 for o in wide.options):
            break
    else:
        raise AssertionError("no denied row needs a pair")
    assert not wide.pairs_capped
    (pair,) = wide.options  # neither flips alone, so the pair is the one option
    rows = np.repeat(X[r][None, :], 1, axis=0)
    for j, v in pair.changes.items():
        rows[0, j] = v
    assert fav.holds(ens, np.asarray(loaded.reference(rows), dtype=np.float64)[:, -1:])[0]
    singles = sum(candidates(ens, X[r], a).size for a in acts)
    capped = search(ens, fav, X[r], acts, max_options=3, max_pair_candidates=16, reference=None)
    assert capped.pairs_capped
    assert capped.scored <= singles + 16
