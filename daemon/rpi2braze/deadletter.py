"""Dead-letter CSV files: every rejected row, with where it came from and why, never lost silently.

One file per workflow below the dead-letter directory: `<directory>/<source>/<name>.csv`. The
columns are `file`, `line`, `reason`, then the export's own header, so an operator can fix the
rows and feed them back. A folder whose data files have different headers gets every column of
every file, by name, in the order they first appear. The rows hold personal data: files are
0600, directories 0700.

A file holds the rejections of one delivery run, so its rows are those `status` counts. A run
that starts from batch 0 (the workflow's first, a retry, or a restart after its files or
settings changed) sets an earlier run's file aside whole, as `<name>.csv.previous` (then
`.previous.1`, ...), before it sends anything; a run that resumes (some of its batches are
acknowledged) appends.

A batch's rejections are written before the state file acknowledges the batch, so a crash in
between never loses them; the batch is sent again after the restart. Its rows are then already
in the file: a writer resuming a workflow skips the rows (file and line) among its last records.
A file whose last record a crash left unfinished (which would swallow the records appended after
it) is set aside whole, as `<name>.csv.cut`, and a new one begun: nothing is deleted.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import os
import re
import stat
import threading
from typing import Iterable, Sequence, TextIO

from rpi2braze import private
from rpi2braze.errors import StateError
from rpi2braze.log import get_logger
from rpi2braze.model import Rejection, WorkflowKey
from rpi2braze.sources.base import free_name

DEADLETTER_COLUMNS = ("file", "line", "reason")
MAX_NAME_CHARS = 120  # well below the 255-byte file name limit of common filesystems
# Rows a crash can leave written but unacknowledged: those of the batches in flight, each with at
# most 75 objects' rows and 1,000 rejections held (batcher.MAX_REJECTIONS_HELD), the last written.
RECHECKED_RECORDS = 200_000
KEY_HASH_CHARS = 12

log = get_logger(__name__)

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
# How a file is set aside: cut short by a crash, an earlier run's, an edit made during delivery.
CUT, PREVIOUS, EDITED = ".cut", ".previous", ".edited"
_SET_ASIDE_NAME = re.compile(r"(?P<current>.*\.csv)(?:(?P<kind>\.cut|\.previous|\.edited)(?:\.\d+)?)?")


def name_parts(name: str) -> tuple[str, str | None] | None:
    """Given a file name, return the name of the dead-letter file it is or was set aside from, and
    how it was set aside (CUT, PREVIOUS, EDITED; None for that file itself); None if it is no
    dead-letter file's name."""
    match = _SET_ASIDE_NAME.fullmatch(name)
    return None if match is None else (match["current"], match["kind"])


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


