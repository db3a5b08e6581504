"""Braze's standard profile fields: which names they are and how each value is checked and stored.

A rejected field is not stored and names an error type; the caller still applies the object's other
fields (Braze reports `EMAIL_BAD_FORMAT` for the object and keeps the rest).
"""

from __future__ import annotations

import datetime
import re
import uuid
import zoneinfo
from functools import lru_cache
from typing import Any, Callable

import pycountry

from rpi2braze.sandbox import codes
from rpi2braze.sandbox.identity import is_valid_email

GENDERS = frozenset({"M", "F", "O", "N", "P"})
SUBSCRIPTION_STATES = frozenset({"opted_in", "unsubscribed", "subscribed"})
GROUP_STATES = frozenset({"subscribed", "unsubscribed"})
# Stored as sent: Braze documents their format but no check (phone is stored as given; lookups need E.164).
PLAIN_FIELDS = frozenset({
    "first_name", "last_name", "home_city", "phone", "language", "image_url", "facebook", "twitter",
    "push_tokens", "email_open_tracking_disabled", "email_click_tracking_disabled",
    "date_of_first_session", "date_of_last_session", "marked_email_as_spam_at",
})
# Braze removed these; it does not turn them into custom attributes either.
IGNORED_FIELDS = frozenset({"bio"})

_DOB = re.compile(r"\d{4}-\d{2}-\d{2}")


class Rejected(Exception):
    """A standard field's value was refused; `args[0]` is the error type, or None for a silent skip."""


def _email(value: Any) -> Any:
    if not is_valid_email(value):
        raise Rejected(codes.EMAIL_BAD_FORMAT)
    return value


@lru_cache(maxsize=4096)
def _country_code(value: str) -> str | None:
    try:
        return pycountry.countries.lookup(value.strip()).alpha_2
    except LookupError:
        return None


def _country(value: Any) -> Any:
    """Braze makes "a best effort" to map a value to ISO-3166 alpha-2 ("Australia" -> "AU"), else NULL."""
    return _country_code(value) if isinstance(value, str) else None


def _dob(value: Any) -> Any:
    if not isinstance(value, str) or not _DOB.fullmatch(value):
        raise Rejected(codes.INVALID_DOB)
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        raise Rejected(codes.INVALID_DOB) from None
    return value


def _gender(value: Any) -> Any:
    if value not in GENDERS:
        raise Rejected(codes.INVALID_GENDER)
    return value


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _time_zone(value: Any) -> Any:
    if value not in _time_zones():
        raise Rejected(None)  # Braze: "Only valid time zone values are set"; no error named
    return value


def _subscription(error_type: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in SUBSCRIPTION_STATES:
            raise Rejected(error_type)
        return value
    return check


def _location(value: Any) -> Any:
    coordinates = ("longitude", "latitude")
    if not isinstance(value, dict) or not all(_is_number(value.get(name)) for name in coordinates):
        raise Rejected(codes.BAD_LOCATION_UPDATE)
    return {name: value[name] for name in coordinates}


def _subscription_groups(value: Any) -> Any:
    if not isinstance(value, list):
        raise Rejected(codes.BAD_SUBSCRIPTION_GROUP_ARRAY)
    return {_group_id(item): item["subscription_state"] for item in value}


def _group_id(item: Any) -> str:
    if not isinstance(item, dict) or "subscription_group_id" not in item or "subscription_state" not in item:
        raise Rejected(codes.BAD_SUBSCRIPTION_GROUP_HASH)
    try:
        uuid.UUID(str(item["subscription_group_id"]))
    except ValueError:
        raise Rejected(codes.BAD_SUBSCRIPTION_GROUP_ID) from None
    if item["subscription_state"] not in GROUP_STATES:
        raise Rejected(codes.BAD_SUBSCRIPTION_GROUP_STATE)
    return str(item["subscription_group_id"])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "email": _email,
    "country": _country,
    "dob": _dob,
    "gender": _gender,
    "time_zone": _time_zone,
    "email_subscribe": _subscription(codes.BAD_EMAIL_SUBSCRIPTION_STATE),
    "push_subscribe": _subscription(codes.BAD_PUSH_SUBSCRIPTION_STATE),
    "current_location": _location,
    "subscription_groups": _subscription_groups,
}
STANDARD_FIELDS = frozenset(_CHECKS) | PLAIN_FIELDS | IGNORED_FIELDS


def apply_standard_field(profile: dict, name: str, value: Any) -> str | None:
    """Given a profile, a standard field name and its sent value, store the value the way Braze would.

    `null` unsets the field (stored as None). Return the error type if the value was refused, else None.
    """
    if name in IGNORED_FIELDS:
        return None
    if value is None:
        profile[name] = None
        return None
    check = _CHECKS.get(name)
    try:
        stored = check(value) if check else value
    except Rejected as refusal:
        return refusal.args[0]
    if name == "subscription_groups":
        stored = {**(profile.get(name) or {}), **stored}
    profile[name] = stored
    return None
