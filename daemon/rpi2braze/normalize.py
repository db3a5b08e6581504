"""Normalisers for Braze fields: one export cell in, the value Braze expects out.

Every function takes a cell that is already stripped and non-empty, and returns the Braze value,
or None for "omit this field", or raises RowRejected with a sentence naming the field and value.
They are pure; the ones whose inputs repeat a lot (country, gender, dates) are memoised.
Formats and limits: reference/braze-users-track.md §4-§5.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from functools import lru_cache

import phonenumbers
import pycountry

from rpi2braze import nanp
from rpi2braze.errors import RowRejected

MAX_STRING_CHARS = 255          # Braze: custom attribute strings and nested keys
MAX_EXTERNAL_ID_BYTES = 987     # Braze: EXTERNAL_USER_ID_TOO_LARGE above this
MAX_EMAIL_CHARS = 255
MIN_DOB_YEAR = 1900
MAX_TIME_YEAR = 3000            # Braze does not keep times after year 3000
_QUOTE_LIMIT = 60               # quoted values in reasons are cut to this many characters
_OPERATOR_WORDS = frozenset({"inc", "add", "remove"})   # a nested object of only these is an operation
_CACHE_SIZE = 65536
_MAX_CACHED_CHARS = 80          # longer values are never a country, gender or date: not cached

# Names people write that are not in ISO 3166's English names. Keys are `_fold`ed.
_COUNTRY_ALIASES = {
    "uk": "GB", "britain": "GB", "great britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "america": "US", "russia": "RU", "turkey": "TR",
    "ivory coast": "CI", "macedonia": "MK", "swaziland": "SZ", "burma": "MM", "cape verde": "CV",
    "holland": "NL", "palestine": "PS", "vatican": "VA", "vatican city": "VA", "micronesia": "FM",
    "brunei": "BN", "korea": "KR", "east timor": "TL", "uae": "AE", "macau": "MO",
    "falkland islands": "FK", "dr congo": "CD", "drc": "CD", "congo kinshasa": "CD",
    "democratic republic of the congo": "CD", "congo brazzaville": "CG",
}

# Keys are `_fold`ed and then stripped of spaces: "Non-Binary" and "non binary" are "nonbinary".
_GENDERS = {
    "m": "M", "male": "M", "man": "M",
    "f": "F", "female": "F", "woman": "F",
    "o": "O", "other": "O", "nonbinary": "O", "nb": "O",
    "n": "N", "na": "N", "notapplicable": "N",
    "p": "P", "prefernottosay": "P", "prefernottoanswer": "P", "prefernottodisclose": "P",
    "declined": "P", "declinedtoanswer": "P",
    "u": None, "unknown": None, "unspecified": None, "notspecified": None,
}

_NOT_A_GENDER = "!"
_NO_DATE = "0001-01-01"   # .NET's DateTime.MinValue: a missing date, not a birthday

_TRUE = frozenset({"true", "yes", "y", "1", "t"})
_FALSE = frozenset({"false", "no", "n", "0", "f"})

_NONZERO_DIGITS = "123456789"
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_DATE = re.compile(r"(\d{4})([-/]?)(\d{2})\2(\d{2})")
_DATE_THEN_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[T ]\S.*")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT64 = 2**63
_START_YEAR = date.today().year
_EXACT_FLOAT_INT = 2**53


def quote(value: str) -> str:
    """Return `value` quoted for a reason, cut to about 60 characters."""
    if len(value) > _QUOTE_LIMIT:
        value = value[:_QUOTE_LIMIT] + "..."
    return repr(value)


def country(value: str) -> str:
    """Given a country as alpha-2, alpha-3, numeric code, English name or a common alias, return
    its ISO 3166-1 alpha-2 code. Raise RowRejected if it names no country."""
    code = _country_code(value) if len(value) <= _MAX_CACHED_CHARS else None
    if code is None:
        raise RowRejected(f"country {quote(value)} is not a known country name or ISO 3166 code")
    return code


@lru_cache(maxsize=_CACHE_SIZE)
def _country_code(value: str) -> str | None:
    key = _fold(value)
    if key.isdigit():
        key = str(int(key))
    return _country_index().get(key) or _COUNTRY_ALIASES.get(key)


@lru_cache(maxsize=1)
def _country_index() -> dict[str, str]:
    """Every code and English name of every country, `_fold`ed, to its alpha-2 code."""
    index = {}
    for entry in pycountry.countries:
        names = (entry.alpha_2, entry.alpha_3, entry.name,
                 getattr(entry, "official_name", ""), getattr(entry, "common_name", ""))
        for name in filter(None, names):
            index[_fold(name)] = entry.alpha_2
        index[str(int(entry.numeric))] = entry.alpha_2
    return index


def _fold(text: str) -> str:
    """Lower-case ASCII words: accents dropped, "&" as "and", "St." as "saint", no leading "the"."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = text.replace("&", " and ").replace(".", "").replace("'", "")
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    if words and words[0] == "the":
        words = words[1:]
    return " ".join("saint" if word == "st" else word for word in words)


