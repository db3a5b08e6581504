"""The state file: which workflows are done, durably per acknowledged batch.

One SQLite file. Every write is a `BEGIN IMMEDIATE … COMMIT` with `synchronous=FULL`, so an
acknowledgement that has returned survives a crash, and a restart re-sends only batches in flight.
Acknowledgements that sender threads make at the same moment share one transaction (groupcommit.py).
A file that is not a database, is corrupt, or was written by a newer rpi2braze is refused with a
StateError and left exactly as it was: the operator decides, nothing is reset silently.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from rpi2braze import private
from rpi2braze.errors import StateError
from rpi2braze.groupcommit import CommitFailed, GroupCommit
from rpi2braze.log import get_logger
from rpi2braze.model import WorkflowKey, WorkflowRecord, WorkflowStatus

log = get_logger(__name__)

FINAL_STATUSES = frozenset({WorkflowStatus.DELIVERED, WorkflowStatus.FAILED, WorkflowStatus.QUARANTINED})

# MIGRATIONS[n] takes a file from user_version n to n + 1; append, never edit a released step.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE workflows (id INTEGER PRIMARY KEY,
            source TEXT NOT NULL, channel TEXT NOT NULL, offer TEXT NOT NULL, workflow_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'in_progress', 'delivered', 'failed', 'quarantined')),
            location TEXT NOT NULL, partitions INTEGER CHECK (partitions > 0), reason TEXT NOT NULL DEFAULT '',
            rows_delivered INTEGER NOT NULL DEFAULT 0, rows_rejected INTEGER NOT NULL DEFAULT 0,
            batches_acked INTEGER NOT NULL DEFAULT 0,
            first_seen REAL NOT NULL, started_at REAL, finished_at REAL, updated_at REAL NOT NULL,
            UNIQUE (source, channel, offer, workflow_id))""",
        """CREATE TABLE batches (workflow INTEGER NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
            number INTEGER NOT NULL CHECK (number >= 0), rows_delivered INTEGER NOT NULL CHECK (rows_delivered >= 0),
            rows_rejected INTEGER NOT NULL CHECK (rows_rejected >= 0), acked_at REAL NOT NULL,
            PRIMARY KEY (workflow, number)) WITHOUT ROWID""",
        "CREATE INDEX workflows_by_workflow_id ON workflows (workflow_id)",
    ),
    ("ALTER TABLE workflows ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''",),
)
SCHEMA_VERSION = len(MIGRATIONS)
MAX_INTEGER = 2**63   # SQLite's INTEGER is 64-bit signed

# In WorkflowRecord's field order (see _record), then the stored partition count.
RECORD_COLUMNS = """source, channel, offer, workflow_id, status, location, rows_delivered, rows_rejected,
    batches_acked, reason, first_seen, started_at, finished_at, updated_at, partitions"""
KEY_MATCH = "source = ? AND channel = ? AND offer = ? AND workflow_id = ?"
NEWEST_FIRST = "ORDER BY updated_at DESC, id DESC"

SELECT_ONE = f"SELECT {RECORD_COLUMNS} FROM workflows WHERE {KEY_MATCH}"
SELECT_ID = f"SELECT id, status FROM workflows WHERE {KEY_MATCH}"
SELECT_KNOWN = "SELECT channel, offer, workflow_id FROM workflows WHERE source = ?"
SELECT_BY_WORKFLOW_ID = f"SELECT {RECORD_COLUMNS} FROM workflows WHERE workflow_id = ? {NEWEST_FIRST}"
SELECT_ALL = f"SELECT {RECORD_COLUMNS} FROM workflows {NEWEST_FIRST}"
SELECT_PENDING = f"""SELECT {RECORD_COLUMNS} FROM workflows WHERE status IN ('pending', 'in_progress')
    ORDER BY first_seen, id"""
