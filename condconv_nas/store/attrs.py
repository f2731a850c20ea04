"""Attributes of at most 1,024 characters: a longer value is stored in parts and read back whole.

optuna-dashboard cuts an attribute's text at 1,024 characters, and `optuna studies` prints every
attribute on one line. A value whose text is longer (a study's settings, a trial's spec, the
per-image holdout results of a large test split) is stored as its compact JSON text in parts
`key:1`, `key:2`, ... of at most `PART` characters each, under `key` a marker `{"_parts": n}`.
Readers get the whole value back through `whole`; values stored before this existed read as
they are. Torch- and Optuna-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["LIMIT", "PART", "PARTS", "in_parts", "is_marker", "set_study_attr", "shown_length",
           "whole"]

LIMIT = 1024  # optuna-dashboard's MAX_ATTR_LENGTH
PART = 1000  # characters of JSON text a part holds (a string is shown as it is)
PARTS = "_parts"


def shown_length(value: Any) -> int:
    """The length of a value as optuna-dashboard shows it: a string as is, else its JSON text."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, bool | int | float):
        return len(str(value))
    return len(json.dumps(value))


def in_parts(key: str, value: Any) -> dict[str, Any]:
    """The attributes that store `value` under `key`: itself when short, else its parts."""
    if shown_length(value) <= LIMIT:
        return {key: value}
    text = json.dumps(value, separators=(",", ":"))
    parts = [text[i:i + PART] for i in range(0, len(text), PART)]
    # The parts first: a reader that sees the marker finds every part stored.
    return {**{f"{key}:{i}": p for i, p in enumerate(parts, 1)}, key: {PARTS: len(parts)}}


def is_marker(value: Any) -> bool:
    """Whether a stored value is the marker of a value stored in parts."""
    return type(value) is dict and len(value) == 1 and PARTS in value


def whole(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value stored under `key` (put together from its parts), or `default` when absent."""
    value = attrs.get(key, default)
    if not is_marker(value):
        return value
    try:
        return json.loads("".join(attrs[f"{key}:{i}"] for i in range(1, value[PARTS] + 1)))
    except (KeyError, ValueError):  # a part missing (a write cut short): as if never stored
        return default


def set_study_attr(study: Any, key: str, value: Any) -> None:
    """Store a study attribute (anything with Optuna's `set_user_attr`), in parts when long."""
    for k, v in in_parts(key, value).items():
        study.set_user_attr(k, v)
