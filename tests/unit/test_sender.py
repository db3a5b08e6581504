"""BatchSender and SenderPool against a scripted Braze client: retry, split, reject, hold, order.

The client double answers from a rule over the objects it is sent, so each test states Braze's
behaviour in one line and checks what the sender made of it.
"""

import random
import threading
import time

import orjson
import pytest
import structlog

from rpi2braze.braze_client import TrackResponse
from rpi2braze import concurrency
from rpi2braze import sender as sender_module
from rpi2braze.concurrency import ConcurrencyGate, Outcome
from rpi2braze.errors import PermanentDeliveryError, RetryableDeliveryError, SplittableDeliveryError
from rpi2braze.health import HEALTH
from rpi2braze.log import Throttle
from rpi2braze.model import Batch, DeliveryResult, RawRow, WorkflowKey
from rpi2braze.ratelimit import RateLimiter
from rpi2braze.secret import Secret
from rpi2braze.sender import Abandoned, Backoff, BatchSender, SenderPool, Workspace, _Report
from rpi2braze.settings import BrazeSettings

KEY = WorkflowKey("drop", "Braze Onboarding and Upsert", "Offer", "42")
NO_WAIT = Backoff(base=0.0, cap=0.0)
SETTINGS = BrazeSettings(rest_endpoint="http://127.0.0.1:1", api_key=Secret("unused"))


@pytest.fixture(autouse=True)
def braze_marked_up_afterwards():
    """A refused gate marks the process-wide health registry; leave it as it was found."""
    yield
    HEALTH.mark("braze", True)


class ScriptedClient:
    """A BrazeClient double: `answer(ids, call_number)` returns a TrackResponse or raises."""

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()

    def track(self, body: bytes) -> TrackResponse:
        ids = [obj["external_id"] for obj in orjson.loads(body)["attributes"]]
        with self._lock:
            self.calls.append((time.monotonic(), ids))
            number = len(self.calls)
        return self.answer(ids, number)

    def close(self) -> None:
        pass


def created(ids, number):
    return TrackResponse(201)


def make_batch(ids, number=0, partition=0, rows_per_object=1) -> Batch:
    encoded = tuple(orjson.dumps({"external_id": external_id}) for external_id in ids)
    rows = tuple(tuple(RawRow(line=index * 10 + extra, values=(external_id,)) for extra in range(rows_per_object))
                 for index, external_id in enumerate(ids))
    return Batch(KEY, number, partition, encoded, rows, size_bytes=100)


def workspace(hold=True, probe_interval=5.0, backoff=NO_WAIT, requests=1000) -> Workspace:
    return Workspace(RateLimiter(requests, 1), ConcurrencyGate(8, probe_interval=probe_interval), backoff, hold)


def sender_for(client, space=None, stop=None) -> BatchSender:
    return BatchSender(client, space or workspace(), stop or threading.Event(), random.Random(7))


class TopOfRange(random.Random):
    def uniform(self, low, high):
        return high


@pytest.mark.parametrize("attempt, longest", [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (10_000, 60.0)])
def test_backoff_is_exponential_with_a_cap(attempt, longest):
    assert Backoff().delay(attempt, TopOfRange()) == longest
    assert 0 <= Backoff().delay(attempt, random.Random(attempt)) <= longest


def test_a_refused_batch_is_halved_until_the_bad_objects_are_alone():
    bad = {"u2", "u5"}

    def answer(ids, number):
        if bad & set(ids):
            raise SplittableDeliveryError("Braze answered 400: Bad Request", 400)
        return TrackResponse(201)

    client = ScriptedClient(answer)
    result = sender_for(client).deliver(make_batch([f"u{n}" for n in range(8)]))
    assert result.rows_delivered == 6
    assert sorted(rejection.row.values[0] for rejection in result.rejections) == ["u2", "u5"]
    assert all("400" in rejection.reason for rejection in result.rejections)
    accepted = [ids for _, ids in client.calls if not bad & set(ids)]
    assert sorted(sum(accepted, [])) == ["u0", "u1", "u3", "u4", "u6", "u7"], "every good object sent once"
    assert result.requests == len(client.calls) == 11


