"""What a folder waiting on Braze shows in the state file: the outage, its latest failure rewritten
at most every OUTAGE_SHOWN_SECONDS, and nothing once Braze accepts again. On injected clocks."""

from types import SimpleNamespace

import pytest

from rpi2braze import worker
from rpi2braze.concurrency import OUTAGE_SHOWN_SECONDS, ConcurrencyGate, Outcome
from rpi2braze.health import HEALTH
from rpi2braze.model import ChannelMode, ExportFolder, WorkflowKey
from rpi2braze.state import StateStore
from rpi2braze.worker import FolderDelivery
from clocks import FakeClock

KEY = WorkflowKey("drop", "Braze Onboarding and Upsert", "Offer", "42")


@pytest.fixture
def waiting(tmp_path, monkeypatch):
    """A delivery whose batches wait on a gate; both run on one fake clock."""
    clock = FakeClock()
    monkeypatch.setattr(worker, "time", SimpleNamespace(monotonic=clock))   # worker's clock only
    gate = ConcurrencyGate(4, clock=clock, initial=2)
    state = StateStore(str(tmp_path / "state.db"))
    state.record_seen(KEY, "/drop/42")
    state.begin(KEY, 1)
    context = SimpleNamespace(pool=SimpleNamespace(gate=gate), state=state)
    delivery = FolderDelivery(ExportFolder(KEY, ChannelMode.UPSERT, (), "/drop/42"), None, None, context)
    yield delivery, gate, state, clock
    state.close()
    HEALTH.mark("braze", True)


def test_the_outage_is_shown_at_once_its_changes_once_per_interval_and_its_end_at_once(waiting):
    delivery, gate, state, clock = waiting
    gate.release(gate.try_acquire(), Outcome.UNREACHABLE, reason="Braze answered 502")
    clock.now += OUTAGE_SHOWN_SECONDS
    gate.release(gate.try_acquire(), Outcome.UNREACHABLE, reason="Braze answered 503")
    delivery._show_waiting()
    assert state.get(KEY).reason.endswith("(latest: Braze answered 503)")
    gate.release(gate.try_acquire(), Outcome.OVERLOAD, reason="Braze answered 429")
    clock.now += OUTAGE_SHOWN_SECONDS / 2
    delivery._show_waiting()
    assert state.get(KEY).reason.endswith("(latest: Braze answered 503)"), "not rewritten within the interval"
    clock.now += OUTAGE_SHOWN_SECONDS / 2
    delivery._show_waiting()
    assert state.get(KEY).reason.endswith("(latest: Braze answered 429)")
    gate.release(gate.try_acquire(), Outcome.ANSWERED, 0.05)
    delivery._show_waiting()
    assert state.get(KEY).reason == ""
