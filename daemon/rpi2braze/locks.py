"""One workflow is delivered by one rpi2braze process at a time.

The daemon and a `process` run by hand share the state file; both sending one folder would send
its rows twice. Each workflow is one byte of `<state dir>/workflows.lock`, held with a POSIX
record lock (fcntl.lockf) while a process delivers it. The kernel drops the lock when that
process ends, even by SIGKILL, so a crash never leaves a workflow locked, and the file never
grows (locks lie beyond its end). Record locks belong to the process, and closing any descriptor
of the file drops all of them: so the file is opened once per process, here, and threads of one
process do not exclude each other (the scanner keeps a folder with one worker at a time).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from typing import Iterator

from rpi2braze.model import WorkflowKey

LOCK_FILE = "workflows.lock"
_OFFSET_BYTES = 7   # offsets below 2**56: far inside off_t, and collisions need ~2**28 workflows


class WorkflowLocks:
    """The workflow locks of one state directory, for this process. Close it when done."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def hold(self, key: WorkflowKey) -> Iterator[bool]:
        """Lock `key` for the block, yielding True; yield False at once if another process holds it."""
        offset = _offset(key)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _offset(key: WorkflowKey) -> int:
    exact_key = repr((key.source, key.channel, key.offer, key.workflow_id)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(exact_key).digest()[:_OFFSET_BYTES], "big")
