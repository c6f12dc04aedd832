"""The settings that name an HTTP header (groups.header, review.header) share one check."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, load_settings


@pytest.mark.parametrize("section", ["groups", "review"])
def test_a_header_setting_is_lower_cased(section: str) -> None:
    s = load_settings(environ={f"SIDECAR_{section.upper()}__HEADER": "X-Team_Tag"})
    assert getattr(s, section).header == "x-team_tag"


@pytest.mark.parametrize("section", ["groups", "review"])
@pytest.mark.parametrize("bad", ["x team", "x:team", "", "x-é"])
def test_a_header_setting_that_is_no_header_name_is_refused(section: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.header.*must be an HTTP header name"):
        load_settings(environ={f"SIDECAR_{section.upper()}__HEADER": bad})