SELECT_COUNTS = "SELECT status, count(*) FROM workflows GROUP BY status"
SELECT_SOURCES = "SELECT source, count(*) FROM workflows GROUP BY source"
SELECT_PARTITIONS = "SELECT partitions FROM workflows WHERE id = ?"
SELECT_FINGERPRINT = "SELECT fingerprint FROM workflows WHERE id = ?"
UPDATE_FINGERPRINT = "UPDATE workflows SET fingerprint = ? WHERE id = ?"
SELECT_ACKED = "SELECT number FROM batches WHERE workflow = ?"
INSERT_SEEN = """INSERT INTO workflows (source, channel, offer, workflow_id, status, location, first_seen, updated_at)
    VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?6) ON CONFLICT DO NOTHING"""
UPDATE_BEGIN = """UPDATE workflows SET status = 'in_progress', started_at = coalesce(started_at, ?1),
    partitions = coalesce(partitions, ?2), reason = '', updated_at = ?1 WHERE id = ?3"""
INSERT_BATCH = """INSERT INTO batches (workflow, number, rows_delivered, rows_rejected, acked_at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"""
UPDATE_TOTALS = """UPDATE workflows SET rows_delivered = rows_delivered + ?, rows_rejected = rows_rejected + ?,
    batches_acked = batches_acked + 1, updated_at = ? WHERE id = ?"""
UPDATE_FINISH = "UPDATE workflows SET status = ?1, reason = ?2, finished_at = ?3, updated_at = ?3 WHERE id = ?4"
# A finished workflow stays finished: only `requeue` (the retry command) reopens it.
UPDATE_PENDING = """UPDATE workflows SET status = 'pending', reason = ?, updated_at = ?
    WHERE id = ? AND status NOT IN ('delivered', 'failed', 'quarantined')"""
UPDATE_NOTE = "UPDATE workflows SET reason = ?, updated_at = ? WHERE id = ? AND status = 'in_progress'"
DELETE_BATCHES = "DELETE FROM batches WHERE workflow = ?"
DELETE_WORKFLOW = "DELETE FROM workflows WHERE id = ?"
UPDATE_REQUEUE = """UPDATE workflows SET status = 'pending', reason = '', partitions = NULL, rows_delivered = 0,
    rows_rejected = 0, batches_acked = 0, started_at = NULL, finished_at = NULL, updated_at = ? WHERE id = ?"""

UNUSABLE = "state file {path} is unusable: SQLite says {detail}; the file was not changed; move it aside to start fresh"
TOO_NEW = "state file {path} has schema version {version}, newer than this rpi2braze knows ({known}); " \
    "the file was not changed; upgrade rpi2braze or move it aside to start fresh"
# Checked before these run: journal_mode=WAL rewrites the header, which must not happen to a refused file.
OPEN_PRAGMAS = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"


class _Ack(NamedTuple):
    key: WorkflowKey
    number: int
    rows_delivered: int
    rows_rejected: int