def test_errors_in_a_201_reject_only_the_named_objects_and_every_row_behind_them():
    def answer(ids, number):
        return TrackResponse(201, errors=(
            {"type": "EMAIL_BAD_FORMAT", "input_array": "attributes", "index": 1},
            {"type": "SOMETHING", "input_array": "events", "index": 0},   # not ours: logged, not rejected
            {"message": "no index"},
        ))

    result = sender_for(ScriptedClient(answer)).deliver(make_batch(["a", "b", "c"], rows_per_object=2))
    assert [rejection.row.values[0] for rejection in result.rejections] == ["b", "b"]
    assert "EMAIL_BAD_FORMAT" in result.rejections[0].reason
    assert result.rows_delivered == 4


@pytest.mark.parametrize("failure", [
    RetryableDeliveryError("Braze answered 503: Service Unavailable", 503),
    RetryableDeliveryError("no answer from Braze: ReadTimeout"),
    RetryableDeliveryError("Braze answered 429: Rate Limited", 429, retry_after=0.0),
])
def test_retryable_failures_are_retried_until_braze_answers(failure):
    def answer(ids, number):
        if number <= 2:
            raise failure
        return TrackResponse(201)

    client = ScriptedClient(answer)
    space = workspace()
    result = sender_for(client, space).deliver(make_batch(["a", "b"]))
    assert result == DeliveryResult(KEY, 0, 2, (), requests=3)
    assert [ids for _, ids in client.calls] == [["a", "b"]] * 3
    assert space.limiter.acquire().sequence == 4, "every attempt takes a rate-limit grant"


