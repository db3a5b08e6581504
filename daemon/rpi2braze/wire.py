"""The messages a reading child (producer.py) sends the daemon (children.py), and how they cross the pipe.

Each message is a 4-byte length, then a tuple of plain values (str, bytes, int, None and tuples
of these) in `marshal` format:

    ("header", ((file name, header), ...))
    ("batch", number, partition, size_bytes, encoded, row_counts, packed_rows, rejected)
    ("end",)
    ("error", kind, text)

marshal, not pickle: for these types it costs about half as much on each side, and no class
is named on the wire, so the message needs no dataclass machinery to build or read. Both ends
run the same interpreter (the child is sys.executable), which marshal's format requires.
The batch's key is not sent: the daemon knows which folder it asked for.
"""

from __future__ import annotations

import marshal
import struct
from typing import BinaryIO, Iterator

from rpi2braze.model import Batch, PackedRows, RawRow, Rejection, WorkflowKey

_LENGTH = struct.Struct("!I")


def write_message(stream: BinaryIO, message: tuple) -> None:
    data = marshal.dumps(message)
    stream.write(_LENGTH.pack(len(data)) + data)


def read_messages(stream: BinaryIO) -> Iterator[tuple]:
    """The messages until the stream ends; one cut short (its writer died) is dropped."""
    while len(prefix := stream.read(_LENGTH.size)) == _LENGTH.size:
        (length,) = _LENGTH.unpack(prefix)
        data = stream.read(length)
        if len(data) < length:
            return
        yield marshal.loads(data)


def batch_message(batch: Batch) -> tuple:
    """The "batch" message for `batch`: its rows packed, its rejections as plain tuples."""
    rows = batch.rows if isinstance(batch.rows, PackedRows) else PackedRows.pack(batch.rows)
    rejected = tuple((*rejection.row, rejection.reason) for rejection in batch.rejected)
    return ("batch", batch.number, batch.partition, batch.size_bytes, batch.encoded,
            rows.counts, rows.packed, rejected)


def batch_of(key: WorkflowKey, message: tuple) -> Batch:
    """The Batch a "batch" message describes, for the folder `key`."""
    _, number, partition, size_bytes, encoded, counts, packed, rejected = message
    return Batch(key, number, partition, encoded, PackedRows(counts, packed), size_bytes,
                 tuple(Rejection(RawRow(*fields[:4]), fields[4]) for fields in rejected))
