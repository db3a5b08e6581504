"""A big folder's batches made by several reading processes at once, as one stream (producer.py).

One reading process spends a core on each row (reading, mapping, batching) and was the limit of
the whole pipeline. Each of `processes` children reads every row of the folder, but maps and
batches only the rows of its share of the partitions (partition p with p % processes == its
index). Batch numbers do not depend on which process made a batch (batcher.py), so the merged
stream is numbered as one process would number it, whatever order the batches arrive in.

A thread per child reads its messages into one bounded queue: when the senders fall behind,
the queue fills, the pipes fill, and the children wait, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO, Iterator

from rpi2braze.errors import ProductionFailed
from rpi2braze.log import get_logger
from rpi2braze.model import Batch, WorkflowKey
from rpi2braze.producer import ERROR_KINDS, Headers, Job, Production
from rpi2braze.wire import batch_of, read_messages

# Every process reads and parses the whole file, so more than a few only burn CPU: the senders
# and Braze's ceiling limit a folder long before four reading processes do.
MAX_PROCESSES = 4
_QUEUED_PER_PROCESS = 2
PIPE_BYTES = 1024 * 1024   # Linux's default pipe-max-size
_POLL_SECONDS = 0.2
# Once batches flow, they flow while a child reads: this long without a message, it is stuck (a
# hung network share). Before the first batch there is no limit: a child may be downloading
# (staging_path), or skipping the batches Braze already has (a resumed folder: minutes of them).
READING_STALL_SECONDS = 300.0
_JOIN_SECONDS = 5.0
_EXIT_WAIT_SECONDS = 2.0   # how long a child whose output closed is given to exit, to say how it ended

log = get_logger(__name__)


def processes_for(partitions: int) -> int:
    """How many reading processes share a folder of `partitions` partitions on this machine: one
    per core but the sending process's, since every one parses the whole file (on 2 cores a
    second one cost 25% more CPU per row and 36 MB for no gain in rows/s; bench/README.md)."""
    return max(1, min(MAX_PROCESSES, len(os.sched_getaffinity(0)) - 1, partitions))   # cores we may run on


@contextlib.contextmanager
def produce_in_children(job: Job, processes: int = 1, stop: threading.Event | None = None) -> Iterator[Production]:
    """`produce`, shared among `processes` child processes; the same header, batches (in another
    order) and exceptions. Raise ProductionFailed if a child dies or fails in a way the
    in-process path has no class for, or if `stop` is set while no message is ready (a stalled
    read must not hold up a warm stop). Leaving the context stops every child and its thread.
    Raise ValueError if processes < 1."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    merged = None
    try:
        with contextlib.ExitStack() as stack:
            children = [stack.enter_context(_child(dataclasses.replace(job, shard=(index, processes))))
                        for index in range(processes)]
            merged = _Merge([_then_ended(child) for child in children], job.folder.key, stop)
            stack.callback(merged.close)
            yield merged.headers(), merged.batches()
    finally:   # the children are dead now: their threads read the end of the pipes and return
        if merged is not None:
            merged.join(_JOIN_SECONDS)


