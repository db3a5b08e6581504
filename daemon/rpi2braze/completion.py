"""When is a workflow folder complete? A pure rule over successive listings.

RPI writes no manifest (reference/redpoint-rpi.md §1.3), so a folder is complete when
(a) RPI's Post-Execution call names it (the daemon queues it directly, not through here),
(b) the configured marker file is present, or
(c) its listing (names, sizes, mtimes) has not changed for `settle_seconds`.
In every case it needs at least one data file and no temporary file (a writer is still busy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from rpi2braze.files import FileKind, classify
from rpi2braze.model import FileEntry

Listing = frozenset[tuple[str, int, float]]


@dataclass(frozen=True)
class Observation:
    """A folder's listing and the moment (monotonic seconds) it was first seen unchanged."""

    listing: Listing
    since: float


def listing_of(entries: Iterable[FileEntry]) -> Listing:
    """The part of a directory listing that changes while a writer is busy."""
    return frozenset((entry.name, entry.size, entry.mtime) for entry in entries if not entry.is_dir)


def observe(previous: Observation | None, entries: Iterable[FileEntry], now: float) -> Observation:
    """Given the last observation and a new listing, return the new observation."""
    listing = listing_of(entries)
    if previous is not None and previous.listing == listing:
        return previous
    return Observation(listing, now)


def is_complete(observation: Observation, now: float, settle_seconds: float,
                marker_file: str | None, patterns: tuple[str, ...]) -> bool:
    """Return True if the observed folder may be read now."""
    names = [name for name, _, _ in observation.listing]
    kinds = [classify(name, patterns) for name in names]
    if FileKind.TEMPORARY in kinds or FileKind.DATA not in kinds:
        return False
    if marker_file and marker_file in names:
        return True
    return now - observation.since >= settle_seconds
