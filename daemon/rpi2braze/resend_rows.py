"""The rows of a dead-letter file, fixed by hand, as an export to resend (`rpi2braze resend`).

A dead-letter CSV (deadletter.py) holds `file`, `line` and `reason`, then the columns of the
workflow's data files, merged by name. Turning it back into an export means dropping the first
three, folding columns that only differ in spelling (`external_id` in one file, `External ID`
in another: the mapping would find two external_id columns), and refusing rows that would
deliver something other than what the operator meant.
"""

from __future__ import annotations

import csv
import io

from rpi2braze.deadletter import DEADLETTER_COLUMNS
from rpi2braze.errors import SourceError
from rpi2braze.normalize import header_key
from rpi2braze.reader import BYTE_PLACEHOLDER, BYTES_PROBLEM

# A spreadsheet saving the file may change its delimiter to its locale's.
DELIMITERS = (",", ";", "\t")
_SHOWN_LINES = 5


def parse_deadletter(content: bytes, path: str, cut_short: bool = False) -> tuple[list[str], list[list[str]]]:
    """Given a dead-letter CSV's bytes (UTF-8, with or without a BOM; comma-, semicolon- or
    tab-separated) and its path for messages, return the export's columns and the rows to resend.
    `cut_short`: a file set aside after a crash (`.cut`), because its last record is unfinished
    (that row is written whole in the file that followed): the last record is left out.

    Raise SourceError if it is not a dead-letter file, holds no row, holds a row not as wide as
    its header (a ragged one, written as it was read: its values would land in other columns), or
    a row rejected for bytes its encoding could not decode still holds them as \\xNN.
    """
    records = _records(content, path)
    if cut_short:
        records = records[:-1]
    if len(records) < 2:
        raise SourceError(f"{path}: holds no rows to resend")
    problems = [problem for problem in (
        _problem(records[1:], lambda record: len(record) != len(records[0]),
                 f"are not as wide as its header ({len(records[0])} values), as rows rejected for their "
                 "number of fields are written: give them the header's columns, or delete them"),
        _problem(records[1:], _holds_placeholders, "still hold bytes their export's encoding could not "
                 "decode, shown as \\xNN: write the characters meant in their place")) if problem]
    if problems:
        raise SourceError(f"{path}: " + "; ".join(problems) + "; then resend")
    width = len(DEADLETTER_COLUMNS)
    return _folded(records[0][width:], [record[width:] for record in records[1:]])


def _records(content: bytes, path: str) -> list[list[str]]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: is not UTF-8 text (a spreadsheet can save it as \"CSV UTF-8\")") from None
    delimiter = next((mark for mark in DELIMITERS if text.startswith(mark.join(DEADLETTER_COLUMNS) + mark)), None)
    if delimiter is None:
        raise SourceError(f"{path}: not a dead-letter file (its header does not begin with "
                          f"{','.join(DEADLETTER_COLUMNS)})")
    try:
        return [record for record in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if any(record)]
    except csv.Error as error:
        raise SourceError(f"{path}: cannot be read as CSV: {error}") from None


def _problem(records: list[list[str]], wrong, why: str) -> str | None:
    """"the rows whose line is ... `why`", naming the export lines (the `line` column) of the records
    `wrong` says are; None if there are none."""
    lines = [record[1] if len(record) > 1 else "?" for record in records if wrong(record)]
    if not lines:
        return None
    shown = ", ".join(lines[:_SHOWN_LINES]) + (", ..." if len(lines) > _SHOWN_LINES else "")
    return f"the rows whose `line` is {shown} {why}"


def _holds_placeholders(record: list[str]) -> bool:
    return bool(BYTES_PROBLEM.match(record[2])) and any(BYTE_PLACEHOLDER.search(value) for value in record[3:])


def _folded(header: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Columns whose names the mapping reads as one (header_key) become one, under the first
    spelling, holding the first non-empty value: each row came from one file, with one of them."""
    places: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        places.setdefault(header_key(name) or f"#{index}", []).append(index)
    if all(len(indexes) == 1 for indexes in places.values()):
        return header, rows
    groups = list(places.values())
    return ([header[indexes[0]] for indexes in groups],
            [[next((row[i] for i in indexes if row[i]), "") for indexes in groups] for row in rows])
