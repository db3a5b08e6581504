"""The reading child's messages: a batch crosses whole, a message cut short is dropped."""

import io

import pytest

from rpi2braze.model import Batch, PackedRows, RawRow, Rejection, WorkflowKey
from rpi2braze.wire import batch_message, batch_of, read_messages, write_message

KEY = WorkflowKey("drop", "Braze Append", "Offer", "42")
ROWS = (
    (RawRow(2, ("a", "ada@example.com"), None, "RPI_Export_42.txt"),),
    (RawRow(3, ("b", "b\udc80o@example.com"), None, "RPI_Export_42.txt"),
     RawRow(9, ("b", "bo2@example.com"), None, "RPI_Export_42.txt")),
)
REJECTED = (Rejection(RawRow(4, (), "NUL byte in field 2", "RPI_Export_42.txt"), "NUL byte in field 2"),
            Rejection(RawRow(5, ("", "x\x00"), None, "RPI_Export_42.txt"), "row has no external_id"))
BATCH = Batch(KEY, 7, 3, (b'{"external_id":"a"}', b'{"external_id":"b"}'), ROWS, 57, REJECTED)


def crossed(batch: Batch) -> Batch:
    stream = io.BytesIO()
    write_message(stream, batch_message(batch))
    stream.seek(0)
    (message,) = read_messages(stream)
    return batch_of(KEY, message)


def test_a_batch_crosses_with_every_field_intact():
    batch = crossed(BATCH)
    assert (batch.key, batch.number, batch.partition, batch.encoded, batch.size_bytes) == (
        KEY, 7, 3, BATCH.encoded, 57)
    assert isinstance(batch.rows, PackedRows) and batch.row_counts == (1, 2)
    assert tuple(batch.rows) == ROWS        # undecodable bytes (surrogates) survive
    assert batch.rejected == REJECTED       # NULs and reader errors too


def test_rows_already_packed_cross_without_packing_again():
    packed = PackedRows.pack(ROWS)
    message = batch_message(Batch(KEY, 0, 0, BATCH.encoded, packed, 57))
    assert message[6] is packed.packed


def test_messages_are_read_in_order_until_the_stream_ends():
    stream = io.BytesIO()
    for message in [("header", ("id", "email")), ("end",), ("error", "bad_file", "why")]:
        write_message(stream, message)
    stream.seek(0)
    assert list(read_messages(stream)) == [("header", ("id", "email")), ("end",), ("error", "bad_file", "why")]


@pytest.mark.parametrize("cut", [1, 3, 5, 10])
def test_a_message_cut_short_is_dropped(cut):
    stream = io.BytesIO()
    write_message(stream, ("header", ("id",)))
    write_message(stream, ("end",))
    data = stream.getvalue()
    assert list(read_messages(io.BytesIO(data[:-cut]))) == [("header", ("id",))]


def test_a_batch_of_rejections_only_crosses():
    batch = crossed(Batch(KEY, 11, 5, (), (), 17, REJECTED))
    assert (batch.number, batch.encoded, tuple(batch.rows), batch.row_count) == (11, (), (), 0)
    assert batch.rejected == REJECTED
