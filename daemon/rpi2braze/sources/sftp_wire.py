"""SFTP packets on a channel: requests sent in one write, answers matched by request id.

The part of SFTP (draft-ietf-secsh-filexfer-02) that sftp_stream.py speaks itself, because
paramiko's SFTPFile copies every byte several times on its way to the reader: packets are cut
out of what one recv returned as views, without copying them again.
"""

from __future__ import annotations

import struct

import paramiko

# An answer longer than this is not SFTP: the stream is out of step or the server is broken.
LARGEST_PACKET_BYTES = 4 * 1024 * 1024

# SFTP packet types and the one status this module tells apart.
READ, STATUS, DATA, EXTENDED, EXTENDED_REPLY = 5, 101, 103, 200, 201
_STATUS_EOF = 1
_LENGTH = struct.Struct(">I")
_REQUEST_HEAD = struct.Struct(">IBI")  # length, type, request id
_ID_AND_TYPE_BYTES = _REQUEST_HEAD.size - _LENGTH.size


class SftpWire:
    """SFTP requests sent on a channel and their answers, matched by request id.

    It must be the only reader of the channel from its first request on.
    """

    def __init__(self, channel: paramiko.Channel, receive_bytes: int):
        self._channel = channel
        self._receive_bytes = receive_bytes  # at most what one recv takes from the channel
        # Far from the ids paramiko's SFTPClient used on this channel before (0, 1, 2...).
        self._next_id = 1 << 30
        self._unfinished = b""
        self._answers: dict[int, tuple[int, memoryview]] = {}

    def send_all(self, packet_type: int, bodies: list[bytes]) -> list[int]:
        """Send requests of one type in a single write; return their ids in order."""
        ids = [(self._next_id + index) & 0xFFFFFFFF for index in range(len(bodies))]
        self._next_id = (self._next_id + len(bodies)) & 0xFFFFFFFF
        self._channel.sendall(b"".join(
            _REQUEST_HEAD.pack(len(body) + _ID_AND_TYPE_BYTES, packet_type, request_id) + body
            for request_id, body in zip(ids, bodies)))
        return ids

    def answer(self, request_id: int) -> tuple[int, memoryview]:
        """Wait for the answer to request `request_id`; return its type and body (after the id).

        Raise EOFError if the channel closed first, socket.timeout if the server stays silent,
        ValueError if what arrives is not SFTP.
        """
        while request_id not in self._answers:
            data = self._channel.recv(self._receive_bytes)
            if not data:
                raise EOFError("the server closed the SFTP channel")
            packets, self._unfinished = split_packets(self._unfinished, data)
            for packet_type, answer_id, body in packets:
                self._answers[answer_id] = (packet_type, body)
        return self._answers.pop(request_id)

    def discard(self) -> None:
        """Drop every answer not taken yet (their memory with them)."""
        self._answers.clear()
        self._unfinished = b""


def split_packets(unfinished: bytes, data: bytes) -> tuple[list[tuple[int, int, memoryview]], bytes]:
    """Given the bytes of an incomplete packet left from before (b"" if none) and the bytes
    received since, return the complete packets as (type, request id, body) and the bytes of the
    incomplete packet left at the end.

    Bodies are views into `data` where they lie in it whole: only a packet cut between two
    receives is copied. Raise ValueError for a length no SFTP packet has.
    """
    packets: list[tuple[int, int, memoryview]] = []
    start = 0
    if unfinished:
        joined = unfinished + data[:_LENGTH.size]
        if len(joined) < _LENGTH.size:
            return packets, joined
        start = _packet_end(joined, 0) - len(unfinished)
        if start > len(data):
            return packets, unfinished + data
        packets.append(_packet_at(memoryview(unfinished + data[:start]), 0))
    view = memoryview(data)
    while len(data) - start >= _LENGTH.size and (end := _packet_end(data, start)) <= len(data):
        packets.append(_packet_at(view, start))
        start = end
    return packets, data[start:]


def _packet_end(buffer: bytes, start: int) -> int:
    length = _LENGTH.unpack_from(buffer, start)[0]
    if not _ID_AND_TYPE_BYTES <= length <= LARGEST_PACKET_BYTES:
        raise ValueError(f"the server sent an SFTP packet of {length} bytes: the stream is garbled")
    return start + _LENGTH.size + length


def _packet_at(view: memoryview, start: int) -> tuple[int, int, memoryview]:
    length, packet_type, request_id = _REQUEST_HEAD.unpack_from(view, start)
    return packet_type, request_id, view[start + _REQUEST_HEAD.size: start + _LENGTH.size + length]


def string(value: bytes) -> bytes:
    """An SFTP string: its length, then its bytes."""
    return _LENGTH.pack(len(value)) + value


def data_of(packet_type: int, body: memoryview) -> memoryview:
    """Return the bytes a READ answer carries: empty at the end of the file. Raise OSError for
    any other status, ValueError for an answer that is neither data nor status, or too short."""
    if len(body) < _LENGTH.size:
        raise ValueError(f"the server answered a read with {len(body)} bytes, too few for any answer")
    if packet_type == DATA:
        length = _LENGTH.unpack_from(body)[0]
        if length > len(body) - _LENGTH.size:
            raise ValueError(f"the server sent {len(body) - _LENGTH.size} bytes of data, announcing {length}")
        return body[_LENGTH.size: _LENGTH.size + length]
    if packet_type != STATUS:
        raise ValueError(f"the server answered a read with packet type {packet_type}")
    code = _LENGTH.unpack_from(body)[0]
    if code == _STATUS_EOF:
        return memoryview(b"")
    message_length = _LENGTH.unpack_from(body, 4)[0] if len(body) >= 8 else 0
    message = bytes(body[8: 8 + message_length]).decode("utf-8", "replace")
    raise OSError(f"the server refused a read: status {code} {message}".rstrip())
