"""Each normaliser against the spellings exports really carry, and the values Braze must not get."""

import itertools
import re
from datetime import date

import phonenumbers
import pytest

from rpi2braze import normalize
from rpi2braze.errors import RowRejected


@pytest.mark.parametrize("value, expected", [
    ("US", "US"), ("us", "US"), ("USA", "US"), ("840", "US"), ("United States", "US"),
    ("united states of america", "US"), ("U.S.A.", "US"), ("America", "US"),
    ("36", "AU"), ("036", "AU"), ("Australia", "AU"), ("AUS", "AU"),
    ("UK", "GB"), ("U.K.", "GB"), ("GBR", "GB"), ("United Kingdom", "GB"), ("Great Britain", "GB"),
    ("England", "GB"), ("Scotland", "GB"), ("Wales", "GB"), ("Northern Ireland", "GB"),
    ("Germany", "DE"), ("DEU", "DE"), ("germany", "DE"),
    ("Côte d'Ivoire", "CI"), ("Cote d'Ivoire", "CI"), ("Ivory Coast", "CI"),
    ("South Korea", "KR"), ("Korea, Republic of", "KR"), ("Russia", "RU"),
    ("Russian Federation", "RU"), ("Viet Nam", "VN"), ("Vietnam", "VN"),
    ("Netherlands", "NL"), ("The Netherlands", "NL"), ("Holland", "NL"),
    ("St. Lucia", "LC"), ("Saint Lucia", "LC"), ("Trinidad & Tobago", "TT"),
    ("Bolivia", "BO"), ("Turkey", "TR"), ("Türkiye", "TR"), ("Czech Republic", "CZ"),
    ("Czechia", "CZ"), ("Democratic Republic of the Congo", "CD"), ("Congo", "CG"),
    ("  France ", "FR"),
])
def test_country_returns_alpha_2(value, expected):
    assert normalize.country(value) == expected


@pytest.mark.parametrize("value", ["Atlantis", "Deutschland", "XX", "999", "EU", "U", "Europe"])
def test_country_rejects_what_names_no_country(value):
    with pytest.raises(RowRejected, match=rf"country {re.escape(repr(value))}"):
        normalize.country(value)


@pytest.mark.parametrize("value, expected", [
    ("M", "M"), ("m", "M"), ("Male", "M"), ("MALE", "M"), ("man", "M"),
    ("F", "F"), ("f", "F"), ("female", "F"), ("Woman", "F"),
    ("O", "O"), ("other", "O"), ("Non-Binary", "O"), ("non binary", "O"), ("nonbinary", "O"),
    ("N", "N"), ("n/a", "N"), ("Not Applicable", "N"), ("not_applicable", "N"),
    ("P", "P"), ("Prefer not to say", "P"), ("prefer-not-to-say", "P"), ("Declined", "P"),
    ("U", None), ("u", None), ("Unknown", None), ("unspecified", None), ("Not Specified", None),
])
def test_gender_returns_braze_letter_or_none(value, expected):
    assert normalize.gender(value) == expected


@pytest.mark.parametrize("value", ["maybe", "2", "yes", "mf", "x-ray"])
def test_gender_rejects_other_words(value):
    with pytest.raises(RowRejected, match="gender"):
        normalize.gender(value)


@pytest.mark.parametrize("value, expected", [
    ("1980-12-21", "1980-12-21"), ("1980/12/21", "1980-12-21"), ("19801221", "1980-12-21"),
    ("1980-12-21T00:00:00", "1980-12-21"), ("1980-12-21 00:00:00", "1980-12-21"),
    ("1980-12-21T10:11:12Z", "1980-12-21"), ("1980-12-21 00:00:00.000", "1980-12-21"),
    ("1980-12-21T00:00:00+01:00", "1980-12-21"), ("1900-01-01", "1900-01-01"),
    ("2000-02-29", "2000-02-29"), (date.today().isoformat(), date.today().isoformat()),
    # .NET's DateTime.MinValue, a missing date in a .NET export: omitted, the row delivered
    ("0001-01-01", None), ("0001-01-01T00:00:00", None), ("0001-01-01 00:00:00.000", None),
])
def test_dob_returns_iso_date(value, expected):
    assert normalize.dob(value) == expected


@pytest.mark.parametrize("value", [
    "1980-02-30", "1981-02-29", "1980-13-01", "1980-00-10", "21/12/1980", "12/21/1980",
    "1899-12-31", "0001-01-02", f"{date.today().year + 1}-01-01", "1980-12-21T25:00:00", "1980-12",
    "1980/12-21", "1980-12-21 garbage", "abc", "80-12-21",
])
def test_dob_rejects_what_is_no_real_date(value):
    with pytest.raises(RowRejected, match=rf"dob {re.escape(repr(value))}"):
        normalize.dob(value)


