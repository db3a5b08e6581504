"""The adaptive concurrency limit: AIMD arithmetic on an injected clock, and the gate around it."""

import threading

import pytest

from rpi2braze import metrics
from rpi2braze.concurrency import (
    MIN_WINDOW_SECONDS, OUTAGE_SHOWN_SECONDS, AimdLimit, ConcurrencyGate, Outcome, initial_limit,
)
from rpi2braze.health import HEALTH
from clocks import FakeClock

ANSWERED, OVERLOAD, REFUSED = Outcome.ANSWERED, Outcome.OVERLOAD, Outcome.REFUSED


@pytest.fixture(autouse=True)
def braze_marked_up_afterwards():
    """A refused gate marks the process-wide health registry; leave it as it was found."""
    yield
    HEALTH.mark("braze", True)


def window(aimd: AimdLimit, clock: FakeClock, rtt: float = 0.1, outcomes=(ANSWERED,) * 4, full: bool = True) -> int:
    """Feed one whole window of outcomes, spread over its length; return the limit after it closed."""
    start, length = clock.now, aimd.window_seconds
    if full:
        aimd.note_full()
    for index, outcome in enumerate(outcomes, 1):
        clock.now = start + length * index / len(outcomes) + (1e-9 if index == len(outcomes) else 0)
        aimd.observe(outcome, rtt, clock.now)
    return aimd.limit


@pytest.mark.parametrize("ceiling, expected", [(1, 1), (2, 2), (4, 4), (8, 4), (16, 4), (64, 16), (128, 32)])
def test_the_limit_starts_small(ceiling, expected):
    assert initial_limit(ceiling) == expected
    assert AimdLimit(ceiling, 0.0).limit == expected


def test_a_full_window_without_trouble_adds_one_slot():
    clock = FakeClock()
    aimd = AimdLimit(16, clock.now)
    assert [window(aimd, clock) for _ in range(5)] == [5, 6, 7, 8, 9]


def test_slots_nobody_used_are_not_added():
    clock = FakeClock()
    aimd = AimdLimit(16, clock.now)
    assert [window(aimd, clock, full=False) for _ in range(3)] == [4, 4, 4]


def test_the_limit_never_passes_the_ceiling():
    clock = FakeClock()
    aimd = AimdLimit(6, clock.now)
    assert [window(aimd, clock) for _ in range(4)] == [5, 6, 6, 6]


def test_back_pressure_halves_the_limit_once_per_window():
    clock = FakeClock()
    aimd = AimdLimit(64, clock.now, initial=20)
    assert window(aimd, clock, outcomes=(OVERLOAD, OVERLOAD, OVERLOAD, ANSWERED)) == 10
    assert window(aimd, clock, outcomes=(OVERLOAD,)) == 5
    assert window(aimd, clock) == 6


@pytest.mark.parametrize("initial, expected", [(1, 1), (2, 1), (3, 1), (9, 4)])
def test_halving_rounds_down_and_stops_at_one(initial, expected):
    clock = FakeClock()
    aimd = AimdLimit(64, clock.now, initial=initial)
    assert window(aimd, clock, outcomes=(OVERLOAD,)) == expected


@pytest.mark.parametrize("rtt, expected", [
    (0.100, 11),   # steady: grow
    (0.115, 11),   # within 1.1 x average + 10 ms: grow
    (0.150, 10),   # rising a little: hold
    (0.170, 5),    # above 1.5 x average + 10 ms: halve
])
def test_the_round_trip_against_its_moving_average_decides(rtt, expected):
    clock = FakeClock()
    aimd = AimdLimit(64, clock.now, initial=8)
    for _ in range(2):
        window(aimd, clock, rtt=0.1)
    assert aimd.limit == 10 and aimd.average_rtt == pytest.approx(0.1)
    assert window(aimd, clock, rtt=rtt) == expected


def test_scheduling_noise_on_a_fast_network_is_not_a_rise():
    clock = FakeClock()
    aimd = AimdLimit(64, clock.now, initial=8)
    window(aimd, clock, rtt=0.001)
    assert window(aimd, clock, rtt=0.008) == 10


