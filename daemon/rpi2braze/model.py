"""The values that cross module boundaries. All frozen; states are str Enums."""

from __future__ import annotations

import itertools
import marshal
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import orjson


class ChannelMode(StrEnum):
    """What an RPI channel does to Braze profiles."""

    UPSERT = "upsert"  # create or update: _update_existing_only false
    APPEND = "append"  # update existing profiles only: _update_existing_only true


class WorkflowStatus(StrEnum):
    PENDING = "pending"          # seen, complete, waiting for a worker or for Braze
    IN_PROGRESS = "in_progress"  # a worker is delivering it
    DELIVERED = "delivered"      # every batch acknowledged
    FAILED = "failed"            # delivery stopped with a reason; `retry` re-queues it
    QUARANTINED = "quarantined"  # the export could not be read; a reason file says why


@dataclass(frozen=True)
class FileEntry:
    """One directory entry as a source lists it."""

    name: str
    is_dir: bool
    size: int
    mtime: float


@dataclass(frozen=True)
class WorkflowKey:
    """What identifies one workflow delivery: the same ID under two sources is two workflows."""

    source: str
    channel: str
    offer: str
    workflow_id: str

    @property
    def relpath(self) -> str:
        """The folder below the source's base, always with forward slashes."""
        return f"{self.channel}/{self.offer}/{self.workflow_id}"


@dataclass(frozen=True)
class ExportFolder:
    """A complete workflow folder, ready to be delivered."""

    key: WorkflowKey
    mode: ChannelMode
    data_files: tuple[FileEntry, ...]
    location: str  # human-readable: local path or sftp://host/path, for logs and status

    @property
    def data_bytes(self) -> int:
        """The size of its data files together, as listed."""
        return sum(entry.size for entry in self.data_files)


class RawRow(NamedTuple):
    """One record of an export file: `line` is the 1-based line where it starts.

    `error` is set when the record cannot be delivered as read (a NUL, a byte its encoding cannot
    decode); `values` then hold its values with those bytes shown as \\xNN, for the dead-letter file.
    A tuple, not a dataclass, because millions are made: it is built in a third of the time,
    and the cyclic garbage collector stops tracking a tuple of strings, which rows held in open
    batches would otherwise make it walk again and again.
    """

    line: int
    values: tuple[str, ...]
    error: str | None = None
    file: str = ""


@dataclass(frozen=True)
class Rejection:
    """A row that will not reach Braze, and why. `partition`: the batch partition of the user the
    row names, if it names one (batcher.py); None puts it by line number."""

    row: RawRow
    reason: str
    partition: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Batch:
    """One /users/track request's worth of attribute objects, each already encoded as JSON.

    `encoded[i]` is one attributes object, built from the rows `rows[i]` (several rows when one
    user appears twice); the request body is these joined (batcher.join_body).
    `number` is deterministic for a given file and partition count, so a restart can skip
    batches the state file says were acknowledged.
    `rejected` holds rows refused before sending (by the mapper or the batcher), attached to the
    next batch of their partition so they are recorded with it; a batch may carry only rejections.
    A batch made by a child process (children.py, wire.py) crosses with its `rows` as PackedRows,
    decoded only if some are rejected.
    """

    key: WorkflowKey
    number: int
    partition: int
    encoded: tuple[bytes, ...]
    rows: Sequence[tuple[RawRow, ...]]      # a tuple of tuples, or PackedRows
    size_bytes: int
    rejected: tuple[Rejection, ...] = ()

    @property
    def objects(self) -> tuple[dict, ...]:
        """The attributes objects, decoded (for reading and tests; sending uses `encoded`)."""
        return tuple(orjson.loads(item) for item in self.encoded)

    @property
    def row_counts(self) -> tuple[int, ...]:
        """How many rows each object was built from, without decoding packed rows."""
        if isinstance(self.rows, PackedRows):
            return self.rows.counts
        return tuple(len(rows) for rows in self.rows)

    @property
    def row_count(self) -> int:
        return sum(self.row_counts)


class PackedRows(Sequence[tuple[RawRow, ...]]):
    """A batch's rows as they cross from the reading process: each object's row count at once,
    the rows themselves marshalled and decoded only when asked for. A delivered batch never
    needs them (only a rejection does), and building a million RawRows costs the sending
    process more CPU than anything else it does."""

    __slots__ = ("counts", "packed", "_groups")

    def __init__(self, counts: tuple[int, ...], packed: bytes):
        self.counts = counts
        self.packed = packed
        self._groups: tuple[tuple[RawRow, ...], ...] | None = None

    @classmethod
    def pack(cls, groups: Sequence[tuple[RawRow, ...]]) -> PackedRows:
        # marshal takes plain tuples only; a RawRow is a tuple subclass
        fields = [(row.line, row.values, row.error, row.file) for group in groups for row in group]
        return cls(tuple(len(group) for group in groups), marshal.dumps(fields))

    def _decoded(self) -> tuple[tuple[RawRow, ...], ...]:
        if self._groups is None:
            rows = iter([RawRow(*fields) for fields in marshal.loads(self.packed)])
            self._groups = tuple(tuple(itertools.islice(rows, count)) for count in self.counts)
        return self._groups

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, index):
        return self._decoded()[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __reduce__(self):
        return PackedRows, (self.counts, self.packed)

    def __repr__(self) -> str:
        return f"PackedRows({len(self.counts)} objects, {sum(self.counts)} rows)"


@dataclass(frozen=True)
class DeliveryResult:
    """What happened to one batch: rows acknowledged by Braze and rows rejected."""

    key: WorkflowKey
    number: int
    rows_delivered: int
    rejections: tuple[Rejection, ...] = ()
    requests: int = 1


@dataclass(frozen=True)
class WorkflowRecord:
    """One workflow as the state file holds it."""

    key: WorkflowKey
    status: WorkflowStatus
    location: str
    rows_delivered: int = 0
    rows_rejected: int = 0
    batches_acked: int = 0
    reason: str = ""
    first_seen: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def as_json(self) -> dict:
        """The `status --json` shape: the contract's keys first, then the rest."""
        return {
            "workflow_id": self.key.workflow_id,
            "channel": self.key.channel,
            "offer": self.key.offer,
            "status": str(self.status),
            "rows_delivered": self.rows_delivered,
            "rows_rejected": self.rows_rejected,
            "source": self.key.source,
            "location": self.location,
            "batches_acked": self.batches_acked,
            "reason": self.reason,
            "first_seen": self.first_seen,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": self.updated_at,
        }
