"""The interface every source implements, so one Scanner serves them all.

Paths given to a source are *relative* to its base folder, with forward slashes
("Braze Append/Offer A/1234/RPI_Export_1.txt"). A source must refuse any relative path that
would leave its base (absolute paths, "..", symlinks pointing outside): `safe_join` does that
for local paths.
"""

from __future__ import annotations

import os
import posixpath
from typing import BinaryIO, Callable, Protocol

from rpi2braze.errors import SourceError
from rpi2braze.model import FileEntry


class Source(Protocol):
    """A place export folders appear. Implementations translate their library's exceptions into
    SourceUnavailable (retry later) or SourceError (configuration)."""

    name: str
    # Whether every file open for reading holds one of the server's sessions (an SFTP channel, an
    # FTP connection), of which servers allow few (OpenSSH: MaxSessions 10): a folder's files are
    # then read one at a time, not all open at once.
    open_file_holds_a_session: bool

    def list_dir(self, relpath: str) -> list[FileEntry]:
        """Return the entries of the folder `relpath` ("" is the base). Hidden entries included.

        Raise SourceUnavailable if the source cannot be reached, SourceError if `relpath` is
        outside the base. A folder that does not exist returns [] (it was deleted or moved).
        """

    def open_file(self, relpath: str) -> BinaryIO:
        """Open a file for streaming binary reading (a context manager). Raise SourceUnavailable
        if the source cannot be reached or the file vanished."""

    def move_folder(self, relpath: str, destination: str) -> str:
        """Move the folder `relpath` to below `destination` (a path on the same source, outside
        the watched tree), keeping <Channel>/<Offer>/<Workflow ID>; return where it went.
        An existing target gets a numeric suffix, never overwritten."""

    def describe(self, relpath: str) -> str:
        """A human-readable location for logs and status: a local path or sftp://host/path."""

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call `wake()` when something below the base may have changed; return a function that
        stops watching, or None if this source cannot watch (the scanner then only polls)."""

    def close(self) -> None:
        """Release connections. The source may be used again afterwards (it reconnects)."""


def normalise_relpath(relpath: str) -> str:
    """Given a relative path from outside input, return it normalised with forward slashes.

    Raise SourceError if it is absolute, contains "..", a NUL byte or a backslash-smuggled parent.
    """
    if "\x00" in relpath:
        raise SourceError("path contains a NUL byte")
    cleaned = relpath.replace("\\", "/")
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
        raise SourceError(f"path must be relative to the source base: {relpath!r}")
    parts = [part for part in cleaned.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise SourceError(f"path leaves the source base: {relpath!r}")
    return posixpath.join(*parts) if parts else ""


def safe_join(base: str, relpath: str) -> str:
    """Return the local path of `relpath` below `base`, resolving symlinks.

    Raise SourceError if the result is not inside `base` (after resolving symlinks).
    """
    real_base = os.path.realpath(base)
    candidate = os.path.realpath(os.path.join(real_base, normalise_relpath(relpath)))
    if candidate != real_base and not candidate.startswith(real_base + os.sep):
        raise SourceError(f"path leaves the source base: {relpath!r}")
    return candidate


def free_name(target: str, exists: Callable[[str], bool]) -> str:
    """Return `target`, or `target.1`, `target.2`, ... whichever `exists` says is not taken."""
    candidate, counter = target, 0
    while exists(candidate):
        counter += 1
        candidate = f"{target}.{counter}"
    return candidate