def test_a_window_lasts_one_average_round_trip_but_not_less_than_the_minimum():
    clock = FakeClock()
    aimd = AimdLimit(64, clock.now, initial=4)
    assert aimd.window_seconds == MIN_WINDOW_SECONDS
    window(aimd, clock, rtt=0.4)
    assert aimd.window_seconds == pytest.approx(0.4)
    clock.now += 0.3
    aimd.note_full()
    aimd.observe(ANSWERED, 0.4, clock.now)
    assert aimd.limit == 5, "the window closed before one round trip"
    clock.now += 0.11
    aimd.observe(ANSWERED, 0.4, clock.now)
    assert aimd.limit == 6


def test_the_average_moves_toward_the_newest_window():
    clock = FakeClock()
    aimd = AimdLimit(64, clock.now)
    window(aimd, clock, rtt=0.1)
    window(aimd, clock, rtt=0.2, full=False)
    assert aimd.average_rtt == pytest.approx(0.1 + 0.3 * 0.1)


def test_the_gate_holds_requests_to_the_limit():
    gate = ConcurrencyGate(8, clock=FakeClock(), initial=2)
    first, second = gate.try_acquire(), gate.try_acquire()
    assert first and second and gate.in_flight == 2
    assert gate.try_acquire() is None
    gate.release(first, ANSWERED, 0.05)
    assert gate.try_acquire() is not None


def test_the_gate_learns_from_what_it_is_told_and_exposes_its_limit():
    clock = FakeClock()
    gate = ConcurrencyGate(16, clock=clock, initial=4)
    slots = [gate.try_acquire() for _ in range(4)]
    for slot in slots:
        gate.started(slot)
    clock.now += 0.1
    gate.release(slots[0], OVERLOAD)
    assert gate.limit == 2
    assert metrics.REGISTRY.get_sample_value("rpi2braze_concurrency_limit") == 2
    for slot in slots[1:]:
        gate.release(slot, ANSWERED, 0.1)
    assert gate.in_flight == 0


def test_a_refused_key_stops_every_request_but_one_probe_per_interval():
    clock = FakeClock()
    gate = ConcurrencyGate(16, clock=clock, probe_interval=5.0)
    slot = gate.try_acquire()
    gate.started(slot)
    gate.release(slot, REFUSED, reason="Braze answered 401: Invalid API key")
    assert gate.refusal == "Braze answered 401: Invalid API key"
    assert "braze" in HEALTH.report()[1]["down"]
    assert gate.try_acquire() is None
    clock.now += 4.9
    assert gate.try_acquire() is None
    clock.now += 0.2
    probe = gate.try_acquire()
    assert probe is not None and probe.probe
    assert gate.try_acquire() is None, "only one probe at a time"
    gate.release(probe, REFUSED, reason="Braze answered 401: Invalid API key")
    assert gate.try_acquire() is None
    clock.now += 5.0
    probe = gate.try_acquire()
    assert probe.probe
    gate.release(probe, ANSWERED, 0.05)
    assert gate.refusal is None
    assert "braze" not in HEALTH.report()[1]["down"]
    assert gate.try_acquire() is not None and not gate.try_acquire().probe


def test_an_overloaded_probe_does_not_reopen_the_gate():
    clock = FakeClock()
    gate = ConcurrencyGate(4, clock=clock, probe_interval=5.0)
    gate.release(gate.try_acquire(), REFUSED, reason="Braze answered 403")
    clock.now += 5.0
    gate.release(gate.try_acquire(), OVERLOAD)
    assert gate.refusal == "Braze answered 403"


