"""The North American fast path against phonenumbers itself, over valid and invalid numbers."""

import random

import phonenumbers
import pytest
from phonenumbers import PhoneNumber, PhoneNumberType

from rpi2braze import nanp

NANP_REGIONS = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]
TYPES = (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE,
         PhoneNumberType.PREMIUM_RATE, PhoneNumberType.SHARED_COST, PhoneNumberType.VOIP,
         PhoneNumberType.PERSONAL_NUMBER, PhoneNumberType.PAGER, PhoneNumberType.UAN,
         PhoneNumberType.VOICEMAIL)


def phonenumbers_says_valid(national: str) -> bool:
    return phonenumbers.is_valid_number(PhoneNumber(country_code=1, national_number=int(national)))


def example_numbers() -> list[str]:
    """phonenumbers' example number of every type of every NANP region, and every number one
    digit away from one: the edges of each region's patterns."""
    examples = set()
    for region in NANP_REGIONS:
        for number_type in TYPES:
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is not None and len(str(example.national_number)) == 10:
                examples.add(str(example.national_number))
    near = {example[:position] + digit + example[position + 1:]
            for example in examples for position in range(10) for digit in "0123456789"}
    return sorted(number for number in examples | near if number[0] in "23456789")


def test_example_numbers_cover_many_regions():
    assert len({number[:3] for number in example_numbers()}) > 40


def test_is_valid_agrees_with_phonenumbers_near_every_regions_examples():
    numbers = example_numbers()
    assert [number for number in numbers if nanp.is_valid(number) != phonenumbers_says_valid(number)] == []
    assert 0 < sum(map(nanp.is_valid, numbers)) < len(numbers)  # both valid and invalid ones


def test_is_valid_agrees_with_phonenumbers_for_every_area_code_and_exchange_digit():
    rng = random.Random(1)
    numbers = [f"{area}{exchange_digit}{rng.randrange(10**6):06d}"
               for area in range(200, 1000) for exchange_digit in range(10)]
    assert [number for number in numbers if nanp.is_valid(number) != phonenumbers_says_valid(number)] == []


def test_is_valid_agrees_with_phonenumbers_on_random_numbers():
    rng = random.Random(2)
    numbers = [str(rng.randrange(2 * 10**9, 10**10)) for _ in range(5000)]
    assert [number for number in numbers if nanp.is_valid(number) != phonenumbers_says_valid(number)] == []


@pytest.mark.parametrize("value, national", [
    ("2125550123", "2125550123"), ("12125550123", "2125550123"), ("+12125550123", "2125550123"),
    ("(212) 555-0123", "2125550123"), ("(212)555-0123", "2125550123"),
    ("212-555-0123", "2125550123"), ("212.555.0123", "2125550123"), ("212 555 0123", "2125550123"),
    ("1-212-555-0123", "2125550123"), ("1 (212) 555-0123", "2125550123"),
    ("+1 212 555 0123", "2125550123"), ("+1-212-555-0123", "2125550123"),
    ("+1 (212) 555-0123", "2125550123"), ("1.212.555.0123", "2125550123"),
    ("(212) 055-0123", "2120550123"),
])
def test_national_number_of_the_usual_ways_of_writing_a_number(value, national):
    assert nanp.national_number(value) == national


@pytest.mark.parametrize("value", [
    "112 555 0123", "012 555 0123", "(212 555-0123", "212) 555-0123", "212--555-0123",
    "212 555 0123 x12", "212 555 01234", "2 212 555 0123", "+2 212 555 0123", "212/555-0123",
    "(212)  555-0123", "２１２５５５０１２３", "21255501", "", "+1", "phone",
])
def test_national_number_leaves_anything_else_to_phonenumbers(value):
    assert nanp.national_number(value) is None
