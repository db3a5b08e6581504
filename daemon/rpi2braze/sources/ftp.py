"""An export tree on an FTP server (`type: ftp`), or FTPS with `tls: true`, read with ftplib.

Passive mode only. With `tls: true` the login is protected by explicit TLS (AUTH TLS) and so is
every data connection (PROT P); the server's certificate is verified against the system CAs or
`ca_file`, unless `tls_verify: false` says otherwise (logged as a warning: anyone in the middle
could then read the exports). Listing uses MLSD, which gives exact sizes and UTC times.

One control connection serves listing and moving, under a lock, and is reconnected after a
failure. FTP carries one transfer at a time per connection, and the worker keeps several files
of a folder open at once, so every opened file gets a connection of its own.
"""

from __future__ import annotations

import calendar
import ftplib
import ssl
import threading
import time
from typing import BinaryIO, Callable, TypeVar

from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.log import get_logger
from rpi2braze.model import FileEntry
from rpi2braze.settings import SourceSettings
from rpi2braze.sources import remote
from rpi2braze.sources.ftp_stream import FtpStream

log = get_logger(__name__)
T = TypeVar("T")
DEFAULT_PORT = 21
_MLSD_FACTS = ["type", "size", "modify"]
# ftplib's errors for a dropped or confused connection (5xx replies are handled separately).
_CONNECTION_ERRORS = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


