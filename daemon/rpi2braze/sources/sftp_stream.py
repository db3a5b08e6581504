"""Reading one SFTP file front to back, fast and in constant memory.

paramiko's SFTPFile, even prefetching, copies every byte several times on its way to the reader
and moves what is left in the channel buffer on every answer it takes out: on one core that
Python work, more than the network or the server, set the pace. So a stream speaks SFTP's READ
itself (draft-ietf-secsh-filexfer-02) on an SFTP channel of its own, after paramiko opened the
channel and the file (and turned a refused open into the OSError the caller translates):

- like OpenSSH's own client, it keeps IN_FLIGHT_BYTES of read requests outstanding, each as large
  as the server answers whole: what OpenSSH's limits@openssh.com extension announces (255 KiB
  for OpenSSH 8.6 and later), 64 KiB for older OpenSSH, 32 KiB for other servers;
- it takes everything the channel holds in one recv and cuts the answers out of that without
  copying them again: the next copy is into the bytes handed to the reader;
- a server answering fewer bytes than asked is asked for the rest, and for less from then on.

Together about a third less CPU per byte than paramiko's prefetch (see bench/bench_sftp.py).
Reading parts of the file over two connections at once was no faster: on two cores sshd needs
one, and paramiko's work holds the GIL. Memory stays bounded: at most IN_FLIGHT_BYTES are
requested ahead of the reader, and the channel's flow control window (CHANNEL_WINDOW_BYTES)
bounds what the server sends before the reader takes it; paramiko copies a full buffer twice on
its way out, so a reader that fell behind briefly holds about three windows.
"""

from __future__ import annotations

import collections
import contextlib
import io
import struct

import paramiko

from rpi2braze.errors import SourceUnavailable
from rpi2braze.sources import remote
from rpi2braze.sources.sftp_connect import open_sftp
from rpi2braze.sources.sftp_wire import EXTENDED, EXTENDED_REPLY, READ, SftpWire, data_of, string

CHANNEL_WINDOW_BYTES = 8 * 1024 * 1024
CHANNEL_MAX_PACKET_BYTES = 256 * 1024
# Taking the whole channel buffer at once: a smaller recv makes paramiko move what remains.
RECEIVE_BYTES = CHANNEL_WINDOW_BYTES
IN_FLIGHT_BYTES = 8 * 1024 * 1024
OPENSSH_REQUEST_BYTES = 64 * 1024  # what OpenSSH's sftp-server answered whole before 8.6
PORTABLE_REQUEST_BYTES = 32 * 1024  # what every server answers whole
LARGEST_REQUEST_BYTES = 1024 * 1024
SMALLEST_REQUEST_BYTES = 4 * 1024
_READ_TAIL = struct.Struct(">QI")  # offset, length
_LIMITS = struct.Struct(">QQQQ")  # max packet, max read, max write, max open handles


def open_stream(transport: paramiko.Transport, path: str, label: str, offset: int = 0) -> SftpStream:
    """Open the file at `path` on a new SFTP channel of `transport`; return it as a stream that
    starts at byte `offset`.

    Raise paramiko's or the OS's exceptions (the caller translates them); the channel is closed
    if the file cannot be opened.
    """
    sftp = open_sftp(transport, window_size=CHANNEL_WINDOW_BYTES, max_packet_size=CHANNEL_MAX_PACKET_BYTES)
    try:
        channel = sftp.get_channel()
        handle = sftp.open(path, "rb")
        size = handle.stat().st_size or 0
        wire = SftpWire(channel, RECEIVE_BYTES)
        request_size = negotiated_request_bytes(wire, transport.remote_version)
    except BaseException:
        sftp.close()
        raise
    return SftpStream(sftp, handle, wire, size, label, offset, request_size)


def request_bytes(server_version: str) -> int:
    """Return the read request size every server announcing `server_version` (its SSH banner)
    answers whole: 64 KiB for OpenSSH, whose sftp-server always did, 32 KiB for others."""
    return OPENSSH_REQUEST_BYTES if "OpenSSH" in (server_version or "") else PORTABLE_REQUEST_BYTES


