"""Path rules shared by the remote sources (SFTP, FTP).

Remote paths are POSIX paths on the server. A base or destination that does not start with "/"
is relative to the login folder; relative paths from outside input are normalised with
`normalise_relpath`, so they never climb out of the base.
"""

from __future__ import annotations

import posixpath
from typing import Callable

from rpi2braze.errors import SourceError
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.base import free_name, normalise_relpath

# A network call that takes longer than this is treated as the server being unavailable.
CONNECT_TIMEOUT_SECONDS = 15.0
OPERATION_TIMEOUT_SECONDS = 60.0
MOVED_FOLDER_MODE = 0o750
# The server sent a name that is not UTF-8; the client libraries cannot list a folder holding one.
NOT_UTF8 = ("a file or folder name there is not UTF-8; rename it on the server (until then nothing "
            "in that folder can be listed)")


def require_remote_settings(settings: SourceSettings) -> None:
    """Raise SourceError if `settings` lacks what every remote source needs (host, username)."""
    missing = [key for key in ("host", "username") if not getattr(settings, key)]
    if missing:
        raise SourceError(f"source {settings.name}: {' and '.join(missing)} must be set")


def remote_path(base: str, relpath: str) -> str:
    """Given the base folder and a relative path from outside input, return the server path.

    Raise SourceError if `relpath` would leave the base (see `normalise_relpath`).
    """
    cleaned = normalise_relpath(relpath)
    if not cleaned:
        return base or "."
    return posixpath.join(base, cleaned) if base else cleaned


def moved_path(destination: str, relpath: str) -> str:
    """Return where the folder `relpath` goes below `destination`, keeping its relative path.

    Raise SourceError if `relpath` is the base itself or would leave it.
    """
    cleaned = normalise_relpath(relpath)
    if not cleaned:
        raise SourceError("refusing to move the base folder itself")
    return posixpath.join(destination, cleaned)


def location_url(scheme: str, settings: SourceSettings, port: int, path: str) -> str:
    """Return `scheme://user@host:port/path` for logs; a path relative to the login folder
    is shown below "~" (the convention of curl and others)."""
    shown = path if path.startswith("/") else f"/~/{path}"
    return f"{scheme}://{settings.username}@{settings.host}:{port}{shown}"


def ancestors(path: str) -> list[str]:
    """Return the folders above `path`, outermost first: "/a/b/c" gives ["/a", "/a/b"];
    "a/b/c" gives ["a", "a/b"]. The root and the login folder are not included."""
    parents: list[str] = []
    parent = posixpath.dirname(path.rstrip("/"))
    while parent not in ("", "/", "."):
        parents.append(parent)
        parent = posixpath.dirname(parent)
    return parents[::-1]


def make_parents(path: str, exists: Callable[[str], bool], make_folder: Callable[[str], None]) -> None:
    """Create every missing folder above `path` (mkdir -p of its parent)."""
    for parent in ancestors(path):
        if not exists(parent):
            make_folder(parent)


def error_reason(error: BaseException) -> str:
    """A short description of a network library's error, e.g. "timeout: timed out". The texts
    of paramiko, ftplib and ssl never hold the password or passphrase."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
