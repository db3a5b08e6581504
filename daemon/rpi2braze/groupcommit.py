"""Group commit: many threads' small durable writes made durable together.

Each sender thread records its acknowledged batch and waits until that record is on disk. One
transaction with one fsync per record costs ~250 µs of CPU and caps a state file at a few
thousand records a second. Here the first thread to arrive commits what is queued; the threads
that arrive meanwhile queue their records and wait, and the next of them commits all of those
in one transaction (the leader/follower scheme databases use for their logs). Nothing waits for
a timer: a lone writer commits at once, and groups grow only as fast as writers queue up.

The promise to each caller is unchanged: `submit` returns only after its own record committed.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Entry(Generic[Item]):
    """One submitted item. `wake` is held until its thread may go on: its item committed
    (`done`), or it is to commit the next group."""

    __slots__ = ("item", "outcome", "done", "wake")

    def __init__(self, item: Item):
        self.item = item
        self.outcome: object = None
        self.done = False
        self.wake = threading.Lock()
        self.wake.acquire()


class GroupCommit(Generic[Item, Result]):
    """Runs `commit(items)` for groups of submitted items, one group at a time.

    `commit` returns one outcome per item, in order: a result, or an exception to raise in that
    item's caller only. If `commit` itself raises, every caller of that group gets the error.
    Each waiting thread is woken once, by its own lock (a Condition's notify_all would wake
    every waiter for every group).
    """

    def __init__(self, commit: Callable[[list[Item]], list[Result | Exception]]):
        self._commit = commit
        self._lock = threading.Lock()
        self._queued: list[_Entry[Item]] = []
        self._committing = False

    def submit(self, item: Item) -> Result:
        """Commit `item` with whatever else is queued; return its result once it is committed."""
        entry = _Entry(item)
        with self._lock:
            self._queued.append(entry)
            waits = self._committing
            self._committing = True
        if waits:
            entry.wake.acquire()   # until committed, or handed the next group
        if not entry.done:
            self._lead()
        if isinstance(entry.outcome, BaseException):
            raise entry.outcome
        return entry.outcome  # type: ignore[return-value]

    def _lead(self) -> None:
        """Commit everything queued (this thread's entry included); then wake that group and hand
        the next group, if any arrived meanwhile, to the first of its threads."""
        with self._lock:
            group, self._queued = self._queued, []
        outcomes: list[object]
        try:
            outcomes = list(self._commit([entry.item for entry in group]))
            if len(outcomes) != len(group):
                raise RuntimeError(f"commit returned {len(outcomes)} outcomes for {len(group)} items")
        except BaseException as error:   # KeyboardInterrupt too: no waiting thread may wait forever
            outcomes = [error] * len(group)
        finally:
            for entry, outcome in zip(group, outcomes):
                entry.outcome, entry.done = outcome, True
            with self._lock:
                successor = self._queued[0] if self._queued else None
                self._committing = successor is not None
            for entry in group[1:]:   # group[0] started the group: it is running this, not waiting
                entry.wake.release()
            if successor is not None:
                successor.wake.release()
