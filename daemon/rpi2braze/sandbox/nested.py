"""Nested custom attributes (objects and arrays of objects): Braze's validity rules and how they apply.

Validity (braze-users-track.md §5): keys without ".", "$" or spaces and at most 255 characters; string values
at most 255 characters; no `null` inside; dates only as `{"$time": "..."}` in a documented format with a year
in 0..3000; at most 100 KB per attribute. The caller drops every nested update of an object if one is
invalid (see `custom_attributes`).

Choices where Braze is silent: `$time` values are stored as sent; `$update` changes every item that matches
(as `$remove` removes every match); without `_merge_objects`, `$update` replaces the matching item with
`$new_object`.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

import orjson

NESTED_MAX_BYTES = 100_000
MAX_KEY_CHARS = 255
MAX_STRING_CHARS = 255
MAX_YEAR = 3000
TIME_KEY = "$time"
OBJECT_ARRAY_OPERATORS = ("$add", "$remove", "$update")   # applied in this order (Braze)
_FORBIDDEN_KEY_CHARACTERS = (".", "$", " ")
# Braze's formats besides ISO 8601 (which datetime.fromisoformat reads).
_TIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S:%f%z",     # yyyy-MM-ddTHH:mm:ss:SSSZ
    "%m/%d/%Y",                   # MM/dd/yyyy
    "%a %b %d %H:%M:%S %Z %Y",    # ddd MM dd HH:mm:ss.TZD YYYY, read as ctime with a zone name
    "%a %b %d %H:%M:%S %Y",
)


def is_valid_time(value: Any) -> bool:
    """Return True if `value` is a time string in one of Braze's formats with a year Braze keeps."""
    if not isinstance(value, str):
        return False
    parsed = _parse_time(value)
    return parsed is not None and parsed.year <= MAX_YEAR


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        pass
    for layout in _TIME_FORMATS:
        try:
            return datetime.datetime.strptime(value, layout)
        except ValueError:
            continue
    return None


def is_time(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {TIME_KEY}


def is_object_array_edit(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= set(OBJECT_ARRAY_OPERATORS)


def is_valid_update(value: Any) -> bool:
    """Given a nested object, an array of objects or an `$add`/`$remove`/`$update` edit, return its validity."""
    if is_time(value) or len(orjson.dumps(value)) > NESTED_MAX_BYTES:
        return False  # `$time` belongs inside objects; a top-level time is a plain string
    if is_object_array_edit(value):
        return all(_valid_edit(operator, items) for operator, items in value.items())
    return _valid_tree(value)


def _valid_tree(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return len(value) <= MAX_STRING_CHARS
    if isinstance(value, list):
        return all(_valid_tree(item) for item in value)
    if is_time(value):
        return is_valid_time(value[TIME_KEY])
    if isinstance(value, dict):
        return all(_valid_key(key) and _valid_tree(item) for key, item in value.items())
    return True


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_CHARS and not any(char in key for char in _FORBIDDEN_KEY_CHARACTERS)


def _valid_edit(operator: str, items: Any) -> bool:
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return False
    if operator == "$add":
        return all(_valid_tree(item) for item in items)
    if operator == "$remove":
        return all(_valid_match(item) for item in items)
    return all(_valid_match(item) and _valid_new_object(item.get("$new_object")) for item in items)


def _valid_match(item: dict) -> bool:
    key = item.get("$identifier_key")
    return isinstance(key, str) and _valid_key(key) and item.get("$identifier_value") is not None


def _valid_new_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_time(value) and _valid_tree(value)


def apply_update(custom: dict, name: str, value: Any, merge_objects: bool) -> None:
    """Apply one valid nested update to the custom attributes `custom` (mutated in place)."""
    if is_object_array_edit(value):
        custom[name] = _edit_object_array(custom.get(name), value, merge_objects)
    elif isinstance(value, dict) and merge_objects and _is_plain_object(custom.get(name)):
        custom[name] = deep_merge(custom[name], value)
    else:
        custom[name] = copy.deepcopy(value)


def deep_merge(base: dict, update: dict) -> dict:
    """Return `base` with `update` merged in: objects merge key by key, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if _is_plain_object(value) and _is_plain_object(merged.get(key)):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_plain_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_time(value)


def _edit_object_array(current: Any, edit: dict, merge_objects: bool) -> list:
    items = copy.deepcopy(current) if isinstance(current, list) else []
    items.extend(copy.deepcopy(edit.get("$add", [])))
    for match in edit.get("$remove", []):
        items = [item for item in items if not _matches(item, match)]
    for change in edit.get("$update", []):
        items = [_updated(item, change, merge_objects) if _matches(item, change) else item for item in items]
    return items


def _matches(item: Any, match: dict) -> bool:
    return isinstance(item, dict) and item.get(match["$identifier_key"]) == match["$identifier_value"]


def _updated(item: dict, change: dict, merge_objects: bool) -> dict:
    new_object = change["$new_object"]
    return deep_merge(item, new_object) if merge_objects else copy.deepcopy(new_object)
