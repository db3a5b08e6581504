"""Reading one file from an FTP server as a stream, in constant memory.

The file arrives on a data connection of its own (`transfercmd("RETR ...")`), read straight into
the caller's buffer. Only the server's final reply tells a whole file from a cut one.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import socket

from rpi2braze.errors import SourceUnavailable
from rpi2braze.sources import remote


class FtpStream(io.RawIOBase):
    """One file being downloaded, as a binary stream over its data connection.

    The end of the data is only trusted once the server confirms the transfer (226): a
    connection that breaks, or a server that reports a failed transfer, raises SourceUnavailable
    instead of looking like the end of the file. Closing the stream closes its connections.
    """

    def __init__(self, ftp: ftplib.FTP, data: socket.socket, label: str, start: int = 0):
        super().__init__()
        self._ftp = ftp
        self._data: socket.socket | None = data
        self._label = label
        self._position = start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._checkClosed()
        if self._data is None:
            return 0
        try:
            count = self._data.recv_into(buffer)
            if count == 0:
                self._finish()
        except Exception as error:
            raise SourceUnavailable(
                f"reading {self._label} failed at byte {self._position}: {remote.error_reason(error)}") from None
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            if self._data is not None:
                with contextlib.suppress(OSError):
                    self._data.close()
            self._ftp.close()
        super().close()

    def _finish(self) -> None:
        self._data.close()  # type: ignore[union-attr]
        self._data = None
        self._ftp.voidresp()