def test_a_storm_of_retries_logs_one_warning_per_kind_of_failure_each_interval_saying_how_many_it_stands_for(
        monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(sender_module, "_RETRY_LOG", Throttle(sender_module.RETRY_LOG_SECONDS, lambda: clock[0]))

    def answer(ids, number):
        clock[0] = number   # one second per request
        if number <= 25:
            raise RetryableDeliveryError("Braze answered 503: Service Unavailable", 503)
        if number <= 27:
            raise RetryableDeliveryError("no answer from Braze: ReadTimeout")
        return TrackResponse(201)

    with structlog.testing.capture_logs() as logs:
        result = sender_for(ScriptedClient(answer)).deliver(make_batch(["a"]))
    warnings = [(line["status"], line["attempt"], line["similar_since_last"])
                for line in logs if line["event"] == "batch_retry" and line["log_level"] == "warning"]
    assert result.requests == 28
    assert warnings == [(503, 1, 0), (503, 11, 9), (503, 21, 9), (None, 26, 0)]


def test_a_429_pause_is_at_most_the_backoff_cap():
    # An X-RateLimit-Reset in epoch seconds, read by a clock hours behind Braze's.
    space = workspace(backoff=Backoff(base=0.0, cap=0.3))

    def answer(ids, number):
        if number == 1:
            raise RetryableDeliveryError("Braze answered 429: Rate Limited", 429, retry_after=7200.0)
        return TrackResponse(201)

    client = ScriptedClient(answer)
    results = []
    sending = threading.Thread(target=lambda: results.append(sender_for(client, space).deliver(make_batch(["a"]))))
    sending.start()
    sending.join(10)
    assert results == [DeliveryResult(KEY, 0, 1, (), requests=2)]


class RecordingLimiter(RateLimiter):
    """A real limiter that also notes every pause it is asked for."""

    def __init__(self, *arguments):
        super().__init__(*arguments)
        self.pauses: list[float] = []

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        super().pause(seconds)


class BottomOfRange(random.Random):
    def uniform(self, low, high):
        return low


@pytest.mark.parametrize("retry_after, rng, expected", [
    # however many 429s in a row, Braze's delay: not a backoff growing 0.2, 0.4 ... 3.2 s
    (0.2, TopOfRange(), [0.2] * 5),
    (None, BottomOfRange(), [0.1] * 5),   # Braze said nothing: the backoff, at least its base
])
def test_a_429_pauses_for_what_braze_says_not_a_growing_backoff(retry_after, rng, expected):
    limiter = RecordingLimiter(1000, 1)
    space = Workspace(limiter, ConcurrencyGate(8), Backoff(base=0.1, cap=60.0), True)

    def answer(ids, number):
        if number <= 5:
            raise RetryableDeliveryError("Braze answered 429: Rate Limited", 429, retry_after=retry_after)
        return TrackResponse(201)

    assert BatchSender(ScriptedClient(answer), space, threading.Event(), rng).deliver(make_batch(["a"])).requests == 6
    assert limiter.pauses == pytest.approx(expected)


def test_a_sender_backing_off_in_an_outage_is_woken_once_braze_answers_another_request(monkeypatch):
    # After an outage every sender sleeps its own jittered backoff, up to a minute; the first
    # request Braze answers again wakes them all.
    monkeypatch.setattr(concurrency, "OUTAGE_SHOWN_SECONDS", 0.0)   # every failure is in an outage
    space = workspace(backoff=Backoff(base=30.0, cap=30.0))
    outage = threading.Event()
    outage.set()

    def answer(ids, number):
        if outage.is_set():
            raise RetryableDeliveryError("Braze answered 503: Service Unavailable", 503)
        return TrackResponse(201)

    client = ScriptedClient(answer)
    results = []
    sleeper = threading.Thread(target=lambda: results.append(
        BatchSender(client, space, threading.Event(), TopOfRange()).deliver(make_batch(["asleep"]))))
    sleeper.start()
    wait_until(lambda: len(client.calls) == 1)   # it failed, and sleeps 30 s
    outage.clear()
    sender_for(client, space).deliver(make_batch(["awake"], number=1))
    sleeper.join(10)
    assert results == [DeliveryResult(KEY, 0, 1, (), requests=2)]


def test_a_retry_after_on_a_5xx_is_waited_out_even_when_other_requests_are_answered(monkeypatch):
    monkeypatch.setattr(concurrency, "OUTAGE_SHOWN_SECONDS", 0.0)
    space = workspace(backoff=Backoff(base=0.0, cap=60.0))
    stop = threading.Event()

    def answer(ids, number):
        if ids == ["told"]:
            raise RetryableDeliveryError("Braze answered 503: Service Unavailable", 503, retry_after=30.0)
        return TrackResponse(201)

    client = ScriptedClient(answer)
    outcome = []

    def deliver() -> None:
        try:
            BatchSender(client, space, stop, random.Random(7)).deliver(make_batch(["told"]))
        except Abandoned:
            outcome.append("abandoned")
    told = threading.Thread(target=deliver)
    told.start()
    try:
        wait_until(lambda: len(client.calls) == 1)
        sender_for(client, space).deliver(make_batch(["other"], number=1))
        told.join(0.5)
        assert told.is_alive() and len(client.calls) == 2, "Braze's Retry-After was cut short"
    finally:
        stop.set()
        told.join(10)
    assert outcome == ["abandoned"]


@pytest.mark.parametrize("status, outcome", [
    (429, Outcome.OVERLOAD), (408, Outcome.OVERLOAD),
    (503, Outcome.UNREACHABLE), (None, Outcome.UNREACHABLE),
    (200, Outcome.UNREACHABLE), (400, Outcome.UNREACHABLE),   # a proxy's page: Braze was not reached
])
def test_only_a_busy_braze_is_overload_anything_else_retryable_is_unreachable(status, outcome):
    report = _Report()
    report.failed(RetryableDeliveryError("failed", status), 0.1)
    assert report.outcome is outcome


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_429_pauses_every_sender_of_the_workspace():
    space = workspace(backoff=Backoff(base=0.0, cap=5.0))   # the pause is at most the cap

    def answer(ids, number):
        if ids == ["first"] and number == 1:
            raise RetryableDeliveryError("Braze answered 429: Rate Limited", 429, retry_after=0.4)
        return TrackResponse(201)

    client = ScriptedClient(answer)
    sender_for(client, space).deliver(make_batch(["first"]))
    other = threading.Thread(target=sender_for(client, space).deliver, args=(make_batch(["second"]),))
    limited_at = client.calls[0][0]
    other.start()
    other.join(5)
    later = [at for at, ids in client.calls[1:]]
    assert len(later) == 2
    assert min(later) - limited_at >= 0.39, "a sender went on before Braze's retry delay had passed"


def test_a_refused_key_ends_the_batch_when_the_workspace_does_not_hold():
    space = workspace(hold=False)

    def answer(ids, number):
        raise PermanentDeliveryError("Braze answered 401: Invalid API key", 401)

    client = ScriptedClient(answer)
    with pytest.raises(PermanentDeliveryError):
        sender_for(client, space).deliver(make_batch(["a"]))
    assert "401" in space.gate.refusal
    # The batches queued behind it end at once with the same reason: no probe for each of them.
    for number in range(1, 4):
        with pytest.raises(PermanentDeliveryError, match="401: Invalid API key"):
            sender_for(client, space).deliver(make_batch(["b"], number))
    assert len(client.calls) == 1


def test_a_held_batch_goes_through_once_a_probe_finds_the_key_fixed():
    space = workspace(probe_interval=0.1)
    fixed = threading.Event()

    def answer(ids, number):
        if number == 3:
            fixed.set()   # the operator fixes the key while probes keep failing
        if number <= 3:
            raise PermanentDeliveryError("Braze answered 401: Invalid API key", 401)
        return TrackResponse(201)

    client = ScriptedClient(answer)
    result = sender_for(client, space).deliver(make_batch(["a", "b"]))
    assert result.rows_delivered == 2 and result.requests == 4
    gaps = [later - earlier for (earlier, _), (later, _) in zip(client.calls, client.calls[1:])]
    assert all(gap >= 0.09 for gap in gaps), "probes came faster than one per interval"
    assert space.gate.refusal is None


def test_stopping_abandons_a_batch_held_while_the_key_is_refused():
    stop = threading.Event()

    def answer(ids, number):
        threading.Timer(0.2, stop.set).start()
        raise PermanentDeliveryError("Braze answered 403: Forbidden", 403)

    client = ScriptedClient(answer)
    with pytest.raises(Abandoned):
        sender_for(client, workspace(probe_interval=60.0), stop).deliver(make_batch(["a"]))
    assert len(client.calls) == 1


def test_stopping_abandons_a_batch_that_is_waiting_to_be_retried():
    stop = threading.Event()
    space = workspace(backoff=Backoff(base=30.0, cap=30.0))

    def answer(ids, number):
        stop.set()
        raise RetryableDeliveryError("Braze answered 502: Bad Gateway", 502)

    with pytest.raises(Abandoned):
        sender_for(ScriptedClient(answer), space, stop).deliver(make_batch(["a"]))


def test_the_pool_keeps_each_partition_in_order_on_one_sender():
    clients = []

    def factory(settings):
        clients.append(ScriptedClient(created))
        return clients[-1]

    stop = threading.Event()
    pool = SenderPool(SETTINGS, RateLimiter(10_000, 1), stop, threads=3, client_factory=factory)
    done: list[tuple[int, object]] = []
    finished = threading.Semaphore(0)

    def on_done(batch, outcome):
        done.append((batch.number, outcome))
        finished.release()

    batches = [make_batch([f"p{number % 3}-{number}"], number, partition=number % 3) for number in range(30)]
    try:
        for batch in batches:
            pool.submit(batch, on_done)
        for _ in batches:
            assert finished.acquire(timeout=10)
    finally:
        pool.close()
    assert all(isinstance(outcome, DeliveryResult) for _, outcome in done)
    for client in clients:
        sent = [ids[0] for _, ids in client.calls]
        assert len({external_id.split("-")[0] for external_id in sent}) <= 1, "a partition used two senders"
        assert sent == sorted(sent, key=lambda external_id: int(external_id.split("-")[1]))
    assert sum(len(client.calls) for client in clients) == 30


def test_a_sender_that_cannot_set_up_its_client_fails_each_batch_with_the_reason_and_lives_on(tmp_path):
    # Config refuses such a CA file (test_config.py); a proxy URL from the environment is not checked there.
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    settings = BrazeSettings(rest_endpoint="https://127.0.0.1:1", api_key=Secret("k"), ca_file=str(tmp_path / "ca.pem"))
    pool = SenderPool(settings, RateLimiter(10_000, 1), threading.Event(), threads=1)
    outcomes = []
    finished = threading.Semaphore(0)

    def on_done(batch, outcome):
        outcomes.append(outcome)
        finished.release()

    try:
        for number in range(2):
            pool.submit(make_batch(["a"], number), on_done)
            assert finished.acquire(timeout=10)
        assert pool.alive()
    finally:
        pool.close()
    assert all(isinstance(outcome, PermanentDeliveryError) for outcome in outcomes)
    assert "cannot set up requests to Braze: SSLError" in str(outcomes[0])
