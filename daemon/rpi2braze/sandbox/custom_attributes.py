"""Custom attributes: scalars, arrays of scalars (set, add, remove), increments and nested updates.

Rules (braze-users-track.md §5): strings at most 255 characters; `null` unsets; a plain list sets the array
with duplicates removed; `{"add": [...]}` moves a value already present to the end instead of duplicating
it and, past the maximum length, drops the oldest values; nested objects and arrays of objects follow
`nested`.

Readings where Braze is vague:
- "Invalid nested values drop all nested custom attribute updates in that request for that structure": one
  invalid nested update drops every nested update (objects and arrays of objects) of the same attributes
  object, silently as in Braze; its scalar and array attributes still apply.
- A list set longer than the maximum keeps its first values (Braze: "truncated"; which end is undocumented).
- `add` and `remove` together: add first, then remove (the documented order for arrays of objects).
- A string over 255 characters or an array holding non-scalars is refused with a SANDBOX_ error type, so a
  sender that breaks the limit is seen instead of silently truncated.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from rpi2braze.sandbox import codes, nested

DEFAULT_ARRAY_MAX = 500
MAX_STRING_CHARS = 255
ARRAY_EDIT_KEYS = frozenset({"add", "remove"})


class Kind(str, Enum):
    UNSET = "unset"
    SCALAR = "scalar"
    ARRAY = "array"
    ARRAY_EDIT = "array_edit"
    INCREMENT = "increment"
    NESTED = "nested"


def classify(value: Any) -> Kind:
    """Given a custom attribute's sent value, return which kind of update it is."""
    if value is None:
        return Kind.UNSET
    if isinstance(value, list):
        return Kind.NESTED if value and all(isinstance(item, dict) for item in value) else Kind.ARRAY
    if not isinstance(value, dict):
        return Kind.SCALAR
    if value and set(value) <= ARRAY_EDIT_KEYS:
        return Kind.ARRAY_EDIT
    if set(value) == {"inc"}:
        return Kind.INCREMENT
    return Kind.NESTED


def apply_custom_attributes(custom: dict, updates: dict, merge_objects: bool, array_max: int) -> str | None:
    """Apply `updates` (name -> sent value) to the custom attributes `custom`, mutated in place.

    Return the first error type of a refused attribute, or None; refused attributes are left unchanged.
    """
    nested_updates = {name: value for name, value in updates.items() if classify(value) is Kind.NESTED}
    if all(nested.is_valid_update(value) for value in nested_updates.values()):
        for name, value in nested_updates.items():
            nested.apply_update(custom, name, value, merge_objects)
    first_error = None
    for name, value in updates.items():
        if name not in nested_updates:
            error = _apply_flat(custom, name, value, array_max)
            first_error = first_error or error
    return first_error


def _apply_flat(custom: dict, name: str, value: Any, array_max: int) -> str | None:
    kind = classify(value)
    if kind is Kind.UNSET:
        custom.pop(name, None)
        return None
    if kind is Kind.SCALAR:
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            return codes.STRING_TOO_LONG
        custom[name] = value
        return None
    if kind is Kind.INCREMENT:
        return _increment(custom, name, value["inc"])
    if kind is Kind.ARRAY:
        return _set_array(custom, name, value, array_max)
    return _edit_array(custom, name, value, array_max)


def _increment(custom: dict, name: str, amount: Any) -> str | None:
    if not _is_number(amount):
        return codes.INVALID_INCREMENT
    current = custom.get(name)
    custom[name] = (current if _is_number(current) else 0) + amount
    return None


def _set_array(custom: dict, name: str, values: list, array_max: int) -> str | None:
    error = _array_items_error(values)
    if error:
        return error
    unique: list = []
    for value in values:
        if _position(unique, value) is None:
            unique.append(value)
    custom[name] = unique[:array_max]
    return None


def _edit_array(custom: dict, name: str, edit: dict, array_max: int) -> str | None:
    additions, removals = edit.get("add", []), edit.get("remove", [])
    if not isinstance(additions, list) or not isinstance(removals, list):
        return codes.INVALID_ARRAY
    error = _array_items_error(additions) or _array_items_error(removals)
    if error:
        return error
    current = custom.get(name)
    values = list(current) if isinstance(current, list) else []
    for value in additions:
        _add_value(values, value, array_max)
    for value in removals:
        position = _position(values, value)
        if position is not None:
            del values[position]
    custom[name] = values
    return None


def _add_value(values: list, value: Any, array_max: int) -> None:
    """Braze: a value already present moves to the end; at the maximum the oldest (first) value drops."""
    position = _position(values, value)
    if position is not None:
        del values[position]
    values.append(value)
    del values[: max(0, len(values) - array_max)]


def _array_items_error(values: list) -> str | None:
    for value in values:
        if value is None or isinstance(value, (list, dict)):
            return codes.INVALID_ARRAY
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            return codes.STRING_TOO_LONG
    return None


def _position(values: list, value: Any) -> int | None:
    """Index of `value` in `values`, telling 1 from True from "1" (Python's == would not)."""
    for index, present in enumerate(values):
        if type(present) is type(value) and present == value:
            return index
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
