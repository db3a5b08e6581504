"""An export tree on an SFTP server (`type: sftp`), read with paramiko.

One SSH connection is opened on first use and kept; after a failure the next call reconnects.
Listing and moving share one SFTP channel, used under a lock because paramiko's SFTP client is
not safe for concurrent callers. Every opened file gets an SFTP channel of its own: the worker
keeps several files of a folder open at once, and a file given up half-read is dropped by
closing its channel instead of draining what was requested for it.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import stat
import threading
from typing import BinaryIO, Callable, Iterator

import paramiko

from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.log import get_logger
from rpi2braze.model import FileEntry
from rpi2braze.settings import SourceSettings
from rpi2braze.sources import remote
from rpi2braze.sources.sftp_connect import connect, open_sftp
from rpi2braze.sources.sftp_stream import open_stream

log = get_logger(__name__)
DEFAULT_PORT = 22
# The errors paramiko raises when the connection or the channel fails (not an SFTP status).
_CONNECTION_ERRORS = (OSError, EOFError, paramiko.SSHException)


class SftpSource:
    """A base folder on an SFTP server; see the module docstring for the connection rules."""

    open_file_holds_a_session = True   # a channel of its own

    def __init__(self, settings: SourceSettings):
        remote.require_remote_settings(settings)
        self.name = settings.name
        self._settings = settings
        self._port = settings.port or DEFAULT_PORT
        self._base = settings.path
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._remembered_keys = paramiko.HostKeys()

    def list_dir(self, relpath: str) -> list[FileEntry]:
        path = remote.remote_path(self._base, relpath)
        with self._session(f"cannot list {self.describe(relpath)}") as sftp:
            try:
                attributes = sftp.listdir_attr(path)
            except FileNotFoundError:
                if not remote.normalise_relpath(relpath):
                    raise SourceUnavailable(
                        f"source {self.name}: base folder {self.describe('')} does not exist") from None
                return []
            return [entry for entry in (self._entry(sftp, path, item) for item in attributes) if entry]

    def open_file(self, relpath: str, offset: int = 0) -> BinaryIO:
        """Open the file for streaming, from byte `offset` on (to resume a download)."""
        path = remote.remote_path(self._base, relpath)
        with self._session(f"cannot open {self.describe(relpath)}") as sftp:
            transport = sftp.get_channel().get_transport()
        try:
            return open_stream(transport, path, self.describe(relpath), offset)  # type: ignore[return-value]
        except Exception as error:
            raise self._translate(error, f"cannot open {self.describe(relpath)}") from None

    def move_folder(self, relpath: str, destination: str) -> str:
        source_path = remote.remote_path(self._base, relpath)
        with self._session(f"cannot move {self.describe(relpath)} to {destination}") as sftp:
            exists = _exists_function(sftp)
            target = remote.free_name(remote.moved_path(destination, relpath), exists)
            remote.make_parents(target, exists, lambda folder: _make_folder(sftp, folder))
            try:
                sftp.posix_rename(source_path, target)
            except OSError:
                # Servers without OpenSSH's posix-rename extension still do a plain rename.
                sftp.rename(source_path, target)
        log.info("remote_folder_moved", source=self.name, folder=relpath, target=target)
        return target

    def describe(self, relpath: str) -> str:
        return remote.location_url("sftp", self._settings, self._port, remote.remote_path(self._base, relpath))

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return None  # SFTP has no change notification: the scanner polls

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    # ...connection handling...

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[paramiko.SFTPClient]:
        """Yield the shared SFTP channel under the lock, connecting first if needed.

        Errors are translated (see `_translate`); after any but a missing file or a refused
        permission the shared channel is dropped, so the next call starts on a fresh one (and on
        a fresh connection if this one died).
        """
        with self._lock:
            try:
                yield self._shared_channel()
            except Exception as error:
                if not isinstance(error, (SourceError, FileNotFoundError, PermissionError)):
                    self._drop_channel()
                raise self._translate(error, action) from None

    def _shared_channel(self) -> paramiko.SFTPClient:
        if self._client is None or not self._client.get_transport() or not self._client.get_transport().is_active():
            self._disconnect()
            self._client = connect(self._settings, self._port, self._remembered_keys)
        if self._sftp is not None and self._sftp.get_channel().closed:   # the server closed it (ChannelTimeout)
            self._drop_channel()
        if self._sftp is None:
            self._sftp = open_sftp(self._client.get_transport())
        return self._sftp

    def _drop_channel(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        self._sftp = None

    def _disconnect(self) -> None:
        self._drop_channel()
        if self._client is not None:
            self._client.close()
        self._client = None

    def _entry(self, sftp: paramiko.SFTPClient, folder: str, item: paramiko.SFTPAttributes) -> FileEntry | None:
        """Return the FileEntry for one listed item, following a symbolic link the way a local
        listing does; None for a link that points nowhere."""
        name = item.filename
        if stat.S_ISLNK(item.st_mode or 0):
            try:
                item = sftp.stat(posixpath.join(folder, name))   # the target's attributes carry no name
            except FileNotFoundError:
                return None
        return FileEntry(name, stat.S_ISDIR(item.st_mode or 0), item.st_size or 0, float(item.st_mtime or 0))

    def _translate(self, error: Exception, action: str) -> Exception:
        """Return what to raise for `error`: a refused permission is SourceError (configuration), a
        missing file or a failed connection SourceUnavailable; anything else passes as is."""
        if isinstance(error, SourceError):
            return error
        if isinstance(error, PermissionError):
            return SourceError(f"source {self.name}: {action}: permission denied")
        if isinstance(error, FileNotFoundError):
            return SourceUnavailable(f"source {self.name}: {action}: no such file or folder (it vanished)")
        if isinstance(error, UnicodeDecodeError):
            return SourceError(f"source {self.name}: {action}: {remote.NOT_UTF8}")
        if isinstance(error, _CONNECTION_ERRORS):
            return SourceUnavailable(f"source {self.name}: {action}: {remote.error_reason(error)}")
        return error


def _exists_function(sftp: paramiko.SFTPClient) -> Callable[[str], bool]:
    def exists(path: str) -> bool:
        try:
            sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    return exists


def _make_folder(sftp: paramiko.SFTPClient, folder: str) -> None:
    try:
        sftp.mkdir(folder, mode=remote.MOVED_FOLDER_MODE)
    except OSError as error:
        # Someone else may have created it since we looked; only a real failure matters.
        if error.errno == errno.EACCES or not _exists_function(sftp)(folder):
            raise