@contextlib.contextmanager
def _child(job: Job) -> Iterator[subprocess.Popen]:
    """A reading process working on `job`, its output a pipe. Leaving the context kills it."""
    with subprocess.Popen([sys.executable, "-m", "rpi2braze.producer"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            try:
                child.stdin.write(pickle.dumps(job, pickle.HIGHEST_PROTOCOL))
                child.stdin.close()
            except BrokenPipeError:
                raise ProductionFailed("the reading process ended before it took its job") from None
            _widen(child.stdout)
            yield child
        finally:
            child.kill()


def _widen(pipe: BinaryIO) -> None:
    """Let the pipe hold a dozen batches (Linux's default, 64 KiB, holds about one), so the child
    goes on reading while this process is slow to read: with 128 sender threads at 50 ms it
    waited ~1,000 times per million rows, and delivered 2-5% fewer rows/s (bench/README.md)."""
    with contextlib.suppress(OSError, AttributeError):   # not Linux, or above /proc/sys/fs/pipe-max-size
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _Merge:
    """The header and then the batches of several children's message streams, as they arrive."""

    def __init__(self, streams: list[Iterator[tuple]], key: WorkflowKey, stop: threading.Event | None):
        self._key = key
        self._stop = stop
        self._count = len(streams)
        self._queue: queue.Queue = queue.Queue(_QUEUED_PER_PROCESS * len(streams))
        self._answered = threading.Event()   # every child's first message is in: batches may follow
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._pump, args=(index, stream), name=f"reading-{index}",
                                          daemon=True) for index, stream in enumerate(streams)]
        for thread in self._threads:
            thread.start()

    def headers(self) -> Headers:
        """Every file's header, once every child has opened and planned every file (a bad file anywhere
        raises before anything is sent). Until then each thread queues its child's first message
        only, so the queue holds no batch that would have to be put aside."""
        headers: dict[int, Headers] = {}
        while len(headers) < self._count:
            index, message = self._next()
            headers[index] = _expect(message, "header")
        self._answered.set()
        return headers[0]

    def batches(self) -> Iterator[Batch]:
        finished: set[int] = set()
        flowing = False
        while len(finished) < self._count:
            index, message = self._next_while_flowing() if flowing else self._next()
            if message[0] == "end":
                finished.add(index)
            elif message[0] == "ended":
                if index not in finished:
                    raise ProductionFailed(f"a reading process {_how_ended(message[1])} without finishing the folder")
            else:
                _expect(message, "batch")
                flowing = True
                yield batch_of(self._key, message)

    def _next_while_flowing(self) -> tuple[int, tuple]:
        try:
            return self._next(deadline=time.monotonic() + READING_STALL_SECONDS)
        except queue.Empty:
            raise ProductionFailed(f"the reading processes sent nothing for {READING_STALL_SECONDS:.0f} s "
                                   "(stuck reading the source?); the folder is tried again later") from None

    def _next(self, deadline: float | None = None) -> tuple[int, tuple]:
        """The next (child index, message); raise ProductionFailed if the stop is set meanwhile,
        queue.Empty if none came by `deadline` (monotonic)."""
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop is not None and self._stop.is_set():
                    raise ProductionFailed("stopped while the reading processes were still reading") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        """Stop queueing: each thread returns at its next message or the end of its pipe."""
        self._closed.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _pump(self, index: int, stream: Iterator[tuple]) -> None:
        for position, message in enumerate(stream):   # it ends with "ended", whatever happens to the pipe
            if position == 1 and not self._wait_answered():
                return
            if not self._put((index, message)) or message[0] == "ended":
                return

    def _wait_answered(self) -> bool:
        """Wait until every child has answered; False if the merge was closed first."""
        while not self._answered.wait(_POLL_SECONDS):
            if self._closed.is_set():
                return False
        return True

    def _put(self, item: tuple) -> bool:
        """Queue `item` once there is room; False if the merge was closed first."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False


def _then_ended(child: subprocess.Popen) -> Iterator[tuple]:
    """The child's messages, then ("ended", its exit status, None if it has not exited). A pipe
    that breaks or garbles (a killed child) ends them too: the merge then reports that child as
    ended without finishing, and how, and never waits forever."""
    try:
        yield from read_messages(child.stdout)
    except Exception as error:
        log.warning("reading_process_output_unreadable", error=f"{type(error).__name__}: {error}")
    try:
        yield "ended", child.wait(_EXIT_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        yield "ended", None


def _how_ended(status: int | None) -> str:
    """How a reading process ended, for an operator: a kill by the kernel's OOM killer is the
    usual cause of a SIGKILL nobody sent, and nothing else would say so."""
    if status is None:
        return "closed its output"
    if status >= 0:
        return f"exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    hint = " (out of memory? the kernel's log says: journalctl -k)" if -status == signal.SIGKILL else ""
    return f"was killed by {name}{hint}"


def _expect(message: tuple, kind: str):
    """The message's payload if it is of `kind`; raise what an "error" message or a dead child means."""
    if message[0] == "ended":
        raise ProductionFailed(f"the reading process {_how_ended(message[1])} before it answered")
    if message[0] == "error":
        _, error_kind, text = message
        raise ERROR_KINDS.get(error_kind, ProductionFailed)(text)
    if message[0] != kind:
        raise ProductionFailed(f"the reading process answered {message[0]!r} where {kind!r} was due")
    return message[1]