class FtpSource:
    """A base folder on an FTP or FTPS server; see the module docstring for the rules."""

    open_file_holds_a_session = True   # a control and a data connection of its own

    def __init__(self, settings: SourceSettings):
        remote.require_remote_settings(settings)
        self.name = settings.name
        self._settings = settings
        self._port = settings.port or DEFAULT_PORT
        self._base = settings.path
        self._lock = threading.Lock()
        self._control: ftplib.FTP | None = None
        self._warned_unverified = False
        if not settings.tls:
            log.warning("ftp_without_tls", source=self.name, host=settings.host,
                        hint="the password and the exports cross the network in clear; set tls: true (FTPS)")

    def list_dir(self, relpath: str) -> list[FileEntry]:
        path = self._path(relpath)

        def listing(ftp: ftplib.FTP) -> list[tuple[str, dict[str, str]]]:
            try:
                return list(ftp.mlsd(path, _MLSD_FACTS))
            except ftplib.error_perm as error:
                # A missing folder is 550 on most servers and 501 on some; a server that does not
                # know MLSD (500, 502, 504) must not look like an empty folder.
                if str(error)[:3] in ("500", "502", "504", "530"):
                    raise
                if not remote.normalise_relpath(relpath):
                    raise SourceUnavailable(
                        f"source {self.name}: base folder {self.describe('')} does not exist") from None
                if _listed_as_folder(ftp, path):   # 550 says "missing" and "forbidden" alike
                    raise SourceError(f"source {self.name}: cannot list {self.describe(relpath)}: "
                                      f"the server refused ({str(error).strip()})") from None
                return []

        found = self._run(f"cannot list {self.describe(relpath)}", listing)
        return [_entry(name, facts) for name, facts in found if facts.get("type", "").lower() not in ("cdir", "pdir")]

    def open_file(self, relpath: str, offset: int = 0) -> BinaryIO:
        """Open the file for streaming, from byte `offset` on (REST, to resume a download)."""
        path = self._path(relpath)
        action = f"cannot open {self.describe(relpath)}"
        ftp = self._login()
        try:
            ftp.voidcmd("TYPE I")
            data = ftp.transfercmd(f"RETR {path}", rest=offset or None)
        except Exception as error:
            ftp.close()
            raise self._translate(error, action) from None
        return FtpStream(ftp, data, self.describe(relpath), offset)  # type: ignore[return-value]

    def move_folder(self, relpath: str, destination: str) -> str:
        source_path = self._path(relpath)
        wanted = _checked(remote.moved_path(destination, relpath))

        def move(ftp: ftplib.FTP) -> str:
            exists = _exists_function(ftp)
            target = remote.free_name(wanted, exists)
            remote.make_parents(target, exists, lambda folder: _make_folder(ftp, folder, exists))
            ftp.rename(source_path, target)
            return target

        target = self._run(f"cannot move {self.describe(relpath)} to {destination}", move)
        log.info("remote_folder_moved", source=self.name, folder=relpath, target=target)
        return target

    def describe(self, relpath: str) -> str:
        scheme = "ftps" if self._settings.tls else "ftp"
        return remote.location_url(scheme, self._settings, self._port, remote.remote_path(self._base, relpath))

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return None  # FTP has no change notification: the scanner polls

    def close(self) -> None:
        with self._lock:
            self._drop_control()

    # ...connections...

    def _run(self, action: str, operation: Callable[[ftplib.FTP], T]) -> T:
        """Return `operation(connection)` run on the shared control connection, under the lock.

        Servers close control connections left idle (often after 300 s), so when a kept
        connection fails, the operation is tried once more on a new one. Errors are translated
        (see `_translate`); after any error from the server the connection is dropped, so the
        next call logs in afresh rather than reuse a connection in an unknown state.
        """
        with self._lock:
            try:
                try:
                    kept = self._control is not None
                    return operation(self._connected())
                except _CONNECTION_ERRORS:
                    self._drop_control()
                    if not kept:
                        raise
                    return operation(self._connected())  # the kept one had gone stale: once more, afresh
            except Exception as error:
                if not isinstance(error, SourceError):
                    self._drop_control()
                raise self._translate(error, action) from None

    def _connected(self) -> ftplib.FTP:
        if self._control is None:
            self._control = self._login()
        return self._control

    def _drop_control(self) -> None:
        if self._control is not None:
            self._control.close()
        self._control = None

    def _login(self) -> ftplib.FTP:
        """Return a new logged-in connection in passive binary mode (TLS-protected with tls)."""
        settings = self._settings
        ftp = ftplib.FTP_TLS(context=self._tls_context()) if settings.tls else ftplib.FTP()
        try:
            ftp.connect(settings.host, self._port, timeout=remote.CONNECT_TIMEOUT_SECONDS)
            ftp.sock.settimeout(remote.OPERATION_TIMEOUT_SECONDS)
            ftp.timeout = remote.OPERATION_TIMEOUT_SECONDS  # for the data connections
            ftp.login(settings.username, settings.password.reveal() if settings.password else "")
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(True)
        except Exception as error:
            ftp.close()
            action = f"cannot log in to {settings.host}:{self._port} as {settings.username!r}"
            if isinstance(error, ftplib.error_perm):  # whatever the code: this is configuration
                raise SourceError(f"source {self.name}: {action}: the server refused ({str(error).strip()})") from None
            raise self._translate(error, action) from None
        return ftp

    def _tls_context(self) -> ssl.SSLContext:
        settings = self._settings
        try:
            context = ssl.create_default_context(cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as error:
            raise SourceError(f"source {self.name}: ca_file {settings.ca_file} cannot be used: "
                              f"{remote.error_reason(error)}") from None
        if not settings.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            if not self._warned_unverified:
                log.warning("ftps_certificate_not_verified", source=self.name, host=settings.host)
                self._warned_unverified = True
        return context

    def _path(self, relpath: str) -> str:
        return _checked(remote.remote_path(self._base, relpath))

    def _translate(self, error: Exception, action: str) -> Exception:
        """Return what to raise for `error`: configuration problems (untrusted certificate,
        refused login, refused command) are SourceError; a missing file or a failed connection
        is SourceUnavailable; anything else passes as is."""
        prefix = f"source {self.name}: {action}"
        if isinstance(error, SourceError):
            return error
        if isinstance(error, UnicodeDecodeError):
            return SourceError(f"{prefix}: {remote.NOT_UTF8}")
        if isinstance(error, ssl.SSLCertVerificationError):
            return SourceError(f"{prefix}: the server's TLS certificate is not trusted ({error.verify_message}); "
                               "set ca_file to the CA that signed it")
        if isinstance(error, ftplib.error_perm):
            reply = str(error).strip()
            if reply[:3] in ("500", "502", "504"):
                return SourceError(f"{prefix}: the server does not support a command rpi2braze needs "
                                   f"(MLSD, MLST, passive mode) ({reply})")
            if reply.startswith("550"):
                return SourceUnavailable(f"{prefix}: no such file or folder, or not allowed ({reply})")
            return SourceError(f"{prefix}: the server refused ({reply})")
        if isinstance(error, _CONNECTION_ERRORS):
            return SourceUnavailable(f"{prefix}: {remote.error_reason(error)}")
        return error


def _listed_as_folder(ftp: ftplib.FTP, path: str) -> bool:
    """Whether `path` is a folder in its parent's listing (so a 550 for it means not allowed)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        return any(listed == name and facts.get("type", "").lower() == "dir"
                   for listed, facts in ftp.mlsd(parent or "/", ["type"]))
    except ftplib.error_perm:
        return False


def _entry(name: str, facts: dict[str, str]) -> FileEntry:
    return FileEntry(name, facts.get("type", "").lower() == "dir", int(facts.get("size") or 0),
                     _mlsd_time(facts.get("modify", "")))


def _mlsd_time(value: str) -> float:
    """Return the epoch seconds of an MLSD time ("YYYYMMDDHHMMSS[.fff]", always UTC), 0 if absent."""
    whole, _, fraction = value.partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y%m%d%H%M%S"))
    except ValueError:
        return 0.0
    return seconds + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


def _checked(path: str) -> str:
    """Refuse line breaks in a path: in an FTP command they would start a command of their own."""
    if "\r" in path or "\n" in path:
        raise SourceError(f"path contains a line break: {path!r}")
    return path


def _exists_function(ftp: ftplib.FTP) -> Callable[[str], bool]:
    def exists(path: str) -> bool:
        try:
            ftp.sendcmd(f"MLST {path}")
        except ftplib.error_perm as error:
            if str(error).startswith("550"):
                return False
            raise
        return True

    return exists


def _make_folder(ftp: ftplib.FTP, folder: str, exists: Callable[[str], bool]) -> None:
    try:
        ftp.mkd(folder)
    except ftplib.error_perm:
        # Someone else may have created it since we looked; only a real failure matters.
        if not exists(folder):
            raise
