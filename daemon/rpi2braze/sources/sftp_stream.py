"""Reading one SFTP file front to back, fast and in constant memory.

A plain paramiko read waits a round trip for every 32 KiB; that is ~30 times slower than
OpenSSH's client. paramiko's prefetch keeps many read requests in flight instead, but asked for
the whole file at once it would queue a request for every 32 KiB of it and, on an early close,
drain every answer. So requests are issued one window at a time, keeping between one and two
windows ahead of the reader (`SFTPFile.prefetch(file_size=...)` requests from the current
position up to the given offset). The answers themselves never pile up: the channel's flow
control window bounds what the server may send before the reader takes it.

Each stream has an SFTP channel of its own, with a larger flow control window and packet size
than paramiko's defaults (2 MiB, 32 KiB), and asks for 64 KiB per request from OpenSSH servers
(whose sftp-server has always answered reads up to 64 KiB) instead of 32 KiB: together about
twice as fast on loopback (see bench/bench_sftp.py). Other servers get 32 KiB, which every
server answers whole; a server that answered less would make paramiko fall back to slow reads.
"""

from __future__ import annotations

import contextlib
import io
import threading

import paramiko

from rpi2braze.errors import SourceUnavailable
from rpi2braze.sources import remote

# A multiple of the request sizes below: at most 512 requests (about 20 KB of them) per window,
# far below the server's receive window (OpenSSH: 2 MiB), so sending them never waits.
PREFETCH_WINDOW_BYTES = 16 * 1024 * 1024
# The most a stream's channel buffers before the reader takes it: the memory one open file costs.
CHANNEL_WINDOW_BYTES = 8 * 1024 * 1024
CHANNEL_MAX_PACKET_BYTES = 256 * 1024
OPENSSH_REQUEST_BYTES = 64 * 1024
PORTABLE_REQUEST_BYTES = 32 * 1024


def open_stream(transport: paramiko.Transport, path: str, label: str, offset: int = 0) -> SftpStream:
    """Open the file at `path` on a new SFTP channel of `transport`; return it as a stream that
    starts at byte `offset`.

    Raise paramiko's or the OS's exceptions (the caller translates them); the channel is closed
    if the file cannot be opened.
    """
    sftp = paramiko.SFTPClient.from_transport(
        transport, window_size=CHANNEL_WINDOW_BYTES, max_packet_size=CHANNEL_MAX_PACKET_BYTES)
    if sftp is None:
        raise paramiko.SSHException("the server refused an SFTP channel")
    try:
        sftp.get_channel().settimeout(remote.OPERATION_TIMEOUT_SECONDS)
        handle = sftp.open(path, "rb")
        size = handle.stat().st_size or 0
    except BaseException:
        sftp.close()
        raise
    # An instance attribute shadowing paramiko's class constant: prefetch() splits by it.
    handle.MAX_REQUEST_SIZE = request_bytes(transport.remote_version)
    return SftpStream(sftp, handle, size, label, offset)


def request_bytes(server_version: str) -> int:
    """Return the read request size for a server announcing `server_version` (its SSH banner)."""
    return OPENSSH_REQUEST_BYTES if "OpenSSH" in (server_version or "") else PORTABLE_REQUEST_BYTES


class SftpStream(io.RawIOBase):
    """An open remote file as a binary stream, owning the SFTP channel it was opened on.

    Reading stops at the size the file had when it was opened. Any failure while reading (the
    connection dropped, a timeout, the file shrank) raises SourceUnavailable. Closing the stream
    closes its channel, which also abandons whatever was still requested.
    """

    def __init__(self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, size: int, label: str, start: int = 0):
        super().__init__()
        self._sftp = sftp
        self._handle = handle
        self._size = size
        self._label = label
        self._position = start
        self._requested_to = start
        handle.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        """Return up to `size` bytes (fewer near the end of a prefetch window), b"" at the end."""
        if size is None or size < 0:
            return self.readall()
        self._checkClosed()
        if size == 0 or self._position >= self._size:
            return b""
        try:
            self._request_ahead()
            data = self._handle.read(min(size, self._requested_to - self._position))
        except SourceUnavailable:
            raise
        except Exception as error:
            raise SourceUnavailable(
                f"reading {self._label} failed at byte {self._position}: {remote.error_reason(error)}") from None
        if not data:
            raise SourceUnavailable(f"{self._label} ended at byte {self._position} of {self._size}: "
                                    "it shrank while being read")
        self._position += len(data)
        return data

    def close(self) -> None:
        if not self.closed:
            # The channel first: closing the handle on a live channel would wait for every answer
            # still requested; on a closed channel it fails at once, which is all we want.
            with contextlib.suppress(Exception):
                self._sftp.close()
            with contextlib.suppress(Exception):
                self._handle.close()
        super().close()

    def _request_ahead(self) -> None:
        """Request the next window once less than one window is requested ahead of the reader."""
        if self._requested_to >= self._size or self._requested_to - self._position >= PREFETCH_WINDOW_BYTES:
            return
        channel = self._sftp.get_channel()
        if channel is None or channel.closed or not channel.get_transport().is_active():
            # Asking a dead connection would only kill prefetch()'s thread with a traceback.
            raise SourceUnavailable(f"reading {self._label}: the connection was lost at byte {self._position}")
        end = min(self._requested_to + PREFETCH_WINDOW_BYTES, self._size)
        # prefetch() starts at the handle's position; nothing is buffered in the handle between
        # our reads (it is unbuffered), so moving its position there and back loses nothing.
        self._handle.seek(self._requested_to)
        before = set(threading.enumerate())
        self._handle.prefetch(end)
        self._handle.seek(self._position)
        self._requested_to = end
        _wait_for_request_senders(before)


def _wait_for_request_senders(before: set[threading.Thread]) -> None:
    """Wait until the threads prefetch() started have sent their requests.

    They take milliseconds (the requests are small and the server's window is far from full),
    and must not outlive this call: one still sending when the stream is closed, or when a
    failed connection is dropped, dies with a traceback on stderr. paramiko keeps no handle on
    them, so they are found by name among the threads that appeared during the call.
    """
    for thread in set(threading.enumerate()) - before:
        if "_prefetch_thread" in thread.name:
            thread.join(remote.OPERATION_TIMEOUT_SECONDS)
