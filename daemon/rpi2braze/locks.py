"""One workflow is delivered by one rpi2braze process at a time.

The daemon and a `process` run by hand share the state file; both sending one folder would send
its rows twice. Each workflow is one byte of `<state dir>/workflows.lock`, held with a POSIX
record lock (fcntl.lockf) while a process delivers it. The kernel drops the lock when that
process ends, even by SIGKILL, so a crash never leaves a workflow locked, and the file never
grows (locks lie beyond its end). Record locks belong to the process, and closing any descriptor
of the file drops all of them: so the file is opened once per pipeline, here, and threads of one
process are kept apart by a set of the workflows it holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
from typing import Iterator

from rpi2braze.errors import StateError
from rpi2braze.model import WorkflowKey

LOCK_FILE = "workflows.lock"
_OFFSET_BYTES = 7   # offsets below 2**56: far inside off_t, and collisions need ~2**28 workflows
_PROBE_OFFSET = 1 << 60   # beyond every workflow's byte: tried once at open


class WorkflowLocks:
    """The workflow locks of one state directory, for this process. Close it when done.

    Raise StateError at construction if the file cannot be opened or locked (a read-only or
    foreign-owned state directory, or a filesystem without POSIX locks).
    """

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK_FILE)
        self._held: set[int] = set()    # this process's: record locks do not exclude its own threads
        self._guard = threading.Lock()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise StateError(f"cannot open {self.path}: {error.strerror}; {_HINT}") from None
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _PROBE_OFFSET)
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _PROBE_OFFSET)
        except OSError as error:
            os.close(self._fd)
            raise StateError(f"cannot lock {self.path}: {error.strerror}; {_HINT}") from None

    @contextlib.contextmanager
    def hold(self, key: WorkflowKey) -> Iterator[bool]:
        """Lock `key` for the block, yielding True; yield False at once if another process, or
        another thread of this one, holds it."""
        offset = _offset(key)
        with self._guard:
            taken = offset not in self._held and self._fd >= 0 and _try_lock(self._fd, offset)
            if taken:
                self._held.add(offset)
        if not taken:
            yield False
            return
        try:
            yield True
        finally:
            with self._guard:
                self._held.discard(offset)
                if self._fd >= 0:   # closed meanwhile: the kernel dropped the lock with the file
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def close(self) -> None:
        with self._guard:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


_HINT = "the state directory must be writable by this user, on a local filesystem"


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