def gender(value: str) -> str | None:
    """Given a gender as a word or letter, return Braze's M, F, O, N or P, or None when it says
    "unknown" (omit the field). Raise RowRejected for anything else."""
    code = _gender_code(value) if len(value) <= _MAX_CACHED_CHARS else _NOT_A_GENDER
    if code is _NOT_A_GENDER:
        raise RowRejected(f"gender {quote(value)} is not one of male, female, other, "
                          "not applicable, prefer not to say or unknown")
    return code


@lru_cache(maxsize=_CACHE_SIZE)
def _gender_code(value: str) -> str | None:
    return _GENDERS.get(_fold(value).replace(" ", ""), _NOT_A_GENDER)


def dob(value: str) -> str | None:
    """Given a date of birth as yyyy-MM-dd, yyyy/MM/dd, yyyyMMdd or an ISO datetime, return it as
    YYYY-MM-DD, or None for 0001-01-01 (omit the field: .NET's DateTime.MinValue, which RPI's
    exports may hold for a missing date). Raise RowRejected unless it is a real date in
    1900..this year."""
    result = _dob(value) if len(value) <= _MAX_CACHED_CHARS else "!is not a date"
    if result.startswith("!"):
        raise RowRejected(f"dob {quote(value)} {result[1:]}")
    if result == _NO_DATE:
        return None
    # Outside the cache, which outlives a new year. date.today() costs ~1 µs: a year before the
    # one this process started in needs no clock.
    year = int(result[:4])
    if not (MIN_DOB_YEAR <= year < _START_YEAR or _START_YEAR <= year <= date.today().year):
        raise RowRejected(f"dob {quote(value)} is not between {MIN_DOB_YEAR} and this year")
    return result


@lru_cache(maxsize=_CACHE_SIZE)
def _dob(value: str) -> str:
    """The date, or "!" and why not: a memoised function cannot cache an exception."""
    match = _DATE_THEN_TIME.fullmatch(value)
    if match and _parse_datetime(value) is None:
        return "!is not a valid date and time"
    match = _DATE.fullmatch(match.group(1) if match else value)
    if match is None:
        return "!is not a date in the form YYYY-MM-DD"
    try:
        return date(int(match.group(1)), int(match.group(3)), int(match.group(4))).isoformat()
    except ValueError:
        return "!is not a real date"