@pytest.mark.parametrize("value, region, expected", [
    ("+14155552671", "US", "+14155552671"),
    ("+442071838750", "US", "+442071838750"),
    ("(415) 555-2671", "US", "+14155552671"),
    ("415.555.2671", "US", "+14155552671"),
    ("1-415-555-2671", "US", "+14155552671"),
    ("+1 415 555 2671", "GB", "+14155552671"),
    ("020 7183 8750", "GB", "+442071838750"),
    ("+44 20 7183 8750", "US", "+442071838750"),
    ("0412 345 678", "AU", "+61412345678"),
    ("415 555 2671 ext. 12", "US", "+14155552671"),
])
def test_phone_returns_e164(value, region, expected):
    assert normalize.phone(value, region) == expected


def test_phone_in_e164_form_passes_as_is():
    # The fast path: a value shaped like E.164 is not parsed (parsing is the pipeline's cost).
    assert normalize.phone("+1000000", "US") == "+1000000"


@pytest.mark.parametrize("value", ["12345", "abc", "+1 555 000 0000", "555-1234", "+", "+0123456789"])
def test_phone_rejects_invalid_numbers(value):
    with pytest.raises(RowRejected, match="phone"):
        normalize.phone(value, "US")


def phonenumbers_only(value: str, region: str) -> str | None:
    """What phone() must return, without its string checks and its North American fast path:
    phonenumbers decides all but values in E.164 form with ASCII digits; None for a rejected
    number."""
    if re.fullmatch(r"\+[1-9][0-9]{6,14}", value):
        return value
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_or_none(value: str, region: str) -> str | None:
    try:
        return normalize.phone(value, region)
    except RowRejected:
        return None


# Every character the regex "\d" or str.isdecimal takes for a digit: only ASCII ones may pass
# the E.164 fast path as they are.
ALL_DIGITS = sorted(set(re.findall(r"\d", "".join(map(chr, range(0x110000)))))
                    | {chr(code) for code in range(0x110000) if chr(code).isdecimal()})
WRITTEN = ("{a}{b}{c}", "({a}) {b}-{c}", "({a}){b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}",
           "{a} {b} {c}", "1{a}{b}{c}", "1-{a}-{b}-{c}", "1 ({a}) {b}-{c}", "+1 {a} {b} {c}",
           "+1-{a}-{b}-{c}", "+1 ({a}) {b}-{c}", "1.{a}.{b}.{c}", "+1{a}{b}{c}",
           "({a} {b}-{c}", "{a}) {b}-{c}", "{a}--{b}-{c}", "{a} {b} {c} x12", "{a}{b}{c}1",
           "2{a}{b}{c}", "+2 {a} {b} {c}", "{a}/{b}-{c}", "({a})  {b}-{c}", "011 {a} {b} {c}")


@pytest.mark.parametrize("region", ["US", "CA"])
def test_phone_gives_what_phonenumbers_gives_for_north_american_numbers(region):
    # Valid and invalid: area codes starting 0/1, N11 and 555 exchanges, toll-free, premium,
    # Canadian and Caribbean area codes, written in the usual ways and in nearly usual ones.
    numbers = [area + exchange + line
               for area in ("201", "212", "415", "416", "604", "876", "787", "800", "900", "555",
                            "311", "100", "099", "999", "684", "268")
               for exchange in ("555", "123", "011", "911", "200", "979")
               for line in ("0123", "9999")]
    values = [form.format(a=number[:3], b=number[3:6], c=number[6:])
              for number in numbers for form in WRITTEN]
    assert [value for value in values
            if phone_or_none(value, region) != phonenumbers_only(value, region)] == []


def test_phone_in_e164_form_is_recognised_only_with_ascii_digits():
    values = [f"+1234567{digit}" for digit in ALL_DIGITS] + [f"+{digit}1234567" for digit in ALL_DIGITS]
    values += ["+" + "1" * length for length in range(0, 18)] + ["+0" + "1" * length for length in range(5, 16)]
    values += ["++12345678", "1234567890", "+1234567 ", " +12345678", "+1234a678", "+12345678\n"]
    assert [value for value in values
            if phone_or_none(value, "US") != phonenumbers_only(value, "US")] == []


