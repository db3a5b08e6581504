"""One workflow is delivered by one rpi2braze process at a time.

The daemon and a `process` run by hand share the state file; both sending one folder would send
its rows twice. Each workflow is one byte of `<state dir>/workflows.lock`, held with a POSIX
record lock (fcntl.lockf) while a process delivers it. The kernel drops the lock when that
process ends, even by SIGKILL, so a crash never leaves a workflow locked, and the file never
grows (locks lie beyond its end). Record locks belong to the process, and closing any descriptor
of the file drops all of them: so a process opens the file once, and every pipeline it runs
shares that descriptor and one set of the workflows it holds, which keeps its threads apart. A
reload whose drain timed out starts a new pipeline while an old worker may still be sending: the
file stays open until that worker lets go, and the new pipeline finds its workflow taken.

If the file is deleted or replaced while the process runs (someone cleaning a "stale" lock file),
its locks would guard a file nobody else opens, and a `process` run by hand could deliver a
workflow the daemon is delivering. So while the file is open, and before each lock, the process
checks that the path still names its file (every FOLLOW_SECONDS); if not, it opens the new one
and takes the workflows it holds again there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import threading
from typing import Iterator

from rpi2braze.errors import StateError
from rpi2braze.log import Throttle, get_logger
from rpi2braze.model import WorkflowKey

log = get_logger(__name__)

LOCK_FILE = "workflows.lock"
_OFFSET_BYTES = 7   # offsets below 2**56: far inside off_t, and collisions need ~2**28 workflows
_PROBE_OFFSET = 1 << 60   # beyond every workflow's byte: tried once at open
FOLLOW_SECONDS = 1.0      # how often an open lock file is checked to be still the one at its path


class _LockFile:
    """This process's one descriptor of a lock file; closed once no WorkflowLocks uses it and no
    workflow is held through it."""

    def __init__(self, path: str):
        self.path = path
        self.fd = _open(path)
        self.held: set[int] = set()    # record locks do not exclude the process's own threads
        self.users = 0
        self.closed = threading.Event()
        threading.Thread(target=self._follow_while_open, name="workflow-locks", daemon=True).start()

    def close(self) -> None:
        os.close(self.fd)
        self.closed.set()

    def _follow_while_open(self) -> None:
        while not self.closed.wait(FOLLOW_SECONDS):
            with _guard:
                if not self.closed.is_set():
                    self.follow()

    def follow(self) -> None:
        """If the path no longer names the open file, move to the file it names now, taking the
        workflows held here again there. If that file cannot be opened, log why (once a minute)
        and stay: the locks held here keep this process's workflows apart meanwhile."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        except OSError as error:   # the state folder turned into a file, or lost its permissions
            return self._unusable(error.strerror)
        opened = os.fstat(self.fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return
        try:
            fd = _open(self.path)
        except StateError as error:   # the state directory is gone or read-only: tried again later
            return self._unusable(str(error))
        lost = [offset for offset in sorted(self.held) if not _try_lock(fd, offset)]
        os.close(self.fd)
        self.fd = fd
        log.warning("workflow_lock_file_replaced", path=self.path, workflows_held=len(self.held),
                    hint="it was deleted or replaced while rpi2braze ran; its locks were taken again in the new file")
        if lost:
            log.error("workflow_lock_lost", path=self.path, workflows=len(lost),
                      reason="another process took them in the new file meanwhile: both may deliver them")


    def _unusable(self, reason: str) -> None:
        _UNUSABLE_LOG.log(log.error, "workflow_lock_file_unusable", self.path, path=self.path, reason=reason)


_UNUSABLE_LOG = Throttle(60.0)
_open_files: dict[str, _LockFile] = {}   # by real path
_guard = threading.Lock()               # over _open_files and every _LockFile


class WorkflowLocks:
    """The workflow locks of one state directory, for one pipeline of this process. Close it
    when done.

    Raise StateError at construction if the file cannot be opened or locked (a read-only or
    foreign-owned state directory, or a filesystem without POSIX locks).
    """

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK_FILE)
        self._real_path = os.path.realpath(self.path)
        with _guard:
            shared = _open_files.get(self._real_path) or _LockFile(self.path)
            _open_files[self._real_path] = shared
            shared.users += 1
        self._file: _LockFile | None = shared

    @contextlib.contextmanager
    def hold(self, key: WorkflowKey) -> Iterator[bool]:
        """Lock `key` for the block, yielding True; yield False at once if another process, or
        another thread of this one, holds it, or this WorkflowLocks is closed."""
        offset = _offset(key)
        with _guard:
            shared = self._file
            if shared is not None:
                shared.follow()
            taken = shared is not None and offset not in shared.held and _try_lock(shared.fd, offset)
            if taken:
                shared.held.add(offset)
        if not taken:
            yield False
            return
        try:
            yield True
        finally:
            with _guard:
                shared.held.discard(offset)
                fcntl.lockf(shared.fd, fcntl.LOCK_UN, 1, offset)
                self._close_if_unused(shared)

    def close(self) -> None:
        """Take no more locks; workflows held meanwhile stay locked until their blocks end."""
        with _guard:
            if self._file is not None:
                self._file.users -= 1
                self._close_if_unused(self._file)
                self._file = None

    def _close_if_unused(self, shared: _LockFile) -> None:
        if shared.users == 0 and not shared.held:
            shared.close()
            del _open_files[self._real_path]


def held_elsewhere(state_dir: str, key: WorkflowKey) -> bool | None:
    """Whether another process holds `key`'s lock in `state_dir` now: a workflow IN_PROGRESS that
    none holds was left so by a process that ended (a crash, SIGKILL). Only asks the kernel
    (F_GETLK): taking the lock, even for a moment, could make the daemon find its workflow busy.
    False if there is no lock file; None if it cannot be read (another user's, unknown)."""
    path = os.path.join(state_dir, LOCK_FILE)
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _offset(key), 1, 0)
    with _guard:   # closing a descriptor of the file drops this process's locks: use the open one
        shared = _open_files.get(os.path.realpath(path))
        if shared is not None:
            answer = fcntl.fcntl(shared.fd, fcntl.F_GETLK, query)
        else:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            except OSError:
                return None
            try:
                answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
            finally:
                os.close(fd)
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK


_FLOCK = "hhqqi4x"   # Linux's struct flock: l_type, l_whence, l_start, l_len, l_pid, padding
_HINT = "the state directory must be writable by this user, on a local filesystem"


def _open(path: str) -> int:
    """Open (create) the lock file and check it takes POSIX record locks; raise StateError if not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StateError(f"cannot open {path}: {error.strerror}; {_HINT}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _PROBE_OFFSET)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _PROBE_OFFSET)
    except OSError as error:
        os.close(fd)
        raise StateError(f"cannot lock {path}: {error.strerror}; {_HINT}") from None
    return fd


def _try_lock(fd: int, offset: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        return False
    return True


def _offset(key: WorkflowKey) -> int:
    exact_key = repr((key.source, key.channel, key.offer, key.workflow_id)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(exact_key).digest()[:_OFFSET_BYTES], "big")
