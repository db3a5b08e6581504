"""The sandbox's user profiles: an in-memory store that applies /users/track objects by Braze's rules.

Profiles have Braze's export shape: `external_id`, `braze_id`, `user_aliases`, standard fields at the top
level, `custom_attributes`, and `custom_events` / `purchases` summaries (`name`, `first`, `last`, `count`).
Every method is thread-safe; returned profiles are copies.

Object-level rules: one primary identifier (`external_id`, `user_alias`, `braze_id`), else `email`, else
`phone`; an object whose identifier is unusable is not applied at all. `_update_existing_only: true` never
creates a profile (and is no error); omitted, it is false except for `user_alias` objects. A refused field
(bad email, dob, gender, a string over 255 characters...) is not stored, the object's other fields are, and
the object gets one error item (the first refusal).
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Callable

from rpi2braze.sandbox import codes
from rpi2braze.sandbox.custom_attributes import DEFAULT_ARRAY_MAX, apply_custom_attributes
from rpi2braze.sandbox.identity import PRIMARY_IDENTIFIERS, IdentifierKind, Identity, identify
from rpi2braze.sandbox.standard_fields import STANDARD_FIELDS, apply_standard_field

CONTROL_KEYS = frozenset({"_update_existing_only", "_merge_objects", "push_token_import", "app_id"})
EVENT_REQUIRED = ("name", "time")
PURCHASE_REQUIRED = ("product_id", "currency", "price", "time")


class ProfileStore:
    """Braze user profiles in memory, changed only through `apply`, `apply_event` and `apply_purchase`."""

    def __init__(self, array_max: int = DEFAULT_ARRAY_MAX):
        self._array_max = array_max
        self._lock = threading.Lock()
        self._clear()

    def apply(self, obj: Any) -> dict | None:
        """Apply one attributes object. Return None, or an error item without its `index` (the caller's)."""
        return self._apply("attributes", obj, self._change_attributes)

    def apply_event(self, obj: Any) -> dict | None:
        """Record one event object on its user's `custom_events` summary. Return as `apply` does."""
        return self._apply("events", obj, self._record_event)

    def apply_purchase(self, obj: Any) -> dict | None:
        """Record one purchase object on its user's `purchases` summary. Return as `apply` does."""
        return self._apply("purchases", obj, self._record_purchase)

    def get(self, external_id: str) -> dict | None:
        """Return a copy of the profile with this `external_id`, or None."""
        with self._lock:
            braze_id = self._by_external_id.get(external_id)
            return copy.deepcopy(self._profiles[braze_id]) if braze_id else None

    def all(self) -> dict[str, dict]:
        """Return copies of every profile keyed by `external_id` (by `braze_id` for users without one)."""
        with self._lock:
            return {
                profile.get("external_id") or braze_id: copy.deepcopy(profile)
                for braze_id, profile in self._profiles.items()
            }

    def reset(self) -> None:
        """Forget every profile."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._profiles: dict[str, dict] = {}
        self._last_update: dict[str, int] = {}   # braze_id -> update sequence, for email/phone look-ups
        self._by_external_id: dict[str, str] = {}
        self._by_alias: dict[tuple[str, str], str] = {}
        self._sequence = 0

    def _apply(self, input_array: str, obj: Any, change: Callable[[dict, dict], str | None]) -> dict | None:
        if not isinstance(obj, dict):
            return _error_item(codes.NOT_AN_OBJECT, input_array)
        identity = identify(obj)
        if isinstance(identity, str):
            return _error_item(identity, input_array)
        with self._lock:
            profile = self._find_or_create(identity, obj)
            error_type = change(profile, obj) if profile is not None else None
        return _error_item(error_type, input_array)

    def _find_or_create(self, identity: Identity, obj: dict) -> dict | None:
        braze_id = self._find(identity)
        if braze_id is None:
            update_existing_only = obj.get("_update_existing_only", not identity.creates_by_default)
            if update_existing_only is True or not identity.can_create:
                return None
            braze_id = self._create(identity)
        self._sequence += 1
        self._last_update[braze_id] = self._sequence
        return self._profiles[braze_id]

    def _find(self, identity: Identity) -> str | None:
        if identity.kind is IdentifierKind.EXTERNAL_ID:
            return self._by_external_id.get(identity.value)
        if identity.kind is IdentifierKind.USER_ALIAS:
            return self._by_alias.get(identity.value)
        if identity.kind is IdentifierKind.BRAZE_ID:
            return identity.value if identity.value in self._profiles else None
        return self._newest_with(identity.kind.value, identity.value)

    def _newest_with(self, field: str, value: str) -> str | None:
        """Braze: of several matches, the newest-updated profile with an external_id, else the newest."""
        matches = [braze_id for braze_id, profile in self._profiles.items() if profile.get(field) == value]
        return max(
            matches,
            key=lambda braze_id: ("external_id" in self._profiles[braze_id], self._last_update[braze_id]),
            default=None,
        )

    def _create(self, identity: Identity) -> str:
        self._sequence += 1
        braze_id = f"{self._sequence:024x}"
        profile: dict = {"braze_id": braze_id, "custom_attributes": {}}
        if identity.kind is IdentifierKind.EXTERNAL_ID:
            profile["external_id"] = identity.value
            self._by_external_id[identity.value] = braze_id
        elif identity.kind is IdentifierKind.USER_ALIAS:
            alias_name, alias_label = identity.value
            profile["user_aliases"] = [{"alias_name": alias_name, "alias_label": alias_label}]
            self._by_alias[identity.value] = braze_id
        else:
            profile[identity.kind.value] = identity.value
        self._profiles[braze_id] = profile
        return braze_id

    def _change_attributes(self, profile: dict, obj: dict) -> str | None:
        first_error = None
        custom_updates = {}
        for name, value in obj.items():
            if name in CONTROL_KEYS or name in PRIMARY_IDENTIFIERS:
                continue
            if name in STANDARD_FIELDS:
                error = apply_standard_field(profile, name, value)
                first_error = first_error or error
            else:
                custom_updates[name] = value
        merge_objects = obj.get("_merge_objects") is True
        custom = profile["custom_attributes"]
        custom_error = apply_custom_attributes(custom, custom_updates, merge_objects, self._array_max)
        return first_error or custom_error

    def _record_event(self, profile: dict, obj: dict) -> str | None:
        if not all(obj.get(field) not in (None, "") for field in EVENT_REQUIRED):
            return codes.INVALID_EVENT
        _count(profile.setdefault("custom_events", []), str(obj["name"]), obj["time"], 1)
        return None

    def _record_purchase(self, profile: dict, obj: dict) -> str | None:
        if not all(obj.get(field) not in (None, "") for field in PURCHASE_REQUIRED):
            return codes.INVALID_PURCHASE
        quantity = obj.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= 100:
            return codes.INVALID_PURCHASE
        # Braze: a quantity of X counts as X purchases of one.
        _count(profile.setdefault("purchases", []), str(obj["product_id"]), obj["time"], quantity)
        return None


def _count(summaries: list[dict], name: str, time: Any, how_many: int) -> None:
    for summary in summaries:
        if summary["name"] == name:
            summary["last"] = time
            summary["count"] += how_many
            return
    summaries.append({"name": name, "first": time, "last": time, "count": how_many})


def _error_item(error_type: str | None, input_array: str) -> dict | None:
    return {"type": error_type, "input_array": input_array} if error_type else None
