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


class CommitFailed(Exception):
    """The commit of a group failed in the thread that ran it; `__cause__` is what it raised."""


class _Entry(Generic[Item]):
    """One submitted item. `wake` is held until its thread may go on: its item committed
    (`done`), or it was handed the next group (`leads`)."""

    __slots__ = ("item", "outcome", "done", "leads", "wake")

    def __init__(self, item: Item):
        self.item = item
        self.outcome: object = None
        self.done = False
        self.leads = False
        self.wake = threading.Lock()
        self.wake.acquire()


class GroupCommit(Generic[Item, Result]):
    """Runs `commit(items)` for groups of submitted items, one group at a time.

    `commit` returns one outcome per item, in order: a result, or an exception to raise in that
    item's caller only (a distinct object per caller: one raised in several threads would
    collect all their tracebacks). If `commit` raises, the thread that ran it raises that, and
    the rest of its group CommitFailed. Each waiting thread is woken once, by its own lock (a
    Condition's notify_all would wake every waiter for every group).
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
            entry.leads = not self._committing
            self._committing = True
        try:
            if not entry.leads:
                entry.wake.acquire()   # until committed, or handed the next group
            if not entry.done:
                self._lead(entry)
        except BaseException:   # Ctrl-C, which Python raises in the main thread
            self._withdraw(entry)
            raise
        if isinstance(entry.outcome, BaseException):
            raise entry.outcome
        return entry.outcome  # type: ignore[return-value]

    def _withdraw(self, entry: _Entry[Item]) -> None:
        """Take back an interrupted thread's item; if the next group was this thread's to commit,
        hand it to the next thread in the queue: nobody else would commit it."""
        with self._lock:
            if entry.done:   # its group was committed, or failed, and handed on already
                return
            if entry in self._queued:
                self._queued.remove(entry)
            successor = self._next_leader() if entry.leads else None
            entry.leads = False
        if successor is not None:
            successor.wake.release()

    def _lead(self, entry: _Entry[Item]) -> None:
        """Commit everything queued (`entry`, this thread's, is first); then wake that group and
        hand the next group, if any arrived meanwhile, to the first of its threads. Whatever
        happens once the group is taken, even Ctrl-C, its threads are woken (`finally`)."""
        group: list[_Entry[Item]] = []
        outcomes: list[object] = []
        try:
            with self._lock:
                group, self._queued = self._queued, []
                entry.leads = False   # from here on, the group's outcome is this method's to deliver
            outcomes = list(self._commit([member.item for member in group]))
            if len(outcomes) != len(group):
                raise RuntimeError(f"commit returned {len(outcomes)} outcomes for {len(group)} items")
        except BaseException as error:   # this thread raises the original; the others their own
            if not group:   # interrupted before it took the group: submit withdraws its entry
                raise
            outcomes = [error] + [_failed(error) for _ in group[1:]]
        finally:
            if group:
                self._deliver(group, outcomes)

    def _deliver(self, group: list[_Entry[Item]], outcomes: list[object]) -> None:
        """Give each entry of `group` its outcome and wake its thread; hand on the next group."""
        if len(outcomes) != len(group):   # interrupted before the commit returned
            outcomes = [_failed(KeyboardInterrupt()) for _ in group]
        for member, outcome in zip(group, outcomes):
            member.outcome, member.done = outcome, True
        with self._lock:
            successor = self._next_leader()
        for member in group[1:]:   # group[0] is the leading thread's own entry: it is not waiting
            member.wake.release()
        if successor is not None:
            successor.wake.release()

    def _next_leader(self) -> _Entry[Item] | None:
        """Under the lock: the first queued entry, now leading, or None and nobody is committing."""
        successor = self._queued[0] if self._queued else None
        if successor is not None:
            successor.leads = True
        self._committing = successor is not None
        return successor


def _failed(error: BaseException) -> CommitFailed:
    failure = CommitFailed(f"committed with another thread's item, whose commit failed: {error!r}")
    failure.__cause__ = error
    return failure