def negotiated_request_bytes(wire: SftpWire, server_version: str) -> int:
    """Return the read request size for the server announcing `server_version`: the largest
    read OpenSSH's limits@openssh.com extension announces, else `request_bytes`.

    Only OpenSSH is asked: a server must answer an unknown extension with a status, but one that
    never answered would stall every open until the timeout.
    """
    if "OpenSSH" not in (server_version or ""):
        return request_bytes(server_version)
    packet_type, body = wire.answer(wire.send_all(EXTENDED, [string(b"limits@openssh.com")])[0])
    answered = packet_type == EXTENDED_REPLY and len(body) >= _LIMITS.size
    largest_read = _LIMITS.unpack_from(body)[1] if answered else 0
    if largest_read < PORTABLE_REQUEST_BYTES:  # unsupported (before OpenSSH 8.6), or 0: no limit given
        return request_bytes(server_version)
    return min(largest_read, LARGEST_REQUEST_BYTES)


class SftpStream(io.RawIOBase):
    """An open remote file as a binary stream, owning the SFTP channel it was opened on.

    Reading stops at the size the file had when it was opened. Any failure while reading (the
    connection dropped, a timeout, the file shrank) raises SourceUnavailable, and so does every
    read after it. Closing the stream closes its channel, which also abandons whatever was still
    requested.
    """

    def __init__(self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, wire: SftpWire, size: int,
                 label: str, start: int = 0, request_bytes: int = PORTABLE_REQUEST_BYTES):
        super().__init__()
        self._sftp = sftp
        self._handle = handle
        self._wire = wire
        self._size = size
        self._label = label
        self._position = start  # of the next byte handed out
        self._requested_to = start
        self._request_bytes = request_bytes
        self._outstanding: collections.deque[tuple[int, int, int]] = collections.deque()  # id, offset, length
        self._received = memoryview(b"")  # what is left of the answer being handed out
        self._failure = ""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Return the next `size` bytes (fewer only at the end), b"" at the end."""
        if size is None or size < 0:
            return self.readall()
        return b"".join(self._take(size))

    def readinto(self, buffer) -> int:
        filled = 0
        for piece in self._take(len(buffer)):
            buffer[filled: filled + len(piece)] = piece
            filled += len(piece)
        return filled

    def close(self) -> None:
        if not self.closed:
            # The channel first: closing the handle on a live channel would wait for every answer
            # still requested; on a closed channel it fails at once, which is all we want.
            with contextlib.suppress(Exception):
                self._sftp.close()
            with contextlib.suppress(Exception):
                self._handle.close()
            self._received = memoryview(b"")
            self._wire.discard()
        super().close()

    def _take(self, size: int) -> list[memoryview]:
        """Return views of the next `size` bytes (fewer only at the end), waiting for answers."""
        self._checkClosed()
        pieces = []
        wanted = min(size, self._size - self._position)
        while wanted > 0:
            if not self._received:
                self._received = self._next_answer()
            piece, self._received = self._received[:wanted], self._received[wanted:]
            pieces.append(piece)
            wanted -= len(piece)
            self._position += len(piece)
        return pieces

    def _next_answer(self) -> memoryview:
        if not self._failure:
            try:
                data = self._answer_in_order()
            except Exception as error:
                reason = remote.error_reason(error)
                self._failure = f"reading {self._label} failed at byte {self._position}: {reason}"
            else:
                if data:
                    return data
                self._failure = (f"{self._label} ended at byte {self._position} of {self._size}: "
                                 "it shrank while being read")
        raise SourceUnavailable(self._failure)

    def _answer_in_order(self) -> memoryview:
        """Return the data answering the oldest outstanding request (empty: the file ended),
        requesting ahead first, and ask again for any part of it the server left out."""
        if self._requested_to - self._position <= IN_FLIGHT_BYTES // 2:
            # Topping up only at half keeps it to one write, so one SSH packet, per many requests.
            end = min(self._size, self._position + IN_FLIGHT_BYTES)
            self._outstanding.extend(self._send_reads(self._requested_to, end))
            self._requested_to = end
        request_id, offset, length = self._outstanding.popleft()
        data = data_of(*self._wire.answer(request_id))
        if len(data) > length:
            raise ValueError(f"the server answered a read of {length} bytes with {len(data)}")
        if 0 < len(data) < length:
            self._request_bytes = max(min(self._request_bytes, len(data)), SMALLEST_REQUEST_BYTES)
            self._outstanding.extendleft(reversed(self._send_reads(offset + len(data), offset + length)))
        return data

    def _send_reads(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """Request bytes `start` to `end` in one write; return (id, offset, length) per request."""
        step = self._request_bytes
        reads = [(offset, min(step, end - offset)) for offset in range(start, end, step)]
        handle = string(self._handle.handle)
        ids = self._wire.send_all(READ, [handle + _READ_TAIL.pack(offset, length) for offset, length in reads])
        return [(request_id, offset, length) for request_id, (offset, length) in zip(ids, reads)]