class StateStore:
    """The open state file. Thread-safe: one connection, one lock, one transaction at a time."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time):
        """Open (or create, 0600 in a 0700 directory) the state file at `path` and migrate it forward.

        Raise StateError, leaving the file untouched, if it is not a database, is corrupt or is too new.
        """
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = _open(path)
        self._acks: GroupCommit[_Ack, bool] = GroupCommit(self._write_acks)
        log.info("state_opened", path=path, schema_version=SCHEMA_VERSION)

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; every later call raises StateError. Closing twice is harmless."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def get(self, key: WorkflowKey) -> WorkflowRecord | None:
        """Return the record for `key`, or None if the state file has never seen it."""
        rows = self._select(SELECT_ONE, _key_values(key))
        return _record(rows[0]) if rows else None

    def known_keys(self, source: str) -> set[WorkflowKey]:
        """Return the key of every workflow recorded for `source`, whatever its status."""
        rows = self._select(SELECT_KNOWN, (source,))
        return {WorkflowKey(source, channel, offer, workflow_id) for channel, offer, workflow_id in rows}

    def record_seen(self, key: WorkflowKey, location: str) -> WorkflowRecord:
        """Record `key` as PENDING if it is new; return its record, unchanged if it already existed."""
        with self._transaction(write=True) as connection:
            connection.execute(INSERT_SEEN, (*_key_values(key), location, self._clock()))
            return _record(connection.execute(SELECT_ONE, _key_values(key)).fetchone())

    def begin(self, key: WorkflowKey, partitions: int, fingerprint: str = "") -> tuple[int, frozenset[int]]:
        """Mark `key` IN_PROGRESS; return (its partition count, the batch numbers already acknowledged).

        The first call stores `partitions` and `fingerprint`; a resumed workflow gets the stored count
        back so its batch numbers come out the same. If the stored fingerprint differs (the files, the
        batching settings or the version changed since, or none was stored), acknowledged batches may
        no longer name the same rows: they are forgotten and the workflow starts again from batch 0. Raise StateError if `key` is unknown or
        finished (requeue it first), or if `partitions` < 1. Acknowledged batches are those of an
        unfinished run only (finish and requeue forget them too): the dead-letter file relies on it.
        """
        with self._transaction(write=True) as connection:
            workflow, status = _find_id(connection, key)
            if status in FINAL_STATUSES:
                raise StateError(f"workflow {key.relpath} of source {key.source} is {status}; requeue it first")
            (stored_fingerprint,) = connection.execute(SELECT_FINGERPRINT, (workflow,)).fetchone()
            # No stored fingerprint but acknowledged batches: begun by a version that stored none,
            # whose batch numbers may mean other rows (0.2.0 numbers them by partition).
            if fingerprint and stored_fingerprint != fingerprint and (
                    stored_fingerprint or connection.execute(SELECT_ACKED, (workflow,)).fetchone() is not None):
                log.warning("workflow_restarted", workflow_id=key.workflow_id, source=key.source,
                            reason="its files or batching settings changed since delivery began")
                connection.execute(DELETE_BATCHES, (workflow,))
                connection.execute(UPDATE_REQUEUE, (self._clock(), workflow))
            if fingerprint:
                connection.execute(UPDATE_FINGERPRINT, (fingerprint, workflow))
            connection.execute(UPDATE_BEGIN, (self._clock(), partitions, workflow))
            (stored,) = connection.execute(SELECT_PARTITIONS, (workflow,)).fetchone()
            acked = frozenset(number for (number,) in connection.execute(SELECT_ACKED, (workflow,)))
        return stored, acked

    def ack_batch(self, key: WorkflowKey, number: int, rows_delivered: int, rows_rejected: int) -> bool:
        """Record batch `number` of `key` as acknowledged and add its counts to the workflow's totals.

        Return True if recorded now, False if that number was already acknowledged (nothing changes),
        in either case only once it is on disk. Raise StateError if `key` is unknown, or a number or
        count is not an integer in [0, 2**63). Calls from several threads at once are committed together.
        """
        try:
            return self._acks.submit(_Ack(key, number, rows_delivered, rows_rejected))
        except CommitFailed as error:   # the thread that ran this group's transaction was interrupted
            raise StateError(f"state file {self.path}: the acknowledgement was not recorded: {error}") from error

    def _write_acks(self, acks: list[_Ack]) -> list[bool | StateError]:
        """Record `acks` in one transaction. A bad ack gets its own StateError before any statement
        runs for it, and the others go on; if the transaction fails, each ack gets a StateError."""
        try:
            with self._transaction(write=True) as connection:
                return [self._write_ack(connection, ack) for ack in acks]
        except StateError as error:   # one object per caller: each raises it in its own thread
            return [StateError(str(error)) for _ in acks]

    def _write_ack(self, connection: sqlite3.Connection, ack: _Ack) -> bool | StateError:
        """Return what ack_batch returns for `ack`, or the StateError it raises. Any SQLite error
        here is the file's, not the ack's: it fails the transaction, so nothing half-written stays."""
        if not all(isinstance(value, int) and 0 <= value < MAX_INTEGER
                   for value in (ack.number, ack.rows_delivered, ack.rows_rejected)):
            return StateError(f"batch number and row counts must be between 0 and {MAX_INTEGER - 1}, "
                              f"got {ack.number}, {ack.rows_delivered}, {ack.rows_rejected}")
        try:
            workflow, _ = _find_id(connection, ack.key)
        except StateError as error:   # the key is unknown: nothing was written for it
            return error
        now = self._clock()
        if connection.execute(INSERT_BATCH, (workflow, ack.number, ack.rows_delivered, ack.rows_rejected,
                                             now)).rowcount == 0:
            return False
        connection.execute(UPDATE_TOTALS, (ack.rows_delivered, ack.rows_rejected, now, workflow))
        return True

    def finish(self, key: WorkflowKey, status: WorkflowStatus, reason: str = "") -> None:
        """Mark `key` DELIVERED, FAILED or QUARANTINED with `reason`. Raise ValueError for another status.

        Its acknowledged batches are forgotten (its totals stay): nothing resumes a finished
        workflow, and a daemon that runs for years would otherwise keep ~13 MB of them per
        25 million rows delivered."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish takes delivered, failed or quarantined, not {status}")
        with self._transaction(write=True) as connection:
            workflow, _ = _find_id(connection, key)
            connection.execute(UPDATE_FINISH, (str(status), reason, self._clock(), workflow))
            connection.execute(DELETE_BATCHES, (workflow,))

    def set_pending(self, key: WorkflowKey, reason: str) -> None:
        """Put `key` back to PENDING with `reason` (e.g. Braze refused the key); acked batches are kept.
        A delivered, failed or quarantined workflow is left as it is."""
        with self._transaction(write=True) as connection:
            workflow, _ = _find_id(connection, key)
            connection.execute(UPDATE_PENDING, (reason, self._clock(), workflow))

    def note(self, key: WorkflowKey, reason: str) -> None:
        """Set the reason of an IN_PROGRESS `key` (why it waits: Braze unreachable), leaving its
        status; "" clears it. A workflow in any other status is left as it is."""
        with self._transaction(write=True) as connection:
            workflow, _ = _find_id(connection, key)
            connection.execute(UPDATE_NOTE, (reason, self._clock(), workflow))

    def requeue(self, key: WorkflowKey) -> WorkflowRecord:
        """Put a FAILED, QUARANTINED or DELIVERED workflow back to PENDING for the `retry` command.

        A retry re-delivers everything: acknowledged batches, row totals, the stored partition count
        and the reason are cleared (array adds and attribute sets are safe to send again). A PENDING
        workflow is returned unchanged. Raise StateError if `key` is unknown or IN_PROGRESS (it
        resumes by itself; clearing its batches under a running sender would re-send them).
        """
        with self._transaction(write=True) as connection:
            workflow, status = _find_id(connection, key)
            if status == WorkflowStatus.IN_PROGRESS:
                raise StateError(f"workflow {key.relpath} of source {key.source} is in progress; it resumes by itself")
            if status in FINAL_STATUSES:
                connection.execute(DELETE_BATCHES, (workflow,))
                connection.execute(UPDATE_REQUEUE, (self._clock(), workflow))
            return _record(connection.execute(SELECT_ONE, _key_values(key)).fetchone())

    def forget(self, key: WorkflowKey) -> None:
        """Remove a workflow and its acknowledged batches, for the `forget` command: one whose folder is
        gone. Raise StateError if `key` is unknown or DELIVERED (its record keeps it from being sent again)."""
        with self._transaction(write=True) as connection:
            workflow, status = _find_id(connection, key)
            if status == WorkflowStatus.DELIVERED:
                raise StateError(f"workflow {key.relpath} of source {key.source} was delivered; it is not forgotten")
            connection.execute(DELETE_BATCHES, (workflow,))
            connection.execute(DELETE_WORKFLOW, (workflow,))

    def records(self, statuses: Iterable[WorkflowStatus] | None = None) -> list[WorkflowRecord]:
        """Return the records (only those in `statuses`, if given), most recently updated first."""
        wanted = None if statuses is None else {WorkflowStatus(status) for status in statuses}
        return [_record(row) for row in self._select(SELECT_ALL) if wanted is None or row[4] in wanted]

    def find(self, workflow_id: str) -> list[WorkflowRecord]:
        """Return every record with `workflow_id`, whatever its source, channel or offer."""
        return [_record(row) for row in self._select(SELECT_BY_WORKFLOW_ID, (workflow_id,))]

    def pending(self) -> list[WorkflowRecord]:
        """Return PENDING and IN_PROGRESS records (a crash leaves IN_PROGRESS), oldest seen first."""
        return [_record(row) for row in self._select(SELECT_PENDING)]

    def sources(self) -> dict[str, int]:
        """Return the number of workflows recorded under each source name."""
        return dict(self._select(SELECT_SOURCES))

    def counts(self) -> dict[str, int]:
        """Return the number of workflows in each status, every status present."""
        found = dict(self._select(SELECT_COUNTS))
        return {str(status): found.get(str(status), 0) for status in WorkflowStatus}

    def _select(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        with self._transaction() as connection:
            return connection.execute(sql, parameters).fetchall()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Hold the lock for one transaction on the open file; translate SQLite's errors."""
        with self._lock:
            if self._connection is None:
                raise StateError(f"state file {self.path} is closed")
            try:
                with _transaction(self._connection, write) as connection:
                    yield connection
            except sqlite3.Error as error:
                raise StateError(f"state file {self.path}: {error}") from error


@contextmanager
def _transaction(connection: sqlite3.Connection, write: bool) -> Iterator[sqlite3.Connection]:
    """Run one transaction: commit on success, roll back on any error."""
    try:
        # IMMEDIATE: a write lock held by another process fails here, before any work is done.
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


def _open(path: str) -> sqlite3.Connection:
    """Return a connection to the file at `path`, created 0600 if new, checked, configured and migrated."""
    try:
        private.make_directories(os.path.dirname(os.path.abspath(path)))
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))  # the mode applies only if this creates it
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as error:
        raise StateError(f"state file {path} cannot be created or opened: {error}") from error
    try:
        version = _check_usable(connection, path)
        connection.executescript(OPEN_PRAGMAS)
        _migrate(connection, version, path)
    except BaseException as error:
        connection.close()
        if isinstance(error, sqlite3.Error):
            raise StateError(UNUSABLE.format(path=path, detail=error)) from error
        raise
    return connection


