"""Sending batches to Braze: retry, split, map errors back to rows; and the pool of sender threads.

Batches are routed to a sender thread by their partition, and a partition only ever holds the
objects of the same users (batcher.partition_of), so a later batch for a user is never overtaken
by an earlier one while many requests are in flight. Each sender delivers one batch at a time and
acknowledges it before taking the next, so at most one batch per sender thread is sent but not
yet acknowledged: after a crash at most `threads x max_objects_per_request` objects are sent again.

Every request passes, in this order, the workspace's ConcurrencyGate (how many may be in flight)
and its RateLimiter (how many per window), then goes out at once.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rpi2braze import concurrency, metrics
from rpi2braze.batcher import join_body
from rpi2braze.braze_client import BrazeClient, TrackResponse
from rpi2braze.concurrency import ConcurrencyGate, Outcome, Slot
from rpi2braze.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError, SplittableDeliveryError
from rpi2braze.log import Throttle, get_logger
from rpi2braze.model import Batch, DeliveryResult, RawRow, Rejection
from rpi2braze.ratelimit import RateLimiter
from rpi2braze.settings import BrazeSettings

log = get_logger(__name__)

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 60.0
QUEUE_DEPTH_PER_SENDER = 2
SUBMIT_POLL_SECONDS = 0.2
RETRY_LOG_SECONDS = 10.0
_SENTINEL = None
_RETRY_LOG = Throttle(RETRY_LOG_SECONDS)   # shared by every sender of the process


class Abandoned(DeliveryError):
    """The daemon is stopping: the batch was not (or not surely) delivered; it stays unacknowledged."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter between attempts of one request."""

    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_CAP_SECONDS

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Return seconds to wait before attempt `attempt` + 1: uniform in [0, min(cap, base * 2**attempt)]."""
        return rng.uniform(0, min(self.cap, self.base * 2 ** min(attempt, 30)))


@dataclass(frozen=True)
class Workspace:
    """What every sender of one Braze workspace shares. `hold_while_refused`: while Braze refuses
    the key, batches wait at the gate (the daemon); otherwise PermanentDeliveryError ends them."""

    limiter: RateLimiter
    gate: ConcurrencyGate
    backoff: Backoff = field(default_factory=Backoff)
    hold_while_refused: bool = True


class BatchSender:
    """Delivers one batch at a time over its own BrazeClient. Owned by one sender thread."""

    def __init__(self, client: BrazeClient, workspace: Workspace, stop: threading.Event, rng: random.Random):
        self._client = client
        self._workspace = workspace
        self._stop = stop
        self._rng = rng
        self._last_slot = Slot()   # the last request's: if it failed, its retry waits on it (wait_to_retry)

    def close(self) -> None:
        self._client.close()

    def deliver(self, batch: Batch) -> DeliveryResult:
        """Send `batch` until Braze acknowledges it; return what was delivered and rejected.

        Retries without limit while the daemon runs (a Braze outage loses nothing). Raise
        Abandoned when stopping, PermanentDeliveryError if Braze refuses the key and the
        workspace does not hold batches while refused.
        """
        delivered, rejections, requests = self._send(list(batch.encoded), batch.rows, batch.row_counts)
        return DeliveryResult(batch.key, batch.number, delivered, tuple(rejections), requests)

    def _send(self, objects: list[bytes], rows: Sequence[tuple[RawRow, ...]],
              counts: tuple[int, ...]) -> tuple[int, list[Rejection], int]:
        """Send encoded objects; on 400/413 split them in halves until the bad ones stand alone.
        `rows` are only looked at for rejections (packed rows stay packed otherwise)."""
        try:
            response, requests = self._post_with_retry(join_body(objects))
        except SplittableDeliveryError as error:
            if len(objects) == 1:
                return 0, [Rejection(row, str(error)) for row in rows[0]], 1
            middle = len(objects) // 2
            first = self._send(objects[:middle], rows[:middle], counts[:middle])
            second = self._send(objects[middle:], rows[middle:], counts[middle:])
            return first[0] + second[0], first[1] + second[1], first[2] + second[2] + 1
        rejections = _rejections(response, rows)
        return sum(counts) - len(rejections), rejections, requests

    def _post_with_retry(self, body: bytes) -> tuple[TrackResponse, int]:
        attempt = 0
        while True:
            try:
                return self._attempt(body), attempt + 1
            except RetryableDeliveryError as error:
                attempt += 1
                metrics.RETRIES.inc()
                self._wait_before_retry(error, attempt)
            except PermanentDeliveryError:
                if not self._workspace.hold_while_refused:
                    raise
                attempt += 1
                metrics.RETRIES.inc()   # the gate holds the next attempt until Braze accepts the key

    def _attempt(self, body: bytes) -> TrackResponse:
        """One request through the gate and the rate limiter; return the answer or raise as classify does."""
        gate = self._workspace.gate
        refusal = gate.refusal
        if refusal is not None and not self._workspace.hold_while_refused:
            # `process`: one refusal ends every batch at once, not each after its own probe
            raise PermanentDeliveryError(refusal)
        slot = gate.acquire(self._stop)
        if slot is None:
            raise Abandoned("stopping before the batch was sent")
        report = _Report()
        try:
            return self._request(body, slot, report)
        finally:
            gate.release(slot, report.outcome, report.rtt, report.reason)
            self._last_slot = slot

    def _request(self, body: bytes, slot: Slot, report: "_Report") -> TrackResponse:
        limiter = self._workspace.limiter
        grant = limiter.acquire(self._stop)
        if grant is None:
            raise Abandoned("stopping before the batch was sent")
        metrics.RATE_LIMITER_WAIT_SECONDS.inc(grant.waited)
        self._workspace.gate.started(slot)
        started, response = time.monotonic(), None
        try:
            response = self._track(body)
        except DeliveryError as error:
            report.failed(error, time.monotonic() - started)
            raise
        finally:
            limiter.release(grant, *((response.rate_remaining, response.rate_reset_seconds) if response else ()))
        report.answered(time.monotonic() - started)
        return response

    def _track(self, body: bytes) -> TrackResponse:
        """One request, counted by status in the metrics."""
        metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            response = self._client.track(body)
        except DeliveryError as error:
            metrics.REQUESTS.labels(status=str(error.status or "error")).inc()
            metrics.RATE_LIMITED.inc(error.status == 429)
            raise
        finally:
            metrics.REQUESTS_IN_FLIGHT.dec()
        metrics.REQUESTS.labels(status=str(response.status)).inc()
        return response

    def _wait_before_retry(self, error: RetryableDeliveryError, attempt: int) -> None:
        backoff = self._workspace.backoff.delay(attempt, self._rng)
        if error.status == 429:
            # Braze's limit is per workspace: every sender pauses, not only this one, for as long as
            # Braze says (the backoff if it says nothing or 0); at least the backoff's base, so an
            # epoch reset skewed by our clock cannot make it spin; at most its cap, so an epoch reset
            # far ahead of our clock cannot stop delivery for hours.
            settings = self._workspace.backoff
            told = error.retry_after if error.retry_after and error.retry_after > 0 else backoff
            self._workspace.limiter.pause(min(max(told, settings.base), settings.cap))
            delay = 0.0
        else:   # a Retry-After on a 5xx is respected, up to the backoff cap
            delay = backoff if error.retry_after is None else min(error.retry_after, self._workspace.backoff.cap)
        _log_retry(error, attempt, delay)
        if error.retry_after is None:   # a backoff: after an outage, over at Braze's first answer
            self._workspace.gate.wait_to_retry(delay, self._stop, self._last_slot)
        else:
            self._stop.wait(delay)
        if self._stop.is_set():
            raise Abandoned(f"stopping while retrying: {error}")


def _log_retry(error: RetryableDeliveryError, attempt: int, delay: float) -> None:
    """One `batch_retry` warning per kind of failure every RETRY_LOG_SECONDS (a 429 storm or an
    outage fails every request), with how many retries it stands for; the others at debug level."""
    fields = dict(status=error.status, attempt=attempt, delay=round(delay, 2), error=str(error))
    if not _RETRY_LOG.log(log.warning, "batch_retry", error.status, **fields):
        log.debug("batch_retry", **fields)


@dataclass
class _Report:
    """What one request taught the concurrency gate."""

    outcome: Outcome = Outcome.UNKNOWN
    rtt: float | None = None
    reason: str = ""

    def answered(self, rtt: float) -> None:
        self.outcome, self.rtt = Outcome.ANSWERED, rtt

    def failed(self, error: DeliveryError, rtt: float) -> None:
        self.reason = str(error)
        if isinstance(error, RetryableDeliveryError):
            # 429, 425 and 408 come from a Braze that is there but busy; a 5xx, no answer, or a 2xx or
            # 400 that is not Braze's (a proxy in the way) mean Braze was not reached
            busy = error.status in (408, 425, 429)
            self.outcome = Outcome.OVERLOAD if busy else Outcome.UNREACHABLE
        elif isinstance(error, PermanentDeliveryError):
            self.outcome = Outcome.REFUSED
        else:   # 400/413: Braze read the request and answered it
            self.outcome, self.rtt = Outcome.ANSWERED, rtt


def _rejections(response: TrackResponse, rows: Sequence[tuple[RawRow, ...]]) -> list[Rejection]:
    """Map Braze's per-object errors[] (index into attributes) back to the rows of those objects."""
    rejected: list[Rejection] = []
    seen: set[int] = set()
    for item in response.errors:
        index = item.get("index")
        if item.get("input_array", "attributes") != "attributes" or not isinstance(index, int):
            log.warning("braze_error_unmapped", item=item)
            continue
        if 0 <= index < len(rows) and index not in seen:
            seen.add(index)
            reason = f"Braze rejected the object: {item.get('type') or item.get('message') or item}"
            rejected.extend(Rejection(row, reason) for row in rows[index])
    return rejected


