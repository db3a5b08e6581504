"""Write a realistic, deterministic RPI Outbound Delivery export for the benchmarks.

    python bench/generate.py BASE --rows 1000000 [--seed 7] [--workflow-id ID]

Writes BASE/Braze Onboarding and Upsert/<Offer>/<Workflow ID>/RPI_Export_<id>.txt with RPI's
two prepended columns (RPContactID, ChannelExecutionID), the nine standard fields, Output Name
and five CDP columns. Values look like a real export: unique external_ids, mostly E.164 phones
with some US national ones (the slow phonenumbers path), country names and ISO codes mixed,
gender words and letters, some empty cells. The same seed and row count give the same bytes.
Prints the folder's path.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from datetime import date, timedelta

CHANNEL = "Braze Onboarding and Upsert"
OFFER = "Spring Upsell 2024"
CHUNK_ROWS = 10_000
HEADER = (
    "RPContactID", "ChannelExecutionID", "external_id", "first_name", "last_name", "email",
    "country", "dob", "gender", "home_city", "phone", "Output Name",
    "Loyalty Tier", "Lifetime Value", "Preferred Store", "Last Purchase Date", "Email Opt In",
)
FIRST_NAMES = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
               "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
               "Sarah", "Chloé", "José", "Zoë", "Søren", "Aoife", "Mateo", "Priya", "Wei", "Fatima")
LAST_NAMES = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
              "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
              "O'Brien", "Müller", "Nguyen", "Kim", "Patel", "Van der Berg", "Nakamura")
DOMAINS = ("example.com", "mail.example.org", "example.net", "corp.example.co.uk")
# (how the export writes the country, where its phones come from); names and codes both occur.
COUNTRIES = (("United States", "US"), ("US", "US"), ("USA", "US"), ("United States", "US"),
             ("Canada", "CA"), ("United Kingdom", "GB"), ("GB", "GB"), ("Germany", "DE"),
             ("DEU", "DE"), ("France", "FR"), ("Mexico", "MX"), ("Australia", "AU"),
             ("Ireland", "IE"), ("Spain", "ES"), ("Brazil", "BR"))
E164_PREFIX = {"US": "+1", "CA": "+1", "GB": "+447", "DE": "+4915", "FR": "+336", "MX": "+52",
               "AU": "+614", "IE": "+3538", "ES": "+346", "BR": "+5511"}
US_AREA_CODES = ("201", "212", "305", "312", "415", "503", "617", "702", "713", "917")
GENDERS = ("Male", "Female", "M", "F", "female", "male", "Other", "Unknown", "Prefer not to say")
CITIES = ("New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "London", "Berlin", "Paris",
          "Toronto", "Sydney", "Dublin", "Madrid", "São Paulo", "Washington, D.C.", "Mexico City")
OUTPUT_NAMES = ("Spring Upsell - Loyal", "Spring Upsell - Lapsed", "Spring Upsell - New", "Control")
TIERS = ("Gold", "Silver", "Bronze", "Platinum")
STORES = ("Store 0012 Downtown", "Store 0044 Mall", "Online", "Store 0107 Airport", "Store 0230 Outlet")
OPT_IN = ("Yes", "No", "Y", "N", "true", "false")
NATIONAL_PHONE_SHARE = 0.05   # written "(212) 555-0123": each costs a phonenumbers parse
EMPTY_SHARE = 0.05            # an empty home_city / phone / CDP cell now and then


def export_folder(base: str, workflow_id: str) -> str:
    """Return the workflow folder the export for `workflow_id` is written to."""
    return os.path.join(base, CHANNEL, OFFER, workflow_id)


def generate(base: str, rows: int, seed: int = 7, workflow_id: str | None = None) -> str:
    """Given a base folder, a row count and a seed, write the export and return its folder.

    The same arguments always write the same bytes. The file is written under a temporary name
    and renamed, so a folder with RPI_Export_<id>.txt in it is always complete.
    """
    workflow_id = workflow_id or f"bench-{rows}-{seed}"
    folder = export_folder(base, workflow_id)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"RPI_Export_{workflow_id}.txt")
    rng = random.Random(seed)
    execution_id = str(rng.randrange(100_000, 999_999))
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as target:
        writer = csv.writer(target, lineterminator="\r\n")  # RPI writes Windows line ends
        writer.writerow(HEADER)
        for start in range(0, rows, CHUNK_ROWS):
            writer.writerows(_rows(rng, start, min(CHUNK_ROWS, rows - start), execution_id))
    os.replace(path + ".tmp", path)
    return folder


def _rows(rng: random.Random, start: int, count: int, execution_id: str):
    """`count` rows; columns are drawn a chunk at a time because one rng call per cell is slow."""
    firsts = rng.choices(FIRST_NAMES, k=count)
    lasts = rng.choices(LAST_NAMES, k=count)
    countries = rng.choices(COUNTRIES, k=count)
    genders = rng.choices(GENDERS, k=count)
    cities = rng.choices(CITIES, k=count)
    outputs = rng.choices(OUTPUT_NAMES, k=count)
    tiers = rng.choices(TIERS, k=count)
    stores = rng.choices(STORES, k=count)
    opt_ins = rng.choices(OPT_IN, k=count)
    draws = [rng.random() for _ in range(count)]
    numbers = [rng.randrange(10**9) for _ in range(count)]
    birth = date(1940, 1, 1)
    purchase = date(2022, 1, 1)
    for offset in range(count):
        index = start + offset
        first, last, (country, code), draw, number = firsts[offset], lasts[offset], countries[offset], draws[offset], numbers[offset]
        empty = draw < EMPTY_SHARE
        yield (
            str(40_000_000 + index), execution_id, f"C{index * 7919 % 10**10:010d}",
            first, last, f"{first}.{last}.{index}@{DOMAINS[index % len(DOMAINS)]}".replace(" ", "").replace("'", "").lower(),
            country, (birth + timedelta(days=number % 23_000)).isoformat(), genders[offset],
            "" if empty else cities[offset], "" if empty else _phone(code, draw, number),
            outputs[offset], tiers[offset], "" if empty else f"{number % 500_000 / 100:.2f}",
            stores[offset], (purchase + timedelta(days=number % 700)).isoformat(), opt_ins[offset],
        )


def _phone(code: str, draw: float, number: int) -> str:
    """Mostly E.164; a share of US numbers written nationally, as people type them."""
    subscriber = f"{2 + number % 8}{number // 8 % 1_000_000:06d}"  # US exchanges start 2-9
    area = US_AREA_CODES[number % len(US_AREA_CODES)]
    if code == "US" and draw > 1 - NATIONAL_PHONE_SHARE * 3:  # US is about a third of the rows
        return f"({area}) {subscriber[:3]}-{subscriber[3:]}"
    if code in ("US", "CA"):
        return f"+1{area}{subscriber}"
    return f"{E164_PREFIX[code]}{number % 10**8:08d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="base folder (<base>/<Channel>/<Offer>/<Workflow ID>/)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workflow-id")
    arguments = parser.parse_args(argv)
    print(generate(arguments.base, arguments.rows, arguments.seed, arguments.workflow_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