def test_a_waiting_sender_gets_the_slot_released_and_stop_frees_the_rest():
    gate = ConcurrencyGate(4, initial=1)
    stop = threading.Event()
    held = gate.acquire(stop)
    got = []
    waiters = [threading.Thread(target=lambda: got.append(gate.acquire(stop))) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    waiters[0].join(0.3)
    assert got == [], "a sender went past a full gate"
    gate.release(held, ANSWERED, 0.01)
    for _ in range(50):
        if got:
            break
        waiters[0].join(0.1)
    assert len(got) == 1 and got[0] is not None
    stop.set()
    for waiter in waiters:
        waiter.join(5)
    assert got[1:] == [None]


def braze_up() -> float:
    return metrics.REGISTRY.get_sample_value("rpi2braze_braze_up")


@pytest.mark.parametrize("outcome, down", [(Outcome.UNREACHABLE, True), (OVERLOAD, False), (ANSWERED, False),
                                           (REFUSED, True)])
def test_health_and_the_braze_up_metric_agree_that_only_an_unreachable_or_refusing_braze_is_down(outcome, down):
    gate = ConcurrencyGate(4, clock=FakeClock(), initial=2, probe_interval=0.0)
    gate.release(gate.try_acquire(), ANSWERED, 0.05)
    gate.release(gate.try_acquire(), outcome, 0.05, "Braze answered 503")
    assert ("braze" in HEALTH.report(threshold=-1)[1]["down"]) is down
    assert braze_up() == (0 if down else 1)
    gate.release(gate.try_acquire(), ANSWERED, 0.05)
    assert "braze" not in HEALTH.report(threshold=-1)[1]["down"]
    assert braze_up() == 1


def test_an_answer_to_a_request_sent_before_the_refusal_does_not_reopen_the_gate():
    gate = ConcurrencyGate(4, clock=FakeClock(), initial=2)
    early, late = gate.try_acquire(), gate.try_acquire()
    gate.release(late, REFUSED, reason="Braze answered 401: Invalid API key")
    gate.release(early, ANSWERED, 0.05)   # sent with the key before it was revoked
    assert gate.refusal == "Braze answered 401: Invalid API key"
    assert "braze" in HEALTH.report(threshold=-1)[1]["down"] and braze_up() == 0


def test_a_retry_after_an_outage_waits_only_for_an_answer_after_its_failure():
    clock = FakeClock()
    gate = ConcurrencyGate(4, clock=clock, initial=2)
    stop = threading.Event()
    sporadic = gate.try_acquire()
    gate.release(sporadic, Outcome.UNREACHABLE, reason="Braze answered 502")   # not an outage yet
    clock.now += OUTAGE_SHOWN_SECONDS
    in_outage = gate.try_acquire()
    gate.release(in_outage, Outcome.UNREACHABLE, reason="Braze answered 502")
    gate.release(gate.try_acquire(), ANSWERED, 0.05)   # before the sender began to wait: not missed
    gate.wait_to_retry(60.0, stop, in_outage)          # returns at once
    waiter = threading.Thread(target=gate.wait_to_retry, args=(60.0, stop, sporadic))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "a failure among answers keeps its whole backoff"
    stop.set()
    waiter.join(10)
    assert not waiter.is_alive()


def test_an_outage_is_named_once_braze_has_accepted_nothing_for_a_while_and_ends_with_an_acceptance():
    clock = FakeClock()
    gate = ConcurrencyGate(4, clock=clock, initial=2)
    gate.release(gate.try_acquire(), Outcome.UNREACHABLE, reason="Braze answered 502: Bad Gateway")
    assert gate.outage is None, "one failure is not an outage"
    clock.now += OUTAGE_SHOWN_SECONDS
    gate.release(gate.try_acquire(), Outcome.UNREACHABLE, reason="no answer from Braze: ConnectionRefusedError")
    assert gate.outage.startswith("waiting for Braze, retrying: no request accepted since ")
    assert gate.outage.endswith("(latest: no answer from Braze: ConnectionRefusedError)")
    gate.release(gate.try_acquire(), OVERLOAD, reason="Braze answered 429: rate limited")
    assert gate.outage.endswith("(latest: Braze answered 429: rate limited)"), "busy is not accepted either"
    gate.release(gate.try_acquire(), ANSWERED, 0.05)
    assert gate.outage is None
    gate.release(gate.try_acquire(), Outcome.UNREACHABLE, reason="Braze answered 503")
    clock.now += OUTAGE_SHOWN_SECONDS
    assert gate.outage is not None
    gate.release(gate.try_acquire(), ANSWERED, 0.05)
    assert gate.outage is None


def test_braze_answering_only_429_for_a_while_is_shown_as_an_outage_but_not_as_braze_down():
    clock = FakeClock()
    gate = ConcurrencyGate(4, clock=clock, initial=2)
    gate.release(gate.try_acquire(), ANSWERED, 0.05)
    for _ in range(3):
        gate.release(gate.try_acquire(), OVERLOAD, reason="Braze answered 429: rate limited")
        clock.now += OUTAGE_SHOWN_SECONDS / 2
    assert gate.outage.startswith("waiting for Braze, retrying: no request accepted since ")
    assert gate.outage.endswith("(latest: Braze answered 429: rate limited)")
    assert "braze" not in HEALTH.report(threshold=-1)[1]["down"] and braze_up() == 1