def _parse_datetime(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def phone(value: str, default_region: str, country: str | None = None) -> str:
    """Given a phone number, return it in E.164 form; numbers without a country code are read as
    numbers of the row's `country`, or, if it has none or they are none there, of
    `default_region`. Raise RowRejected if it is not a valid number either way."""
    # Already E.164 ("+", a digit 1-9, 6 to 14 more ASCII digits): parsing would cost ~30 µs,
    # this check well under one. str.isdecimal alone would also pass the digits of other
    # scripts ("+1٢١٢..."), which Braze would get as they are; phonenumbers reads them as the
    # ASCII digits they stand for, so such a value is parsed below.
    if (8 <= len(value) <= 16 and value[0] == "+" and value[1] in _NONZERO_DIGITS
            and value.isascii() and value[1:].isdecimal()):
        return value
    # The row's country first: people write their own country's numbers without its code. Read
    # in a US default region, "55 1234 5678" in a row in MX would be +1 551-234-5678 (New
    # Jersey), valid and wrong; a number that is none in the row's country is read there next.
    regions = (country, default_region) if country and country != default_region else (default_region,)
    for region in regions:
        if (number := _phone_in(value, region)) is not None:
            return number
    if value.lstrip().startswith("+"):   # its own country code: no region was guessed
        raise RowRejected(f"phone {quote(value)} is not a valid phone number")
    tried = f"{default_region} (mapping.default_phone_region)"
    if len(regions) == 2:
        tried = f"{country} (the row's country), then as {tried}"
    raise RowRejected(f"phone {quote(value)} is not a valid phone number "
                      f"(numbers without +country code are read as {tried})")


def _phone_in(value: str, region: str) -> str | None:
    """`value` in E.164 if it is a valid number read in `region`, else None."""
    if region in nanp.REGIONS and (national := nanp.national_number(value)) is not None:
        return f"+{nanp.COUNTRY_CODE}{national}" if nanp.is_valid(national) else None
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email(value: str) -> str:
    """Given an email address, return it. Raise RowRejected unless it has one "@", a non-empty
    local part, a dotted domain without empty labels, no whitespace and at most 255 characters."""
    local, _, domain = value.partition("@")
    words = value.split()  # [value] exactly when there is no whitespace anywhere
    if (not local or "." not in domain or domain[0] == "." or domain[-1] == "." or ".." in domain
            or "@" in domain or len(value) > MAX_EMAIL_CHARS
            or len(words) != 1 or len(words[0]) != len(value)):
        raise RowRejected(f"email {quote(value)} is not a valid email address")
    return value


def external_id(value: str) -> str:
    """Given an external_id, return it. Raise RowRejected if it is over 987 UTF-8 bytes."""
    if len(value) * 4 > MAX_EXTERNAL_ID_BYTES and len(value.encode()) > MAX_EXTERNAL_ID_BYTES:
        raise RowRejected(f"external_id {quote(value)} is longer than Braze's "
                          f"{MAX_EXTERNAL_ID_BYTES} bytes")
    return value


def text(value: str, field: str) -> str:
    """Given a string for `field`, return it. Raise RowRejected if it is over 255 characters."""
    if len(value) > MAX_STRING_CHARS:
        raise RowRejected(f"{field} {quote(value)} has {len(value)} characters; "
                          f"Braze allows {MAX_STRING_CHARS}")
    return value


def header_key(name: str) -> str:
    """Return the key headers are matched by: lower-case, without spaces, "_" and "-"
    ("External ID", "external_Id" and "EXTERNAL-ID" are all "externalid")."""
    return re.sub(r"[\s_\-]+", "", name.replace("\ufeff", "")).lower()


def attribute_key(name: str) -> str:
    """Return `name` as a key of rpi_cdp_attributes: snake_case ASCII, never empty, without
    spaces, "." or "$" ("Marital Status" -> "marital_status", "HouseholdSize" -> "household_size",
    "Income ($)" -> "income"), and never one of Braze's operator words ("Inc" -> "inc_value")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", ascii_name)
    key = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")
    if key in _OPERATOR_WORDS:
        # a row whose only CDP values sit under these keys would read {"inc": 5} or {"add": "x"}:
        # Braze's increment or array operator, not a nested object (reference/braze-users-track.md §5)
        return key + "_value"
    # A header with no ASCII letter or digit ("名前") still needs a stable, distinct key.
    return key or "column_" + name.encode().hex()[:32]


def typed(value: str, column_type: str, field: str) -> object:
    """Given a cell and its column type (string, number, boolean, time), return the Braze value:
    a str, an int or float, a bool, or {"$time": ISO 8601} (the nested-object form).
    Raise RowRejected if the cell is not a value of that type."""
    return TYPE_CONVERTERS[column_type](value, field)


def number(value: str, field: str) -> int | float:
    """Return a plain decimal ("-12", "3.5", "1e3") as an int when integral, else a float."""
    if not _NUMBER.fullmatch(value):
        raise RowRejected(f"{field} {quote(value)} is not a number")
    # Past 64 bits orjson cannot write an int, and it writes inf as null, which would make Braze
    # drop every nested update of the request; a long digit string is cut off before int().
    result = float(value) if len(value) > 30 or not _INTEGER.fullmatch(value) else int(value)
    if abs(result) >= _INT64:
        raise RowRejected(f"{field} {quote(value)} is out of range for a number")
    if isinstance(result, float) and result.is_integer() and abs(result) < _EXACT_FLOAT_INT:
        return int(result)
    return result


def boolean(value: str, field: str) -> bool:
    """Return True for true/yes/y/1/t and False for false/no/n/0/f, in any case."""
    key = value.lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise RowRejected(f"{field} {quote(value)} is not a boolean (true/false, yes/no, 1/0)")


def timestamp(value: str, field: str) -> dict:
    """Return a yyyy-MM-dd date or ISO 8601 datetime as {"$time": ...}. A bad nested time makes
    Braze drop all nested updates of the request, so anything doubtful is rejected here."""
    result = _time(value) if len(value) <= _MAX_CACHED_CHARS else None
    if result is None:
        raise RowRejected(f"{field} {quote(value)} is not a date (YYYY-MM-DD) or ISO 8601 "
                          f"date and time between years 1 and {MAX_TIME_YEAR}")
    return {"$time": result}


@lru_cache(maxsize=_CACHE_SIZE)
def _time(value: str) -> str | None:
    if not (_ISO_DATE.fullmatch(value) or _DATE_THEN_TIME.fullmatch(value)):
        return None
    parsed = _parse_datetime(value)
    if parsed is None or parsed.year > MAX_TIME_YEAR:
        return None
    return value[:10] if len(value) == 10 else parsed.isoformat()


TYPE_CONVERTERS = {"string": text, "number": number, "boolean": boolean, "time": timestamp}
