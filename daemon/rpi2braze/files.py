"""Which files in a workflow folder are data, and which are RPI's siblings or temporary files.

RPI writes `RPI_Export_<ID>.txt` beside `RPI_Export_<ID>.txt_summary.xml`, `..._sample`,
`..._Content.txt` and `..._Source.txt` (reference/redpoint-rpi.md). The data globs are broad
enough to match some of those siblings, so siblings are recognised first and never count as data.
Copy tools write temporary names (`.part`, `~x`, `.x.swp`) that must never be read either.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from fnmatch import fnmatchcase

from rpi2braze.model import FileEntry

SIBLING_PATTERNS = ("*_summary.*", "*_sample", "*_content.txt", "*_source.txt")
TEMPORARY_SUFFIXES = (
    ".tmp", ".temp", ".part", ".partial", ".filepart", ".crdownload", ".swp", ".lock",
    ".inprogress", ".writing", ".uploading",
)


class FileKind(StrEnum):
    """What a file in a workflow folder is, as far as delivery is concerned."""

    DATA = "data"            # an export file to deliver
    SIBLING = "sibling"      # RPI's summary, sample, content or source file: never delivered
    TEMPORARY = "temporary"  # hidden or still being written by some tool: never read
    OTHER = "other"          # anything else: ignored


def is_temporary(name: str) -> bool:
    """Given a file name, return True if it is hidden or named like a file still being written."""
    lowered = name.lower()
    return (
        lowered.startswith((".", "~"))
        or lowered.endswith("~")
        or lowered.endswith(TEMPORARY_SUFFIXES)
    )


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Given a file name and fnmatch globs, return True if any glob matches, ignoring case."""
    lowered = name.lower()
    return any(fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


def classify(name: str, patterns: tuple[str, ...]) -> FileKind:
    """Given a file name and the data globs, return its kind.

    Temporary wins over everything, then sibling, then data; a name nothing matches is OTHER.
    """
    if is_temporary(name):
        return FileKind.TEMPORARY
    if matches_any(name, SIBLING_PATTERNS):
        return FileKind.SIBLING
    if matches_any(name, patterns):
        return FileKind.DATA
    return FileKind.OTHER


def data_files(entries: Iterable[FileEntry], patterns: tuple[str, ...]) -> tuple[FileEntry, ...]:
    """Given a folder's entries and the data globs, return the data files (no folders), by name."""
    found = [
        entry for entry in entries
        if not entry.is_dir and classify(entry.name, patterns) is FileKind.DATA
    ]
    return tuple(sorted(found, key=lambda entry: entry.name))


def unrecognised(entries: Iterable[FileEntry], patterns: tuple[str, ...], marker_file: str | None) -> list[str]:
    """The names of a folder's files that are neither data, RPI's siblings nor the marker, if it
    holds no data file and nothing being written: an export saved under another name. Else []."""
    kinds = {entry.name: classify(entry.name, patterns) for entry in entries if not entry.is_dir}
    if FileKind.DATA in kinds.values() or FileKind.TEMPORARY in kinds.values():
        return []
    return sorted(name for name, kind in kinds.items() if kind is FileKind.OTHER and name != marker_file)


def all_older_than(entries: Iterable[FileEntry], patterns: tuple[str, ...], moment: float) -> bool:
    """True if the folder has data files and every one was last changed before `moment` (epoch s)."""
    files = data_files(entries, patterns)
    return bool(files) and max(entry.mtime for entry in files) < moment
