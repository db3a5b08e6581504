"""A folder on this machine (`type: local`, with inotify hints) or a mounted share (`type: poll`).

inotify is blind to writes made by other hosts on NFS/SMB, so `poll` never watches: the scanner's
periodic listing is the truth for both, and watchdog events only wake it early.
"""

from __future__ import annotations

import os
import shutil
from typing import BinaryIO, Callable

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from rpi2braze import private
from rpi2braze.errors import BadFileError, SourceError, SourceUnavailable
from rpi2braze.model import FileEntry
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.base import free_name, normalise_relpath, safe_join


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]):
        self._wake = wake

    def on_any_event(self, event) -> None:
        self._wake()


class LocalSource:
    """A base folder on a local or mounted filesystem."""

    open_file_holds_a_session = False

    def __init__(self, settings: SourceSettings, watch: bool = True):
        self.name = settings.name
        self.base = settings.path
        self._watch = watch

    def list_dir(self, relpath: str) -> list[FileEntry]:
        path = safe_join(self.base, relpath)
        try:
            with os.scandir(path) as entries:
                return [_entry(item) for item in entries if _exists(item)]
        except FileNotFoundError:
            if not relpath and not os.path.isdir(self.base):
                raise SourceUnavailable(f"source {self.name}: base folder {self.base} does not exist") from None
            return []
        except NotADirectoryError:
            return []
        except OSError as error:
            raise SourceUnavailable(f"source {self.name}: cannot list {path}: {error.strerror}") from None

    def open_file(self, relpath: str) -> BinaryIO:
        try:
            path = safe_join(self.base, relpath)
        except SourceError as error:   # waiting would not change it: quarantine, with the reason
            raise BadFileError(f"{error} (a symlink to a file outside the source?)") from None
        try:
            return open(path, "rb", buffering=1024 * 1024)
        except PermissionError as error:  # an operator must fix it: quarantine, then `retry`
            raise BadFileError(f"cannot read {path}: {error.strerror}") from None
        except OSError as error:
            raise SourceUnavailable(f"source {self.name}: cannot open {path}: {error.strerror}") from None

    def move_folder(self, relpath: str, destination: str) -> str:
        source_path = safe_join(self.base, relpath)
        target = free_name(os.path.join(destination, normalise_relpath(relpath)), os.path.lexists)
        try:
            private.make_directories(os.path.dirname(target), 0o750)   # a group may read the archive
            shutil.move(source_path, target)
        except OSError as error:
            raise SourceUnavailable(f"source {self.name}: cannot move {source_path} to {target}: {error.strerror}") from None
        return target

    def describe(self, relpath: str) -> str:
        return os.path.join(self.base, normalise_relpath(relpath))

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        if not self._watch or not os.path.isdir(self.base):
            return None
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Wake(wake), self.base, recursive=True)
        observer.start()

        def stop() -> None:
            observer.stop()
            observer.join(5)

        return stop

    def close(self) -> None:
        pass


def poll_source(settings: SourceSettings) -> LocalSource:
    """A mounted network share: listed on every scan, never watched."""
    return LocalSource(settings, watch=False)


def _entry(item: os.DirEntry) -> FileEntry:
    stat = item.stat()
    return FileEntry(item.name, item.is_dir(), stat.st_size, stat.st_mtime)


def _exists(item: os.DirEntry) -> bool:
    try:
        item.stat()
    except OSError:  # vanished between listing and stat, or a dangling link
        return False
    return True