def _migrate(connection: sqlite3.Connection, version: int, path: str) -> None:
    """Apply every migration after `version`, each with its new user_version in one transaction."""
    for step in range(version, SCHEMA_VERSION):
        with _transaction(connection, write=True):
            for statement in MIGRATIONS[step]:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {step + 1}")
        log.info("state_migrated", path=path, schema_version=step + 1)


def _check_usable(connection: sqlite3.Connection, path: str) -> int:
    """Return the schema version of an intact file; raise StateError if it is corrupt or too new."""
    problems = [message for (message,) in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise StateError(UNUSABLE.format(path=path, detail="; ".join(problems[:5]).replace("\n", "; ")))
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StateError(TOO_NEW.format(path=path, version=version, known=SCHEMA_VERSION))
    return version


def _find_id(connection: sqlite3.Connection, key: WorkflowKey) -> tuple[int, WorkflowStatus]:
    """Return the row id and status of `key`. Raise StateError if the state file has never seen it."""
    row = connection.execute(SELECT_ID, _key_values(key)).fetchone()
    if row is None:
        raise StateError(f"workflow {key.relpath} of source {key.source} is not in the state file")
    return row[0], WorkflowStatus(row[1])


def _key_values(key: WorkflowKey) -> tuple[str, str, str, str]:
    """The key as query parameters (dataclasses.astuple deep-copies: ~10x the cost)."""
    return key.source, key.channel, key.offer, key.workflow_id


def _record(row: tuple) -> WorkflowRecord:
    """Build a record from a row of RECORD_COLUMNS, whose order is WorkflowRecord's field order."""
    source, channel, offer, workflow_id, status, *fields, partitions = row
    key = WorkflowKey(source, channel, offer, workflow_id)
    extra = {} if partitions is None else {"partitions": partitions}
    return WorkflowRecord(key, WorkflowStatus(status), *fields, extra=extra)
