"""Remote export files downloaded whole into a local staging folder before they are read (`staging_path`).

Read directly, an export is fetched only as fast as Braze takes its rows, so a big one holds a
connection open for as long as its delivery lasts, and a connection lost midway postpones the
folder. Staged, the download runs at the network's speed, and a dropped connection is resumed
where it stopped, on a fresh connection, a few times before the folder is postponed.

A staged copy is an unnamed file in the staging folder (O_TMPFILE where the filesystem has it,
otherwise created and unlinked at once), private to this process: it holds personal data, so it
is never left behind, not even by a crash, and disappears when the reader closes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import BinaryIO, Callable, Protocol

from rpi2braze import private
from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.log import get_logger
from rpi2braze.model import FileEntry
from rpi2braze.sources.base import Source

log = get_logger(__name__)

COPY_CHUNK_BYTES = 1024 * 1024
# Pauses before each further attempt at a download that failed midway: then the folder is postponed.
RESUME_DELAYS_SECONDS = (0.5, 1.0, 2.0, 4.0)


class ResumableSource(Source, Protocol):
    """A source that can open a file from a byte offset on (SFTP, FTP)."""

    def open_file(self, relpath: str, offset: int = 0) -> BinaryIO: ...


class StagedSource:
    """A remote source whose files are downloaded into `staging_path` before they are read;
    everything else is passed to the remote source as it is."""

    open_file_holds_a_session = False   # the download's session ends before the file is read

    def __init__(self, remote: ResumableSource, staging_path: str, sleep: Callable[[float], None] = time.sleep):
        self.name = remote.name
        self._remote = remote
        self._folder = staging_path
        self._sleep = sleep

    def open_file(self, relpath: str) -> BinaryIO:
        """Download the file, then return the staged copy open for reading from its start.

        Raise SourceUnavailable if the download failed on every attempt (or the staging folder
        cannot be written: the folder is postponed until it can), SourceError as the remote does.
        """
        staged = self._staged_file()
        try:
            self._download(relpath, staged)
            staged.seek(0)
        except BaseException:
            staged.close()
            raise
        return staged

    def list_dir(self, relpath: str) -> list[FileEntry]:
        return self._remote.list_dir(relpath)

    def move_folder(self, relpath: str, destination: str) -> str:
        return self._remote.move_folder(relpath, destination)

    def describe(self, relpath: str) -> str:
        return self._remote.describe(relpath)

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return self._remote.watch(wake)

    def close(self) -> None:
        self._remote.close()

    def _staged_file(self) -> BinaryIO:
        try:
            private.make_directories(self._folder)
            return tempfile.TemporaryFile(dir=self._folder, prefix=".rpi2braze-staged-")  # mode 0600
        except OSError as error:
            raise SourceUnavailable(f"source {self.name}: cannot create a file in staging_path "
                                    f"{self._folder}: {error.strerror}") from None

    def _download(self, relpath: str, staged: BinaryIO) -> None:
        """Copy the remote file into `staged`, resuming after a failure while attempts remain.
        Raise SourceUnavailable if the file changed meanwhile (its size or time): a copy resumed
        into another file's bytes, or cut short, must not be read."""
        listed = None
        for delay in (*RESUME_DELAYS_SECONDS, None):
            try:
                listed = listed or self._listed(relpath)   # as it was when the download began
                with self._remote.open_file(relpath, offset=staged.tell()) as stream:
                    _copy(stream, staged, self._folder)
                break
            except SourceError as error:
                if delay is None or not isinstance(error, SourceUnavailable):
                    raise
                log.warning("staging_download_interrupted", source=self.name, file=relpath,
                            resume_at=staged.tell(), resume_in_seconds=delay, reason=str(error))
                self._sleep(delay)
        # (a listing without sizes gives 0: then the time alone tells)
        if (listed.size and staged.tell() != listed.size) or self._listed(relpath) != listed:
            raise SourceUnavailable(f"source {self.name}: {relpath} changed while it was downloaded; "
                                    "the folder is read again once it settles")

    def _listed(self, relpath: str) -> FileEntry:
        """The remote file's entry in its folder's listing: its size and time."""
        folder, _, name = relpath.rpartition("/")
        entry = next((entry for entry in self._remote.list_dir(folder) if entry.name == name), None)
        if entry is None:
            raise SourceUnavailable(f"source {self.name}: {relpath} is no longer there")
        return entry


def _copy(stream: BinaryIO, staged: BinaryIO, folder: str) -> None:
    try:
        shutil.copyfileobj(stream, staged, COPY_CHUNK_BYTES)
        staged.flush()
    except SourceError:
        raise
    except OSError as error:  # our side: the staging disk is full or failing
        raise SourceUnavailable(f"cannot write to staging_path {folder}: {error.strerror or error}") from None