@pytest.mark.parametrize("value, expected", [
    ("+1٢١٢٥٥٥٠١٢٣", "+12125550123"),     # Arabic-Indic digits
    ("+٩٧١٥٠١٢٣٤٥٦٧", "+971501234567"),   # Arabic-Indic, country code too
    ("+1۲۱۲۵۵۵۰۱۲۳", "+12125550123"),     # Extended Arabic-Indic (Persian)
    ("+1२१२५५५०१२३", "+12125550123"),     # Devanagari
    ("+１２１２５５５０１２３", "+12125550123"),  # fullwidth
])
def test_phone_digits_of_other_scripts_become_ascii_e164(value, expected):
    # Formerly passed through as they were: Braze wants "+" and ASCII digits.
    assert normalize.phone(value, "US") == expected


def test_phone_never_returns_other_digits_than_ascii():
    values = [f"+1212555012{digit}" for digit in ALL_DIGITS] + [f"+{digit}2125550123" for digit in ALL_DIGITS]
    results = [phone_or_none(value, "US") for value in values]
    assert [result for result in results if result is not None and not result.isascii()] == []
    assert results.count("+12125550123") >= 2  # the ASCII spellings, and others read as them


@pytest.mark.parametrize("value", [
    "ann@example.com", "a.b+tag@sub.example.co.uk", "ANN@EXAMPLE.COM", "o'brien@example.ie",
    "x@y.io", "user@xn--bcher-kva.example",
])
def test_email_accepts_addresses(value):
    assert normalize.email(value) == value


@pytest.mark.parametrize("value", [
    "ann", "ann@", "@example.com", "ann@example", "ann@@example.com", "a@b@example.com",
    "ann@ex ample.com", "ann smith@example.com", "ann@.example.com", "ann@example.com.",
    "ann@example..com", "ann@example.com\t", "a" * 250 + "@example.com",
])
def test_email_rejects_bad_addresses(value):
    with pytest.raises(RowRejected, match="email .* is not a valid email address"):
        normalize.email(value)


# The regex email() used before it became string checks; the table below pins the same meaning.
FORMER_EMAIL = re.compile(r"[^@\s]+@(?:[^@\s.]+\.)+[^@\s.]+")
# Every character the regex "\s" or str.split() takes for whitespace.
ALL_SPACES = sorted(set(re.findall(r"\s", "".join(map(chr, range(0x110000)))))
                    | {chr(code) for code in range(0x110000) if chr(code).isspace()})


def email_accepted(value: str) -> bool:
    try:
        return normalize.email(value) == value
    except RowRejected:
        return False


def test_email_accepts_exactly_what_the_former_regex_accepted():
    alphabet = "a.@ é\t\x1c\u00a0"
    values = ["".join(letters) for length in range(1, 6) for letters in itertools.product(alphabet, repeat=length)]
    values += [template.format(space) for space in ALL_SPACES
               for template in ("a{}b@x.io", "ab@x{}.io", "{}ab@x.io", "ab@x.io{}", "ab{}@x.io", "ab@{}x.io")]
    values += ["a" * local + "@example.com" for local in (242, 243, 244)]
    values += ["a@" + "b." * count + "c" for count in (1, 2, 126, 127)]
    assert [value for value in values
            if email_accepted(value) != (len(value) <= 255 and FORMER_EMAIL.fullmatch(value) is not None)] == []
    assert 0 < sum(map(email_accepted, values)) < len(values)


@pytest.mark.parametrize("value", ["u1", "x" * 987, "é" * 493, "😀" * 246])
def test_external_id_accepts_up_to_987_bytes(value):
    assert normalize.external_id(value) == value


@pytest.mark.parametrize("value", ["x" * 988, "é" * 494, "😀" * 247])
def test_external_id_rejects_more_than_987_bytes(value):
    with pytest.raises(RowRejected, match="external_id .* 987 bytes"):
        normalize.external_id(value)


def test_text_accepts_255_characters_and_rejects_256():
    assert normalize.text("é" * 255, "first_name") == "é" * 255
    with pytest.raises(RowRejected, match="first_name .* 256 characters; Braze allows 255"):
        normalize.text("é" * 256, "first_name")


@pytest.mark.parametrize("normaliser", [
    normalize.country, normalize.gender, normalize.dob,
    lambda value: normalize.typed(value, "time", "joined"),
])
def test_huge_values_are_rejected_by_the_memoised_normalisers(normaliser):
    with pytest.raises(RowRejected) as caught:
        normaliser("1980-12-21" + "x" * 1_000_000)
    assert len(caught.value.reason) < 200


