"""Exports with known contents, and the profiles Braze must hold after delivering them.

The expected profiles are worked out from the generated rows themselves (plain columns that need
no normalising), not by the mapping code under test. A user may appear in several rows of one
export, `users` rows apart so they land in different batches: the order Braze applied them in
shows in the arrays (`add` appends) and in the scalars (the later row wins).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

from rpi2braze.sandbox.state import RequestRecord

UPSERT = "Braze Onboarding and Upsert"
HEADER = "RPContactID,ChannelExecutionID,external_id,first_name,email,Output Name,Score\n"
MARKER = "_DONE"


@dataclass(frozen=True)
class ExportRow:
    contact_id: str
    execution_id: str
    external_id: str
    first_name: str
    email: str
    output_name: str
    score: str

    def line(self) -> str:
        return (f"{self.contact_id},{self.execution_id},{self.external_id},{self.first_name},{self.email},"
                f"{self.output_name},{self.score}\n")


def export_rows(prefix: str, users: int, repeats: int = 1) -> list[ExportRow]:
    """Rows for `users` users named <prefix>-NNNNNN, each appearing `repeats` times with new values."""
    return [
        ExportRow(f"{prefix}{round_}x{number}", "5719", f"{prefix}-{number:06d}", f"F{number}r{round_}",
                  f"{prefix}.{number}@example.com", f"Output{round_}", str(number * 10 + round_))
        for round_ in range(repeats) for number in range(users)
    ]


def write_export(base: Path, offer: str, workflow_id: str, rows: list[ExportRow], marker: bool = True) -> Path:
    """Write <base>/<Upsert>/<offer>/<workflow_id>/RPI_Export_<id>.txt, then the marker file; return the folder."""
    folder = base / UPSERT / offer / workflow_id
    folder.mkdir(parents=True)
    with open(folder / f"RPI_Export_{workflow_id}.txt", "w", encoding="utf-8") as export:
        export.write(HEADER)
        export.writelines(row.line() for row in rows)
    if marker:
        (folder / MARKER).write_text("")
    return folder


def expected_profiles(rows: list[ExportRow], offer: str) -> dict[str, dict]:
    """The part of each profile the export decides, keyed by external_id."""
    profiles: dict[str, dict] = {}
    for row in rows:
        profile = profiles.setdefault(row.external_id, {"custom_attributes": {
            "rpi_audience_outputs": [], "rpi_offers": [offer], "rpi_contact_ids": [], "rpi_channel_exec_ids": [],
            "rpi_cdp_attributes": {}}})
        profile["first_name"], profile["email"] = row.first_name, row.email
        custom = profile["custom_attributes"]
        for name, value in (("rpi_audience_outputs", row.output_name), ("rpi_contact_ids", row.contact_id),
                            ("rpi_channel_exec_ids", row.execution_id)):
            if value in custom[name]:
                custom[name].remove(value)
            custom[name].append(value)
        custom["rpi_cdp_attributes"]["score"] = row.score
    return profiles


def profile_mismatches(actual: dict[str, dict], expected: dict[str, dict], limit: int = 10) -> list[str]:
    """Describe up to `limit` differences between sandbox profiles and expected ones (missing users too)."""
    problems = []
    for external_id, wanted in expected.items():
        profile = actual.get(external_id)
        if profile is None:
            problems.append(f"{external_id}: missing")
            continue
        got = {name: profile.get(name) for name in wanted}
        if got != wanted:
            problems.append(f"{external_id}: got {got}, expected {wanted}")
        if len(problems) >= limit:
            break
    return problems


def applied_ids(records: list[RequestRecord]) -> collections.Counter:
    """How many times each external_id reached Braze in a request it applied (a 2xx answer)."""
    counts: collections.Counter = collections.Counter()
    for record in records:
        if record.path == "/users/track" and 200 <= record.status < 300:
            counts.update(record.external_ids)
    return counts