def workflow_deadletter_path(state_dir: str, key: WorkflowKey) -> str:
    """The dead-letter CSV of a workflow whose state file is in `state_dir`."""
    return deadletter_path(os.path.join(state_dir, "deadletter"), key)


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
    not repeat it. `resuming`: this run continues one cut short (a crash, a postponement), and
    rows already in the file are not written again. Otherwise a new run begins: an existing
    file, an earlier run's, is set aside at once (see the module's docstring).

    Raise StateError if an earlier run's file cannot be set aside.
    """

    def __init__(self, path: str, headers: Sequence[tuple[str, tuple[str, ...]]], resuming: bool = False):
        self.path = path
        if not resuming:
            _set_aside_earlier_run(path)
        self.header, self._places = _columns(headers)
        self._resuming = resuming
        self._written_before: set[tuple[str, str]] = set()   # (file, line) of a reopened file's last records
        self._file: TextIO | None = None
        self._writer = None
        self._closed = False
        self._failed = False   # a write failed: what follows it in the file could be swallowed by a torn record
        self._lock = threading.Lock()

    def write(self, rejections: Iterable[Rejection]) -> int:
        """Append these rejections; return how many were written, once they are on disk (a row
        already among a reopened file's last records is not written again).

        Raise StateError if the file cannot be created or written, ValueError if closed.
        """
        with self._lock:
            if self._closed:
                raise ValueError(f"dead-letter writer for {self.path} is closed")
            if self._failed:
                raise StateError(f"dead-letter file {self.path}: an earlier write failed; the workflow "
                                 "is delivered again once it is retried")
            written = 0
            try:
                self._keep_own_file()
                for rejection in rejections:
                    writer = self._open_once()
                    if (rejection.row.file, str(rejection.row.line)) not in self._written_before:
                        writer.writerow(self._record(rejection))
                        written += 1
                if written:
                    self._file.flush()
                    os.fsync(self._file.fileno())
            except OSError as error:
                self._failed = True
                reason = error.strerror or str(error)
                raise StateError(f"cannot write dead-letter file {self.path}: {reason}") from error
            return written

    def close(self) -> None:
        """Close the file, if it was ever opened, put back whole if it was replaced meanwhile.
        Closing twice is harmless."""
        with self._lock:
            self._closed = True
            if self._file is not None and not self._failed:
                try:
                    self._keep_own_file()
                except OSError as error:   # the rows are in the file this writer holds; say where it went
                    log.error("deadletter_not_restored", path=self.path, reason=error.strerror or str(error))
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> DeadLetterWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open_once(self):
        if self._writer is None:
            private.make_directories(os.path.dirname(self.path))
            descriptor = self._open_descriptor()
            is_new = os.fstat(descriptor).st_size == 0
            self._adopt(descriptor)
            if is_new:
                _fsync_directory(os.path.dirname(self.path))  # so the new file's name survives a crash
                self._writer.writerow(DEADLETTER_COLUMNS + self.header)
        return self._writer

    def _open_descriptor(self) -> int:
        """The file, open for appending; an existing one is read first (see the module's docstring)."""
        # O_NOFOLLOW: a symlink planted at this name must not redirect personal data elsewhere.
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW   # read: _read_back
        descriptor = os.open(self.path, flags, 0o600)
        if os.fstat(descriptor).st_size == 0:
            return descriptor
        rows, finished = _read_back(descriptor)
        if self._resuming:
            self._written_before = rows
        if finished:
            return descriptor
        os.close(descriptor)
        _set_aside(self.path, CUT, "its last record is unfinished (a crash while writing?); a new file is begun")
        return os.open(self.path, flags, 0o600)

    def _adopt(self, descriptor: int) -> None:
        # backslashreplace: a value that cannot be encoded is still written, visibly, never dropped.
        self._file = open(descriptor, "w", encoding="utf-8", errors="backslashreplace", newline="")
        self._writer = csv.writer(self._file)

    def _keep_own_file(self) -> None:
        """If the file at `path` is no longer the one this writer appends to (an editor saving by
        replacing it, as sed -i and vim do, while the workflow is being delivered), set the new
        one aside as `.edited` and put this run's file back whole: rows written to a file no
        longer at `path` would be lost, and status would count rows the file does not hold."""
        if self._file is None:
            return
        mine = os.fstat(self._file.fileno())
        try:
            there = os.lstat(self.path)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_ino, there.st_dev) == (mine.st_ino, mine.st_dev):
            return
        edited = None
        if there is not None:
            edited = free_name(self.path + EDITED, os.path.lexists)
            os.rename(self.path, edited)
        self._file.flush()
        private.make_directories(os.path.dirname(self.path))   # the folder may have gone with the file
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        restored = os.open(self.path, flags, 0o600)
        offset = 0
        while chunk := os.pread(self._file.fileno(), 1 << 20, offset):
            view = memoryview(chunk)
            while view:   # a short write (a full disk) must not leave a torn copy
                view = view[os.write(restored, view):]
            offset += len(chunk)
        os.fsync(restored)
        _fsync_directory(os.path.dirname(self.path))
        self._file.close()
        self._adopt(restored)
        log.warning("deadletter_replaced", path=self.path, edited=edited,
                    hint="the file was replaced or deleted while its workflow was being delivered; it is put "
                         "back whole, and the version found there kept aside: edit it once the workflow is delivered")

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


def _set_aside_earlier_run(path: str) -> None:
    """Set the file at `path` aside as `.previous` if it holds anything, and so the earlier run's
    `.cut` files (resend takes those as the current run's). A symlink or anything else that is not
    a file is left for the writer to refuse. Raise StateError if one cannot be set aside."""
    directory, name = os.path.split(path)
    try:
        cut = sorted(entry for entry in os.listdir(directory or ".") if name_parts(entry) == (name, CUT))
    except OSError:   # no folder yet; one that cannot be listed fails the first write
        cut = []
    for earlier in (path, *(os.path.join(directory, entry) for entry in cut)):
        try:
            found = os.lstat(earlier)
        except OSError:   # nothing there
            continue
        if not (stat.S_ISREG(found.st_mode) and found.st_size):
            continue
        try:
            _set_aside(earlier, PREVIOUS, "it holds an earlier delivery run's rejections; this run starts "
                                             "from its first batch and begins a new file", target=path)
        except OSError as error:
            raise StateError(f"cannot set aside dead-letter file {earlier}: {error.strerror or error}") from error


def _set_aside(path: str, suffix: str, reason: str, target: str | None = None) -> None:
    """Rename the file at `path` to the first free `(target or path) + suffix` (`.1`, `.2`, ...), durably."""
    kept = free_name((target or path) + suffix, os.path.lexists)
    os.rename(path, kept)
    # durable before the run's first acknowledgement, or a crash could put the rows back for a resumed run
    _fsync_directory(os.path.dirname(path))
    log.warning("deadletter_set_aside", path=path, kept=kept, reason=reason)


def _read_back(descriptor: int) -> tuple[set[tuple[str, str]], bool]:
    """(file, line) of the last RECHECKED_RECORDS records of an open dead-letter file (its header
    counts as a row no rejection has), and whether its last record is finished: it ends a line
    and no quoted value is left open."""
    with open(os.dup(descriptor), "rb") as stream:
        lines = _CountedLines(stream)
        last: collections.deque = collections.deque(maxlen=RECHECKED_RECORDS)
        try:
            for record in csv.reader(lines, strict=True):   # strict: an open quote at the end is an error
                last.append(tuple(record[:2]))
        except csv.Error:   # a quote out of place: a torn record at the end, or an edit by hand
            return set(last), lines.consumed < os.fstat(descriptor).st_size
    if not lines.ended_line and last:
        last.pop()   # cut short: that row is to be written again, whole
    return set(last), lines.ended_line


class _CountedLines:
    """The lines of a binary stream as text, counting the bytes handed out, and whether the last
    one ended with a line break."""

    def __init__(self, stream):
        self._stream = stream
        self.consumed = 0
        self.ended_line = True

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._stream.readline()
        if not line:
            raise StopIteration
        self.consumed += len(line)
        self.ended_line = line.endswith(b"\n")
        return line.decode("utf-8", "replace")


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


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
