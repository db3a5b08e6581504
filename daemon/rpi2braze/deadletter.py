"""Dead-letter CSV files: every rejected row, with where it came from and why, never lost silently.

One file per workflow below the dead-letter directory: `<directory>/<source>/<name>.csv`. The
columns are `file`, `line`, `reason`, then the export's own header, so an operator can fix the
rows and feed them back. A folder whose data files have different headers gets every column of
every file, by name, in the order they first appear. The rows hold personal data: files are
0600, directories 0700.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import threading
from typing import Iterable, Sequence, TextIO

from rpi2braze.errors import StateError
from rpi2braze.model import Rejection, WorkflowKey

DEADLETTER_COLUMNS = ("file", "line", "reason")
MAX_NAME_CHARS = 120  # well below the 255-byte file name limit of common filesystems
KEY_HASH_CHARS = 12

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def deadletter_path(directory: str, key: WorkflowKey) -> str:
    """Given the dead-letter directory and a workflow key, return that workflow's CSV path.

    Names from outside input are reduced to [A-Za-z0-9._-] and capped in length, and never
    start with a dot, so the path cannot leave `directory`; a hash of the exact key keeps keys
    apart that reduce to the same name.
    """
    readable = _safe_name(f"{key.channel}__{key.offer}__{key.workflow_id}")
    # repr of the tuple is unambiguous, and escapes NULs and lone surrogates from file names
    exact_key = repr((key.source, key.channel, key.offer, key.workflow_id)).encode("utf-8")
    digest = hashlib.sha256(exact_key).hexdigest()[:KEY_HASH_CHARS]
    return os.path.join(directory, _safe_name(key.source), f"{readable}.{digest}.csv")


def _safe_name(text: str) -> str:
    cleaned = _UNSAFE_CHARACTERS.sub("_", text)[:MAX_NAME_CHARS]
    # A leading dot would make "..", "." or a hidden file; an empty name would vanish from the path.
    if not cleaned or cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned


class DeadLetterWriter:
    """Appends rejections to one dead-letter CSV; usable as a context manager, safe across threads.

    `headers` holds (file name, header) for each data file of the folder. The file is created
    on the first rejection written (no empty files), with mode 0600 from the start. The header
    is written only when the file is empty, so a restart that appends to an existing file does
    not repeat it.
    """

    def __init__(self, path: str, headers: Sequence[tuple[str, tuple[str, ...]]]):
        self.path = path
        self.header, self._places = _columns(headers)
        self._file: TextIO | None = None
        self._writer = None
        self._closed = False
        self._lock = threading.Lock()

    def write(self, rejections: Iterable[Rejection]) -> int:
        """Append these rejections; return how many were written, once they are on disk.

        Raise StateError if the file cannot be created or written, ValueError if closed.
        """
        with self._lock:
            if self._closed:
                raise ValueError(f"dead-letter writer for {self.path} is closed")
            written = 0
            try:
                for rejection in rejections:
                    self._open_once().writerow(self._record(rejection))
                    written += 1
                if written:
                    self._file.flush()
                    os.fsync(self._file.fileno())
            except OSError as error:
                reason = error.strerror or str(error)
                raise StateError(f"cannot write dead-letter file {self.path}: {reason}") from error
            return written

    def close(self) -> None:
        """Close the file, if it was ever opened. Closing twice is harmless."""
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> DeadLetterWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open_once(self):
        if self._writer is None:
            _make_private_directories(os.path.dirname(self.path))
            # O_NOFOLLOW: a symlink planted at this name must not redirect personal data elsewhere.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            descriptor = os.open(self.path, flags, 0o600)
            is_new = os.fstat(descriptor).st_size == 0
            # backslashreplace: a value that cannot be encoded is still written, visibly, never dropped.
            self._file = open(descriptor, "w", encoding="utf-8", errors="backslashreplace", newline="")
            self._writer = csv.writer(self._file)
            if is_new:
                _fsync_directory(os.path.dirname(self.path))  # so the new file's name survives a crash
                self._writer.writerow(DEADLETTER_COLUMNS + self.header)
        return self._writer

    def _record(self, rejection: Rejection) -> tuple:
        """The CSV record of a rejection: its values under their own columns' names. A row whose
        width is not its file's header's (ragged, or with RPI's unnamed prepended values) is
        written as it was read."""
        row = rejection.row
        places = self._places.get(row.file)
        if places is None or len(places) != len(row.values):
            return (row.file, row.line, rejection.reason, *row.values)
        values = [""] * len(self.header)
        for place, value in zip(places, row.values):
            values[place] = value
        return (row.file, row.line, rejection.reason, *values)


def _columns(headers: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[tuple[str, ...], dict]:
    """The union of the files' headers, by name in first-seen order (a name twice in one header
    is two columns), and where each file's columns go in it: None where the file's header is
    the union, as for every file of a folder whose files share one header."""
    union: list[str] = []
    places: dict[str, tuple[int, ...] | None] = {}
    for file_name, header in headers:
        seen: dict[str, int] = {}
        columns = []
        for name in header:
            occurrence = seen[name] = seen.get(name, -1) + 1
            matches = [index for index, column in enumerate(union) if column == name]
            if occurrence >= len(matches):
                union.append(name)
                matches.append(len(union) - 1)
            columns.append(matches[occurrence])
        places[file_name] = tuple(columns)
    whole = tuple(range(len(union)))
    return tuple(union), {name: None if columns == whole else columns for name, columns in places.items()}


def _make_private_directories(directory: str) -> None:
    """Create `directory` and its missing parents with mode 0700 (os.makedirs gives parents the
    default mode)."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # created meanwhile by another writer


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
