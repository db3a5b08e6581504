"""North American phone numbers, judged as phonenumbers judges them, at a fraction of its cost.

phonenumbers.parse + is_valid_number take about 55 µs for a national number such as
"(212) 555-0123": parsing is generic, and validation tries each of the 25 regions of the North
American Numbering Plan (NANP) with one regular expression per number type. Exports from US
systems can hold a national number in every row, so this module handles the usual ways of
writing one and applies phonenumbers' own rule to phonenumbers' own metadata, compiled once:
a number is valid if the first NANP region that claims it (by its leading digits, or, for a
region without them, by matching one of its number types) has a number type it matches.
tests/unit/test_nanp.py compares both over many numbers, valid and invalid.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneMetadata

# Default regions whose parsing this module reproduces: their numbers have country code 1,
# national prefix "1", and every ten digits starting with 2-9 fit their general description.
REGIONS = frozenset({"US", "CA"})
COUNTRY_CODE = 1
NATIONAL_DIGITS = 10

# "+1 415 555 2671", "1-415-555-2671", "(415) 555-2671", "415.555.2671", "4155552671": an
# optional country code or national prefix 1, then ten ASCII digits in groups of 3, 3 and 4.
# The area code starts with 2-9, so a leading 1 is never part of the national number.
_WRITTEN = re.compile(r"(?:\+?1[ .-]?)?(?:\(([2-9][0-9]{2})\) ?|([2-9][0-9]{2})[ .-]?)"
                      r"([0-9]{3})[ .-]?([0-9]{4})")

# The number types phonenumbers' _number_type_helper tries; any match makes a number valid.
_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan",
          "voicemail", "fixed_line", "mobile")

Pattern = re.Pattern[str]


def national_number(value: str) -> str | None:
    """Given a phone number as written, return its ten national digits if it is written in one of
    the usual North American ways (see _WRITTEN); otherwise None, and phonenumbers must decide."""
    match = _WRITTEN.fullmatch(value)
    if match is None:
        return None
    area, grouped_area, exchange, line = match.groups()
    return (area or grouped_area) + exchange + line


def is_valid(national: str) -> bool:
    """Given ten national digits, return what phonenumbers.is_valid_number says of the number
    with country code 1 and those digits."""
    for leading, general, types in _regions():
        if leading is not None:
            if leading.match(national):
                return _matches(national, general, types)
        elif _matches(national, general, types):
            return True
    return False


def _matches(national: str, general: Pattern | None, types: Pattern | None) -> bool:
    return (general is not None and types is not None and general.fullmatch(national) is not None
            and types.fullmatch(national) is not None)


@lru_cache(maxsize=1)
def _regions() -> tuple[tuple[Pattern | None, Pattern | None, Pattern | None], ...]:
    """(leading digits, general description, any number type) of each NANP region, in the order
    phonenumbers tries them, for numbers of NATIONAL_DIGITS digits."""
    regions = []
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[COUNTRY_CODE]:
        metadata = PhoneMetadata.metadata_for_region(code, None)
        if metadata is None:
            continue
        leading = None if metadata.leading_digits is None else re.compile(metadata.leading_digits)
        types = [_pattern_text(getattr(metadata, name)) for name in _TYPES]
        alternatives = "|".join(f"(?:{text})" for text in types if text is not None)
        regions.append((leading, _compiled(_pattern_text(metadata.general_desc)),
                        _compiled(alternatives or None)))
    return tuple(regions)


def _pattern_text(description) -> str | None:
    """The pattern of a number description, or None if it cannot match NATIONAL_DIGITS digits."""
    if description is None or not description.national_number_pattern:
        return None
    lengths = description.possible_length
    if lengths and NATIONAL_DIGITS not in lengths:
        return None
    return description.national_number_pattern


def _compiled(text: str | None) -> Pattern | None:
    return None if text is None else re.compile(text)
