"""The folders waiting for a worker: first come, first served, with a lane for small ones.

A big export keeps its worker for many minutes. With every worker on one, a folder of a few
hundred rows dropped after them would wait as long, and operators expect it in seconds. So the
engine runs one worker more than `workers` that takes small folders only (under
SMALL_FOLDER_BYTES of data); the other workers take whichever folder came first, small or big.
"""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

from rpi2braze.model import ExportFolder

SMALL_FOLDER_BYTES = 16_000_000   # ~100,000 rows of a typical export, seconds to deliver; parse_process_min_bytes default

Item = TypeVar("Item")


class Closed(Exception):
    """The queue was closed: the worker asking should end."""


def is_small(folder: ExportFolder) -> bool:
    """True if `folder` may take the small folders' lane."""
    return folder.data_bytes < SMALL_FOLDER_BYTES


class FolderQueue(Generic[Item]):
    """Thread-safe. `put` an item, saying whether it is small; `get` the oldest (or the oldest
    small one); `close` ends every `get`, now and later."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._waiting: collections.deque[tuple[Item, bool]] = collections.deque()
        self._closed = False

    def __len__(self) -> int:
        with self._condition:
            return len(self._waiting)

    def put(self, item: Item, small: bool) -> None:
        with self._condition:
            self._waiting.append((item, small))
            self._condition.notify_all()   # a small item may be for the lane's worker, whoever else waits

    def get(self, small_only: bool, timeout: float) -> Item | None:
        """The oldest item (`small_only`: the oldest small one), waiting up to `timeout` seconds
        for one; None if none came. Raise Closed once the queue is closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._closed or self._index(small_only) is not None, timeout)
            if self._closed:
                raise Closed()
            index = self._index(small_only)
            if index is None:
                return None
            item, _ = self._waiting[index]
            del self._waiting[index]
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _index(self, small_only: bool) -> int | None:
        if not small_only:
            return 0 if self._waiting else None
        return next((index for index, (_, small) in enumerate(self._waiting) if small), None)