OnDone = Callable[[Batch, "DeliveryResult | Exception"], None]


class SenderPool:
    """`threads` sender threads, each with its own BrazeClient, sharing one workspace's limits.

    `threads` (default braze.concurrency) is also the ceiling of the adaptive concurrency `gate`.
    `submit` blocks while the batch's sender is busy (back-pressure keeps memory flat). Setting
    `stop` makes senders abandon queued batches and stop retrying; `close` ends the threads.
    """

    def __init__(self, settings: BrazeSettings, limiter: RateLimiter, stop: threading.Event,
                 threads: int | None = None, client_factory: Callable[[BrazeSettings], BrazeClient] = BrazeClient,
                 *, gate: ConcurrencyGate | None = None, backoff: Backoff = Backoff(),
                 hold_while_refused: bool = True):
        self.threads = threads or settings.concurrency
        self.gate = gate or ConcurrencyGate(
            self.threads, refusal_hint=concurrency.WAITS_FOR_THE_KEY if hold_while_refused else concurrency.GIVES_UP)
        self._workspace = Workspace(limiter, self.gate, backoff, hold_while_refused)
        self._stop = stop
        self._queues = [queue.Queue(QUEUE_DEPTH_PER_SENDER) for _ in range(self.threads)]
        self._workers = [
            threading.Thread(target=self._run, args=(index, settings, client_factory),
                             name=f"sender-{index}", daemon=True)
            for index in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, batch: Batch, on_done: OnDone, waiting: Callable[[], None] | None = None) -> None:
        """Queue `batch` for its partition's sender; `on_done(batch, result_or_error)` runs in that thread.

        While the sender's queue is full, `waiting()` is called every SUBMIT_POLL_SECONDS.
        """
        # offset by the workflow, so partition 0 of every folder does not queue on the same sender
        # (hash() is salted per process, which is fine: routing only has to hold within this one)
        target = self._queues[(hash(batch.key) + batch.partition) % self.threads]
        while True:
            if self._stop.is_set():
                on_done(batch, Abandoned("stopping"))
                return
            try:
                target.put((batch, on_done), timeout=SUBMIT_POLL_SECONDS)
                return
            except queue.Full:
                if waiting is not None:
                    waiting()

    def _run(self, index: int, settings: BrazeSettings, client_factory) -> None:
        sender: BatchSender | None = None
        try:
            while (item := self._queues[index].get()) is not _SENTINEL:
                batch, on_done = item
                try:
                    sender = sender or BatchSender(client_factory(settings), self._workspace, self._stop,
                                                   random.Random())
                except Exception as error:   # the proxy or CA setting is unusable: the folder waits, saying why
                    log.exception("braze_client_unusable", batch=batch.number)
                    outcome = PermanentDeliveryError(f"cannot set up requests to Braze: {type(error).__name__}: {error}")
                else:
                    outcome = self._deliver(sender, batch)
                try:
                    on_done(batch, outcome)
                except Exception:  # the folder's bookkeeping failed; the thread must live on
                    log.exception("sender_callback_failed", workflow_id=batch.key.workflow_id, batch=batch.number)
        finally:
            if sender is not None:
                sender.close()

    def _deliver(self, sender: BatchSender, batch: Batch) -> DeliveryResult | Exception:
        if self._stop.is_set():
            return Abandoned("stopping")
        started = time.monotonic()
        try:
            result = sender.deliver(batch)
        except DeliveryError as error:
            return error
        except Exception as error:  # a bug must not kill the sender thread and strand the folder
            log.exception("sender_crashed", batch=batch.number)
            return error
        seconds = time.monotonic() - started
        metrics.BATCH_DELIVERY_SECONDS.observe(seconds)
        log.debug("batch_delivered", workflow_id=batch.key.workflow_id, batch=batch.number,
                  rows=result.rows_delivered, rejected=len(result.rejections), seconds=round(seconds, 3))
        return result

    def alive(self) -> bool:
        return all(worker.is_alive() for worker in self._workers)

    def close(self, timeout: float = 10.0) -> None:
        """Ask every sender to finish and wait up to `timeout` seconds in all."""
        for target in self._queues:
            try:
                target.put_nowait(_SENTINEL)
            except queue.Full:
                threading.Thread(target=target.put, args=(_SENTINEL,), daemon=True).start()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
