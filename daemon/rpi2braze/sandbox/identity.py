"""Which user an attributes, event or purchase object names, by Braze's identifier rules.

Primary identifiers are `external_id`, `user_alias` and `braze_id`; an object may carry only one. Without a
primary, `email` (preferred) or `phone` identifies the user; with one, they are plain attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from rpi2braze.sandbox import codes

EXTERNAL_ID_MAX_BYTES = 987
PRIMARY_IDENTIFIERS = ("external_id", "user_alias", "braze_id")

# The WHATWG "valid e-mail address" with at least one dot in the domain. Braze does not publish its rule.
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)


class IdentifierKind(str, Enum):
    EXTERNAL_ID = "external_id"
    USER_ALIAS = "user_alias"
    BRAZE_ID = "braze_id"
    EMAIL = "email"
    PHONE = "phone"


@dataclass(frozen=True)
class Identity:
    kind: IdentifierKind
    value: str | tuple[str, str]   # a user alias is (alias_name, alias_label)

    @property
    def creates_by_default(self) -> bool:
        """Braze: omitting `_update_existing_only` creates missing users, except for aliases (Update Only)."""
        return self.kind is not IdentifierKind.USER_ALIAS

    @property
    def can_create(self) -> bool:
        """A `braze_id` is assigned by Braze, so an unknown one can never create a profile."""
        return self.kind is not IdentifierKind.BRAZE_ID


def is_valid_email(value: object) -> bool:
    return isinstance(value, str) and _EMAIL.fullmatch(value) is not None


def identify(obj: dict) -> Identity | str:
    """Given one request object, return its Identity, or the error type that rejects the whole object."""
    primaries = [name for name in PRIMARY_IDENTIFIERS if name in obj]
    if len(primaries) > 1:
        return codes.MULTIPLE_PRIMARY_IDENTIFIERS
    if primaries:
        return _primary(primaries[0], obj[primaries[0]])
    if "email" in obj and obj["email"] is not None:
        if not is_valid_email(obj["email"]):
            return codes.EMAIL_BAD_FORMAT
        return Identity(IdentifierKind.EMAIL, obj["email"])
    if isinstance(obj.get("phone"), str) and obj["phone"]:
        return Identity(IdentifierKind.PHONE, obj["phone"])
    return codes.MISSING_IDENTIFIER


def _primary(name: str, value: object) -> Identity | str:
    if name == "user_alias":
        return _alias(value)
    if not isinstance(value, str) or not value:
        return codes.INVALID_IDENTIFIER
    if name == "external_id" and len(value.encode("utf-8")) > EXTERNAL_ID_MAX_BYTES:
        return codes.EXTERNAL_USER_ID_TOO_LARGE
    return Identity(IdentifierKind(name), value)


def _alias(value: object) -> Identity | str:
    if not isinstance(value, dict):
        return codes.INVALID_IDENTIFIER
    name, label = value.get("alias_name"), value.get("alias_label")
    if not (isinstance(name, str) and name and isinstance(label, str) and label):
        return codes.INVALID_IDENTIFIER
    return Identity(IdentifierKind.USER_ALIAS, (name, label))
