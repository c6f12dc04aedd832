"""Bad [reasons] / [recourse] configuration stops the start, naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, load_settings
from sidecar.people.catalogue import load_catalogue
from sidecar.people.context import build_context
from tests.people.people_helpers import FEATURES, sections


def _context(**extra: dict[str, Any]) -> None:
    s = sections(**extra)
    s["model"] = {k: v for k, v in s["model"].items() if k not in ("artifact", "background")}
    settings = load_settings(environ={}, overrides=s)
    build_context(settings, None)


def test_recourse_on_an_unknown_or_protected_feature_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"recourse.features.salary"):
        _context(recourse={"features": {"salary": {"direction": "up"}}})
    # age_band is derived from age: age can be neither a reason nor a lever.
    with pytest.raises(ConfigError, match=r"recourse.features.age.*derived"):
        _context(recourse={"features": {"age": {"direction": "down"}}})
    with pytest.raises(ConfigError, match=r"reasons.exclude"):
        _context(reasons={"exclude": ["postcode"]})
    with pytest.raises(ConfigError, match=r"recourse needs model.artifact"):
        _context()  # the demo's actionable features, with no model to search


def test_bounds_and_directions_are_checked_by_the_settings() -> None:
    with pytest.raises(ConfigError, match=r"recourse.features.income"):
        load_settings(
            environ={},
            overrides={
                "recourse": {"features": {"income": {"direction": "up", "min": 5, "max": 1}}}
            },
        )
    with pytest.raises(ConfigError, match=r"recourse.features.income.direction"):
        load_settings(
            environ={}, overrides={"recourse": {"features": {"income": {"direction": "sideways"}}}}
        )
    with pytest.raises(ConfigError, match=r"reasons.count"):
        load_settings(environ={}, overrides={"reasons": {"count": 0}})
    with pytest.raises(ConfigError, match=r"auth.group_attribute_roles"):
        load_settings(environ={}, overrides={"auth": {"group_attribute_roles": ["case_handler"]}})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('language = "en"\n[features.salary]\nup = "x"\n', "features.salary is not a feature"),
        ('language = "en"\n[features.income]\nsideways = "x"\n', "features.income.sideways"),
        ('language = "en"\n[features.income]\nup = ""\n', "features.income.up"),
        ('[features.income]\nup = "x"\n', "language"),
        ('language = "en"\nfeatures = 3\n', "features must be a table"),
        ('language = "en"\n[notice]\nfooter = "x"\n', "notice.footer"),
        ('language = "en"\ncolour = "red"\n', "unknown key"),
        ("language = ", "not valid TOML"),
    ],
)
def test_a_bad_catalogue_names_the_key_and_the_problem(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "reasons.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"reasons.catalogue") as err:
        load_catalogue(path, FEATURES)
    assert match in str(err.value)
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_catalogue(tmp_path / "missing.toml", FEATURES)


def test_a_missing_text_falls_back_to_the_feature_name_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "reasons.toml"
    path.write_text(
        'language = "de"\n[features.income]\nlabel = "Einkommen"\ndown = "Zu niedrig"\n'
    )
    cat = load_catalogue(path, FEATURES)
    assert cat.language == "de"
    assert cat.reason("income", "down").source == "catalogue"
    fallback = cat.reason("income", "up")
    assert (fallback.text, fallback.source) == ("Einkommen", "feature_name")
    assert cat.reason("loan_amount", None).text == "loan_amount"


def test_config_check_reads_the_catalogue(tmp_path: Path) -> None:
    from sidecar.config.check import check_settings

    bad = tmp_path / "reasons.toml"
    bad.write_text('language = "en"\n[features.salary]\nup = "x"\n')
    settings = load_settings(
        environ={},
        overrides={
            "model": {"feature_names": FEATURES},
            "reasons": {"catalogue": str(bad)},
            "review": {"db_path": str(tmp_path / "review.db")},
            "sink": {"directory": str(tmp_path / "events")},
        },
    )
    with pytest.raises(ConfigError, match=r"reasons.catalogue.*salary"):
        check_settings(settings)
