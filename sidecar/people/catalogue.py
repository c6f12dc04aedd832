"""The reason catalogue: plain words for each feature and direction, in one language.

A TOML file::

    language = "en"

    [features.debt_to_income]
    label = "Debt compared with income"
    up = "Debt compared with income is too high"
    down = "Debt compared with income is too low"

    [notice]
    title = "Your credit decision"
    contest = "If you think this decision is wrong, ..."

`up` is the text for a value that is too high (a lower one would have helped),
`down` for one too low, `text` for either. A feature or direction without a
text falls back to the feature's label (or name), and the reason says so.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config import ConfigError

KEY = "reasons.catalogue"
# What the notice says when the catalogue does not: English, plain, and careful not to promise.
DEFAULT_NOTICE: dict[str, str] = {
    "title": "About your decision",
    "favourable": "The decision was favourable to you. There are no reasons against you to give.",
    "unfavourable": "The decision was not favourable to you. These were the main reasons:",
    "recourse": (
        "These changes would each have led to a favourable decision from the same model,"
        " with everything else as it was:"
    ),
    "recourse_caveat": (
        "This is what the model computes, not a promise of approval: a new application is"
        " decided on everything it says then, and other checks may apply."
    ),
    "no_recourse": "No change within what you can act on was found that would change the decision.",
    "contest": (
        "You may contest this decision and ask for a person to review it. Tell us why you"
        " think it is wrong, and correct any information that was wrong. Quote the reference"
        " below."
    ),
}
_DIRECTIONS = ("up", "down", "text")


@dataclass(frozen=True, slots=True)
class Text:
    """A reason's words and where they came from ("catalogue" or "feature_name")."""

    text: str
    source: str


@dataclass(frozen=True)
class Catalogue:
    language: str = "en"
    labels: dict[str, str] = field(default_factory=dict)
    texts: dict[tuple[str, str], str] = field(default_factory=dict)
    notice: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NOTICE))

    def label(self, feature: str) -> str:
        return self.labels.get(feature, feature)

    def reason(self, feature: str, direction: str | None) -> Text:
        """The text for `feature` moved in `direction` (None: the value's direction is unknown)."""
        if direction is not None and (feature, direction) in self.texts:
            return Text(self.texts[feature, direction], "catalogue")
        if (feature, "text") in self.texts:
            return Text(self.texts[feature, "text"], "catalogue")
        return Text(self.label(feature), "feature_name")


def _table(value: Any, where: str, setting: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{setting}': {where} must be a table")
    return value


def parse_catalogue(
    data: Mapping[str, Any], features: Sequence[str], origin: str, setting: str = KEY
) -> Catalogue:
    """Check and read a catalogue's TOML data; ConfigError names the key (`setting`: the
    hub names each model's) and the file."""
    unknown = set(data) - {"language", "features", "notice"}
    if unknown:
        raise ConfigError(f"config key '{setting}' ({origin}): unknown key(s) {sorted(unknown)}")
    language = data.get("language")
    if not isinstance(language, str) or not 2 <= len(language) <= 35:
        raise ConfigError(f"config key '{setting}' ({origin}): language must be a tag such as 'en'")
    labels: dict[str, str] = {}
    texts: dict[tuple[str, str], str] = {}
    known = set(features)
    for name, entry in _table(data.get("features", {}), "features", setting).items():
        if known and name not in known:
            raise ConfigError(
                f"config key '{setting}' ({origin}): features.{name} is not a feature"
            )
        for key, value in _table(entry, f"features.{name}", setting).items():
            if key not in (*_DIRECTIONS, "label") or not isinstance(value, str) or not value:
                raise ConfigError(
                    f"config key '{setting}' ({origin}): features.{name}.{key} must be one of "
                    "up, down, text, label, with a non-empty text"
                )
            if key == "label":
                labels[name] = value
            else:
                texts[name, key] = value
    notice = dict(DEFAULT_NOTICE)
    for key, value in _table(data.get("notice", {}), "notice", setting).items():
        if key not in DEFAULT_NOTICE or not isinstance(value, str):
            raise ConfigError(
                f"config key '{setting}' ({origin}): notice.{key} is not one of {sorted(DEFAULT_NOTICE)}"
            )
        notice[key] = value
    return Catalogue(language=language, labels=labels, texts=texts, notice=notice)


def load_catalogue(path: Path | None, features: Sequence[str], setting: str = KEY) -> Catalogue:
    """The configured catalogue, read once at start; the built-in English texts without one."""
    if path is None:
        return Catalogue()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config key '{setting}': cannot read {path} ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config key '{setting}': {path} is not valid TOML ({exc})") from None
    return parse_catalogue(data, features, str(path), setting)