def test_reason_quotes_a_huge_value_short():
    with pytest.raises(RowRejected) as caught:
        normalize.text("x" * 1_000_000, "home_city")
    assert len(caught.value.reason) < 200
    assert "1000000 characters" in caught.value.reason


@pytest.mark.parametrize("name, expected", [
    ("external_id", "externalid"), ("external_Id", "externalid"), ("External ID", "externalid"),
    ("EXTERNAL_ID", "externalid"), ("External-ID", "externalid"), ("\ufeffexternal_id", "externalid"),
    ("Output Name", "outputname"), ("output_name", "outputname"),
    ("RPContactID", "rpcontactid"), ("rp_contact_id", "rpcontactid"),
])
def test_header_key_ignores_case_spaces_underscores_hyphens(name, expected):
    assert normalize.header_key(name) == expected


@pytest.mark.parametrize("name, expected", [
    ("Marital Status", "marital_status"), ("Income ($)", "income"),
    ("HouseholdSize", "household_size"), ("education", "education"),
    ("RPContactID", "rp_contact_id"), ("HTMLParser", "html_parser"),
    ("Address Line 2", "address_line_2"), ("e-mail.address", "e_mail_address"),
    ("  spaced   out  ", "spaced_out"), ("__x__", "x"), ("Área", "area"),
    ("Net Worth $", "net_worth"), ("already_snake_case", "already_snake_case"),
    ("Inc", "inc_value"), ("ADD", "add_value"), ("$remove", "remove_value"), ("Inc.", "inc_value"),
    ("Income", "income"), ("Add On", "add_on"),
])
def test_attribute_key_is_snake_case_and_never_an_operator_word(name, expected):
    assert normalize.attribute_key(name) == expected


@pytest.mark.parametrize("name", ["$$$", "名前", "...", "  "])
def test_attribute_key_is_never_empty_nor_unsafe(name):
    key = normalize.attribute_key(name)
    assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", key)


def test_attribute_key_of_different_symbol_headers_differ():
    assert normalize.attribute_key("名前") != normalize.attribute_key("姓")


@pytest.mark.parametrize("value, expected", [
    ("12", 12), ("-12", -12), ("+7", 7), ("3.5", 3.5), ("-0.25", -0.25), (".5", 0.5),
    ("1.0", 1), ("1e3", 1000), ("2.5E-1", 0.25), ("007", 7), ("9223372036854775807", 2**63 - 1),
])
def test_typed_number(value, expected):
    result = normalize.typed(value, "number", "score")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value", [
    "1,234.5", "12abc", "abc", "1e", "--1", "0x10", "nan", "inf", "1e999", "9223372036854775808",
    "1" * 5000,
])
def test_typed_number_rejects(value):
    with pytest.raises(RowRejected, match="score"):
        normalize.typed(value, "number", "score")


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("TRUE", True), ("Yes", True), ("y", True), ("1", True), ("T", True),
    ("false", False), ("False", False), ("NO", False), ("n", False), ("0", False), ("f", False),
])
def test_typed_boolean(value, expected):
    assert normalize.typed(value, "boolean", "vip") is expected


@pytest.mark.parametrize("value", ["2", "maybe", "oui", "yess", "-1"])
def test_typed_boolean_rejects(value):
    with pytest.raises(RowRejected, match="vip .* is not a boolean"):
        normalize.typed(value, "boolean", "vip")


@pytest.mark.parametrize("value, expected", [
    ("2020-05-28", "2020-05-28"),
    ("2020-05-28T10:11:12Z", "2020-05-28T10:11:12+00:00"),
    ("2020-05-28 10:11:12", "2020-05-28T10:11:12"),
    ("2020-05-28T10:11:12.500+02:00", "2020-05-28T10:11:12.500000+02:00"),
    ("3000-12-31", "3000-12-31"),
])
def test_typed_time_is_nested_time_object(value, expected):
    assert normalize.typed(value, "time", "joined") == {"$time": expected}


@pytest.mark.parametrize("value", [
    "2020-02-30", "05/28/2020", "3001-01-01", "yesterday", "2020-05-28T99:00", "20200528",
    "2020-05", "2020-05-28 then",
])
def test_typed_time_rejects_what_braze_would_drop(value):
    with pytest.raises(RowRejected, match="joined"):
        normalize.typed(value, "time", "joined")


def test_typed_string_checks_the_length():
    assert normalize.typed("Masters", "string", "education") == "Masters"
    with pytest.raises(RowRejected, match="education"):
        normalize.typed("x" * 256, "string", "education")
